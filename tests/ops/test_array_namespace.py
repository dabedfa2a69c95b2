"""Every block kernel through the array-namespace path, on every commit, without a GPU.

The kernels a GPU worker runs with CuPy are the kernels a CPU worker runs with numpy:
written once against the array API namespace of their blocks. Here each operator's
plan runs through ``run_task`` with its blocks moved to ``array_api_strict`` arrays
(:class:`blocklin.testing.devices.InOrderExecutor`), which refuse any call outside the
standard (one CuPy might not have), and the results are compared with the numpy run.
Tests marked ``gpu`` run the same plans on a real GPU and skip without CuPy or a device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.errors import ConfigError, PlanMemoryError
from blocklin.executors.lazy import Lazy
from blocklin.ml import LinearRegression
from blocklin.ops import glm
from blocklin.ops.glm.lsqr import lsqr_spec
from blocklin.ops.glm.passes import build_pass
from blocklin.ops.inputs import as_matrix, row_panel_tasks
from blocklin.ops.stats import ColumnStats
from blocklin.ops.svd import normal_product
from blocklin.plan.device import (
    GPU_TASKS,
    DeviceScope,
    gpu_module,
    is_sparse,
    like,
    namespace,
    to_device,
    to_host,
)
from blocklin.plan.finalize import finalize
from blocklin.plan.graph import TaskContext, make_stage
from blocklin.plan.memory import (
    check_device_memory,
    plan_device_tasks,
    project_device_memory,
)
from blocklin.plan.reduce import SumParts, tree_reduce
from blocklin.testing.devices import InOrderExecutor

ROWS, COLS, CHUNK = 1500, 24, 400
# float64 kernels on the same blocks: only the reduction order inside a kernel (or
# LAPACK's blocked against numpy's unblocked QR) differs, ~1e-15 relative; 1e-12 holds
# with room. Reductions across blocks are the same host tree on every device.
RTOL = 1e-12

needs_gpu = pytest.mark.skipif(gpu_module() is None, reason="needs CuPy and a CUDA device")


@dataclass(frozen=True)
class Data:
    A: Any
    B: Any
    S: Any
    y: Any
    yb: Any
    yk: Any
    w: Any
    R: Any
    W: np.ndarray


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    d = tmp_path_factory.mktemp("namespace")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((ROWS, COLS)) + 0.5
    s = sp.random(ROWS, COLS, density=0.1, random_state=8, format="csr")
    chunks = (CHUNK, None)
    return Data(
        A=bl.from_array(x, d / "A.zarr", chunks=(CHUNK, 10)),  # 3 column blocks per panel
        B=bl.from_array(rng.standard_normal((ROWS, 5)), d / "B.zarr", chunks=chunks),
        S=bl.from_array(s, d / "S.zarr", chunks=chunks),
        y=bl.from_array(x[:, :1] @ np.ones((1, 1)) + rng.standard_normal((ROWS, 1)),
                        d / "y.zarr", chunks=chunks),
        yb=bl.from_array((rng.random((ROWS, 1)) < 0.4).astype(np.float64), d / "yb.zarr",
                         chunks=chunks),
        yk=bl.from_array(rng.integers(0, 3, (ROWS, 1)).astype(np.float64), d / "yk.zarr",
                         chunks=chunks),
        w=bl.from_array(rng.random((ROWS, 1)) + 0.5, d / "w.zarr", chunks=chunks),
        R=bl.from_array(np.arange(30.0).reshape(5, 6) / 7, d / "R.zarr"),
        W=rng.standard_normal((COLS, 6)))


SHIFT = np.linspace(0.3, 0.7, COLS)
COEF = np.linspace(-0.2, 0.3, COLS + 1)[:, None]
COEF3 = np.linspace(-0.2, 0.3, 3 * (COLS + 1)).reshape(COLS + 1, 3)

def _lsqr(X: Any, y: Any, w: Any) -> Lazy:
    spec = lsqr_spec(COEF[:, 0], 0.7, True, w is not None, as_matrix(X).grid[1])
    return build_pass(spec, X, y, w)


def _sketch_case(kind: str) -> Callable[[Data], list[Lazy]]:
    return lambda d: [bl.ops.sketch(d.A, 12, kind=kind, seed=3)]  # type: ignore[arg-type]


#: Every kernel family the issue lists, as lazy results over the stored data.
CASES: dict[str, Callable[[Data], list[Lazy]]] = {
    "gram": lambda d: [bl.ops.gram(d.A)],
    "gram_sparse": lambda d: [bl.ops.gram(d.S)],
    "gram_centered": lambda d: [bl.ops.gram(bl.ops.center(d.A))],
    "matmul_tn": lambda d: [bl.ops.matmul(d.A.T, d.B)],
    "matmul_numpy_right": lambda d: [bl.ops.matmul(d.A, d.W)],
    "matmul_numpy_right_sparse": lambda d: [bl.ops.matmul(d.S, d.W)],
    "matmul_stored_right": lambda d: [bl.ops.matmul(d.B, d.R)],
    "column_stats": lambda d: [bl.ops.column_stats(d.A)],
    "column_stats_sparse": lambda d: [bl.ops.column_stats(d.S)],
    **{f"sketch_{k}": _sketch_case(k)
       for k in ("gaussian", "rademacher", "sparse_sign", "countsketch", "srht", "fjlt")},
    "sketch_sparse_A": lambda d: [bl.ops.sketch(d.S, 12, kind="sparse_sign", seed=3),
                                  bl.ops.sketch(d.S, 12, kind="gaussian", seed=3)],
    "sketch_right": lambda d: [bl.ops.sketch(d.A, 7, side="right", seed=4),
                               bl.ops.sketch(d.A, 7, kind="sparse_sign", side="right", seed=4)],
    "tsqr": lambda d: [*bl.ops.tsqr(d.A)],
    "tsqr_r_joined": lambda d: [bl.ops.tsqr_r(d.A, d.B)],
    "svd": lambda d: [*bl.ops.svd(d.A)],
    "rsvd_normal_product": lambda d: [
        normal_product(d.A, d.W), normal_product(d.A, d.W, shift=SHIFT, with_sums=True),
        normal_product(d.S, d.W, shift=SHIFT, with_sums=True)],
    "glm_moments": lambda d: [glm.normal_stats(d.A, d.y), glm.normal_stats(d.A, d.y, d.w)],
    "glm_loss_grad": lambda d: [glm.loss_grad(d.A, d.y, COEF),
                                glm.loss_grad(d.A, d.yb, COEF, family="binomial",
                                              sample_weight=d.w)],
    "glm_newton": lambda d: [glm.newton_pass(d.A, d.yb, COEF),
                             glm.newton_pass(d.A, d.yb, COEF, sample_weight=d.w)],
    "glm_multinomial": lambda d: [glm.newton_pass(d.A, d.yk, COEF3),
                                  glm.loss_grad(d.A, d.yk, COEF3, family="multinomial")],
    "glm_lsqr": lambda d: [_lsqr(d.A, d.y, None), _lsqr(d.A, d.y, d.w), _lsqr(d.S, d.y, d.w)],
    "glm_sparse_X": lambda d: [glm.loss_grad(d.S, d.y, COEF), glm.normal_stats(d.S, d.y, d.w)],
}


def _values(results: tuple[Any, ...]) -> list[np.ndarray]:
    out = []
    for r in results:
        if isinstance(r, ColumnStats):
            out.append(np.concatenate([r.mean, r.variance, r.min, r.max, r.norm_l1, r.norm_l2,
                                       r.num_nonzeros.astype(np.float64), [r.count]]))
        elif hasattr(r, "to_numpy"):
            out.append(r.to_numpy())
        else:
            out.append(np.asarray(r, dtype=np.float64))
    return out


def _run(data: Data, case: str, tmp_path: Path, name: str, **kwargs: Any) -> list[np.ndarray]:
    return _values(bl.compute(*CASES[case](data), work_dir=str(tmp_path / name), **kwargs))


@pytest.mark.parametrize("case", sorted(CASES))
def test_strict_namespace_run_matches_numpy(data: Data, tmp_path: Path, case: str) -> None:
    ref = _run(data, case, tmp_path, "cpu")
    got = _run(data, case, tmp_path, "strict", executor=InOrderExecutor("array_api_strict"))
    for r, g in zip(ref, got, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype
        scale = max(float(np.abs(r).max()), 1e-300)
        assert float(np.abs(g - r).max()) <= RTOL * scale, case


@pytest.mark.parametrize("case", ["gram", "column_stats", "sketch_gaussian", "tsqr",
                                  "glm_moments"])
def test_namespace_dispatch_keeps_cpu_bits(data: Data, tmp_path: Path, case: str) -> None:
    """The in-order runner on ``cpu`` runs the numpy path of the same kernels: the same
    bits as the threaded executor (the dispatch changes nothing on the CPU)."""
    ref = _run(data, case, tmp_path, "threads")
    got = _run(data, case, tmp_path, "inorder", executor=InOrderExecutor("cpu"))
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_array_equal(g, r)


class _Probe:
    """Sums its blocks, recording the array types it was given."""

    seen: ClassVar[list[str]] = []
    on_device: ClassVar[bool] = True

    def __call__(self, ctx: TaskContext, blocks: Any) -> Any:
        type(self).seen.append(type(blocks[0]).__module__.split(".")[0])
        xp = namespace(*blocks)
        return xp.sum(blocks[0], axis=0)[None, None, :]


class _HostProbe(SumParts):
    seen: ClassVar[list[str]] = []

    def __call__(self, ctx: TaskContext, blocks: Any) -> Any:
        type(self).seen.append(type(blocks[0]).__module__.split(".")[0])
        return super().__call__(ctx, blocks)


def test_device_kernels_get_device_blocks_and_reductions_host_blocks(data: Data,
                                                                      tmp_path: Path) -> None:
    m = as_matrix(data.B)
    stage = make_stage("probe/partial", _Probe(), [m.input], row_panel_tasks([m]),
                       shape=(m.grid[0], 1, 5), chunks=(1, 1, 5), dtype="float64")
    plan, out = tree_reduce(m.plan.add(stage), stage.output, _HostProbe(), op="probe")
    got = bl.compute(Lazy(plan, out, "small", label="probe"), work_dir=str(tmp_path / "w"),
                     executor=InOrderExecutor("array_api_strict"))[0]
    np.testing.assert_allclose(got[0, 0], data.B.to_numpy().sum(axis=0), rtol=1e-13)
    assert set(_Probe.seen) == {"array_api_strict"} and len(_Probe.seen) == m.grid[0]
    assert set(_HostProbe.seen) == {"numpy"}


def test_to_device_and_back() -> None:
    x = np.arange(12.0).reshape(3, 4)
    s = sp.random(5, 4, density=0.5, random_state=1, format="csr")
    strict = to_device(x, "array_api_strict")
    assert type(strict).__module__.startswith("array_api_strict")
    np.testing.assert_array_equal(to_host(strict), x)
    assert to_device(x, "cpu") is x and to_host(x) is x
    # The strict namespace has no sparse arrays: CSR blocks arrive dense.
    np.testing.assert_array_equal(to_host(to_device(s, "array_api_strict")), s.toarray())
    assert is_sparse(s) and not is_sparse(x)
    # Host parameters follow a block to its namespace; sparse ones are densified there.
    dense_s = like(s, strict)
    np.testing.assert_array_equal(to_host(dense_s), s.toarray())
    assert like(x, x) is x and like(None, strict) is None
    with pytest.raises(TypeError):
        namespace(x, strict)
    with pytest.raises(ConfigError, match="unknown device"):
        to_device(x, "tpu")


@pytest.mark.skipif(gpu_module() is not None, reason="this machine has a usable GPU")
def test_gpu_without_cupy_is_a_clear_config_error(data: Data, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CuPy"):
        to_device(np.ones(3), "gpu")
    # A GPU task whose kernels all stay on the host (a reduction level on a driver
    # without a GPU) never asks for one; its first copy to the device does.
    with DeviceScope("gpu"):
        pass
    with DeviceScope("gpu"), pytest.raises(ConfigError, match="CuPy"):
        to_device(sp.eye(3, format="csr"), "gpu")
    with pytest.raises(ConfigError, match="CuPy"):
        bl.ops.gram(data.A).compute(device="gpu", work_dir=str(tmp_path / "w"))
    with pytest.raises(ConfigError, match="CuPy"):
        LinearRegression(compute_options={"device": "gpu",
                                                "work_dir": str(tmp_path / "w")}).fit(data.A,
                                                                                      data.y)
    assert not (tmp_path / "w").exists()


def test_device_memory_projection(data: Data) -> None:
    m = as_matrix(data.A)
    final = finalize(bl.ops.gram(data.A).plan, 2**40)
    partial, reduce = final.groups[0].members, final.groups[1].members
    n = COLS
    # Three column blocks of 400 x 10, 10, 4 floats read once, the n x n output and the
    # declared working memory (n x n accumulator plus the joined panel).
    blocks = CHUNK * 10 * 8 * 3
    extra = partial[0].extra_memory
    assert extra == n * n * 8 + m.node.chunk_nbytes * m.grid[1]
    assert project_device_memory(partial) == blocks + n * n * 8 + extra
    assert project_device_memory(reduce) == 0  # reduction levels stay on the host
    need = project_device_memory(partial)
    groups = [g.members for g in final.groups]
    assert plan_device_tasks(groups, None) == GPU_TASKS
    assert plan_device_tasks(groups, GPU_TASKS * need) == GPU_TASKS
    assert plan_device_tasks(groups, need) == 1
    with pytest.raises(PlanMemoryError, match=r"gram/partial.*device memory") as err:
        check_device_memory(groups, need - 1)
    assert err.value.projected == need and err.value.limit == "device memory"


def test_plan_over_device_memory_is_refused_before_anything_runs(data: Data,
                                                                tmp_path: Path) -> None:
    with pytest.raises(PlanMemoryError, match=r"sketch/partial.*over the allowed device memory"):
        bl.compute(bl.ops.gram(data.B), bl.ops.sketch(data.A, 12), device="gpu",
                   max_device_memory="64KiB", work_dir=str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


# -- on a GPU -------------------------------------------------------------------------
@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_gpu_run_matches_cpu_and_repeats_bitwise(data: Data, tmp_path: Path, case: str) -> None:
    ref = _run(data, case, tmp_path, "cpu")
    first = _run(data, case, tmp_path, "gpu1", device="gpu")
    again = _run(data, case, tmp_path, "gpu2", device="gpu")
    for r, g, h in zip(ref, first, again, strict=True):
        scale = max(float(np.abs(r).max()), 1e-300)
        assert float(np.abs(g - r).max()) <= RTOL * scale, case
        np.testing.assert_array_equal(h, g)  # same GPU, same bits


@pytest.mark.gpu
@needs_gpu
def test_gpu_float32_gram(tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((4000, 64)).astype(np.float32)
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(1000, None))
    g = bl.ops.gram(A).compute(device="gpu", work_dir=str(tmp_path / "w"))
    ref = x.astype(np.float64).T @ x.astype(np.float64)
    assert g.dtype == np.float32
    # float32 sums of 1000 products per block: ~sqrt(1000)·eps32 relative, 2e-5 with room.
    assert float(np.abs(g - ref).max() / np.abs(ref).max()) < 2e-5


@pytest.mark.gpu
@needs_gpu
def test_gpu_estimator_through_compute_options(data: Data, tmp_path: Path) -> None:
    cpu = LinearRegression(compute_options={"work_dir": str(tmp_path / "c")})
    gpu = LinearRegression(compute_options={"device": "gpu",
                                                  "work_dir": str(tmp_path / "g")})
    cpu.fit(data.A, data.y)
    gpu.fit(data.A, data.y)
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@needs_gpu
def test_gpu_blocks_go_through_pinned_buffers_on_the_task_stream() -> None:
    cupy = gpu_module()
    assert cupy is not None
    blocks = [np.random.default_rng(i).standard_normal((3000, 70)) for i in range(3)]
    with DeviceScope("gpu") as scope:
        on_gpu = [to_device(b, "gpu") for b in blocks]
        assert cupy.cuda.get_current_stream() is not cupy.cuda.Stream.null
        sums = [float(cupy.sum(g)) for g in on_gpu]  # on the scope's stream, after its copies
        before = list(scope.staging.buffers)
    for b, g, s in zip(blocks, on_gpu, sums, strict=True):
        np.testing.assert_array_equal(to_host(g), b)
        assert s == pytest.approx(float(b.sum()), rel=1e-12)
    # The next task reuses this thread's pinned buffers instead of allocating more.
    with DeviceScope("gpu") as scope:
        to_device(blocks[0], "gpu")
        assert all(any(b is a for a in before) for b in scope.staging.buffers)
