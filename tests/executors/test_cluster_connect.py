"""Reaching a dask cluster fails fast and says why: malformed addresses at once, a
scheduler that does not answer within connect_timeout, a cluster where no worker joins
within worker_timeout, a tls:// address without certificates."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.pipelines.conftest import run_cli

import blocklin as bl
from blocklin.errors import ConfigError, ExecutorError
from blocklin.executors.options import ComputeOptions


@pytest.fixture
def x(tmp_path: Path) -> bl.BlockMatrix:
    return bl.from_array(np.ones((100, 4)), tmp_path / "X.zarr", chunks=(50, None))


@pytest.mark.parametrize(("address", "says"), [
    ("notanaddress", "has no host:port"),
    ("tcp://host", "has no host:port"),
    ("tcp://host:99999", "not a number in 1..65535"),
    ("tcp://host:port", "not a number in 1..65535"),
    ("http://host:8786", "unknown scheme 'http'"),
])
def test_malformed_address_is_refused_at_once(x: bl.BlockMatrix, tmp_path: Path, address: str,
                                              says: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=says):
        bl.compute(bl.ops.gram(x), address=address, work_dir=str(tmp_path / "w"))
    assert time.perf_counter() - t0 < 1


def test_cli_malformed_address_exits_2_without_hanging(tmp_path: Path, x: bl.BlockMatrix) -> None:
    spec = {"name": "t", "inputs": {"X": {"path": "X.zarr"}},
            "steps": [{"name": "g", "op": "gram", "inputs": {"A": "X"}}],
            "outputs": {"g": {"step": "g"}}, "output_dir": "out"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    t0 = time.perf_counter()
    res = run_cli("run", "spec.yaml", "--address", "notanaddress", cwd=tmp_path, timeout=50)
    assert time.perf_counter() - t0 < 30  # the old CLI hung 60 s in Client.close
    assert res.returncode == 2, res.stderr
    assert "notanaddress" in res.stderr and "scheme://host:port" in res.stderr
    assert "Traceback" not in res.stderr


def test_connect_timeout_bounds_an_unanswered_address(x: bl.BlockMatrix, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ExecutorError, match=r"cannot reach the dask scheduler at "
                                            r"tcp://127.0.0.1:9 within 1 s"):
        bl.compute(bl.ops.gram(x), address="tcp://127.0.0.1:9", connect_timeout=1,
                   work_dir=str(tmp_path / "w"))
    assert time.perf_counter() - t0 < 8


def test_no_worker_joins_within_worker_timeout(x: bl.BlockMatrix, tmp_path: Path) -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        t0 = time.perf_counter()
        with pytest.raises(ExecutorError, match=r"no worker joined the dask cluster at .* "
                                                r"within 1.5 s"):
            bl.compute(bl.ops.gram(x), address=cluster.scheduler_address, worker_timeout=1.5,
                       work_dir=str(tmp_path / "w"))
        assert 1.4 < time.perf_counter() - t0 < 10


def test_worker_joining_late_is_waited_for(x: bl.BlockMatrix, tmp_path: Path) -> None:
    import threading

    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        timer = threading.Timer(1.0, lambda: cluster.scale(1))
        timer.start()
        try:
            (g,) = bl.compute(bl.ops.gram(x), address=cluster.scheduler_address,
                              worker_timeout=30, work_dir=str(tmp_path / "w"))
        finally:
            timer.join()
    np.testing.assert_allclose(g, np.ones((100, 4)).T @ np.ones((100, 4)))


def test_tls_address_without_certificates_is_a_clear_error(x: bl.BlockMatrix,
                                                           tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TLS address but no certificates.*--tls-ca-file"):
        bl.compute(bl.ops.gram(x), address="tls://127.0.0.1:8786", work_dir=str(tmp_path / "w"))


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:99999", "tcp://127.0.0.1:0", "127.0.0.1:70000"])
def test_pipeline_reachability_check_names_a_bad_port(address: str) -> None:
    """On 87a2a84 urlparse's port raised a bare ValueError ('Port out of range')."""
    from blocklin.pipelines.execute import check_reachable

    with pytest.raises(ConfigError, match=rf"{address!r}.*not a number in 1..65535"):
        check_reachable(ComputeOptions(address=address))


def test_cli_port_out_of_range_exits_2(tmp_path: Path, x: bl.BlockMatrix) -> None:
    spec = {"name": "t", "inputs": {"X": {"path": "X.zarr"}},
            "steps": [{"name": "g", "op": "gram", "inputs": {"A": "X"}}],
            "outputs": {"g": {"step": "g"}}, "output_dir": "out"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    res = run_cli("run", "spec.yaml", "--address", "tcp://127.0.0.1:99999", cwd=tmp_path,
                  timeout=50)
    assert res.returncode == 2, res.stderr
    assert "tcp://127.0.0.1:99999" in res.stderr and "1..65535" in res.stderr
    assert not (tmp_path / "out").exists()


def test_one_client_per_compute_at_an_address(x: bl.BlockMatrix, tmp_path: Path) -> None:
    """The check, the cache budget and the run share one connection, closed after."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as watcher:
        (g,) = bl.compute(bl.ops.gram(x), address=cluster.scheduler_address,
                          cache_bytes="auto", work_dir=str(tmp_path / "w"))
        events = [e for _, e in watcher.get_events("all")
                  if isinstance(e, dict) and e.get("client") != watcher.id]
        assert [e["action"] for e in events].count("add-client") == 1
        assert "remove-client" in [e["action"] for e in events]
    np.testing.assert_allclose(g, np.ones((100, 4)).T @ np.ones((100, 4)))
