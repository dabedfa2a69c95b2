"""Sketches: time per pass vs the machine limit and vs dask, and error vs sketch size.

Data (written once under ``--data``, shared with ``bench_gram.py``): a dense Gaussian
zarr matrix (default 200,000 × 500 float64) and a sparse one of the same shape at 1%
density, stored as CSR row blocks. The sparse matrices are *row-sparse*, as activity
data usually is: 5% of rows are active, each with 20% of its entries nonzero.

Timing, every kind, one pass each (median of ``--repeat``):

* ``T_read``: read and verify every chunk with all cores, nothing else — the machine
  limit of any one-pass algorithm on this storage.
* ``T_inmem``: the same kind's block kernel (regenerate S's columns, multiply) over
  blocks already in memory, with all cores. On 2 cores reading and compute share the
  CPUs, so ``T_read + T_inmem`` is what a perfect one-pass run of that kind costs.
* blocklin ``sketch(A, k, kind)``, end to end (plan, tasks, reduction).
* dask: ``G @ da.from_zarr(A)`` with ``G = da.random.standard_normal((k, m))``
  chunked like A's rows — the equivalent dask expression (dense input only: dask has
  no reader for CSR row blocks).

Error vs k: ``sketched_matmul`` for AᵀA (dense) and AᵀB (sparse A and B, independent
row-sparse matrices), relative Frobenius error ‖est − AᵀB‖_F / (‖A‖_F‖B‖_F), mean over
``--seeds`` seeds; every sketch of one table is computed in one pass (fused stages).

Run: ``flock /tmp/blocklin-heavy.lock python benchmarks/bench_sketch.py``
(``--quick`` for 20,000 rows while developing). Writes
``benchmarks/results/bench_sketch.md`` and ``bench_sketch_error_vs_k.png``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

import blocklin as bl
from _common import blocks_in_memory, make_matrix, median_time, read_all_blocks
from blocklin.ops._random import SKETCH_KINDS, SketchSpec, sketch_rows
from blocklin.ops.sketch import left_apply
from blocklin.ops.sketched_matmul import PRODUCT_KINDS

RESULTS = Path(__file__).parent / "results"


def row_sparse(rows: int, cols: int, density: float, seed: int,
               active: float = 0.05) -> sp.csr_matrix:
    """A sparse matrix whose nonzeros sit in a fraction ``active`` of the rows."""
    rng = np.random.default_rng(seed)
    act = np.sort(rng.choice(rows, size=max(1, int(active * rows)), replace=False))
    inner = sp.random(act.size, cols, density=min(1.0, density / active), format="coo",
                      random_state=seed, data_rvs=rng.standard_normal)
    return sp.csr_matrix((inner.data, (act[inner.row], inner.col)), shape=(rows, cols))


def make_sparse(path: Path, rows: int, cols: int, density: float, seed: int,
                chunk_rows: int) -> bl.BlockMatrix:
    if (path / "zarr.json").exists():
        A = bl.open(path)
        if A.shape == (rows, cols) and A.chunks[0] == chunk_rows:
            return A
    return bl.from_array(row_sparse(rows, cols, density, seed), path, overwrite=True,
                         chunks=(chunk_rows, None))


def inmem_pass(blocks: list[Any], bounds: list[tuple[int, int]], kind: str, k: int,
               threads: int) -> np.ndarray:
    """The kind's block kernel over in-memory blocks, ``threads`` blocks at once."""
    spec = SketchSpec(kind, k, 0)  # type: ignore[arg-type]

    def one(i: int) -> np.ndarray:
        return left_apply(sketch_rows(spec, *bounds[i]), blocks[i])

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as ex:
        parts = list(ex.map(one, range(len(blocks))))
    return sum(parts[1:], parts[0])


def time_kinds(A: bl.BlockMatrix, k: int, repeat: int, work: str, threads: int,
               dask_time: float | None) -> list[tuple[str, ...]]:
    # The limit is the best the machine does: the least of two medians, taken before and
    # after the kinds' runs (other load on a shared machine only ever slows reads down).
    ex = ThreadPoolExecutor(threads)
    read_all_blocks(A, ex)
    t_read, _ = median_time(lambda: read_all_blocks(A, ex), repeat)
    blocks = blocks_in_memory(A)
    bounds = A.row_block_bounds()
    rows: list[tuple[str, str, str]] = []
    for kind in SKETCH_KINDS:
        t_mem, _ = median_time(
            lambda kind=kind: inmem_pass(blocks, bounds, kind, k, threads), repeat)  # type: ignore[misc]

        def run(kind: str = kind) -> None:
            bl.ops.sketch(A, k, kind=kind, seed=0).compute(work_dir=work)  # type: ignore[arg-type]

        run()  # warm: imports, page cache
        t_bl, _ = median_time(run, repeat)
        rows.append((kind, f"{t_bl:.3f}", f"{t_mem:.3f}"))
    blocks.clear()
    t_read = min(t_read, median_time(lambda: read_all_blocks(A, ex), repeat)[0])
    ex.shutdown()
    out = [("read only (T_read)", f"{t_read:.3f}", "", "", "",
            f"{A.nbytes / 1e9 / t_read:.2f} GB/s dense-equivalent")]
    for kind, t_bl_s, t_mem_s in rows:
        t_bl, t_mem = float(t_bl_s), float(t_mem_s)
        vs_dask = f"dask/blocklin {dask_time / t_bl:.1f}x" if dask_time else ""
        out.append((kind, t_bl_s, t_mem_s, f"{t_bl / t_read:.2f}x",
                     f"{t_bl / (t_read + t_mem):.2f}x", vs_dask))
    return out


