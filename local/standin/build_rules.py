"""What Cloud Build refuses at CreateBuild, and the substitutions it applies before running.

Each rule names the documentation page it enforces and quotes it; the status is the one
the real API answers (INVALID_ARGUMENT for a malformed build). The stand-in checks the
build as the client sent it, before it is queued, as Cloud Build does.
"""
from __future__ import annotations

import re
from typing import Mapping

import grpc
from google.cloud.devtools.cloudbuild_v1.types import Build, BuildOptions

from local.standin.common import ApiError

# https://cloud.google.com/build/docs/build-config-file-schema#tags and the Build proto
# (google/devtools/cloudbuild/v1/cloudbuild.proto, ``tags``): the API refuses a tag that does
# not match "^[\w][\w.-]{0,127}$" ("invalid build tag ...: must match format").
TAG = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
# https://cloud.google.com/build/docs/configuring-builds/substitute-variable-values#using_user-defined_substitutions
# "Substitutions must begin with an underscore (_) and use only uppercase-letters and numbers
#  (respecting the regular expression _[A-Z0-9_]+)."
USER_KEY = re.compile(r"^_[A-Z0-9_]+$")
# Same page, "Using default substitutions": the built-in names. Those a caller may set itself
# ("you can manually provide values for ...") are the overridable ones.
OVERRIDABLE = frozenset({
    "TRIGGER_NAME", "COMMIT_SHA", "REVISION_ID", "SHORT_SHA", "REPO_NAME", "REPO_FULL_NAME", "BRANCH_NAME",
    "TAG_NAME", "REF_NAME", "TRIGGER_BUILD_CONFIG_PATH", "SERVICE_ACCOUNT_EMAIL", "SERVICE_ACCOUNT",
})
BUILT_IN = OVERRIDABLE | {"PROJECT_ID", "BUILD_ID", "PROJECT_NUMBER", "LOCATION"}
# "$$" is Cloud Build's escaped dollar; ${NAME} and $NAME are substitutions.
_TOKEN = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
# The Build proto, build_step_outputs: "Note that the $BUILDER_OUTPUT variable is read-only and
# can't be substituted" -- it reaches the step as written.
NOT_SUBSTITUTED = frozenset({"BUILDER_OUTPUT"})
# The Build proto, service_account: "Must be of the format projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}.
# ACCOUNT can be email address or uniqueId of the service account." (uniqueIds are numeric; an e-mail
# has one "@" and a dotted domain.)
SA_NAME = re.compile(r"^projects/[^/@\s]+/serviceAccounts/(?:[^/@\s]+@[^/@\s]+\.[^/@\s]+|[0-9]+)$")
_LOGS_ELSEWHERE = {BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY, BuildOptions.LoggingMode.STACKDRIVER_ONLY,
                   BuildOptions.LoggingMode.NONE}


def invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid build: {message}")


def check_build(build: Build) -> None:
    """Raise INVALID_ARGUMENT for the first documented rule ``build`` breaks."""
    for i, step in enumerate(build.steps):
        if not step.name:
            raise invalid(f"step {i} has no name")
    for tag in build.tags:
        if not TAG.match(tag):
            raise invalid(f'invalid build tag "{tag}": must match format "^[\\w][\\w.-]{{0,127}}$"')
    for key in build.substitutions:
        if key not in OVERRIDABLE and not USER_KEY.match(key):
            raise invalid(f'substitution key "{key}" does not respect format "^_[A-Z0-9_]+$" '
                          "and is not an overridable built-in substitution")
    _check_secrets(build)
    _check_service_account(build)


def _check_secrets(build: Build) -> None:
    # https://cloud.google.com/build/docs/securing-builds/use-secrets
    # "availableSecrets: ... secretEnv: the environment variable name" and for a step:
    # "secretEnv: ... these variables must be specified in availableSecrets"; the BuildStep proto:
    # "A list of environment variables which are encrypted ... These values must be specified in
    # the build's Secret."
    defined = {s.env for s in build.available_secrets.secret_manager}
    defined |= {name for inline in build.available_secrets.inline for name in inline.env_map}
    defined |= {name for secret in build.secrets for name in secret.secret_env}
    for i, step in enumerate(build.steps):
        for name in step.secret_env:
            if name not in defined:
                raise invalid(f'step {i} uses secretEnv "{name}", which is not defined in availableSecrets')


