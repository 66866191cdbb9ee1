"""The import graph: data flows one way. Each package may import only packages in
layers below it (never above, never sideways between engines), checked on every
``import`` statement in the source, deferred imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bnnctl"

#: Lowest first. A unit may import itself and any unit of a lower layer.
LAYERS: list[set[str]] = [
    {"errors", "version"},
    {"arch", "data", "device", "scheduler", "threads"},
    {"store"},
    {"evaluate", "symmetry"},
    {"samplers"},
    {"engines", "stats", "export"},
    {"cli", "testing"},
    {"__init__", "__main__"},
]
LAYER_OF = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str:
    """``bnnctl.engines.train`` -> ``engines``; the package root -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> list[str]:
    """Every bnnctl module ``path`` imports, at any depth of the file."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("bnnctl")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bnnctl"):
            found.append(node.module)  # `from pkg import mod` imports pkg.mod too
            found += [f"{node.module}.{a.name}" for a in node.names]
    return found


def sources() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out.append((".".join(rel.parts), path))
    return out


@pytest.mark.parametrize("module,path", sources(), ids=[m for m, _ in sources()])
def test_no_import_runs_up_or_sideways(module, path):
    here = unit_of(module)
    assert here in LAYER_OF, f"{module}: package {here!r} is in no layer of this test"
    for target in imports(path):
        there = unit_of(target)
        if there == here:
            continue
        assert LAYER_OF[there] < LAYER_OF[here], f"{module} imports {target}: an arrow up"
    if here == "engines":  # engines never import each other (population is shared support)
        mine = module.split(".")[-1]
        others = {
            t.split(".")[2]
            for t in imports(path)
            if t.startswith("bnnctl.engines.") and t.count(".") >= 2
        }
        assert others <= {mine, "population", "config"}, f"{module} imports engines {others}"


def test_every_unit_is_placed():
    units = {unit_of(m) for m, _ in sources()}
    assert units <= set(LAYER_OF), units - set(LAYER_OF)
