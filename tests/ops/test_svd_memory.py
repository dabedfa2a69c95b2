"""Peak memory of randomized SVD on a matrix several times larger than the task budget."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROWS, COLS, BLOCK = 320_000, 100, 10_000  # 256 MB of float64 in 32 blocks of 8 MB

SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import dask.array as da
    import numpy as np
    import blocklin as bl

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows, cols, block, root = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    imported = peak()
    # Written block by block from a lazy dask array: never whole in this process.
    x = da.random.default_rng(0).standard_normal((rows, cols), chunks=(block, cols))
    A = bl.from_array(x, root + "/A.zarr", chunks=(block, None), codec="none")
    before = peak()
    # No block cache: "auto" would keep all of A (it fits a quarter of this machine's
    # memory) by design; this bounds the streaming passes.
    res = bl.ops.randomized_svd(A, 10, n_iter=2, work_dir=root + "/w",
                                max_task_memory="32MiB", num_workers=2, cache_bytes=0)
    u = res.U
    print(json.dumps({"imported": imported, "before": before, "after": peak(), "s0": float(res.s[0]),
                      "u_rows": u.shape[0], "passes": res.passes}))
""")


def test_peak_rss_bounded_for_matrix_larger_than_task_memory(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ROWS), str(COLS), str(BLOCK),
                          str(tmp_path)], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    matrix_bytes = ROWS * COLS * 8
    # 256 MB of data, 32 MiB per task, 2 workers: writing it, the SVD (3 passes) and U
    # (1 pass) must not hold the matrix. Generous bound: 160 MB over the process's peak
    # after imports (a few blocks in flight per worker), well under the matrix.
    assert got["after"] - got["imported"] <= 160 * 2**20, got
    assert got["after"] - got["imported"] < 0.65 * matrix_bytes
    assert got["u_rows"] == ROWS
    assert got["passes"] == 3
    # Gaussian entries: σ₁ ≈ √rows + √cols (Marchenko–Pastur edge).
    assert abs(got["s0"] / (ROWS**0.5 + COLS**0.5) - 1) < 0.02
