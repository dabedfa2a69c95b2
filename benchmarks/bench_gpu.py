"""GPU against CPU on the same zarr data: gram, sketches, randomized SVD, linear regression.

For each dtype, one stored m × n matrix (and a label column) is run through blocklin
with ``device="cpu"`` and ``device="gpu"`` on this machine, and beside them the
limits measured in the same run:

- ``T_read``: reading and verifying every chunk with all cores (the fastest read path,
  ``_common.read_all_blocks``);
- host-to-device bandwidth, pinned and pageable (one block, CUDA events), and so
  ``T_copy`` = bytes of the matrix / pinned bandwidth;
- DGEMM/SGEMM peak (cuBLAS on an 8192² product; numpy on a 4096² one);
- ``T_compute`` of each one-pass operator: its block kernel over blocks already on the
  device (GPU) or in memory (CPU, one task per core), scaled to all blocks.

A GPU pass overlaps reading (host threads), copying (its own stream per task thread,
pinned buffers) and computing, so its limit is ``max(T_read, T_copy, T_compute)``;
the target is each one-pass operator within 1.5x of it. On the CPU reading and BLAS
share the cores, so the limit is ``T_read + T_compute``. GPU results are compared with
the CPU's (float64: 1e-12 relative expected) and with a second GPU run (same bits).

Run (one command; writes the table to --out as well as stdout)::

    python benchmarks/bench_gpu.py --rows 2000000 --cols 500 --out gpu.md

Without CuPy or a CUDA device it says "no GPU: CPU rows only" and times the CPU rows.
Data are written once under --data (2M x 500: 8 GB float64, 4 GB float32).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

import blocklin as bl
from _common import median_time, read_all_blocks
from blocklin.config import DEFAULT_BLOCK_BYTES
from blocklin.ml import LinearRegression
from blocklin.ops._random import SketchSpec
from blocklin.ops.glm.moments import MomentsPartial
from blocklin.ops.inputs import source_node
from blocklin.ops.products import GramPartial
from blocklin.ops.sketch import LeftSketchPartial
from blocklin.plan.device import gpu_module, to_device
from blocklin.plan.graph import Task, TaskContext

ONE_PASS = ("gram", "sketch_gaussian", "sketch_sparse_sign", "linreg_normal")
OPS = (*ONE_PASS, "rsvd_k50_q2")


@dataclass
class Data:
    A: bl.BlockMatrix
    y: bl.BlockMatrix


def make_data(path: Path, rows: int, cols: int, chunk_rows: int, dtype: str) -> Data:
    """Write (once) a Gaussian matrix of ``dtype`` and a float64 label y = Xβ + noise."""
    xp, yp = path / f"X_{rows}x{cols}_{chunk_rows}_{dtype}.zarr", path / f"y_{rows}_{chunk_rows}.zarr"
    if (xp / "zarr.json").exists() and (yp / "zarr.json").exists():
        A, y = bl.open(xp), bl.open(yp)
        if A.shape == (rows, cols) and A.dtype == np.dtype(dtype) and y.shape == (rows, 1):
            return Data(A, y)
    import dask.array as da

    x = da.random.default_rng(0).standard_normal((rows, cols), chunks=(chunk_rows, cols))
    A = bl.from_array(x.astype(dtype), xp, chunks=(chunk_rows, None), overwrite=True)
    beta = np.linspace(-1.0, 1.0, cols)
    noise = da.random.default_rng(1).standard_normal((rows, 1), chunks=(chunk_rows, 1))
    y = bl.from_array(x @ beta[:, None] + 0.1 * noise, yp, chunks=(chunk_rows, None),
                      overwrite=True)
    return Data(A, y)


def run_op(op: str, d: Data, device: str, work: str, sketch_k: int) -> np.ndarray:
    """One run of an operator on ``device``; its result as a numpy array."""
    opts: dict[str, Any] = {"device": device, "work_dir": work}
    if op == "gram":
        return np.asarray(bl.ops.gram(d.A).compute(**opts))
    if op.startswith("sketch_"):
        kind = op.removeprefix("sketch_")
        return np.asarray(bl.ops.sketch(d.A, sketch_k, kind=kind, seed=1).compute(**opts))  # type: ignore[arg-type]
    if op == "linreg_normal":
        m = LinearRegression(solver="normal", compute_options=opts).fit(d.A, d.y)
        return np.append(m.coef_, m.intercept_)
    if op == "rsvd_k50_q2":
        return np.asarray(bl.ops.randomized_svd(d.A, 50, n_iter=2, **opts).s)
    raise ValueError(op)


# -- machine limits -------------------------------------------------------------------
def h2d_bandwidth(cupy: Any, nbytes: int, repeat: int) -> tuple[float, float]:
    """(pinned, pageable) host-to-device GB/s for a buffer of ``nbytes``."""
    n = nbytes // 8
    host = np.random.default_rng(0).standard_normal(n)
    pinned_mem = cupy.cuda.alloc_pinned_memory(host.nbytes)
    pinned = np.frombuffer(pinned_mem, dtype=np.float64, count=n)
    pinned[:] = host
    dev = cupy.empty(n, dtype=np.float64)
    stream = cupy.cuda.Stream(non_blocking=True)

    def timed(src: np.ndarray) -> float:
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        dev.set(src, stream=stream)
        stop.record(stream)
        stop.synchronize()
        return float(cupy.cuda.get_elapsed_time(start, stop)) / 1e3

    timed(pinned)
    t_pinned = float(np.median([timed(pinned) for _ in range(repeat)]))
    t_page = float(np.median([timed(host) for _ in range(repeat)]))
    return host.nbytes / t_pinned / 1e9, host.nbytes / t_page / 1e9


def gemm_peak_gpu(cupy: Any, dtype: str, n: int = 8192) -> float:
    """cuBLAS GEMM TFLOP/s on n × n operands (median of 3 after a warm-up)."""
    a = cupy.random.default_rng(0).standard_normal((n, n), dtype=np.float64).astype(dtype)
    b = a.T.copy()
    a @ b
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(3):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        a @ b
        stop.record()
        stop.synchronize()
        times.append(float(cupy.cuda.get_elapsed_time(start, stop)) / 1e3)
    return 2 * n**3 / float(np.median(times)) / 1e12


def gemm_peak_cpu(dtype: str, n: int = 4096) -> float:
    """numpy GEMM TFLOP/s, BLAS on every core."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    t, _ = median_time(lambda: a @ a.T, 3)
    return 2 * n**3 / t / 1e12


