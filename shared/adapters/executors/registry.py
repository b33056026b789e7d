"""Which release tags Artifact Registry holds, for a rollback that redeploys an older image.

A release tag is ``v<version>-<sha>`` (``ReleaseState`` makes it: ``v1.2.3-abc1234``).
Only those whose version is a plain ``X.Y.Z`` are rollback targets: a pre-release
never was what production ran at 100 %. Everything else a repository may hold
(``latest``, ``main``, ``sha-…``) is ignored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable
from urllib.parse import quote, unquote

import semver

from shared.app.config import Settings
from shared.domain.errors import ConfigError, ExecutorError

_RELEASE_TAG = re.compile(r"^v(?P<version>.+)-(?P<sha>[0-9a-f]{7,40})$")
_REGISTRY = re.compile(r"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repo>[^/]+)$")


@dataclass(frozen=True)
class ReleaseTag:
    tag: str
    version: semver.Version
    commit: str  # the short sha the tag ends with

    @property
    def is_release(self) -> bool:
        return not self.version.prerelease and not self.version.build


def parse_release_tag(tag: str) -> ReleaseTag | None:
    """``v1.2.3-abc1234`` -> (1.2.3, abc1234); None for a tag that is not ``v<semver>-<sha>``."""
    match = _RELEASE_TAG.match(tag or "")
    if not match:
        return None
    try:
        # An image tag cannot hold "+", so build metadata is pushed with "_" (substitute.docker_tag);
        # "_" is not a semver character, so mapping it back is unambiguous.
        version = semver.Version.parse(match["version"].replace("_", "+"))
    except ValueError:
        return None
    return ReleaseTag(tag, version, match["sha"])


def pick_tag_before(tags: Iterable[str], before_tag: str) -> str | None:
    """The release tag with the highest version strictly below ``before_tag``'s, or None.

    Two tags of one version (a rebuild from another commit) are ordered by tag text,
    so the answer never depends on the order the registry listed them in.
    """
    before = parse_release_tag(before_tag)
    if before is None:
        raise ExecutorError(f"{before_tag!r} is not a release tag v<X.Y.Z>-<sha>; cannot tell which tags are older")
    older = [t for t in map(parse_release_tag, tags) if t and t.is_release and t.version < before.version]
    if not older:
        return None
    return max(older, key=lambda t: (t.version, t.tag)).tag


def repository_path(settings: Settings) -> str:
    """``projects/P/locations/L/repositories/R`` for ``settings.artifact_registry`` (``L-docker.pkg.dev/P/R``)."""
    registry = settings.artifact_registry.strip().rstrip("/")
    match = _REGISTRY.match(registry)
    if not match:
        raise ConfigError(f"RELEASE_ARTIFACT_REGISTRY={registry!r} is not LOCATION-docker.pkg.dev/PROJECT/REPOSITORY; "
                          "a rollback from the registry needs an Artifact Registry docker repository")
    return f"projects/{match['project']}/locations/{match['location']}/repositories/{match['repo']}"


def package_path(settings: Settings, image: str) -> str:
    """The package of ``image``; an image path with '/' is one package, its slashes escaped."""
    return f"{repository_path(settings)}/packages/{quote(image, safe='')}"


def tag_names(settings: Settings, image: str, client: Any, timeout: float = 30.0) -> list[str]:
    """Every tag of ``image``'s package (all pages)."""
    parent = package_path(settings, image)
    return [unquote(t.name.rsplit("/tags/", 1)[-1])
            for t in client.list_tags(request={"parent": parent}, retry=None, timeout=timeout)]


def tag_exists(settings: Settings, image: str, tag: str, client: Any, timeout: float = 30.0) -> bool:
    from google.api_core import exceptions as gexc

    try:
        client.get_tag(name=f"{package_path(settings, image)}/tags/{quote(tag, safe='')}", retry=None, timeout=timeout)
        return True
    except gexc.NotFound:
        return False


def last_good_tag(settings: Settings, image: str, before_tag: str, client: Any) -> str | None:
    """The newest release tag of ``image`` in the registry older than ``before_tag`` (by semver).

    ``client`` is an ``artifactregistry_v1.ArtifactRegistryClient``. A tag exists only
    once its image was pushed, so whatever this names can be deployed.
    """
    return pick_tag_before(tag_names(settings, image, client), before_tag)