def _check_service_account(build: Build) -> None:
    if not build.service_account:
        return
    # The Build proto (cloudbuild.proto, Build.service_account), quoted at SA_NAME above.
    if not SA_NAME.match(build.service_account):
        raise invalid(f"service_account {build.service_account!r} must be of the format "
                      "projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}, ACCOUNT being the e-mail address or "
                      "the uniqueId of the service account")
    # https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts
    # "If you specify your own service account for builds, you must store your build logs either
    #  in Cloud Logging or in a user-created Cloud Storage bucket. You cannot store your logs in
    #  the default logs bucket."
    options = build.options
    if (build.logs_bucket or options.logging in _LOGS_ELSEWHERE or options.default_logs_bucket_behavior
            == BuildOptions.DefaultLogsBucketBehavior.REGIONAL_USER_OWNED_BUCKET):
        return
    raise invalid("if 'build.service_account' is specified, the build must either (a) specify "
                  "'build.logs_bucket', (b) use the REGIONAL_USER_OWNED_BUCKET "
                  "build.options.default_logs_bucket_behavior option, or (c) use either CLOUD_LOGGING_ONLY / "
                  "NONE logging options")


def built_ins(build: Build, project: str, location: str, project_number: str) -> dict[str, str]:
    """Default substitutions of a build created through the API (no trigger): the trigger
    ones are empty ("If a default substitution is not available (such as with sourceless
    builds ...) then occurrences of the missing variable are replaced with an empty string")."""
    values = {name: "" for name in BUILT_IN}
    account = build.service_account
    values.update(PROJECT_ID=project, BUILD_ID=build.id, PROJECT_NUMBER=project_number, LOCATION=location,
                  SERVICE_ACCOUNT=account, SERVICE_ACCOUNT_EMAIL=account.rsplit("/", 1)[-1] if account else "")
    revision = build.source.git_source.revision or build.source.connected_repository.revision
    if revision:
        values.update(COMMIT_SHA=revision, REVISION_ID=revision, SHORT_SHA=revision[:7])
    return values


def apply_substitutions(build: Build, defaults: Mapping[str, str]) -> None:
    """Fill substitutions in the steps and images, as Cloud Build does before the first step.

    https://cloud.google.com/build/docs/configuring-builds/substitute-variable-values
    "Use substitutions in your build's steps and images to resolve their values at build time."
    With the default MUST_MATCH option (BuildOptions.SubstitutionOption: "Fails the build if error
    in substitutions checks, like missing a substitution in the template or in the map") a key
    nobody uses and a ``$_NAME`` nobody defined are both INVALID_ARGUMENT; ALLOW_LOOSE: "Do not
    fail the build if error in substitutions checks" (a missing one becomes empty).
    """
    loose = build.options.substitution_option == BuildOptions.SubstitutionOption.ALLOW_LOOSE
    values = dict(defaults) | dict(build.substitutions)
    used: set[str] = set()

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if name in NOT_SUBSTITUTED:
            return match.group(0)
        if name in values:
            used.add(name)
            return values[name]
        if loose:
            return ""
        if name.startswith("_"):
            raise invalid(f'key in the template "{name}" is not matched in the substitution data; '
                          f'substitutions data: {sorted(build.substitutions)}')
        raise invalid(f'key in the template "{name}" is not a valid built-in substitution')

    def fill(text: str) -> str:
        return _TOKEN.sub(replace, text)

    for step in build.steps:
        step.name = fill(step.name)
        step.args = [fill(a) for a in step.args]
        step.env = [fill(e) for e in step.env]
        step.dir_ = fill(step.dir_)
        step.entrypoint = fill(step.entrypoint)  # ``script`` is not substituted (automapSubstitutions is not ours)
    build.images = [fill(i) for i in build.images]
    unused = sorted(k for k in build.substitutions if k not in used)
    if unused and not loose:
        raise invalid(f'key "{unused[0]}" in the substitution data is not matched in the template')
