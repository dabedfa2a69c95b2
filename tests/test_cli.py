"""Every CLI command end to end in a subprocess: the real entry point, exit codes, --json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tests.pipelines.conftest import CLI, base_spec, run_cli

SPEC = base_spec(name="cli", refresh={"input": "X", "schedule": "0 3 * * 1"})


def _ok(res: object) -> dict:  # type: ignore[type-arg]
    assert res.returncode == 0, res.stderr  # type: ignore[attr-defined]
    return json.loads(res.stdout)  # type: ignore[attr-defined]


def test_ingest_run_refresh_inspect_verify(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    t = pa.table({f"f{i}": x[:, i] for i in range(5)} | {"y": x.sum(1)})
    pq.write_table(t, tmp_path / "data.parquet", row_group_size=64)
    batch = rng.normal(size=(90, 5))
    np.save(tmp_path / "batch.npy", batch)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(SPEC))

    doc = _ok(run_cli("ingest", "data.parquet", "X.zarr", "--label", "y", "--chunk-rows",
                      "100", "--json", cwd=tmp_path))
    assert doc["shape"] == [400, 5] and doc["label"].endswith("X.label.zarr")

    dry = _ok(run_cli("run", "p.yaml", "--dry-run", "--json", cwd=tmp_path))
    assert dry["stages"][0]["tasks"] == 4 and list(dry["passes"].values()) == [1.0]
    assert not (tmp_path / "out").exists()
    text = run_cli("run", "p.yaml", "--dry-run", cwd=tmp_path).stdout
    assert "mem/task" in text and "passes over inputs" in text

    res = run_cli("run", "p.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "━" not in res.stdout and "4/4" not in res.stdout  # no progress bar off a terminal
    assert "gram: " in res.stdout and "manifest: " in res.stdout
    doc = _ok(run_cli("refresh", "p.yaml", "--append", "batch.npy", "--json", cwd=tmp_path))
    assert doc["refresh"]["outputs"] == {"gram": "incremental", "stats": "incremental"}
    full = np.vstack([x, batch])
    with np.load(tmp_path / "out" / "gram.npz") as z:
        np.testing.assert_allclose(z["value"], full.T @ full, rtol=1e-11)
    again = run_cli("refresh", "p.yaml", "--append", "batch.npy", cwd=tmp_path)
    assert again.returncode == 0 and "already applied" in again.stdout

    info = _ok(run_cli("inspect", "X.zarr", "--json", cwd=tmp_path))
    assert info["shape"] == [490, 5] and info["blocks"] == [5, 1]
    assert info["codecs"][-1] == "crc32c" and len(info["provenance"]["batches"]) == 1
    assert _ok(run_cli("verify", "X.zarr", "--json", cwd=tmp_path))["ok"] is True

    chunk = tmp_path / "X.zarr" / "c" / "2" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[10] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    res = run_cli("verify", "X.zarr", cwd=tmp_path)
    assert res.returncode == 4
    assert "corrupt c/2/0: crc32c checksum mismatch" in res.stdout
    res = run_cli("run", "p.yaml", cwd=tmp_path)  # the run meets the corrupt chunk
    assert res.returncode == 4 and "corrupt chunk 2.0" in res.stderr


def test_schema_ops_and_help() -> None:
    from typer.testing import CliRunner

    from blocklin._cli import app

    schema = _ok(run_cli("schema"))
    assert schema["properties"]["steps"]["type"] == "array"
    ops = json.loads(CliRunner().invoke(app, ["ops", "--json"]).stdout)
    assert ops["gram"]["incremental"] is True and ops["matmul"]["inputs"] == ["A", "B"]
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0 and "Exit codes" in res.stdout


def test_errors_are_one_line_and_debug_shows_traceback(tmp_path: Path) -> None:
    res = run_cli("inspect", str(tmp_path / "nothing.zarr"))
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: no zarr array at {tmp_path / 'nothing.zarr'}"
    res = run_cli("--debug", "inspect", str(tmp_path / "nothing.zarr"))
    assert res.returncode == 2 and "Traceback" in res.stderr
    res = run_cli("inspect", str(tmp_path / "nothing.zarr"), "--json")
    assert json.loads(res.stdout) == {"ok": False, "error": res.stderr.strip()[7:],
                                      "type": "FileNotFoundError", "exit_code": 2}
    res = run_cli("run", "p.yaml", "--executor", "ray", cwd=tmp_path)
    assert res.returncode == 2 and "--executor must be dask or spark" in res.stderr


def test_unreachable_cluster_is_an_executor_error(tmp_path: Path) -> None:
    import blocklin as bl

    bl.from_array(np.ones((10, 2)), tmp_path / "X.zarr")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(SPEC))
    res = run_cli("run", "p.yaml", "--address", "tcp://127.0.0.1:1", cwd=tmp_path)
    assert res.returncode == 5, res.stderr
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:1" in res.stderr
    assert not (tmp_path / "out").exists()


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    import os
    import pty
    import subprocess

    import blocklin as bl

    bl.from_array(np.ones((50, 2)), tmp_path / "X.zarr", chunks=(10, None))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(SPEC))
    master, slave = pty.openpty()
    proc = subprocess.Popen([*CLI, "run", "p.yaml"],
                            cwd=tmp_path, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert "gram/partial + column_stats/partial" in text and "5/5" in text
