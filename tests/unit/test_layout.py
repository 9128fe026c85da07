"""The layout keeps its promises: only the data layer reads the SQL registry, and the package
has no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import paceline

PACKAGE = Path(paceline.__file__).resolve().parent
DATA_LAYER = PACKAGE / "db"


def _modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts): path
        for path in PACKAGE.rglob("*.py")
    }


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_only_the_data_layer_reads_the_sql_registry() -> None:
    readers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if DATA_LAYER not in path.parents and "paceline.db.queries" in _imports(path)
    )
    assert readers == [], f"SQL read outside paceline.db: {readers}"


def test_the_package_has_no_import_cycle() -> None:
    modules = _modules()
    graph = {
        name: {imported for imported in _imports(path) if imported in modules}
        for name, path in modules.items()
    }
    # Depth-first search for a back edge; the message names the cycle.
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycle = [*trail[trail.index(target) :], target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
