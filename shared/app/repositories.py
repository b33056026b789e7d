"""Which pipeline a push releases: each repository maps to exactly one pipeline file.

The mapping is configuration: every pipeline file on_push knows (``RELEASE_PIPELINE_FILE``
and ``RELEASE_PIPELINE_FILES``) lists the repositories it releases under ``repositories:``.
A repository listed by two files is a setting the operator must fix (ConfigError: nothing
is started meanwhile). A push from a repository no file lists is refused with a 422 naming
it: no default pipeline, since releasing an unknown repository with another application's
stages would build the wrong source and take that application's locks.
"""
from __future__ import annotations

from typing import Iterable

from shared.domain.errors import ConfigError, WebhookRejected
from shared.domain.pipeline import Pipeline, load_pipeline


class RepositoryMap:
    def __init__(self, pipelines: Iterable[Pipeline]):
        self.pipelines = tuple(pipelines)
        self._by_repo: dict[str, Pipeline] = {}
        for pipeline in self.pipelines:
            for repo in pipeline.repositories:
                other = self._by_repo.setdefault(repo, pipeline)
                if other is not pipeline:
                    raise ConfigError(f"repository {repo} is listed by two pipelines, {other.name!r} and "
                                      f"{pipeline.name!r}; a repository releases exactly one")

    @classmethod
    def from_files(cls, paths: Iterable[str]) -> "RepositoryMap":
        return cls(load_pipeline(p) for p in dict.fromkeys(p.strip() for p in paths if p.strip()))

    def pipeline_for(self, repo: str) -> Pipeline:
        found = self._by_repo.get(repo.casefold())
        if found is None:
            raise WebhookRejected(422, f"repository {repo} releases no pipeline: list it under 'repositories:' "
                                       "in its pipeline file (RELEASE_PIPELINE_FILE or RELEASE_PIPELINE_FILES)")
        return found
