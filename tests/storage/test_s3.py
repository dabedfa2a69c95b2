"""blocklin against a real S3 protocol server (moto's standalone server, one per module).

Credentials and the endpoint reach s3fs only through ``storage_options``: the AWS
environment is emptied, so a location that did not get its options cannot be read.
The secret is unique to the module and every test greps what it wrote for it.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blocklin as bl
from blocklin.executors import RunStats
from blocklin.ops.glm import normal_stats
from blocklin.storage.stores import StorageOptions, store_for
from blocklin.testing.helpers import free_ports

pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

SECRET = f"blocklin-test-secret-{uuid.uuid4().hex}"
KEY_ID = "AKIABLOCKLINTEST"


@dataclass
class S3:
    """One moto server: its endpoint and the options that reach it."""

    endpoint: str

    @property
    def options(self) -> dict[str, Any]:
        return {"key": KEY_ID, "secret": SECRET, "endpoint_url": self.endpoint}

    def bucket(self) -> str:
        """A new, empty bucket (tests never share one): its ``s3://`` URL."""
        name = f"b-{uuid.uuid4().hex[:16]}"
        req = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        urllib.request.urlopen(req, timeout=10).close()
        return f"s3://{name}"

    def fs(self) -> Any:
        return s3fs.S3FileSystem(**self.options, use_listings_cache=False)

    def objects(self, bucket: str) -> dict[str, bytes]:
        fs = self.fs()
        return {p: fs.cat_file(p) for p in fs.find(bucket.removeprefix("s3://"))}


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    port = free_ports()[0]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield S3(endpoint)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(autouse=True)
def _no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Only storage_options may reach s3fs: no credentials, endpoint or config from
    # the environment or the home directory.
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def _assert_no_secret(s3: S3, buckets: list[str], *roots: Path, texts: tuple[str, ...] = ()
                      ) -> int:
    """Grep every object and file written for the secret; return how many were read."""
    seen = 0
    for bucket in buckets:
        for path, data in s3.objects(bucket).items():
            assert SECRET.encode() not in data, f"secret written to s3://{path}"
            seen += 1
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), f"secret written to {path}"
                seen += 1
    for text in texts:
        assert SECRET not in text
    return seen


# -- stores ------------------------------------------------------------------------------
def test_options_are_redacted_keyed_and_travel_with_the_store(s3: S3) -> None:
    url = s3.bucket() + "/A.zarr"
    other = {**s3.options, "secret": "another-secret"}
    store = store_for(url, storage_options=s3.options)
    assert store_for(url, storage_options=s3.options) is store
    # Two option sets never share a store (nor its file system and credentials).
    assert store_for(url, storage_options=other) is not store
    assert SECRET not in repr(store)
    for text in (str(store.storage_options), repr(StorageOptions(s3.options))):
        assert SECRET not in text and "'secret'" in text  # keys named, values hidden
    clone = pickle.loads(pickle.dumps(store))
    clone.put("k", b"v")
    assert store.get("k") == b"v"
    assert clone.storage_options == StorageOptions(s3.options)


def test_from_array_open_and_gram(s3: S3, tmp_path: Path) -> None:
    bucket = s3.bucket()
    x = np.random.default_rng(0).standard_normal((1000, 6))
    A = bl.from_array(x, f"{bucket}/A.zarr", chunks=(128, None), storage_options=s3.options)
    B = bl.open(f"{bucket}/A.zarr", storage_options=s3.options)
    np.testing.assert_array_equal(B.to_numpy(), x)
    assert B.fingerprint == A.fingerprint
    g = bl.compute(bl.ops.gram(B), work_dir=f"{bucket}/work", storage_options=s3.options)[0]
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)
    assert _assert_no_secret(s3, [bucket], tmp_path) > 8


def test_every_operator_family(s3: S3, tmp_path: Path) -> None:
    bucket = s3.bucket()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((900, 5))
    y = x @ np.arange(1.0, 6.0) + 0.01 * rng.standard_normal(900)
    W = rng.standard_normal((5, 3))
    A = bl.from_array(x, f"{bucket}/A.zarr", chunks=(100, None), storage_options=s3.options)
    Y = bl.from_array(y[:, None], f"{bucket}/y.zarr", chunks=(100, None),
                      storage_options=s3.options)
    ops = bl.ops
    P, stats, qr, svd, S, N = bl.compute(
        ops.matmul(A, W, out=f"{bucket}/out/P.zarr"), ops.column_stats(A),
        ops.tsqr(A, out=f"{bucket}/out/Q.zarr").R, ops.svd(A).s,
        ops.sketch(A, 8, seed=3), normal_stats(A, Y),
        work_dir=f"{bucket}/work", storage_options=s3.options)
    assert P.url == f"{bucket}/out/P.zarr"
    np.testing.assert_allclose(bl.open(P.url).to_numpy(), x @ W, rtol=1e-12)
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.abs(qr), np.abs(np.linalg.qr(x, mode="r")), rtol=1e-10)
    np.testing.assert_allclose(svd, np.linalg.svd(x, compute_uv=False), rtol=1e-10)
    assert np.asarray(S).shape == (8, 5)
    assert np.all(np.isfinite(np.asarray(N)))
    scaled = bl.compute(ops.gram(ops.standardize(A)), work_dir=f"{bucket}/work")[0]
    z = (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)
    np.testing.assert_allclose(scaled, z.T @ z, rtol=1e-10, atol=1e-10)
    _assert_no_secret(s3, [bucket], tmp_path)


