"""google.devtools.artifactregistry.v1.ArtifactRegistry: docker images and their tags.

Only what a rollback reads: ListDockerImages, GetDockerImage, ListTags, GetTag. An
image is "pushed" when a build that names it in ``images`` succeeds (as Cloud Build
pushes them after the last step), or when a test calls ``StandIn.push_image``. Only
references of the Artifact Registry form ``LOCATION-docker.pkg.dev/PROJECT/REPO/IMAGE``
land here; any other registry is not ours to play, so such images are not recorded.

An image a build pushed is a real thing: its digest is the sha256 of the archive of the
source tree the build produced (``image_tree.archive_tree``), and that tree is kept under
``images_dir/<hex>``; Cloud Run's stand-ins run a template naming the image (by tag or by
digest) from that tree (``resolve``). An image pushed by ``StandIn.push_image`` has no tree.
"""
from __future__ import annotations

import fnmatch
import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

import grpc
from google.cloud.artifactregistry_v1.types import (
    DockerImage, GetDockerImageRequest, GetTagRequest, ListDockerImagesRequest, ListDockerImagesResponse,
    ListTagsRequest, ListTagsResponse, Tag,
)

from local.standin.common import ApiError, clone, now

SERVICE = "google.devtools.artifactregistry.v1.ArtifactRegistry"
HOST_SUFFIX = "-docker.pkg.dev"
_REF = re.compile(r"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repo>[^/]+)/"
                  r"(?P<image>[^:@]+)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")
_REPO = re.compile(r"^projects/([^/]+)/locations/([^/]+)/repositories/([^/]+)$")
_PACKAGE = re.compile(r"^(projects/[^/]+/locations/[^/]+/repositories/[^/]+)/packages/([^/]+)$")
_FILTER = re.compile(r'^\s*(name|version)\s*=\s*"([^"]*)"\s*$', re.IGNORECASE)
_ORDER = re.compile(r"^\s*(upload_time|update_time)(\s+(asc|desc))?\s*$")


