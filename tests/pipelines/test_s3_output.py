# ruff: noqa: F811  (the moto fixture ``s3`` is imported, then requested by name)
"""A pipeline whose output_dir is on S3 (moto's server): run, refresh, a killed driver then
``--resume``, the lock, verify and inspect, and no secret in anything written.

The spec file holds the output dir's and the inputs' credentials (it is the user's, kept
outside the folders grepped); the work dir's come from ``--storage-option``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tests.storage.test_s3 import (  # noqa: F401  (fixtures used by name)
    KEY_ID,
    S3,
    SECRET,
    _assert_no_secret,
    _no_aws_environment,
    s3,
)

import blocklin as bl
from blocklin.errors import InputChangedError, LockError
from blocklin.pipelines.lock import LOCK_NAME, OutputLock
from blocklin.pipelines.manifest import load_manifest, load_output
from blocklin.pipelines.runner import RunOptions, load_pipeline, run_pipeline
from blocklin.storage import register_storage_options
from blocklin.testing.fault_scenarios import kill_when

CLI = [sys.executable, "-m", "blocklin._cli"]


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            "BLOCKLIN_DEBUG": "0"}


def _cli(s3: S3, cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    flags = [f"--storage-option=key={KEY_ID}", f"--storage-option=secret={SECRET}",
             f"--storage-option=endpoint_url={s3.endpoint}"]
    return subprocess.run([*CLI, *args, *flags], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


def _opts(s3: S3) -> RunOptions:
    """What ``--storage-option`` gives a run in this process (the work dir's options)."""
    return RunOptions(storage_options=s3.options)


def _write_spec(s3: S3, folder: Path, bucket: str, x_path: str, out: str,
                **over: Any) -> Path:
    spec: dict[str, Any] = {
        "name": "s3out",
        "inputs": {"X": {"path": f"{bucket}/{x_path}", "storage_options": s3.options},
                   "W": {"path": f"{bucket}/W.zarr", "storage_options": s3.options}},
        "steps": [{"name": "g", "op": "gram", "inputs": {"A": "X"}},
                  {"name": "stats", "op": "column_stats", "inputs": {"A": "X"}},
                  {"name": "p", "op": "matmul", "inputs": {"A": "X", "B": "W"}}],
        "outputs": {"gram": {"step": "g"}, "stats": {"step": "stats"}, "P": {"step": "p"}},
        "output_dir": f"{bucket}/{out}",
        "output_dir_storage_options": s3.options,
        "executor": {"work_dir": f"{bucket}/work-{out}"},
        "refresh": {"input": "X"},
    }
    spec.update(over)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{out}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _data(s3: S3, bucket: str, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((rows, 5)), rng.standard_normal((5, 2))
    bl.from_array(x, f"{bucket}/X.zarr", chunks=(100, None), storage_options=s3.options)
    bl.from_array(w, f"{bucket}/W.zarr", chunks=(5, None), storage_options=s3.options)
    return x, w


def _results(out: str) -> dict[str, np.ndarray]:
    return {"gram": load_output(out, "gram")["value"], "mean": load_output(out, "stats")["mean"],
            "P": load_output(out, "P").to_numpy()}


def _areas(manifest: dict[str, Any]) -> set[str]:
    return {"/".join(r["path"].split("/")[:2]) for r in manifest["outputs"].values()}


# -- run, verify, inspect ------------------------------------------------------------------
def test_cli_run_on_s3_commits_through_the_manifest(s3: S3, tmp_path: Path) -> None:
    bucket = s3.bucket()
    x, w = _data(s3, bucket, 400)
    spec = _write_spec(s3, tmp_path / "specs", bucket, "X.zarr", "out")
    res = _cli(s3, tmp_path, "run", str(spec), "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    texts = [res.stdout, res.stderr]
    out = f"{bucket}/out"
    register_storage_options(out, s3.options)
    first = load_manifest(out)
    assert first is not None and json.loads(res.stdout)["outputs"] == {
        k: v["path"] for k, v in first["outputs"].items()}
    for _ in range(2):  # the third commit removes the first run's prefix
        run_pipeline(load_pipeline(spec), _opts(s3))
    manifest = load_manifest(out)
    assert manifest is not None
    got = _results(out)
    np.testing.assert_allclose(got["gram"], x.T @ x, rtol=1e-12)
    np.testing.assert_allclose(got["mean"], x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got["P"], x @ w, rtol=1e-12)
    # Every output of the run under one prefix of its own; nothing at the final names.
    (area,) = _areas(manifest)
    assert area.startswith("runs/") and manifest["report"]["markdown"] == f"{area}/report/report.md"
    fs = s3.fs()
    root = out.removeprefix("s3://")
    assert not fs.exists(f"{root}/gram.npz") and not fs.exists(f"{root}/P.zarr/zarr.json")
    # This run's prefix and the previous one's (a reader of the previous manifest may
    # still be reading it); the first run's is gone.
    kept = {f"runs/{p.rsplit('/', 1)[-1]}" for p in fs.ls(f"{root}/runs")}
    assert len(kept) == 2 and area in kept and not kept & _areas(first)
    assert not fs.exists(f"{root}/{LOCK_NAME}") and not fs.exists(f"{root}/runs/.pending.json")
    assert manifest["spec"]["output_dir_storage_options"]["secret"] == "<redacted>"

    res = _cli(s3, tmp_path, "verify", out, "--json")
    assert res.returncode == 0, res.stderr
    assert set(json.loads(res.stdout)["outputs"]) == {"gram", "stats", "P"}
    res = _cli(s3, tmp_path, "inspect", out, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["outputs"]["P"]["url"] == f"{out}/{area}/P.zarr"
    texts += [res.stdout, res.stderr]

    # An output replaced behind the manifest's back is found, never read as the result.
    fs.pipe_file(f"{root}/{area}/gram.npz", fs.cat_file(f"{root}/{area}/stats.npz"))
    res = _cli(s3, tmp_path, "verify", out)
    assert res.returncode == 4 and "gram: FAILED" in res.stdout, res.stdout
    with pytest.raises(InputChangedError, match="gram"):
        load_output(out, "gram")
    _assert_no_secret(s3, [bucket], tmp_path / "data", texts=tuple(texts))


# -- refresh -----------------------------------------------------------------------------------
def test_refresh_on_s3_equals_a_run_over_all_rows(s3: S3, tmp_path: Path) -> None:
    bucket = s3.bucket()
    x, _ = _data(s3, bucket, 300, seed=1)
    batch = np.random.default_rng(2).standard_normal((130, 5))
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "b.npy", batch)
    spec = _write_spec(s3, tmp_path / "specs", bucket, "X.zarr", "out")
    texts = []
    for args in (["run", str(spec)], ["refresh", str(spec), "--append", "data/b.npy", "--json"]):
        res = _cli(s3, tmp_path, *args)
        assert res.returncode == 0, res.stderr[-3000:]
        texts += [res.stdout, res.stderr]
    assert json.loads(texts[-2])["refresh"]["outputs"] == {
        "gram": "incremental", "stats": "incremental", "P": "recomputed"}
    full = np.vstack([x, batch])
    bl.from_array(full, f"{bucket}/Xfull.zarr", chunks=(100, None), storage_options=s3.options)
    scratch = _write_spec(s3, tmp_path / "specs", bucket, "Xfull.zarr", "scratch", report=False)
    run_pipeline(load_pipeline(scratch), _opts(s3))
    for out in (f"{bucket}/out", f"{bucket}/scratch"):
        register_storage_options(out, s3.options)
    got, want = _results(f"{bucket}/out"), _results(f"{bucket}/scratch")
    # The refresh merges the batch's AᵀA into the stored one: equal to rounding.
    np.testing.assert_allclose(got["gram"], want["gram"], rtol=1e-12)
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-12)
    np.testing.assert_array_equal(got["P"], want["P"])  # recomputed from the same blocks
    np.testing.assert_allclose(want["gram"], full.T @ full, rtol=1e-12)
    manifest = load_manifest(f"{bucket}/out")
    assert manifest is not None and manifest["refresh"]["rows"] == 430
    # The same batch again: nothing to do, nothing rewritten.
    res = _cli(s3, tmp_path, "refresh", str(spec), "--append", "data/b.npy", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["skipped"] is True, res.stderr
    assert load_manifest(f"{bucket}/out") == manifest
    _assert_no_secret(s3, [bucket], tmp_path / "data", texts=tuple(texts))


# -- a driver killed mid-run, then --resume ---------------------------------------------------
@pytest.mark.parametrize(("phase", "seed"), [("compute", 0), ("compute", 1), ("commit", 0)])
def test_killed_run_on_s3_then_resume_equals_uninterrupted(s3: S3, tmp_path: Path, phase: str,
                                                           seed: int) -> None:
    """SIGKILL after a seeded number of completion records (``compute``), or once the
    run has written its first small output and is committing (``commit``)."""
    bucket = s3.bucket()
    _data(s3, bucket, 1600, seed=3)
    ex = {"num_workers": 1}
    ref_spec = _write_spec(s3, tmp_path / "specs", bucket, "X.zarr", "ref", report=False,
                           executor={"work_dir": f"{bucket}/work-ref", **ex})
    run_pipeline(load_pipeline(ref_spec), _opts(s3))
    spec = _write_spec(s3, tmp_path / "specs", bucket, "X.zarr", "out", report=False,
                       executor={"work_dir": f"{bucket}/work-out", **ex})
    fs = s3.fs()
    root = f"{bucket.removeprefix('s3://')}"
    total = sum(1 for p in fs.find(root) if "/.blocklin/done/" in p and ("/work-ref/" in p
                                                                        or "/ref/" in p))

    def records() -> int:
        fs.invalidate_cache()
        return sum(1 for p in fs.find(root) if "/.blocklin/done/" in p
                   and ("/work-out/" in p or "/out/runs/" in p))

    k = int(np.random.default_rng(seed).integers(3, max(4, total // 2)))

    def committing() -> bool:
        fs.invalidate_cache()
        return any(p.endswith("/gram.npz") for p in fs.find(f"{root}/out/runs"))

    ready = committing if phase == "commit" else (lambda: records() >= k)
    log = tmp_path / "data" / "killed.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    flags = [f"--storage-option=key={KEY_ID}", f"--storage-option=secret={SECRET}",
             f"--storage-option=endpoint_url={s3.endpoint}"]
    with open(log, "wb") as f:
        proc = subprocess.Popen([*CLI, "run", str(spec), *flags], cwd=tmp_path, env=_env(),
                                stdout=f, stderr=f)
    assert kill_when(proc, ready, 0.0, timeout=120), log.read_text()
    out = f"{bucket}/out"
    register_storage_options(out, s3.options)
    register_storage_options(f"{bucket}/ref", s3.options)
    want = _results(f"{bucket}/ref")
    killed = load_manifest(out)
    # Nothing committed (no result visible), or the whole run: never part of it.
    if killed is not None:
        assert phase == "commit"
        assert all(_results(out)[key].tobytes() == want[key].tobytes() for key in want)
    pending = json.loads(fs.cat_file(f"{root}/out/runs/.pending.json"))["area"]

    res = _cli(s3, tmp_path, "run", str(spec), "--resume", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["stats"]["tasks_skipped"] > 0, (k, summary["stats"])
    manifest = load_manifest(out)
    assert manifest is not None
    # The resumed run finishes the killed one's prefix (a committed one is never rewritten).
    assert (_areas(manifest) == {pending}) is (killed is None)
    got = _results(out)
    for key in want:
        assert got[key].tobytes() == want[key].tobytes(), key
    _assert_no_secret(s3, [bucket], tmp_path / "data", texts=(res.stdout, res.stderr))


# -- the lock -------------------------------------------------------------------------------
def _race(url: str, n: int = 8) -> list[str]:
    """``n`` threads take the lock at ``url`` at once: what each got."""
    barrier = threading.Barrier(n)
    got: list[str] = []
    locks = [OutputLock(url, f"contender {i}") for i in range(n)]

    def take(lock: OutputLock) -> None:
        barrier.wait()
        try:
            lock.acquire()
            got.append("held")
        except LockError:
            got.append("refused")

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for lock in locks:
        lock.release()
    return got


def test_lock_on_s3_is_a_conditional_create(s3: S3, tmp_path: Path) -> None:
    url = f"{s3.bucket()}/out"
    register_storage_options(url, s3.options)
    fs = s3.fs()
    key = f"{url.removeprefix('s3://')}/{LOCK_NAME}"
    for _ in range(3):  # a check-then-write lock lets several contenders in
        assert sorted(_race(url)) == ["held"] + ["refused"] * 7
        assert not fs.exists(key)
    # A crashed holder on this host (its pid gone): exactly one contender takes over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    stale = {"pid": dead.pid, "host": socket.gethostname(), "started": 1.0, "command": "gone"}
    for _ in range(2):
        fs.pipe_file(key, json.dumps(stale).encode())
        assert sorted(_race(url)) == ["held"] + ["refused"] * 7


def test_second_run_on_s3_refused_while_the_first_holds_the_lock(s3: S3,
                                                                  tmp_path: Path) -> None:
    bucket = s3.bucket()
    x, _ = _data(s3, bucket, 200)
    spec = _write_spec(s3, tmp_path / "specs", bucket, "X.zarr", "out", report=False)
    out = f"{bucket}/out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import json, sys, time\n"
         "from blocklin.storage import register_storage_options\n"
         "from blocklin.pipelines.lock import OutputLock\n"
         "register_storage_options(sys.argv[1], json.loads(sys.argv[2]))\n"
         "OutputLock(sys.argv[1], 'holder').acquire()\n"
         "print('locked', flush=True)\n"
         "time.sleep(120)\n", out, json.dumps(s3.options)],
        stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        res = _cli(s3, tmp_path, "run", str(spec))
        assert res.returncode == 3, res.stderr
        assert f"locked by pid {holder.pid}" in res.stderr
        register_storage_options(out, s3.options)
        assert load_manifest(out) is None
        assert not s3.fs().exists(f"{out.removeprefix('s3://')}/runs")  # nothing written
    finally:
        holder.kill()  # the holder crashes: its lock stays behind, stale
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    manifest = run_pipeline(load_pipeline(spec), _opts(s3))
    np.testing.assert_allclose(load_output(out, "gram")["value"], x.T @ x, rtol=1e-12)
    assert manifest["mode"] == "run"
    assert not s3.fs().exists(f"{out.removeprefix('s3://')}/{LOCK_NAME}")
    _assert_no_secret(s3, [bucket], texts=(res.stdout, res.stderr))


def test_append_lock_of_an_s3_input_is_exclusive(s3: S3) -> None:
    from blocklin.pipelines.append import append_batch
    from blocklin.pipelines.lock import array_lock

    bucket = s3.bucket()
    x = np.random.default_rng(9).standard_normal((150, 3))
    X = bl.from_array(x, f"{bucket}/X.zarr", chunks=(100, None), storage_options=s3.options)
    b = bl.from_array(x[:40] * 2, f"{bucket}/b.zarr", chunks=(100, None),
                      storage_options=s3.options)
    with array_lock(X.url, "first appender"):
        assert s3.fs().exists(f"{X.url.removeprefix('s3://')}/.blocklin/append.lock")
        with pytest.raises(LockError, match="first appender"):
            array_lock(X.url, "second", wait=0.3).acquire()
    got = append_batch(X, b, "b.zarr")  # takes and releases the lock itself
    np.testing.assert_array_equal(got.to_numpy(), np.vstack([x, x[:40] * 2]))
    assert not s3.fs().exists(f"{X.url.removeprefix('s3://')}/.blocklin/append.lock")


def test_output_dir_without_credentials_is_a_usage_error(s3: S3, tmp_path: Path) -> None:
    bucket = s3.bucket()
    _data(s3, bucket, 200)
    spec = _write_spec(s3, tmp_path / "specs", bucket, "X.zarr", "out", report=False,
                       output_dir_storage_options={})
    # No instance-metadata lookups either (they would only slow the failure down).
    env = {**_env(), "AWS_EC2_METADATA_DISABLED": "true"}
    res = subprocess.run([*CLI, "run", str(spec)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=240, check=False)
    assert res.returncode == 2, res.stderr
    assert "output_dir_storage_options" in res.stderr and "credentials" in res.stderr
    assert not s3.fs().exists(f"{bucket.removeprefix('s3://')}/out")
    _assert_no_secret(s3, [bucket], texts=(res.stdout, res.stderr))
