"""The layer order, read from the source: domain < app < adapters < ui/entry points.

Every module's imports are read with `ast` (shared/testing/code_metrics.py), nothing is imported.
A module may import its own layer and the layers below it; `shared/testing`, `local/`, `bench/`
and `deploy/` sit outside the order. No two of our modules may import each other, directly or
round a ring, not even through an import inside a function. An import inside a function is
allowed only where the list below names why: cold start (a function pays every module-level
import of its process on each cold start; tests/unit/test_cold_start_imports.py keeps each path
to the clients it uses).
"""
from __future__ import annotations

from shared.testing import code_metrics
from shared.testing.code_metrics import Import

COLD_START = "cold start: each entry point loads only the clients and modules its path uses"
# Modules whose functions may import anything, and why.
INSIDE_FUNCTIONS_ALLOWED = {
    "shared.bootstrap": COLD_START + " (the composition root wires per path)",
    "functions.main": COLD_START + " (one module holds every function the plan deploys)",
}
# Libraries that any adapter or UI function may import where it calls them, and why.
LIBRARIES_ALLOWED_INSIDE_FUNCTIONS = {
    "google": COLD_START + ": a Google client library costs 20-300 ms to import",
    "grpc": COLD_START + ": only the local stand-in's channels need it",
    "requests": COLD_START + ": only relctl's operator calls and GitHub's compare need it",
    "jinja2": COLD_START + ": only the HTML pages need it",
    "markdown_it": COLD_START + ": only the release notes' HTML needs it",
    "markupsafe": COLD_START + ": only the release notes' HTML needs it",
}
# One import in one module, and why.
PAIRS_ALLOWED_INSIDE_FUNCTIONS = {
    ("shared.domain.pipeline", "yaml"): COLD_START + ": dispatch reads stored pipelines (JSON); only a pipeline "
                                        "file needs PyYAML",
    ("shared.ui.cli", "importlib.metadata"): COLD_START + ": 0.1 s of relctl's start-up, for `--version` only",
    ("shared.ui.cli", "concurrent.futures"): COLD_START + ": 0.1 s of relctl's start-up, for an error's message only",
    ("shared.ui.cli", "shared.adapters.executors.preflight"): COLD_START + ": it imports google.auth, which only "
                                                              "`relctl preflight` needs",
    ("shared.ui.cli_context", "shared.adapters.firestore_store"): COLD_START + ": it imports the Firestore client, "
                                                                  "which `relctl validate` and `--help` do not need",
    ("shared.ui.cli_context", "shared.adapters.firestore_github_reports"): COLD_START + ": as firestore_store, "
                                                                           "whose module it imports",
}


def _allowed_inside(imp: Import) -> bool:
    if imp.source in INSIDE_FUNCTIONS_ALLOWED or (imp.source, imp.target) in PAIRS_ALLOWED_INSIDE_FUNCTIONS:
        return True
    layer = code_metrics.layer(imp.source)
    return layer is not None and layer >= 2 and imp.target.split(".")[0] in LIBRARIES_ALLOWED_INSIDE_FUNCTIONS


def _where(imp: Import) -> str:
    return f"{imp.source}:{imp.line} imports {imp.target}" + (f" inside {imp.inside_function}()" if imp.inside_function else "")


def test_no_module_imports_a_layer_above_its_own():
    bad = code_metrics.upward(code_metrics.imports())
    assert not bad, "upward imports (domain < app < adapters < ui/entry points):\n" + "\n".join(
        f"{_where(i)} ({code_metrics.LAYER_NAMES[code_metrics.layer(i.source)]} -> "
        f"{code_metrics.LAYER_NAMES[code_metrics.layer(i.target)]})" for i in bad)


def test_the_domain_imports_no_client_library():
    bad = [i for i in code_metrics.imports() if code_metrics.layer(i.source) == 0
           and i.target.split(".")[0] in LIBRARIES_ALLOWED_INSIDE_FUNCTIONS]
    assert not bad, "\n".join(map(_where, bad))


def test_no_import_circle():
    rings = code_metrics.circles(code_metrics.imports())
    assert not rings, "import circles: " + "; ".join(" <-> ".join(ring) for ring in rings)


def test_imports_inside_functions_only_where_the_allow_list_names_why():
    bad = [i for i in code_metrics.imports()
           if i.inside_function and code_metrics.layer(i.source) is not None and not _allowed_inside(i)]
    assert not bad, "imports inside functions without a reason (move them to the top):\n" + "\n".join(map(_where, bad))


def test_the_layer_reader_sees_an_upward_import_a_circle_and_a_function_import(tmp_path):
    """The checks above would pass on a reader that finds nothing: feed it a tree that breaks each rule."""
    for folder in ("shared/domain", "shared/app", "shared/ui"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "shared/__init__.py").write_text("")
    (tmp_path / "shared/domain/a.py").write_text("from shared.ui import page\nfrom shared.domain import b\n")
    (tmp_path / "shared/domain/b.py").write_text("def f():\n    from shared.domain import a\n")
    (tmp_path / "shared/ui/page.py").write_text("")
    found = code_metrics.imports(tmp_path)
    assert [(i.source, i.target) for i in code_metrics.upward(found)] == [("shared.domain.a", "shared.ui.page")]
    assert code_metrics.circles(found, set(code_metrics.module_files(tmp_path))) == [["shared.domain.a", "shared.domain.b"]]
    assert [(i.source, i.inside_function) for i in found if i.inside_function] == [("shared.domain.b", "f")]


def test_only_the_wire_and_store_modules_read_a_stage_results_keys():
    """Everyone else reads fields of the types in shared/domain/stage_results.py."""
    reads = code_metrics.result_key_reads()
    assert not reads, "key reads of a stage result outside " + ", ".join(code_metrics.RESULT_READERS) + ":\n" + \
        "\n".join(reads)


def test_the_result_reader_sees_a_get_and_a_subscript(tmp_path):
    (tmp_path / "shared/ui").mkdir(parents=True)
    (tmp_path / "shared/ui/view.py").write_text(
        "def f(st):\n    return st.result.get('url'), st.result['tests'], st.other['x']\n"
        "def g(st):\n    result = st.result\n    return result.get('url')\n"
        "def h(st):\n    for result in [a.result for a in st.history]:\n        result['x']\n")
    assert sorted(line.split(":")[1] for line in code_metrics.result_key_reads(tmp_path)) == ["2", "2", "5", "8"]


def test_print_the_figures_of_the_closing_note(capsys):
    figures = code_metrics.summary()
    with capsys.disabled():
        print("\ncode figures:", figures)
    assert figures["upward_imports"] == 0
