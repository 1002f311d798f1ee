"""The package's shape, read from its source: the stages in one folder, no stage importing another, no
import cycle, short modules and short functions.

Imports are read with `ast` (nothing is imported). An import inside a function counts like any other;
only imports under `if TYPE_CHECKING:` are left out, as they never run. Importing `a.b.c` also imports
the package `a.b`, whose `__init__` runs first, so that edge counts too (unless the importer lives
inside `a.b`, whose `__init__` is then already running).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "pipelines"
STAGE_FOLDER = PACKAGE / "stages"
STAGE_NAMES = {"ingest", "features", "tune", "train", "promote", "score", "evaluate", "backtest", "cycle"}
MAX_FUNCTION_LINES = 40
MAX_MODULE_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def runtime_imports(tree: ast.Module, module: str) -> set[str]:
    """The `pipelines` modules `module` imports when it runs (TYPE_CHECKING blocks excluded)."""
    skipped = {id(n) for node in ast.walk(tree) if _is_type_checking(node) for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else _relative(module, node.module, node.level)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("pipelines")}


def _relative(module: str, name: str, level: int) -> str:
    return ".".join([*module.split(".")[:-level], name])


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, including the parent packages an import runs."""
    trees = sources()
    graph: dict[str, set[str]] = {}
    for module, tree in trees.items():
        targets = {t for t in runtime_imports(tree, module) if t in trees}
        parents = {".".join(t.split(".")[:i]) for t in targets for i in range(2, t.count(".") + 1)}
        enclosing = {p for p in parents if module.startswith(p + ".")}
        graph[module] = (targets | (parents & set(trees))) - enclosing - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = "done", stack.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def is_stage(module: str) -> bool:
    return module.startswith("pipelines.stages.")


def test_the_stages_live_in_their_folder() -> None:
    found = {p.stem for p in STAGE_FOLDER.glob("*.py")} - {"__init__"}
    assert found == STAGE_NAMES, f"pipelines/stages/ holds {sorted(found)}"
    outside = sorted(STAGE_NAMES & {p.stem for p in PACKAGE.glob("*.py")})
    assert not outside, f"stage modules outside pipelines/stages/: {outside}"


def test_no_stage_imports_another_stage() -> None:
    graph = import_graph()
    assert {f"pipelines.stages.{name}" for name in STAGE_NAMES} <= set(graph), "a stage module is gone"
    crossings = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        if is_stage(module)
        for target in targets
        if is_stage(target)
    ]
    assert not crossings, "; ".join(crossings)


def test_no_import_cycle_among_pipelines_modules() -> None:
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_the_checks_see_a_crossing_and_a_cycle() -> None:
    """The two checks above can fail: they catch a stage import and a cycle written on purpose."""
    tree = ast.parse("from pipelines.stages import tune\nfrom pipelines.stages.train import main\n")
    found = runtime_imports(tree, "pipelines.stages.score")
    assert {"pipelines.stages.tune", "pipelines.stages.train"} <= found
    assert is_stage("pipelines.stages.tune") and not is_stage("pipelines.stages")
    guarded = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipelines.stages import tune\n"
    )
    assert runtime_imports(guarded, "pipelines.stages.score") == set()
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def function_lengths() -> list[tuple[str, int]]:
    """(path:line name, lines) of every function, less its docstring (a command's docstring is its manual)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if ast.get_docstring(node, clean=False) is not None and len(node.body) > 1:
                    lines -= node.body[0].end_lineno - node.body[0].lineno + 1
                found.append((f"{path.relative_to(REPO)}:{node.lineno} {node.name}", lines))
    return found


def test_no_function_is_over_40_lines() -> None:
    lengths = function_lengths()
    assert len(lengths) > 100, "the scan found too few functions"
    long = [f"{where} has {n} lines" for where, n in lengths if n > MAX_FUNCTION_LINES]
    assert not long, "; ".join(long)


def test_no_module_is_over_500_lines() -> None:
    sizes = {path.relative_to(REPO): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    long = [f"{path} has {n} lines" for path, n in sorted(sizes.items()) if n > MAX_MODULE_LINES]
    assert not long, "; ".join(long)


@pytest.mark.parametrize("name", sorted(STAGE_NAMES - {"backtest"}))
def test_each_stage_module_has_a_main(name: str) -> None:
    tree = ast.parse((STAGE_FOLDER / f"{name}.py").read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