def _kernel(op: str, d: Data, sketch_k: int) -> Callable[[int, list[Any]], Any]:
    """The block kernel of a one-pass operator, called as ``fn(row_block, blocks)``."""
    node = source_node(d.A)
    if op == "gram":
        dt = "float32" if d.A.dtype == np.float32 else "float64"
        gram = GramPartial(dt)
        return lambda i, blocks: gram(None, blocks[:1])  # type: ignore[arg-type]
    if op.startswith("sketch_"):
        kernel = LeftSketchPartial(SketchSpec(kind=op.removeprefix("sketch_"),  # type: ignore[arg-type]
                                              k=sketch_k, seed=1))

        def sketch(i: int, blocks: list[Any]) -> Any:
            ctx = TaskContext(task=Task(out=(i, 0, 0), reads=((0, (i, 0)),)), inputs=(node,),
                              output=node)
            return kernel(ctx, blocks[:1])

        return sketch
    moments = MomentsPartial(1, False, True)
    return lambda i, blocks: moments(None, blocks)


def compute_time(op: str, d: Data, device: str, sketch_k: int, threads: int,
                 sample: int) -> float:
    """Seconds of ``op``'s kernels over every block, from blocks already in memory (CPU:
    a task per core) or on the device (GPU), measured on ``sample`` blocks and scaled."""
    nb = d.A.nblocks[0]
    idx = list(range(min(nb, sample)))
    host = [[d.A.block(i), d.y.block(i)] for i in idx]
    fn = _kernel(op, d, sketch_k)
    if device == "cpu":
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as ex:
            list(ex.map(lambda i: fn(i, host[i]), idx))  # warm-up
            t0 = time.perf_counter()
            list(ex.map(lambda i: fn(i, host[i]), idx))
            return (time.perf_counter() - t0) * nb / len(idx)
    cupy = gpu_module()
    assert cupy is not None
    on_dev = [[to_device(b, "gpu") for b in blocks] for blocks in host]
    fn(0, on_dev[0])
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for i in idx:
        fn(i, on_dev[i])
    cupy.cuda.Device().synchronize()
    return (time.perf_counter() - t0) * nb / len(idx)


# -- main -----------------------------------------------------------------------------
def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-300))


@dataclass
class Limits:
    t_read: float
    h2d: float | None  # pinned GB/s; None without a GPU


