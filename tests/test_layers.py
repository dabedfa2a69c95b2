"""Imports flow one way: errors/types -> storage -> plan -> executors -> ops -> ml -> pipelines -> CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "blocklin"
ORDER = ["storage", "plan", "executors", "ops", "ml", "pipelines", "_cli"]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize("layer", ORDER[:-1])
def test_lower_layers_never_import_higher_ones(layer: str) -> None:
    higher = {f"blocklin.{name}" for name in ORDER[ORDER.index(layer) + 1:]}
    for path in (SRC / layer).rglob("*.py"):
        bad = {m for m in _imports(path) if any(m == h or m.startswith(h + ".") for h in higher)}
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def test_importing_blocklin_does_not_import_pyspark() -> None:
    code = "import sys, blocklin, blocklin.ml, blocklin.pipelines; print('pyspark' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
