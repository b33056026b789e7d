"""Which GitHub Actions runs may act as the pipeline account: the WIF provider's attribute
mapping and condition, and the principal sets bound to roles/iam.workloadIdentityUser.

The pipeline account holds run.admin, cloudsql.editor and the prod secrets, so "a workflow of
the repository" is not enough: any collaborator's branch, or a pull request's workflow, would
reach prod without an approval. Google's "Workload Identity Federation with deployment
pipelines" page and google-github-actions/auth's security notes say to condition on more than
the repository. Admitted here: the repository by id (a rename or a re-created repository of the
same name cannot take it over), a push or a manual dispatch (never a pull request) of the
release branch or, if configured, a release tag, running one of the named workflow files taken
from that same ref (``workflow_ref`` is ``owner/name/PATH@REF``).

The same predicate is stated twice, as Google evaluates it twice: the provider's condition
refuses other tokens at the token exchange, and the one attribute the principal sets name
(``attribute.release_workflow`` = ``ID:branch|tag:PATH``) only takes a bound value for an
admitted ref and workflow. The expressions are CEL without commas (gcloud's
--attribute-mapping is a comma-separated list) and use only core CEL, which Google's IAM and
cel-python (the local STS, local/sts.py) both evaluate.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from shared.domain.errors import ConfigError

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
DEFAULT_WORKFLOWS = (".github/workflows/release.yml",)
ADMITTED_EVENTS = ("push", "workflow_dispatch")
WORKFLOW_PATH = re.compile(r"^\.github/workflows/[A-Za-z0-9._-]+\.ya?ml$")
TAG_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,40}$")
BRANCH = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")
OTHER = "other"  # release_workflow's part for what is not admitted: no principal set names it


@dataclass(frozen=True)
class WifPolicy:
    repository: str  # owner/name, as in workflow_ref
    repository_id: str  # GitHub's numeric id
    release_branch: str
    workflows: tuple[str, ...] = DEFAULT_WORKFLOWS  # paths in the repository
    tag_prefix: str = ""  # "" admits no tag; "v" admits refs/tags/v*

    def __post_init__(self) -> None:
        # Every value is quoted into CEL below: refuse what could end the quote.
        if self.repository_id and not self.repository_id.isdigit():  # empty: a dry run; --check refuses it
            raise ConfigError(f"WIF: repository id {self.repository_id!r} must be GitHub's numeric id")
        if not BRANCH.match(self.release_branch):
            raise ConfigError(f"WIF: release branch {self.release_branch!r} is not a plain branch name")
        if not self.workflows:
            raise ConfigError("WIF: name at least one workflow file (DEPLOY_WIF_WORKFLOWS)")
        for path in self.workflows:
            if not WORKFLOW_PATH.match(path):
                raise ConfigError(f"WIF: workflow {path!r} must be a file under .github/workflows/ (….yml)")
        if self.tag_prefix and not TAG_PREFIX.match(self.tag_prefix):
            raise ConfigError(f"WIF: release tag prefix {self.tag_prefix!r} has characters a tag name cannot")
        if "'" in self.repository or "\\" in self.repository:
            raise ConfigError(f"WIF: repository {self.repository!r} is not owner/name")

    @property
    def branch_ref(self) -> str:
        return f"refs/heads/{self.release_branch}"

    def _ref_kind(self) -> str:
        """'branch' for a push or dispatch of the release branch, 'tag' of a release tag, else 'other' (CEL)."""
        tag = (f"(assertion.ref.startsWith('refs/tags/{self.tag_prefix}') ? 'tag' : '{OTHER}')"
               if self.tag_prefix else f"'{OTHER}'")
        event = " || ".join(f"assertion.event_name == '{e}'" for e in ADMITTED_EVENTS)  # `in [..]` has commas
        return f"(({event}) ? (assertion.ref == '{self.branch_ref}' ? 'branch' : {tag}) : '{OTHER}')"

    def _workflow(self) -> str:
        """The admitted workflow file the token's run uses, taken from the token's own ref, else 'other'."""
        expression = f"'{OTHER}'"
        for path in reversed(self.workflows):
            expression = (f"(assertion.workflow_ref == '{self.repository}/{path}@' + assertion.ref ? "
                          f"'{path}' : {expression})")
        return expression

    def attribute_mapping(self) -> dict[str, str]:
        return {
            "google.subject": "assertion.sub",
            "attribute.repository": "assertion.repository",
            "attribute.repository_id": "assertion.repository_id",
            "attribute.ref": "assertion.ref",
            "attribute.workflow_ref": "assertion.workflow_ref",
            "attribute.event_name": "assertion.event_name",
            "attribute.release_workflow": f"assertion.repository_id + ':' + {self._ref_kind()} + ':' + {self._workflow()}",
        }

    def attribute_condition(self) -> str:
        events = ", ".join(f"'{e}'" for e in ADMITTED_EVENTS)
        refs = f"assertion.ref == '{self.branch_ref}'"
        if self.tag_prefix:
            refs = f"({refs} || assertion.ref.startsWith('refs/tags/{self.tag_prefix}'))"
        workflows = ", ".join(f"'{self.repository}/{path}@' + assertion.ref" for path in self.workflows)
        return (f"assertion.repository_id == '{self.repository_id}' && assertion.event_name in [{events}] && "
                f"{refs} && assertion.workflow_ref in [{workflows}]")

    def principal_values(self) -> tuple[str, ...]:
        """The attribute.release_workflow values bound to workloadIdentityUser, one per ref kind and workflow."""
        kinds = ("branch", "tag") if self.tag_prefix else ("branch",)
        return tuple(f"{self.repository_id}:{kind}:{path}" for kind in kinds for path in self.workflows)

    def mapping_flag(self) -> str:
        return ",".join(f"{key}={value}" for key, value in self.attribute_mapping().items())


def evaluate(expression: str, assertion: dict, attribute: dict | None = None):
    """One CEL expression of the provider on a token's claims, as IAM evaluates it (cel-python)."""
    try:
        import celpy  # dev/local dependency: the deploy's --check and the local STS only
    except ImportError:
        raise ConfigError("the WIF condition is checked with cel-python: pip install -r requirements-dev.txt") from None

    environment = celpy.Environment()
    try:
        program = environment.program(environment.compile(expression))
        result = program.evaluate({"assertion": celpy.json_to_cel(assertion),
                                   "attribute": celpy.json_to_cel(attribute or {})})
    except celpy.CELParseError as exc:
        raise ConfigError(f"WIF: not a CEL expression: {expression!r} ({exc})") from None
    if isinstance(result, celpy.CELEvalError):
        return None  # a missing claim: IAM refuses the token rather than guess
    if isinstance(result, celpy.celtypes.BoolType):
        return bool(result)
    return str(result) if isinstance(result, celpy.celtypes.StringType) else result


