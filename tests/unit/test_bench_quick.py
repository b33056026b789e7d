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
from shared.domain.gate_run import LOCKED_ENVIRONMENTS

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


def test_another_checkout_is_measured_in_turn_with_this_one(tmp_path):
    from bench.common import alternate

    order = []
    before, after = alternate(tmp_path / "b", tmp_path / "a", lambda root: order.append(root.name) or root.name, 3)
    assert order == ["b", "a", "b", "a", "b", "a"], "one sample of each in turn, so both see the same load"
    assert (before, after) == (["b"] * 3, ["a"] * 3)


def test_a_checkout_run_gives_its_last_printed_line_as_json_or_none_when_it_fails(tmp_path, capsys):
    from bench.common import in_checkout

    (tmp_path / "marker.py").write_text("WHERE = 'the other checkout'\n")
    assert in_checkout(tmp_path, "import json, marker; print('noise'); print(json.dumps(marker.WHERE))") == \
        "the other checkout", "it runs on that checkout's code (its cwd and PYTHONPATH)"
    assert in_checkout(tmp_path, "raise SystemExit('no such path here')") is None
    assert "no such path here" in capsys.readouterr().err, "a failed run says why"
