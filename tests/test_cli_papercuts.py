"""Small CLI conventions: --version, plain flag help, ops parameters, readable provenance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import blocklin as bl
from blocklin._cli import app


def test_version() -> None:
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout == f"blocklin {bl.__version__}\n"


@pytest.mark.parametrize("command", ["run", "ingest", "verify", "refresh"])
def test_flags_show_no_type(command: str) -> None:
    res = CliRunner().invoke(app, [command, "--help"], terminal_width=120)
    assert res.exit_code == 0 and "--json" in res.stdout
    assert "<bool>" not in res.stdout and "Show this message" in res.stdout


def test_ops_lists_parameters_in_text() -> None:
    res = CliRunner().invoke(app, ["ops"])
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("randomized_svd "))
    assert "k (required)" in lines[at + 1] and "oversample=10" in lines[at + 1]
    at = next(i for i, line in enumerate(lines) if line.startswith("gram "))
    assert lines[at + 1].split() == ["params:", "none"]


def test_inspect_prints_provenance_one_field_a_line(tmp_path: Path) -> None:
    bl.from_array(np.arange(12.0).reshape(4, 3), str(tmp_path / "a.zarr"))
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "a.zarr")])
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    at = lines.index("  provenance")
    fields = dict(line.strip().split(": ", 1) for line in lines[at + 1:])
    assert fields["operator"] == "from_array" and fields["version"] == bl.__version__
    assert max(len(line) for line in lines) < 100


def test_spark_without_pyspark_says_which_extra(tmp_path: Path) -> None:
    import subprocess
    import sys

    bl.from_array(np.ones((10, 2)), str(tmp_path / "a.zarr"))
    code = ("import sys; sys.modules['pyspark'] = None\n"  # as if pyspark were not installed
            "import blocklin as bl\n"
            f"bl.ops.gram(bl.open({str(tmp_path / 'a.zarr')!r})).compute(executor='spark', "
            f"work_dir={str(tmp_path / 'w')!r})\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("blocklin.errors.ConfigError") and "blocklin[spark]" in last
