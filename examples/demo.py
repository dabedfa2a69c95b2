"""End-to-end demo on the embedded default: local Dask threads and a local zarr directory.

Generates a matrix, stores it as a BlockMatrix, computes its Gram matrix and column
statistics in one shared pass, a product with a small matrix, and checks each
against numpy.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

import blocklin as bl
from blocklin.executors import RunStats


def main() -> None:
    rng = np.random.default_rng(42)
    m, n = 200_000, 100
    x = rng.standard_normal((m, n)) * rng.uniform(0.5, 3.0, n) + rng.uniform(-5, 5, n)
    with tempfile.TemporaryDirectory(prefix="blocklin-demo-") as tmp:
        root = Path(tmp)
        A = bl.from_array(x, root / "A.zarr", chunks=(25_000, None))
        print(f"stored {A}")
        G, S = bl.ops.gram(A), bl.ops.column_stats(A)
        print("\nplan for gram + column_stats (one shared pass):")
        print(bl.ops.gram(A).explain())
        stats = RunStats()
        t0 = time.perf_counter()
        g, s = bl.compute(G, S, work_dir=str(root / "work"), stats=stats)
        dt = time.perf_counter() - t0
        print(f"\ncomputed in {dt:.2f} s: {stats.tasks_run} tasks, "
              f"{stats.blocks_read} blocks read, passes {stats.passes}")
        err_g = np.abs(g - x.T @ x).max() / np.abs(x.T @ x).max()
        err_m = np.abs(s.mean - x.mean(0)).max()
        err_v = np.abs(s.variance - x.var(0, ddof=1)).max()
        print(f"gram relative error vs numpy: {err_g:.2e}")
        print(f"column means  max error:     {err_m:.2e}")
        print(f"column variances max error:  {err_v:.2e}")
        Gc = bl.ops.gram(bl.ops.standardize(A)).compute(work_dir=str(root / "work"))
        z = (x - x.mean(0)) / x.std(0, ddof=1)
        print(f"correlation matrix (lazy standardize, no copy) max error: "
              f"{np.abs(Gc / (m - 1) - z.T @ z / (m - 1)).max():.2e}")
        W = rng.standard_normal((n, 5))
        P = bl.ops.matmul(A, W).compute(work_dir=str(root / "work"))
        print(f"A @ W -> {P.shape} BlockMatrix, max error {np.abs(P.to_numpy() - x @ W).max():.2e}")
        ok = err_g < 1e-12 and err_m < 1e-10 and err_v < 1e-9
        print("\ndemo OK" if ok else "\ndemo FAILED")
        if not ok:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