def github_claims(policy: WifPolicy, *, ref: str | None = None, workflow: str | None = None,
                  event_name: str = "push", repository_id: str | None = None, **extra) -> dict:
    """The claims of a GitHub Actions OIDC token, as GitHub documents them ("Understanding the OIDC
    token"), for a run of ``workflow`` on ``ref``; defaults: the release branch and the first workflow."""
    ref = ref or policy.branch_ref
    workflow = workflow or policy.workflows[0]
    repo_ref = f"{policy.repository}/{workflow}@{ref}"
    kind, _, name = ref.removeprefix("refs/").partition("/")
    claims = {
        "iss": GITHUB_ISSUER, "aud": "", "sub": f"repo:{policy.repository}:ref:{ref}",
        "repository": policy.repository, "repository_id": repository_id or policy.repository_id,
        "repository_owner": policy.repository.split("/")[0], "ref": ref,
        "ref_type": {"heads": "branch", "tags": "tag"}.get(kind, kind), "event_name": event_name,
        "workflow": workflow.rsplit("/", 1)[-1], "workflow_ref": repo_ref, "job_workflow_ref": repo_ref,
        "actor": "octocat", "run_id": "1", "run_attempt": "1",
    }
    if event_name == "pull_request":
        claims["sub"] = f"repo:{policy.repository}:pull_request"
    claims.update(extra)
    return claims


def strangers(policy: WifPolicy) -> dict[str, dict]:
    """Tokens that must never become the pipeline account, by what is wrong with them."""
    return {
        "a feature branch": github_claims(policy, ref="refs/heads/feature/x"),
        "another workflow file of the release branch": github_claims(policy, workflow=".github/workflows/ci.yml"),
        "a pull request": github_claims(policy, ref="refs/pull/7/merge", event_name="pull_request"),
        "pull_request_target on the release branch": github_claims(policy, event_name="pull_request_target"),
        "the release workflow's file as on a feature branch": github_claims(
            policy, workflow_ref=f"{policy.repository}/{policy.workflows[0]}@refs/heads/feature/x"),
        "another repository of the same name": github_claims(policy, repository_id="9" + policy.repository_id),
        "a tag outside the release tags": github_claims(policy, ref="refs/tags/experiment-1"),
    }


def condition_findings(condition: str, policy: WifPolicy) -> list[str]:
    """What is wrong with a provider condition, found by evaluating it on GitHub-shaped tokens:
    the release workflow of the release branch must pass, every stranger must not."""
    findings = []
    if evaluate(condition, github_claims(policy)) is not True:
        findings.append(f"refuses the release workflow on {policy.branch_ref}")
    for what, claims in strangers(policy).items():
        if evaluate(condition, claims) is True:
            findings.append(f"admits {what} ({claims['workflow_ref']}, event {claims['event_name']})")
    return findings