@dataclass(frozen=True)
class ImageRef:
    location: str
    project: str
    repo: str
    image: str  # may contain '/', e.g. team/app
    tag: str = ""
    digest: str = ""

    @property
    def repository(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/repositories/{self.repo}"

    @property
    def package(self) -> str:
        return f"{self.repository}/packages/{quote(self.image, safe='')}"


def parse_ref(ref: str) -> ImageRef | None:
    """The parts of an Artifact Registry docker reference; None for any other registry."""
    match = _REF.match(ref.strip())
    if not match:
        return None
    return ImageRef(match["location"], match["project"], match["repo"], match["image"],
                    match["tag"] or "", match["digest"] or "")


@dataclass(frozen=True)
class HeldImage:
    """What a reference resolves to: the digest the registry holds for it, and the source
    tree that image was built from (None for an image pushed without one)."""

    ref: str
    digest: str
    tree: Path | None


@dataclass
class _Repository:
    images: dict[str, DockerImage] = field(default_factory=dict)  # resource name -> image, oldest first
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # package id -> tag -> digest


class ArtifactRegistryService:
    def __init__(self, images_dir: Path | None = None) -> None:
        self._repos: dict[str, _Repository] = {}
        self._lock = threading.Lock()
        self.images_dir = images_dir  # where builds keep each pushed image's tree, by digest

    def register(self, registry) -> None:
        registry.add(SERVICE, "ListDockerImages", self.list_docker_images, ListDockerImagesRequest,
                     ListDockerImagesResponse)
        registry.add(SERVICE, "GetDockerImage", self.get_docker_image, GetDockerImageRequest, DockerImage)
        registry.add(SERVICE, "ListTags", self.list_tags, ListTagsRequest, ListTagsResponse)
        registry.add(SERVICE, "GetTag", self.get_tag, GetTagRequest, Tag)

    # -- pushing -------------------------------------------------------------------------
    def push(self, ref: str, digest: str = "") -> DockerImage:
        """Record ``ref`` as pushed; its tag (``latest`` when it has none) moves to this digest,
        as ``docker push`` moves it. The digest defaults to one derived from ``ref``."""
        parsed = parse_ref(ref)
        if parsed is None:
            raise ValueError(f"{ref!r} is not an Artifact Registry reference LOCATION{HOST_SUFFIX}/PROJECT/REPO/IMAGE:TAG")
        digest = digest or parsed.digest or "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
        tag = parsed.tag or ("" if parsed.digest else "latest")
        package_id = quote(parsed.image, safe="")
        name = f"{parsed.repository}/dockerImages/{package_id}@{digest}"
        stamp = now()
        with self._lock:
            repo = self._repos.setdefault(parsed.repository, _Repository())
            image = repo.images.get(name)
            if image is None:
                host = f"{parsed.location}{HOST_SUFFIX}/{parsed.project}/{parsed.repo}"
                image = DockerImage(name=name, uri=f"{host}/{parsed.image}@{digest}", upload_time=stamp,
                                    build_time=stamp, image_size_bytes=len(ref) * 1024,
                                    media_type="application/vnd.docker.distribution.manifest.v2+json")
                repo.images[name] = image
            if tag:
                tags = repo.tags.setdefault(package_id, {})
                previous = tags.get(tag)
                if previous and previous != digest:
                    old = repo.images[f"{parsed.repository}/dockerImages/{package_id}@{previous}"]
                    old.tags = [t for t in old.tags if t != tag]
                    old.update_time = stamp
                tags[tag] = digest
                if tag not in image.tags:
                    image.tags = list(image.tags) + [tag]
            image.update_time = stamp
            return clone(image)

    def observe_build(self, build) -> None:
        """Called with every build update: a successful build has pushed its ``images``, with
        the digests its ``results.images`` report (a build republished later pushes nothing new)."""
        if build.status.name != "SUCCESS":
            return
        for built in build.results.images:
            if parse_ref(built.name) is not None:
                self.push(built.name, built.digest)

    def resolve(self, ref: str) -> HeldImage | None:
        """The image an Artifact Registry reference (``...:TAG`` or ``...@sha256:``) names, as
        Cloud Run resolves it when it deploys; None when the registry does not hold it."""
        parsed = parse_ref(ref)
        if parsed is None:
            return None
        package_id = quote(parsed.image, safe="")
        with self._lock:
            repo = self._repos.get(parsed.repository)
            if repo is None:
                return None
            # With both a tag and a digest, the digest decides (as docker pulls it).
            digest = parsed.digest or repo.tags.get(package_id, {}).get(parsed.tag or "latest", "")
            if not digest or f"{parsed.repository}/dockerImages/{package_id}@{digest}" not in repo.images:
                return None
        tree = self.tree_of(digest)
        return HeldImage(ref, digest, tree if tree is not None and tree.is_dir() else None)

    def tree_of(self, digest: str) -> Path | None:
        """Where the source tree of the image with ``digest`` is kept (it may not exist)."""
        if self.images_dir is None:
            return None
        return self.images_dir / digest.removeprefix("sha256:")

    def images(self) -> list[DockerImage]:
        with self._lock:
            return [clone(i) for repo in self._repos.values() for i in repo.images.values()]

    # -- RPCs ----------------------------------------------------------------------------
    def list_docker_images(self, request: ListDockerImagesRequest) -> ListDockerImagesResponse:
        if not _REPO.match(request.parent):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid parent {request.parent!r}")
        with self._lock:
            images = [clone(i) for i in self._repo(request.parent).images.values()]
        if request.order_by:
            order = _ORDER.match(request.order_by)
            if not order:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"stand-in cannot order by {request.order_by!r}")
            images.sort(key=lambda i: getattr(i, order[1]), reverse=order[3] == "desc")
        page, token = _page(images, request.page_size, request.page_token)
        return ListDockerImagesResponse(docker_images=page, next_page_token=token)

    def get_docker_image(self, request: GetDockerImageRequest) -> DockerImage:
        repository = request.name.split("/dockerImages/", 1)[0]
        with self._lock:
            image = self._repo(repository).images.get(request.name)
            if image is None:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"Requested entity was not found: {request.name}")
            return clone(image)

    def list_tags(self, request: ListTagsRequest) -> ListTagsResponse:
        match = _PACKAGE.match(request.parent)
        if not match:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid parent {request.parent!r}")
        with self._lock:
            tags = dict(self._repo(match[1]).tags.get(match[2], {}))
        found = [_tag(request.parent, name, digest) for name, digest in tags.items()]
        if request.filter:
            term = _FILTER.match(request.filter)
            if not term:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"stand-in cannot parse filter {request.filter!r}")
            key, pattern = term[1].lower(), term[2].lower()  # filter rules are case insensitive
            found = [t for t in found if fnmatch.fnmatchcase(getattr(t, key).lower(), pattern)]
        page, token = _page(found, request.page_size, request.page_token)
        return ListTagsResponse(tags=page, next_page_token=token)

    def get_tag(self, request: GetTagRequest) -> Tag:
        package, _, tag_id = request.name.rpartition("/tags/")
        match = _PACKAGE.match(package)
        if not match or not tag_id:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid tag name {request.name!r}")
        with self._lock:
            digest = self._repo(match[1]).tags.get(match[2], {}).get(unquote(tag_id))
        if digest is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"Requested entity was not found: {request.name}")
        return _tag(package, unquote(tag_id), digest)

    def _repo(self, name: str) -> _Repository:
        """The repository; like the real API, one never pushed to does not exist (the caller holds the lock)."""
        repo = self._repos.get(name)
        if repo is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"Requested entity was not found: {name}")
        return repo


def _tag(package: str, name: str, digest: str) -> Tag:
    return Tag(name=f"{package}/tags/{name}", version=f"{package}/versions/{digest}")


def _page(items: list, page_size: int, page_token: str) -> tuple[list, str]:
    try:
        start = int(page_token or 0)
    except ValueError:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid page token {page_token!r}") from None
    size = page_size or 100
    end = start + size
    return items[start:end], str(end) if end < len(items) else ""
