"""What the layer test reads from the source: every module's imports, by `ast`, without importing it.

Also the figures the closing note of issue 20 compares (longest module and class in `shared/`,
upward imports, circles, imports inside functions): `python -m shared.testing.code_metrics`.
"""
from __future__ import annotations

import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# domain < app < adapters < ui/entry points; a module may import its own layer and those below.
LAYERS = (
    ("shared.domain", 0), ("shared.app", 1), ("shared.adapters", 2), ("shared.ui", 3),
    ("shared.bootstrap", 3), ("shared.chaos", 3), ("functions", 3),
)
LAYER_NAMES = {0: "domain", 1: "app", 2: "adapters", 3: "ui/entry points"}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a submodule when `from package import submodule`)
    line: int
    inside_function: str | None  # the enclosing function's name, None at module level
    type_checking: bool  # under `if TYPE_CHECKING:`: never executed


def module_files(root: Path = REPO_ROOT) -> dict[str, Path]:
    files = sorted(root.glob("shared/**/*.py")) + sorted(root.glob("functions/*.py"))
    named = {}
    for path in files:
        parts = path.relative_to(root).with_suffix("").parts
        named[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return named


def layer(module: str) -> int | None:
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None  # shared.testing, local/, bench/, deploy/: outside the layers


def _targets(node: ast.Import | ast.ImportFrom, source: str, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from . import x
        package = source.split(".")[: -node.level] if source in known else source.split(".")
        base = ".".join(package + ([base] if base else []))
    found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    return found or [base]


def imports(root: Path = REPO_ROOT) -> list[Import]:
    files = module_files(root)
    known = set(files)
    found: list[Import] = []
    for source, path in files.items():
        tree = ast.parse(path.read_text(), str(path))

        def visit(node: ast.AST, function: str | None, type_checking: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, source, known):
                        found.append(Import(source, target, child.lineno, function, type_checking))
                elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    visit(child, function or getattr(child, "name", "<lambda>"), type_checking)
                elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    visit(child, function, True)
                else:
                    visit(child, function, type_checking)

        visit(tree, None, False)
    return found


def upward(found: list[Import]) -> list[Import]:
    bad = []
    for imp in found:
        mine, theirs = layer(imp.source), layer(imp.target)
        if mine is not None and theirs is not None and theirs > mine:
            bad.append(imp)
    return bad


def circles(found: list[Import], known: set[str] | None = None) -> list[list[str]]:
    """Strongly connected groups of our modules (Tarjan), counting every import, even one inside a function."""
    graph: dict[str, set[str]] = {}
    known = set(module_files()) if known is None else known
    for imp in found:
        if imp.target in known and imp.target != imp.source:
            graph.setdefault(imp.source, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                group.append(item)
                if item == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


# The wire/store modules: the only ones that read a stage result's keys (shared/domain/stage_results.py).
RESULT_READERS = ("shared.domain.stage_results", "shared.domain.state", "shared.domain.wire",
                  "shared.adapters.firestore_store")


def _is_result(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "result"


def result_key_reads(root: Path = REPO_ROOT) -> list[str]:
    """``x.result.get(...)`` and ``x.result[...]`` outside the wire/store modules: a key read of a
    stage result (a StageState's, or a stage.finished event's, which becomes it)."""
    found = []
    for name, path in module_files(root).items():
        if name in RESULT_READERS or name.startswith("shared.testing"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        # Names that hold a result: ``result = st.result``, ``for result in [a.result for a in ...]``.
        aliases = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and _is_result(node.value)
                   for t in node.targets if isinstance(t, ast.Name)}
        aliases |= {node.target.id for node in ast.walk(tree) if isinstance(node, (ast.For, ast.comprehension))
                    and isinstance(node.target, ast.Name) and isinstance(node.iter, (ast.List, ast.ListComp, ast.BinOp))
                    and any(_is_result(n) for n in ast.walk(node.iter))}
        for node in ast.walk(tree):
            target = None
            if isinstance(node, ast.Subscript):
                target = node.value
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
                target = node.func.value
            if _is_result(target) or (isinstance(target, ast.Name) and target.id in aliases):
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def longest(root: Path = REPO_ROOT) -> dict[str, object]:
    """The longest module and class under shared/ (lines), the figures the issue's closing note compares."""
    module, module_lines, cls, cls_lines = "", 0, "", 0
    for name, path in module_files(root).items():
        if not name.startswith("shared."):
            continue
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > module_lines:
            module, module_lines = name, lines
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > cls_lines:
                cls, cls_lines = f"{name}.{node.name}", node.end_lineno - node.lineno + 1
    return {"longest_module": f"{module} ({module_lines})", "longest_class": f"{cls} ({cls_lines})"}


def summary(root: Path = REPO_ROOT) -> dict[str, object]:
    found = imports(root)
    inside = [i for i in found if i.inside_function]
    return {
        **longest(root),
        "upward_imports": len(upward(found)),
        "result_key_reads_outside_the_store": len(result_key_reads(root)),
        "circles": circles(found, set(module_files(root))),
        "imports_inside_functions": len(inside),
        "of_which_our_modules": len([i for i in inside if i.target.split(".")[0] in ("shared", "functions")]),
    }


if __name__ == "__main__":
    json.dump(summary(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT), sys.stdout, indent=1)
    print()
