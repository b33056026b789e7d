"""`python -m shared.chaos`: the path the release-tools image runs (deploy/release-tools/Dockerfile,
pipelines/noesis2.yaml stage 10a). The code lives in shared/domain/chaos.py; this name stays so
that images built before the move keep working with pipelines written after it."""
from shared.domain.chaos import *  # noqa: F401,F403
from shared.domain.chaos import main

if __name__ == "__main__":
    raise SystemExit(main())
