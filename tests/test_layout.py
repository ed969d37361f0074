"""The layout shows the design: packages depend on each other in one direction only.

Read from the source (no imports run): every ``from profiles.X`` and ``import profiles.X``
of every module, compacted to its package (``profiles.state``, ``profiles.store``, ...). The
graph between packages must have no cycle, and the lower layers must not reach up to the
workspace, the store, the HTTP service, the CLI or the driver.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "profiles"
# What a layer may not import: nothing below the store reaches up to it, or beyond.
UPPER = {"profiles.store", "profiles.http", "profiles.cli", "profiles.maintenance", "driver"}
LOWER = {
    "profiles.errors",
    "profiles.models",
    "profiles.fsutil",
    "profiles.validation",
    "profiles.redact",
    "profiles.state",
    "profiles.blobs",
    "profiles.catalog",
    "profiles.service",
    "profiles.engine_cache",
    "profiles.workspace",
}


def _group(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "profiles" else parts[0]


def _imports() -> dict[str, set[str]]:
    """Package -> the packages its modules import (besides itself)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        here = _group(module)
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.split(".")[0] in ("profiles", "driver") and _group(name) != here:
                    graph[here].add(_group(name))
    return graph


def test_no_cycle_between_packages() -> None:
    graph = _imports()
    graph.pop("profiles", None)  # the public face re-exports from everywhere
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == "profiles":
                continue
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_lower_layers_do_not_reach_up() -> None:
    graph = _imports()
    for lower in LOWER:
        upward = graph.get(lower, set()) & (UPPER | {"profiles"})
        assert not upward, f"{lower} imports {sorted(upward)}"
