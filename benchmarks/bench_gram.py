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
from pathlib import Path

import numpy as np

import blocklin as bl
from _common import gram_pass_limit, make_matrix, median_time
from blocklin.config import DEFAULT_BLOCK_BYTES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=500)
    ap.add_argument("--chunk-rows", type=int, default=0,
                    help="rows per block (default: blocklin's default, about 64 MiB blocks)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "blocklin-bench")
    args = ap.parse_args()
    threads = os.cpu_count() or 1
    args.data.mkdir(parents=True, exist_ok=True)
    chunk_rows = args.chunk_rows or max(1, DEFAULT_BLOCK_BYTES // (8 * args.cols))
    A = make_matrix(args.data / f"gram_{args.rows}x{args.cols}_{chunk_rows}.zarr", args.rows,
                    args.cols, chunk_rows)
    work = str(args.data / "work")
    print(f"matrix {A.shape} float64, {A.nblocks[0]} row blocks of {A.chunks[0]} rows, "
          f"{A.nbytes / 1e9:.2f} GB, codec {A.meta.codec}, {threads} cores\n")

    import dask.array as da

    Z = da.from_zarr(A.url)
    x = A.to_numpy()
    ref = x.T @ x
    del x

    t_read, t_syrk_tasks, t_syrk_blas = gram_pass_limit(A, threads, args.repeat)
    t_syrk = min(t_syrk_tasks, t_syrk_blas)

    g = bl.ops.gram(A).compute(work_dir=work)
    assert np.abs(g - ref).max() / np.abs(ref).max() < 1e-12
    t_bl_gram, _ = median_time(lambda: bl.ops.gram(A).compute(work_dir=work), args.repeat)
    t_bl_mm, _ = median_time(lambda: bl.ops.matmul(A.T, A).compute(work_dir=work), args.repeat)
    t_dask, _ = median_time(lambda: (Z.T @ Z).compute(scheduler="threads"), args.repeat)

    gb = A.nbytes / 1e9
    flops_syrk = A.shape[0] * A.shape[1] ** 2
    limit_gram = t_read + t_syrk
    rows = [
        ("T_read (all chunks, fastest path)", t_read, f"{gb / t_read:.2f} GB/s"),
        ("T_compute syrk, a task per core", t_syrk_tasks,
         f"{flops_syrk / t_syrk_tasks / 1e9:.1f} GFLOP/s"),
        ("T_compute syrk, threaded BLAS", t_syrk_blas, f"{flops_syrk / t_syrk_blas / 1e9:.1f} GFLOP/s"),
        ("machine limit = T_read + T_compute", limit_gram, "(faster T_compute)"),
        ("blocklin gram(A)", t_bl_gram, f"{t_bl_gram / limit_gram:.2f}x limit"),
        ("blocklin matmul(A.T, A)", t_bl_mm, f"{t_bl_mm / limit_gram:.2f}x limit"),
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
