"""A pipeline's disk use: a successful run empties its work dir, --keep-intermediates keeps
it, ``blocklin gc OUT`` frees leftovers and earlier runs' folders (never committed
outputs, never while a run holds the lock), and --dry-run/inspect say what stays."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blocklin as bl
from blocklin.errors import LockError
from blocklin.pipelines.gc import collect, collect_pipeline_garbage
from blocklin.pipelines.lock import OutputLock
from blocklin.pipelines.manifest import load_output
from blocklin.pipelines.runner import RunOptions, explain_pipeline, load_pipeline, run_pipeline
from blocklin.storage.leases import flush_removals

from .conftest import base_spec, run_cli


def _spec(**over: Any) -> dict[str, Any]:
    """gram in the shared plan, an SVD and a regression as iterative steps."""
    return base_spec(
        inputs={"X": {"path": "X.zarr"}, "y": {"path": "y.zarr"}},
        steps=[{"name": "g", "op": "gram", "inputs": {"A": "X"}},
               {"name": "emb", "op": "randomized_svd", "inputs": {"A": "X"},
                "params": {"k": 2}},
               {"name": "lr", "op": "linear_regression", "inputs": {"X": "X", "y": "y"}}],
        outputs={"gram": {"step": "g"}, "emb": {"step": "emb"}, "lr": {"step": "lr"}},
        refresh=None, report=False, **over)


@pytest.fixture
def labelled(matrix: tuple[np.ndarray, Path], tmp_path: Path) -> np.ndarray:
    x, _ = matrix
    y = x @ np.arange(1.0, 7.0) + 0.5
    bl.from_array(y[:, None], tmp_path / "y.zarr", chunks=(120, None))
    return y


def _work(tmp_path: Path) -> list[str]:
    """Entries of the run's work dir (its group metadata and .blocklin/ aside)."""
    flush_removals()
    work = tmp_path / "out" / ".work"
    return sorted(p.name for p in work.iterdir() if p.name not in ("zarr.json", ".blocklin")) \
        if work.exists() else []


def test_a_run_leaves_nothing_in_its_work_dir(labelled: np.ndarray, tmp_path: Path,
                                              write_spec: Callable[..., Path],
                                              matrix: tuple[np.ndarray, Path]) -> None:
    pipe = load_pipeline(write_spec(_spec()))
    info = explain_pipeline(pipe)
    assert info["intermediates"]["arrays"] >= 2 and info["intermediates"]["removed_at_end"]
    m = run_pipeline(pipe)
    assert _work(tmp_path) == []
    x, _ = matrix
    np.testing.assert_allclose(load_output(tmp_path / "out", "gram")["value"], x.T @ x,
                               rtol=1e-12)
    assert m["stats"]["tasks_run"] > 0
    # Kept on request: the run's arrays stay, the dry run says so.
    keep = RunOptions(keep_intermediates=True)
    assert explain_pipeline(pipe, keep)["intermediates"]["removed_at_end"] is False
    run_pipeline(pipe, keep)
    kept = _work(tmp_path)
    assert len(kept) >= 5 and all(n.startswith("a-") for n in kept)
    # ... or by the spec.
    run_pipeline(pipe)
    assert _work(tmp_path) == []
    run_pipeline(load_pipeline(write_spec(_spec(executor={"keep_intermediates": True}))))
    assert sorted(_work(tmp_path)) == sorted(kept)


def test_gc_of_an_output_dir(labelled: np.ndarray, tmp_path: Path,
                             write_spec: Callable[..., Path]) -> None:
    pipe = load_pipeline(write_spec(_spec()))
    run_pipeline(pipe, RunOptions(keep_intermediates=True))
    out = tmp_path / "out"
    (out / ".staging").mkdir(exist_ok=True)
    (out / ".staging" / "lr.npz").write_bytes(b"x" * 1000)  # an unfinished run's output
    committed = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".npz"}
    with OutputLock(out, "a run"):
        with pytest.raises(LockError, match="gc touches nothing"):
            collect_pipeline_garbage(str(out))
        dry = collect(str(out), dry_run=True)
        assert any("a run is in progress" in n for n in dry.notes)
    assert len(_work(tmp_path)) >= 5
    report = collect(str(out))
    names = {e.name for e in report.freed}
    assert ".staging" in names and sum(n.startswith(".work/a-") for n in names) >= 5
    assert _work(tmp_path) == [] and not (out / ".staging").exists()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".npz"} == committed
    assert (out / "manifest.json").exists()


def test_gc_frees_runs_no_manifest_names(matrix: tuple[np.ndarray, Path], tmp_path: Path,
                                        write_spec: Callable[..., Path]) -> None:
    # An object store layout (runs/<id>/ per run, no renames), on fsspec's memory store.
    out = f"memory://gc-{tmp_path.name}/out"
    pipe = load_pipeline(write_spec(base_spec(output_dir=out, refresh=None, report=False)))
    for _ in range(3):
        run_pipeline(pipe)
    store = pipe.output_store()
    runs = store.names("runs")
    assert len(runs) == 2  # the committed run and the one before it (kept for readers)
    manifest = json.loads(store.read_bytes("manifest.json") or b"{}")
    current = manifest["outputs"]["gram"]["path"].split("/")[1]
    report = collect(out, older_than=3600.0)
    assert report.freed == [] and len(report.kept) == 1  # the earlier run is too recent
    report = collect(out)
    assert [e.name for e in report.freed] == [f"runs/{r}" for r in runs if r != current]
    assert store.names("runs") == [current]
    x, _ = matrix
    np.testing.assert_allclose(load_output(out, "gram")["value"], x.T @ x, rtol=1e-12)


def test_cli_keep_inspect_and_gc(labelled: np.ndarray, tmp_path: Path,
                                 write_spec: Callable[..., Path]) -> None:
    spec = write_spec(_spec())
    dry = run_cli("run", str(spec), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "removed once the compute succeeds" in dry.stdout
    assert "intermediates: removed from the work dir once the run succeeds" in dry.stdout
    ran = run_cli("run", str(spec), "--keep-intermediates", "--json", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    kept = _work(tmp_path)
    assert len(kept) >= 5
    seen = json.loads(run_cli("inspect", "out", "--json", cwd=tmp_path).stdout)
    assert seen["disk"]["freeable"] == len(kept) and seen["disk"]["freeable_bytes"] > 0
    listed = run_cli("gc", "out", "--dry-run", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert sorted(e["name"] for e in doc["freed"]) == sorted(f".work/{n}" for n in kept)
    assert _work(tmp_path) == kept
    freed = run_cli("gc", "out", cwd=tmp_path)
    assert freed.returncode == 0 and f"freed {len(kept)} entries" in freed.stdout
    assert _work(tmp_path) == []
    seen = json.loads(run_cli("inspect", "out", "--json", cwd=tmp_path).stdout)
    assert seen["disk"]["freeable_bytes"] == 0