# -- estimators ----------------------------------------------------------------------------
def test_linear_regression_state_on_s3_is_read_back(s3: S3, tmp_path: Path) -> None:
    bucket = s3.bucket()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((800, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.standard_normal(800)
    X1 = bl.from_array(x[:500], f"{bucket}/X1.zarr", chunks=(100, None),
                       storage_options=s3.options)
    X2 = bl.from_array(x[500:], f"{bucket}/X2.zarr", chunks=(100, None),
                       storage_options=s3.options)
    state = f"{bucket}/state/linreg.zarr"
    first = bl_ml().LinearRegression(solver="normal", state_path=state,
                                     work_dir=f"{bucket}/work", storage_options=s3.options)
    first.fit(X1, y[:500])
    assert SECRET not in repr(first)
    # A new estimator (a later process) refreshes from the statistics stored on S3;
    # with the state ignored it would fit on the new rows alone.
    later = bl_ml().LinearRegression(solver="normal", state_path=state,
                                     work_dir=f"{bucket}/work", storage_options=s3.options)
    later.partial_fit(X2, y[500:])
    full = np.linalg.lstsq(np.c_[x, np.ones(800)], y, rcond=None)[0]
    np.testing.assert_allclose(later.coef_, full[:4], rtol=1e-9)
    np.testing.assert_allclose(later.intercept_, full[4], rtol=1e-8, atol=1e-12)
    _assert_no_secret(s3, [bucket], tmp_path)


def test_truncated_svd_fit_with_state_on_s3(s3: S3, tmp_path: Path) -> None:
    bucket = s3.bucket()
    x = np.random.default_rng(3).standard_normal((600, 8)) @ np.diag(np.arange(8.0, 0, -1))
    X = bl.from_array(x, f"{bucket}/X.zarr", chunks=(100, None), storage_options=s3.options)
    est = bl_ml().TruncatedSVD(3, method="gram", work_dir=str(tmp_path / "scratch"),
                               state_path=f"{bucket}/svd", storage_options=s3.options)
    est.fit(X)
    np.testing.assert_allclose(est.singular_values_, np.linalg.svd(x, compute_uv=False)[:3],
                               rtol=1e-10)
    assert s3.fs().exists(f"{bucket.removeprefix('s3://')}/svd")
    resumed = bl_ml().TruncatedSVD(3, method="gram", work_dir=str(tmp_path / "scratch"),
                                   state_path=f"{bucket}/svd", storage_options=s3.options)
    assert resumed._has_state()
    _assert_no_secret(s3, [bucket], tmp_path)


def bl_ml() -> Any:
    import blocklin.ml

    return blocklin.ml


# -- a driver killed mid-run, then resumed -------------------------------------------------
_DRIVER = textwrap.dedent("""
    import json, sys
    import blocklin as bl
    from blocklin.testing.faults import slow_down
    bucket, opts = sys.argv[1], json.loads(sys.argv[2])
    A = bl.open(bucket + "/A.zarr", storage_options=opts)
    G, = slow_down(bl.ops.gram(A), seconds=0.3)
    bl.compute(G, work_dir=bucket + "/work", num_workers=1, storage_options=opts)
""")


def test_sigkilled_driver_then_resume(s3: S3, tmp_path: Path) -> None:
    bucket = s3.bucket()
    x = np.random.default_rng(4).standard_normal((1600, 5))
    A = bl.from_array(x, f"{bucket}/A.zarr", chunks=(100, None), storage_options=s3.options)
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    log = tmp_path / "driver.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(script), bucket, json.dumps(s3.options)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    fs = s3.fs()
    work = f"{bucket.removeprefix('s3://')}/work"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            fs.invalidate_cache()
            records = [p for p in fs.find(work) if "/.blocklin/done/" in p]
            if len(records) >= 4:
                break
            time.sleep(0.1)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    stats = RunStats()
    g = bl.compute(bl.ops.gram(A), work_dir=f"{bucket}/work", resume=True, stats=stats,
                   storage_options=s3.options)[0]
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)
    assert stats.tasks_skipped >= 3, stats
    assert stats.stage_tasks["gram/partial"] < 16
    _assert_no_secret(s3, [bucket], tmp_path)


# -- a distributed cluster whose worker processes read and write S3 -------------------------
@pytest.mark.cluster
def test_cluster_workers_read_and_write_s3_and_resume(s3: S3, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    from blocklin.testing import inject_fault

    bucket = s3.bucket()
    x = np.random.default_rng(5).standard_normal((1200, 6))
    W = np.random.default_rng(6).standard_normal((6, 2))
    A = bl.from_array(x, f"{bucket}/A.zarr", chunks=(100, None), storage_options=s3.options)
    # The endpoint and credentials reach the workers only through storage_options.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    def plan() -> tuple[Any, Any]:
        return bl.ops.gram(A), bl.ops.matmul(A, W, out=f"{bucket}/P.zarr")

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", host="127.0.0.1", silence_logs=40,
                                  env=env) as cluster, \
            distributed.Client(cluster) as client:
        G, P = plan()
        faulty = inject_fault(G, "gram/partial", tmp_path / "fault", succeed=5)
        with pytest.raises(Exception, match="injected fault"):
            bl.compute(faulty, P, client=client, work_dir=f"{bucket}/work",
                       storage_options=s3.options)
        # Resumed on the cluster: the driver lists the records at prepare, the workers
        # write the rest, and sealing must list again (87a2a84 reused s3fs's cached
        # listing: "stage gram/partial finished without blocks").
        first = RunStats()
        g, P1 = bl.compute(*plan(), client=client, work_dir=f"{bucket}/work", resume=True,
                           stats=first, storage_options=s3.options, keep_intermediates=True)
        assert first.tasks_skipped >= 4 and first.tasks_run > 0
        again = RunStats()
        g2, P2 = bl.compute(*plan(), client=client, work_dir=f"{bucket}/work", resume=True,
                            stats=again, storage_options=s3.options)
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)
    np.testing.assert_array_equal(g2, g)
    np.testing.assert_allclose(P1.to_numpy(), x @ W, rtol=1e-12)
    np.testing.assert_array_equal(P2.to_numpy(), P1.to_numpy())
    assert again.tasks_run == 0
    _assert_no_secret(s3, [bucket], tmp_path)


