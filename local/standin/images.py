"""Images as things: what a build pushes, and what a Cloud Run template's image runs.

A build that pushes an image (Build ``images``) keeps the source tree its steps left in
/workspace as that image: the digest is the sha256 of a reproducible tar of the tree (sorted
names, zeroed times and owners), so the same commit built twice is the same image, and the
tree is kept under the registry's ``images_dir/<hex>``. A Cloud Run revision or job
execution whose template names the image runs its command in that tree, so what runs is the
code of the image, not the stand-in's own checkout.

Which images run how (``locate``):
* a name in ``StandInConfig.local_images`` runs in the stand-in's workspace (seeded services
  and jobs that predate any build, and tests that need no image);
* an Artifact Registry reference the registry holds with a tree runs in that tree;
* one it holds without a tree (``StandIn.push_image``) or any other registry follows the
  outcome rules, as before;
* an Artifact Registry reference the registry does not hold is refused, as Cloud Run refuses
  it: "Revision '...' is not ready and cannot serve traffic. Image '...' not found."
  (gcloud run deploy's answer), reason ``CONTAINER_MISSING`` ("The container image path is
  incorrect.", Cloud Run Admin API v2 Condition.CommonReason). Cloud Run resolves the image
  when it deploys ("If you deploy from a container image tag, it will be resolved to a digest",
  https://cloud.google.com/artifact-registry/docs/integrate-cloud-run), so a job's template
  is checked when the job is created or updated.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from local.standin.artifact_registry import ArtifactRegistryService, parse_ref
from local.standin.common import image_is_local

SKIPPED = {"__pycache__", ".git", ".pytest_cache", ".ruff_cache"}


def archive_tree(root: Path) -> bytes:
    """A reproducible tar of ``root``: the same files give the same bytes, hence the same digest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if SKIPPED & set(relative.parts) or path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            info = tar.gettarinfo(str(path), arcname=relative.as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_file():
                with path.open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def keep_image(images_dir: Path, root: Path) -> str:
    """Archive ``root`` as an image; returns its ``sha256:`` digest. The tree is kept under
    ``images_dir/<hex>`` (once: the same digest is the same content)."""
    archive = archive_tree(root)
    digest = "sha256:" + hashlib.sha256(archive).hexdigest()
    target = images_dir / digest.removeprefix("sha256:")
    if not target.is_dir():
        images_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="image-", dir=images_dir))
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(staging, filter="data")
        try:
            staging.rename(target)
        except OSError:  # another build of the same content got there first
            shutil.rmtree(staging, ignore_errors=True)
    return digest


class ImageNotFound(Exception):
    """A template names an Artifact Registry image the registry does not hold."""

    def __init__(self, image: str) -> None:
        super().__init__(f"Image '{image}' not found.")
        self.image = image


@dataclass(frozen=True)
class Located:
    """How a template's image runs here: in ``root`` (a folder), or by the outcome rules (None)."""

    root: Path | None
    digest: str = ""


def locate(image: str, local_images, workspace: Path, registry: ArtifactRegistryService | None) -> Located:
    """Where the code of ``image`` is; raises ImageNotFound as Cloud Run would."""
    if image_is_local(image, local_images):
        return Located(workspace)
    if registry is None or parse_ref(image) is None:
        return Located(None)
    held = registry.resolve(image)
    if held is None:
        raise ImageNotFound(image)
    return Located(held.tree, held.digest)
