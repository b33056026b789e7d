"""A build's /workspace and its Docker daemon, as Cloud Build gives each build a fresh one.

* No ``source``: the workspace is an empty folder. A build with ``source.gitSource`` starts
  with that revision checked out. Cloud Build documents both: the Build proto's ``source`` is
  "The location of the source files to build", and GitSource.revision "The revision to fetch
  from the Git repository such as a branch, a tag, a commit SHA, or any Git ref"
  (https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds#gitsource).
  The stand-in fetches only from repositories on this machine (a path or a file:// URL).
* Every build starts with an empty Docker cache ("Each build step is run with its container
  attached to a local Docker network named cloudbuild" and images exist only in this build's
  daemon; https://cloud.google.com/build/docs/build-config-file-schema#images: "The images
  field ... specifies one or more Linux Docker images to be pushed by Cloud Build ..."): an
  image in ``images`` is pushed only when a step of this build built it, else the build
  fails (Build proto: "If any of the images fail to be pushed, the build status is marked
  FAILURE"). A step builds an image when it is the docker builder running ``build -t REF``,
  or, for a step that runs as a local process, when it writes REF as a line to the file
  named by ``$STANDIN_DOCKER_IMAGES`` (the stand-in's view of the daemon).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

DOCKER_BUILDERS = ("gcr.io/cloud-builders/docker", "docker")
IMAGES_FILE_ENV = "STANDIN_DOCKER_IMAGES"


class BuildWorkspace:
    def __init__(self, root: Path, build_id: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"workspace-{build_id[:8]}-", dir=root))
        self._daemon = Path(tempfile.mkdtemp(prefix=f"docker-{build_id[:8]}-", dir=root))
        self.images_file = self._daemon / "images"
        self.images_file.touch()

    def fetch_git(self, url: str, revision: str) -> str:
        """Check ``revision`` of the repository at ``url`` out into the workspace; returns
        an error message, or "" when it worked."""
        repo = url.removeprefix("file://")
        if "://" in repo or not Path(repo).exists():
            return f"failed to fetch source: the stand-in fetches only local repositories, not {url!r}"
        archive = subprocess.run(["git", "-C", repo, "archive", "--format=tar", revision or "HEAD"],
                                 capture_output=True)
        if archive.returncode != 0:
            return f"failed to fetch source: revision {revision!r} of {url}: {archive.stderr.decode()[-300:].strip()}"
        subprocess.run(["tar", "-x", "-C", str(self.path)], input=archive.stdout, check=True)
        return ""

    def record_docker_step(self, name: str, args: list[str]) -> str:
        """A successful docker builder step: ``build -t REF`` adds REF to this build's daemon;
        ``push REF`` needs REF there. Returns an error message, or ""."""
        if name.split(":", 1)[0] not in DOCKER_BUILDERS or not args:
            return ""
        if args[0] == "build":
            refs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-t", "--tag")]
            refs += [a.split("=", 1)[1] for a in args if a.startswith("--tag=")]
            with self.images_file.open("a") as out:
                out.writelines(f"{ref}\n" for ref in refs)
        if args[0] == "push" and len(args) > 1 and args[-1] not in self.built():
            return f"An image does not exist locally with the tag: {args[-1].rsplit(':', 1)[0]}"
        return ""

    def built(self) -> set[str]:
        return {line.strip() for line in self.images_file.read_text().splitlines() if line.strip()}

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        shutil.rmtree(self._daemon, ignore_errors=True)
