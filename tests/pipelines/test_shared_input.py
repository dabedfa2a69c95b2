"""Two pipelines sharing an input lose no appended batch (issue 12, item 8).

Real processes refresh two pipelines that extend the same input X at the same moment
(a barrier releases both refreshes together, try after try); every batch must end up
in X exactly once, at the rows its record names, and every pipeline's Gram must be
XᵀX of the rows its manifest says it includes. Run one after the other, the second
pipeline takes the batch the first appended from X instead of appending it again.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tests.pipelines.conftest import base_spec

import blocklin as bl
from blocklin.pipelines.manifest import load_manifest, load_small
from blocklin.pipelines.refresh import refresh_pipeline
from blocklin.pipelines.runner import load_pipeline, run_pipeline

TRIES = 4


def _pipelines(root: Path, x: np.ndarray, **over: Any) -> list[Path]:
    bl.from_array(x, root / "X.zarr", chunks=(120, None))
    specs = []
    for name in ("p1", "p2"):
        spec = base_spec(name=name, output_dir=f"out-{name}", **over)
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        run_pipeline(load_pipeline(path))
        specs.append(path)
    return specs


def _refresher(spec: str, batches: list[str], barrier: Any, errors: Any) -> None:
    """One process refreshing ``spec`` with each batch as the barrier releases it."""
    pipe = load_pipeline(spec)
    for b in batches:
        barrier.wait(timeout=60)
        try:
            refresh_pipeline(pipe, b)
        except Exception as exc:  # reported to the test, which fails naming it
            errors.put(f"{spec} {b}: {type(exc).__name__}: {exc}")


def _gram_matches_manifest(out: Path, xfull: np.ndarray) -> None:
    m = load_manifest(out)
    assert m is not None
    rows = m["refresh"]["rows"]
    x = xfull[:rows]
    np.testing.assert_allclose(load_small(out / "gram.npz")["value"], x.T @ x, rtol=1e-11)
    assert int(load_small(out / "stats.npz")["count"]) == rows


def _check_batches(xpath: Path, files: dict[str, np.ndarray]) -> np.ndarray:
    """Every batch is in X once, at its recorded rows; X is the base plus those rows."""
    X = bl.open(xpath)
    xfull = X.to_numpy()
    recs = X.provenance["batches"]
    assert sorted(r["source"] for r in recs) == sorted(files)
    end = 500
    for r in sorted(recs, key=lambda r: r["rows"][0]):
        lo, hi = r["rows"]
        assert lo == end  # contiguous: no batch overwrote another's rows
        np.testing.assert_array_equal(xfull[lo:hi], files[r["source"]])
        end = hi
    assert X.shape[0] == end
    return xfull


def test_concurrent_refreshes_of_a_shared_input_keep_every_batch(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(500, 6))
    specs = _pipelines(tmp_path, x)
    rng = np.random.default_rng(2)
    files: dict[str, np.ndarray] = {}
    per: list[list[str]] = [[], []]
    for t in range(TRIES):
        for k in range(2):
            b = rng.normal(size=(int(rng.integers(30, 200)), 6))
            path = str(tmp_path / f"b{t}-{k}.npy")
            np.save(path, b)
            files[path] = b
            per[k].append(path)
    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_refresher, args=(str(specs[k]), per[k], barrier, errors))
             for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    problems = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    for p in procs:
        if p.is_alive():
            p.kill()
    assert all(p.exitcode == 0 for p in procs) and not problems, problems
    xfull = _check_batches(tmp_path / "X.zarr", files)
    assert xfull.shape[0] == 500 + sum(len(b) for b in files.values())
    np.testing.assert_array_equal(xfull[:500], x)
    for name in ("p1", "p2"):
        # Each pipeline's outputs are XᵀX of exactly the rows its manifest includes.
        _gram_matches_manifest(tmp_path / f"out-{name}", xfull)
    for k, name in enumerate(("p1", "p2")):
        # A repeated refresh appends nothing and brings the outputs up to all of X.
        refresh_pipeline(load_pipeline(specs[k]), per[k][-1])
        m = load_manifest(tmp_path / f"out-{name}")
        assert m is not None and m["refresh"]["rows"] == xfull.shape[0]
        _gram_matches_manifest(tmp_path / f"out-{name}", xfull)
    assert bl.open(tmp_path / "X.zarr").shape[0] == xfull.shape[0]


def test_sequential_refreshes_take_the_other_pipelines_rows(tmp_path: Path) -> None:
    x = np.random.default_rng(3).normal(size=(500, 6))
    p1, p2 = (load_pipeline(s) for s in _pipelines(tmp_path, x))
    b1 = np.random.default_rng(4).normal(size=(70, 6))
    b2 = np.random.default_rng(5).normal(size=(150, 6))
    np.save(tmp_path / "b1.npy", b1)
    np.save(tmp_path / "b2.npy", b2)
    refresh_pipeline(p1, str(tmp_path / "b1.npy"))
    # The same batch through the second pipeline: X holds it already, not appended again.
    refresh_pipeline(p2, str(tmp_path / "b1.npy"))
    one = np.vstack([x, b1])
    np.testing.assert_array_equal(bl.open(tmp_path / "X.zarr").to_numpy(), one)
    np.testing.assert_allclose(load_small(tmp_path / "out-p2" / "gram.npz")["value"],
                               one.T @ one, rtol=1e-11)
    # A new batch through p1; then p2 with yet another: p2 takes b2's rows from X.
    b3 = np.random.default_rng(6).normal(size=(40, 6))
    np.save(tmp_path / "b3.npy", b3)
    refresh_pipeline(p1, str(tmp_path / "b2.npy"))
    refresh_pipeline(p2, str(tmp_path / "b3.npy"))
    full = np.vstack([x, b1, b2, b3])
    np.testing.assert_array_equal(bl.open(tmp_path / "X.zarr").to_numpy(), full)
    got = load_small(tmp_path / "out-p2" / "gram.npz")["value"]
    np.testing.assert_allclose(got, full.T @ full, rtol=1e-11)
    st = load_small(tmp_path / "out-p2" / "stats.npz")
    np.testing.assert_allclose(st["mean"], full.mean(0), rtol=1e-11, atol=1e-14)
    assert len(bl.open(tmp_path / "X.zarr").provenance["batches"]) == 3


def test_labelled_pipelines_sharing_inputs_keep_labels_aligned(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from blocklin.pipelines.ingest import ingest

    rng = np.random.default_rng(11)
    w = np.array([1.0, -2.0, 0.5])

    def table(n: int) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        a = rng.normal(size=(n, 3))
        y = a @ w + rng.normal(size=n)
        return pa.table({"a": a[:, 0], "b": a[:, 1], "c": a[:, 2], "y": y}), a, y

    t0, x0, y0 = table(300)
    pq.write_table(t0, tmp_path / "train.parquet")
    ingest(str(tmp_path / "train.parquet"), str(tmp_path / "X.zarr"), label="y",
           chunk_rows=128)
    over = {"inputs": {"X": {"path": "X.zarr"}, "y": {"path": "X.label.zarr"}},
            "steps": [{"name": "xty", "op": "crossprod", "inputs": {"A": "X", "B": "y"}}],
            "outputs": {"xty": {"step": "xty"}},
            "refresh": {"input": "X", "label_input": "y", "label_column": "y"}}
    pipes = []
    for name in ("p1", "p2"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(base_spec(name=name, output_dir=f"out-{name}", **over)))
        pipes.append(load_pipeline(path))
        run_pipeline(pipes[-1])
    t1, x1, y1 = table(90)
    t2, x2, y2 = table(60)
    pq.write_table(t1, tmp_path / "b1.parquet")
    pq.write_table(t2, tmp_path / "b2.parquet")
    refresh_pipeline(pipes[0], str(tmp_path / "b1.parquet"))
    refresh_pipeline(pipes[1], str(tmp_path / "b2.parquet"))
    xs, ys = np.vstack([x0, x1, x2]), np.concatenate([y0, y1, y2])
    np.testing.assert_array_equal(bl.open(tmp_path / "X.zarr").to_numpy(), xs)
    np.testing.assert_array_equal(bl.open(tmp_path / "X.label.zarr").to_numpy()[:, 0], ys)
    np.testing.assert_allclose(load_small(tmp_path / "out-p2" / "xty.npz")["value"][:, 0],
                               xs.T @ ys, rtol=1e-12)



def test_a_crashed_appenders_lock_is_taken_over(tmp_path: Path) -> None:
    import json
    import socket
    import subprocess
    import sys

    x = np.random.default_rng(8).normal(size=(500, 6))
    p1 = load_pipeline(_pipelines(tmp_path, x)[0])
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock = tmp_path / "X.zarr" / ".blocklin" / "append.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname(),
                                "started": 0.0, "command": "crashed refresh"}))
    b = np.random.default_rng(9).normal(size=(20, 6))
    np.save(tmp_path / "b.npy", b)
    refresh_pipeline(p1, str(tmp_path / "b.npy"))
    np.testing.assert_array_equal(bl.open(tmp_path / "X.zarr").to_numpy(), np.vstack([x, b]))
    assert not lock.exists()
