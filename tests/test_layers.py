"""The package's import structure: layers import only downwards, no import cycle at import time, files stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_prophrl"
# Applications over the library, lowest first: each may import the library and the layers before it, never after.
# Every other subpackage and root module is the library (models, datamodules, envs, rl, modules, callbacks, ...).
APPLICATIONS = ("recipes", "demo", "pipeline", "studies", "cli", "data_cli")
MAX_LINES = 400
# Files allowed past MAX_LINES, with why; the test fails when one of them shrinks below it (drop it from here then).
LONG_FILES = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The ``lightning_prophrl`` modules ``path`` imports (inside functions too unless ``top_level_only``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_prophrl"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lightning_prophrl"))
    return found


def _layer(module: str) -> int:
    """0 for the library, 1 + the index in ``APPLICATIONS`` for an application."""
    top = module.split(".")[1] if "." in module else ""
    return 1 + APPLICATIONS.index(top) if top in APPLICATIONS else 0


def test_no_module_imports_a_layer_above_its_own():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        for target in _imports(path, top_level_only=False) & modules.keys():
            if _layer(target) > _layer(name):
                upward.append(f"{name} imports {target}")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycle_at_import_time():
    modules = _modules()
    graph = {
        name: sorted(_imports(path, top_level_only=True) & modules.keys() - {name}) for name, path in modules.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_stay_around_400_lines(path):
    rel = str(path.relative_to(PACKAGE))
    lines = len(path.read_text().splitlines())
    if rel in LONG_FILES:
        assert lines > MAX_LINES, f"{rel} has {lines} lines now: remove it from LONG_FILES"
    else:
        assert lines <= MAX_LINES, f"{rel} has {lines} lines (> {MAX_LINES}): split it by responsibility"