def dask_gaussian(A: bl.BlockMatrix, k: int, repeat: int) -> float:
    import dask.array as da

    Z = da.from_zarr(A.url)
    G = da.random.default_rng(0).standard_normal((k, A.shape[0]), chunks=(k, A.chunks[0]))
    (G @ Z).compute(scheduler="threads")
    t, _ = median_time(lambda: (G @ Z).compute(scheduler="threads"), repeat)
    return t


def error_table(A: bl.BlockMatrix, B: bl.BlockMatrix, ref: np.ndarray, ks: list[int],
                seeds: int, work: str) -> dict[str, list[float]]:
    scale = float(np.sqrt(np.trace(bl.ops.gram(A).compute(work_dir=work))
                          * np.trace(bl.ops.gram(B).compute(work_dir=work))))
    lazies = [bl.ops.sketched_matmul(A, B, k, kind=kind, seed=s)  # type: ignore[arg-type]
              for kind in PRODUCT_KINDS for k in ks for s in range(seeds)]
    results = bl.compute(*lazies, work_dir=work)
    table: dict[str, list[float]] = {}
    it = iter(results)
    for kind in PRODUCT_KINDS:
        table[kind] = [float(np.mean([np.linalg.norm(next(it).estimate - ref)
                                      for _ in range(seeds)])) / scale for _ in ks]
    return table


def format_rows(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def format_errors(title: str, ks: list[int], table: dict[str, list[float]]) -> str:
    header = ("kind", *[f"k={k}" for k in ks])
    rows = [(kind, *[f"{e:.4f}" for e in errs]) for kind, errs in table.items()]
    rows.append(("1/sqrt(k)", *[f"{1 / np.sqrt(k):.4f}" for k in ks]))
    return f"{title}\n\n" + format_rows(header, rows)


def plot(ks: list[int], tables: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.5), squeeze=False)
    for ax, (title, table) in zip(axes[0], tables.items(), strict=True):
        for kind, errs in table.items():
            ax.loglog(ks, errs, "o-", label=kind, lw=2.5 if kind == "coordinated" else 1.2)
        ax.loglog(ks, [1 / np.sqrt(k) for k in ks], "k--", label="1/√k")
        ax.set_xlabel("sketch size k")
        ax.set_ylabel("‖est − AᵀB‖_F / (‖A‖_F‖B‖_F)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=500)
    ap.add_argument("--chunk-rows", type=int, default=16_384)
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("--k", type=int, default=64, help="sketch size of the timing runs")
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="20,000 rows")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "blocklin-bench")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.chunk_rows = 20_000, 4096
    threads = os.cpu_count() or 1
    args.data.mkdir(parents=True, exist_ok=True)
    work = str(args.data / "work-sketch")
    t0 = time.perf_counter()
    D = make_matrix(args.data / f"gram_{args.rows}x{args.cols}.zarr", args.rows, args.cols,
                    args.chunk_rows)
    S = make_sparse(args.data / f"sparse_{args.rows}x{args.cols}.zarr", args.rows, args.cols,
                    args.density, seed=1, chunk_rows=args.chunk_rows)
    S2 = make_sparse(args.data / f"sparse2_{args.rows}x100.zarr", args.rows, 100,
                     args.density, seed=2, chunk_rows=args.chunk_rows)
    nnz = sum(S.block(i).nnz for i in range(S.nblocks[0]))
    intro = (f"dense {D.shape} float64, {D.nblocks[0]} row blocks of {D.chunks[0]} rows, "
             f"{D.nbytes / 1e9:.2f} GB; sparse {S.shape}, nnz {nnz} "
             f"({nnz / S.shape[0] / S.shape[1]:.2%}), {S.nblocks[0]} CSR row blocks; "
             f"{threads} cores; k = {args.k}; median of {args.repeat}")
    print(intro, flush=True)

    t_dask = dask_gaussian(D, args.k, args.repeat)
    header = ("kind", "blocklin s", "T_inmem s", "/ T_read", "/ (T_read+T_inmem)", "vs dask")
    dense_rows = time_kinds(D, args.k, args.repeat, work, threads, t_dask)
    dense_rows.append(("dask G @ from_zarr(A)", f"{t_dask:.3f}", "", "", "", "gaussian G"))
    sparse_rows = time_kinds(S, args.k, args.repeat, work, threads, None)
    timing = (f"## Dense\n\n{format_rows(header, dense_rows)}\n\n"
              f"## Sparse (CSR row blocks)\n\n{format_rows(header, sparse_rows)}")
    print(timing, flush=True)

    ref_dense = bl.ops.gram(D).compute(work_dir=work)
    ref_sparse = bl.ops.matmul(S.T, S2).compute(work_dir=work)
    tables = {
        "dense AᵀA (Gaussian A)": error_table(D, D, ref_dense, args.ks, args.seeds, work),
        "sparse AᵀB (row-sparse, 1%)": error_table(S, S2, ref_sparse, args.ks, args.seeds,
                                                   work),
    }
    errors = "\n\n".join(format_errors(f"## Error vs k: {t} (mean of {args.seeds} seeds)",
                                       args.ks, tab) for t, tab in tables.items())
    print(errors, flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_sketch.md").write_text(
        f"# bench_sketch\n\n{intro}\n\n{timing}\n\n{errors}\n\n"
        f"total {time.perf_counter() - t0:.0f} s\n")
    plot(args.ks, tables, RESULTS / "bench_sketch_error_vs_k.png")
    print(f"wrote {RESULTS / 'bench_sketch.md'} and the PNG; total "
          f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
