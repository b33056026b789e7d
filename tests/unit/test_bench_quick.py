"""The benchmarks cannot rot unnoticed: CI runs each one at a small scale (`make bench-quick`).

These checks need no server: every benchmark `make bench` runs has the quick path CI calls,
every benchmark module is in that list, and the synthetic pipelines the benchmarks build
still pass today's definition rules (three benchmarks crashed on the order rules once).
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from bench import run_all
from bench.common import flat_pipeline, mixed_pipeline
from shared.domain.gate import LOCKED_ENVIRONMENTS

BENCH_DIR = Path(run_all.__file__).parent
NOT_BENCHMARKS = {"__init__", "common", "run_all"}


@pytest.mark.parametrize("module_name", [name for name, _ in run_all.BENCHMARKS])
def test_every_benchmark_has_a_quick_path(module_name):
    run = importlib.import_module(module_name).run
    quick = inspect.signature(run).parameters.get("quick")
    assert quick is not None, f"{module_name}.run has no `quick` parameter: `make bench-quick` cannot run it small"
    assert quick.default is False, f"{module_name}.run must run in full unless asked (`make bench`)"
    hosts = next(iter(inspect.signature(run).parameters))
    assert hosts == "hosts", f"{module_name}.run must take the emulators' hosts first, as run_all passes them"


def test_every_benchmark_module_is_run_by_run_all():
    modules = {f"bench.{p.stem}" for p in BENCH_DIR.glob("*.py") if p.stem not in NOT_BENCHMARKS}
    listed = {name for name, _ in run_all.BENCHMARKS}
    assert modules - listed == set(), "a benchmark `make bench` (and CI's quick run) would never run"
    assert listed - modules == set()


@pytest.mark.parametrize("build", [flat_pipeline, mixed_pipeline])
def test_the_bench_pipelines_pass_the_definition_rules(build):
    pipeline = build()  # parse_pipeline raises Invalid if the order rules refuse it
    assert len(pipeline.stages) == 15
    locked = [s.id for s in pipeline.stages if s.environment in LOCKED_ENVIRONMENTS]
    assert locked == [], "a locked environment would add the locks' work to the dispatcher's figures"
