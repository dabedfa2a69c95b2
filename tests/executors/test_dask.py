from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.config
import numpy as np
import pytest

import blocklin as bl
from blocklin.errors import ConfigError, ExecutorError, PlanMemoryError
from blocklin.plan.device import gpu_module
from blocklin.testing import assert_bitwise_equal


def test_address_runs_on_cluster(tmp_path: Path, dask_client: Any) -> None:
    x = np.random.default_rng(0).standard_normal((1000, 10))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(128, None))
    address = dask_client.scheduler.address
    g = bl.ops.gram(A).compute(address=address, work_dir=str(tmp_path / "w"))
    ref = bl.ops.gram(A).compute(work_dir=str(tmp_path / "w2"))
    assert_bitwise_equal(g, ref)


def test_worker_memory_checked_before_running(tmp_path: Path, dask_client: Any) -> None:
    A = bl.from_array(np.ones((4000, 50)), tmp_path / "A.zarr", chunks=(4000, None))
    limit = min(w["memory_limit"] for w in dask_client.scheduler_info()["workers"].values())
    with pytest.raises(PlanMemoryError, match="worker"):
        # Allowed by the plan's own limit, but not by the workers' memory.
        bl.ops.matmul(A, np.ones((50, limit // 8 // 4000 + 1))).compute(
            client=dask_client, work_dir=str(tmp_path / "w"), max_task_memory=10 * limit)
    assert not (tmp_path / "w").exists()


def test_executor_errors(tmp_path: Path) -> None:
    A = bl.from_array(np.ones((10, 2)), tmp_path / "A.zarr")
    with pytest.raises(ConfigError, match="executor must be one of"):
        bl.ops.gram(A).compute(executor="ray")
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}), \
            pytest.raises(ExecutorError, match="cannot reach"):
        bl.ops.gram(A).compute(address="tcp://127.0.0.1:1", work_dir=str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


@pytest.mark.skipif(gpu_module() is not None, reason="this machine has a usable GPU")
def test_gpu_device_placement_is_checked(tmp_path: Path, dask_client: Any) -> None:
    A = bl.from_array(np.ones((100, 4)), tmp_path / "A.zarr", chunks=(50, None))
    # The local threaded scheduler computes here: without a GPU it is refused.
    with pytest.raises(ConfigError, match=r"CuPy .*this machine .*dask cluster"):
        bl.ops.gram(A).compute(device="gpu", work_dir=str(tmp_path / "w"))
    with pytest.raises(ConfigError, match=r"no worker .* declares a GPU"):
        bl.ops.gram(A).compute(device="gpu", client=dask_client, work_dir=str(tmp_path / "w"))
    with pytest.raises(ConfigError, match="device must be one of"):
        bl.ops.gram(A).compute(device="tpu", work_dir=str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


@pytest.mark.skipif(gpu_module() is not None, reason="this machine has a usable GPU")
def test_gpu_resource_workers_without_a_gpu_are_refused(tmp_path: Path) -> None:
    """A worker declaring a GPU resource is asked, before the run, whether CuPy sees a
    device there: kernels run on the GPU, so a CPU-only worker cannot take the tasks."""
    from distributed import Client, LocalCluster

    x = np.random.default_rng(1).standard_normal((400, 6))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
                      resources={"GPU": 1}) as cluster, Client(cluster, set_as_default=False) as c:
        with pytest.raises(ConfigError, match=r"worker .* declares a GPU resource .*CuPy"):
            bl.ops.gram(A).compute(device="gpu", client=c, work_dir=str(tmp_path / "w"))
        g = bl.ops.gram(A).compute(client=c, work_dir=str(tmp_path / "w"))
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-13)


@pytest.mark.gpu
@pytest.mark.skipif(gpu_module() is None, reason="needs CuPy and a CUDA device")
def test_gpu_resource_tasks_run_on_the_workers_gpu(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    x = np.random.default_rng(1).standard_normal((400, 6))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0",
                      resources={"GPU": 1}) as cluster, Client(cluster, set_as_default=False) as c:
        g = bl.ops.gram(A).compute(device="gpu", client=c, work_dir=str(tmp_path / "w"))
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-13)
