"""A real dask cluster started with its own CLI (one scheduler, two workers on loopback),
and ``blocklin run --address`` against it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.pipelines.conftest import base_spec, run_cli

from blocklin.pipelines.manifest import load_small
from blocklin.testing.helpers import free_ports

DASK = str(Path(sys.executable).parent / "dask")


def _wait_for_workers(address: str, n: int, timeout: float = 60) -> None:
    from distributed import Client

    with Client(address, timeout="30s", set_as_default=False) as client:
        client.wait_for_workers(n, timeout=timeout)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    port = free_ports()[0]
    address = f"tcp://127.0.0.1:{port}"
    log = (tmp_path / "cluster.log").open("w")
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=log, stderr=log)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        for _ in range(2):
            procs.append(subprocess.Popen(
                [DASK, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                 "--memory-limit", "1GiB", "--no-dashboard", "--no-nanny"],
                stdout=log, stderr=log))
        _wait_for_workers(address, 2)
        yield address
    finally:
        # Workers are killed outright: a graceful close waits on the scheduler for seconds,
        # and these workers hold nothing worth saving.
        for p in procs[1:]:
            p.kill()
        procs[0].terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


@pytest.mark.cluster
def test_run_against_scheduler_and_two_workers(cluster: str, matrix: Any, write_spec: Any,
                                               tmp_path: Path) -> None:
    x, _ = matrix
    spec = write_spec(base_spec())
    res = run_cli("run", str(spec), "--address", cluster, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["stats"]["tasks_run"] == 7  # 5 fused partial tasks + 2 reductions
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["executor"]["address"] == cluster
    np.testing.assert_allclose(load_small(tmp_path / "out" / "gram.npz")["value"], x.T @ x,
                               rtol=1e-12)
    np.testing.assert_allclose(load_small(tmp_path / "out" / "stats.npz")["mean"], x.mean(0),
                               rtol=1e-12)
    # A refresh runs on the same cluster.
    b = np.random.default_rng(3).normal(size=(60, 6))
    np.save(tmp_path / "b.npy", b)
    res = run_cli("refresh", str(spec), "--append", str(tmp_path / "b.npy"), "--address",
                  cluster, "--json")
    assert res.returncode == 0, res.stderr
    full = np.vstack([x, b])
    np.testing.assert_allclose(load_small(tmp_path / "out" / "gram.npz")["value"],
                               full.T @ full, rtol=1e-11)
