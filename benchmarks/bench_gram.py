"""Gram matrix and AᵀA: blocklin vs dask.array on the same zarr data, vs the machine limit.

The machine limit is T_read + T_compute, measured in the same run: T_read reads and
verifies every chunk with all cores (blocklin's fastest read path: chunk bytes read
into reused buffers, decoded in place), T_compute runs the same products over blocks
already in memory with all cores. On 2 cores reading and BLAS compete for the same
CPUs, so the two add.

Run: ``python benchmarks/bench_gram.py [--rows 200000 --cols 500 --repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy.linalg import blas
from threadpoolctl import threadpool_limits

import blocklin as bl
from _common import blocks_in_memory, make_matrix, median_time, read_all_blocks


def compute_syrk(blocks: list[np.ndarray], threads: int) -> np.ndarray:
    """AᵀA over in-memory blocks: one single-threaded syrk per block, ``threads`` at once."""
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as ex:
        parts = list(ex.map(lambda b: blas.dsyrk(1.0, b.T, trans=0), blocks))
    return sum(parts[1:], parts[0])


def compute_gemm(blocks: list[np.ndarray], threads: int) -> np.ndarray:
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as ex:
        parts = list(ex.map(lambda b: b.T @ b, blocks))
    return sum(parts[1:], parts[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=500)
    ap.add_argument("--chunk-rows", type=int, default=16_384)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "blocklin-bench")
    args = ap.parse_args()
    threads = os.cpu_count() or 1
    args.data.mkdir(parents=True, exist_ok=True)
    A = make_matrix(args.data / f"gram_{args.rows}x{args.cols}.zarr", args.rows, args.cols,
                    args.chunk_rows)
    work = str(args.data / "work")
    print(f"matrix {A.shape} float64, {A.nblocks[0]} row blocks of {A.chunks[0]} rows, "
          f"{A.nbytes / 1e9:.2f} GB, codec {A.meta.codec}, {threads} cores\n")

    import dask.array as da

    Z = da.from_zarr(A.url)
    x = A.to_numpy()
    ref = x.T @ x
    del x

    t_read, _ = median_time(lambda: read_all_blocks(A, threads), args.repeat)
    blocks = blocks_in_memory(A)
    t_syrk, _ = median_time(lambda: compute_syrk(blocks, threads), args.repeat)
    t_gemm, _ = median_time(lambda: compute_gemm(blocks, threads), args.repeat)

    g = bl.ops.gram(A).compute(work_dir=work)
    assert np.abs(g - ref).max() / np.abs(ref).max() < 1e-12
    t_bl_gram, _ = median_time(lambda: bl.ops.gram(A).compute(work_dir=work), args.repeat)
    t_bl_mm, _ = median_time(lambda: bl.ops.matmul(A.T, A).compute(work_dir=work), args.repeat)
    t_dask, _ = median_time(lambda: (Z.T @ Z).compute(scheduler="threads"), args.repeat)

    gb = A.nbytes / 1e9
    flops_syrk = A.shape[0] * A.shape[1] ** 2
    limit_gram = t_read + t_syrk
    limit_mm = t_read + t_gemm
    rows = [
        ("T_read (all chunks, fastest path)", t_read, f"{gb / t_read:.2f} GB/s"),
        ("T_compute syrk (blocks in memory)", t_syrk, f"{flops_syrk / t_syrk / 1e9:.1f} GFLOP/s"),
        ("T_compute gemm (blocks in memory)", t_gemm, f"{2 * flops_syrk / t_gemm / 1e9:.1f} GFLOP/s"),
        ("machine limit gram = T_read + syrk", limit_gram, ""),
        ("blocklin gram(A)", t_bl_gram, f"{t_bl_gram / limit_gram:.2f}x limit"),
        ("blocklin matmul(A.T, A)", t_bl_mm, f"{t_bl_mm / limit_mm:.2f}x its limit (gemm)"),
        ("dask (Z.T @ Z), threads", t_dask, ""),
    ]
    print(f"{'what':<38} {'median s':>9}  note   (median of {args.repeat})")
    for name, t, note in rows:
        print(f"{name:<38} {t:>9.3f}  {note}")
    print(f"\ndask / blocklin gram:      {t_dask / t_bl_gram:.2f}x")
    print(f"dask / blocklin matmul:    {t_dask / t_bl_mm:.2f}x")
    print(f"blocklin gram / limit:     {t_bl_gram / limit_gram:.2f}x")


if __name__ == "__main__":
    main()