# -- a pipeline run and refresh through the CLI ----------------------------------------------
def test_pipeline_run_and_refresh_with_s3_input_and_work_dir(s3: S3, tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    bucket = s3.bucket()
    x = np.random.default_rng(7).standard_normal((500, 6))
    bl.from_array(x, f"{bucket}/X.zarr", chunks=(120, None), storage_options=s3.options)
    spec = {
        "name": "s3pipe",
        # The input's credentials in the spec, the work dir's on the command line.
        "inputs": {"X": {"path": f"{bucket}/X.zarr", "storage_options": s3.options}},
        "steps": [{"name": "g", "op": "gram", "inputs": {"A": "X"}},
                  {"name": "stats", "op": "column_stats", "inputs": {"A": "X"}}],
        "outputs": {"gram": {"step": "g"}, "stats": {"step": "stats"}},
        "output_dir": "out",
        "executor": {"work_dir": f"{bucket}/work"},
        "refresh": {"input": "X"},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    batch = np.random.default_rng(8).standard_normal((75, 6))
    np.save(tmp_path / "b.npy", batch)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    cli = [sys.executable, "-m", "blocklin._cli", "--debug"]
    flags = [f"--storage-option=key={KEY_ID}", f"--storage-option=secret={SECRET}",
             f"--storage-option=endpoint_url={s3.endpoint}", "--json"]
    outputs = []
    for args in (["run", "spec.yaml"], ["refresh", "spec.yaml", "--append", "b.npy"]):
        res = subprocess.run(cli + args + flags, cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=240)
        assert res.returncode == 0, res.stderr[-3000:]
        outputs += [res.stdout, res.stderr]
    from blocklin.pipelines.manifest import load_manifest, load_small

    full = np.vstack([x, batch])
    np.testing.assert_allclose(load_small(tmp_path / "out" / "gram.npz")["value"],
                               full.T @ full, rtol=1e-11)
    np.testing.assert_array_equal(bl.open(f"{bucket}/X.zarr").to_numpy(), full)
    manifest = load_manifest(tmp_path / "out")
    assert manifest is not None
    assert manifest["spec"]["inputs"]["X"]["storage_options"]["secret"] == "<redacted>"
    assert s3.fs().exists(f"{bucket.removeprefix('s3://')}/work/zarr.json")
    assert _assert_no_secret(s3, [bucket], tmp_path / "out", texts=tuple(outputs)) > 3