def measure_limits(d: Data, dtype: str, threads: int, repeat: int, say: Callable[[str], None],
                   cupy: Any) -> Limits:
    """T_read, GEMM peaks and host-to-device bandwidth, printed as they are measured."""
    gb = d.A.nbytes / 1e9
    t_read, _ = median_time(lambda: read_all_blocks(d.A, threads), repeat)
    say(f"## {dtype}: {d.A.nblocks[0]} blocks of {d.A.chunks[0]} rows, {gb:.2f} GB, "
        f"codec {d.A.meta.codec}")
    say(f"T_read (all chunks, {threads} threads): {t_read:.3f} s = {gb / t_read:.2f} GB/s")
    say(f"CPU GEMM peak ({dtype}, numpy, all cores): {gemm_peak_cpu(dtype):.3f} TFLOP/s")
    if cupy is None:
        return Limits(t_read, None)
    pinned, pageable = h2d_bandwidth(cupy, min(d.A.meta.chunk_nbytes, 1 << 30), repeat)
    say(f"H2D: pinned {pinned:.2f} GB/s, pageable {pageable:.2f} GB/s; T_copy (pinned) "
        f"{gb / pinned:.3f} s")
    say(f"GPU {'D' if dtype == 'float64' else 'S'}GEMM peak: {gemm_peak_gpu(cupy, dtype):.2f} "
        "TFLOP/s")
    return Limits(t_read, pinned)


def op_rows(op: str, d: Data, devices: list[str], lim: Limits, args: argparse.Namespace,
            threads: int, work: str) -> list[str]:
    """The table rows of one operator: each device's median time, the GPU's agreement
    with the CPU and with itself, and for one-pass operators the limit and shares."""
    results: dict[str, np.ndarray] = {}
    times: dict[str, float] = {}
    rows = []
    gb = d.A.nbytes / 1e9
    for dev in devices:
        def once(dev: str = dev) -> np.ndarray:
            return run_op(op, d, dev, work, args.sketch_k)

        once()  # warm-up (and the GPU's first use: CuPy compiles its kernels)
        t, res = median_time(once, args.repeat)
        results[dev], times[dev] = res, t
        speed = diff = again = tc = limit = ratio = share = ""
        if dev == "gpu":
            again = "yes" if np.array_equal(once(), res) else "NO"
            diff = f"{_rel(res, results['cpu']):.1e}"
            speed = f"{times['cpu'] / t:.2f}x"
        if op in ONE_PASS:
            t_comp = compute_time(op, d, dev, args.sketch_k, threads, args.sample_blocks)
            tc = f"{t_comp:.3f}"
            if dev == "gpu" and lim.h2d is not None:
                t_copy = gb / lim.h2d
                bound = max(lim.t_read, t_copy, t_comp)
                total = lim.t_read + t_copy + t_comp
                share = (f"{lim.t_read / total:.0%}/{t_copy / total:.0%}/"
                         f"{t_comp / total:.0%}")
            else:
                bound = lim.t_read + t_comp
                share = f"{lim.t_read / bound:.0%}/-/{t_comp / bound:.0%}"
            limit, ratio = f"{bound:.3f}", f"{t / bound:.2f}"
        rows.append(f"| {op} | {dev} | {t:.3f} | {speed} | {diff} | {again} | {tc} | {limit} | "
                    f"{ratio} | {share} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--cols", type=int, default=500)
    ap.add_argument("--chunk-rows", type=int, default=0,
                    help="rows per block (default: blocklin's default, about 64 MiB blocks)")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--ops", default=",".join(OPS), help=f"subset of {','.join(OPS)}")
    ap.add_argument("--sketch-k", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sample-blocks", type=int, default=4,
                    help="blocks each compute-only time is measured on (then scaled)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "blocklin-bench")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()
    ops = [o for o in args.ops.split(",") if o]
    if set(ops) - set(OPS):
        ap.error(f"unknown ops {sorted(set(ops) - set(OPS))}; choose from {OPS}")
    threads = os.cpu_count() or 1
    cupy = gpu_module()
    devices = ["cpu", "gpu"] if cupy is not None else ["cpu"]
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    if cupy is None:
        say("no GPU: CPU rows only (CuPy not installed or no CUDA device); GPU columns are "
            "left empty, nothing GPU is claimed")
    else:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        say(f"GPU: {name}, {props['totalGlobalMem'] / 2**30:.0f} GiB; CuPy {cupy.__version__}")
    args.data.mkdir(parents=True, exist_ok=True)
    work = str(args.data / "work-gpu")
    say(f"{threads} CPU cores; blocklin {bl.__version__}; {args.rows} x {args.cols}; "
        f"median of {args.repeat}\n")
    for dtype in args.dtypes.split(","):
        itemsize = np.dtype(dtype).itemsize
        chunk_rows = args.chunk_rows or max(1, DEFAULT_BLOCK_BYTES // (itemsize * args.cols))
        d = make_data(args.data, args.rows, args.cols, chunk_rows, dtype)
        lim = measure_limits(d, dtype, threads, args.repeat, say, cupy)
        say("")
        say("| op | device | median s | CPU/GPU | rel. diff vs CPU | same bits again | "
            "T_compute s | limit s | run/limit | read/copy/compute share |")
        say("|---|---|---|---|---|---|---|---|---|---|")
        for op in ops:
            for row in op_rows(op, d, devices, lim, args, threads, work):
                say(row)
        say("")
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
