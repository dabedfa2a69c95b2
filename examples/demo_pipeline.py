"""The YAML pipeline part of ``make demo``: the three specs of ``examples/pipelines``.

With the ``blocklin`` CLI on the embedded default (local Dask threads, local zarr):
``ridge.yaml`` goes ingest -> run -> refresh (twice: the second is skipped) ->
inspect -> verify; ``lsa_weekly.yaml`` runs a truncated SVD of a term matrix and
refreshes it with a week of new documents; ``sketched_product.yaml`` runs a sketched
AᵀB next to the exact one. Every command line is printed before it runs.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BLOCKLIN = [sys.executable, "-m", "blocklin._cli"]


def sh(*args: str, cwd: Path) -> None:
    print(f"\n$ blocklin {shlex.join(args)}", flush=True)
    subprocess.run([*BLOCKLIN, *args], cwd=cwd, check=True)


def write_table(path: Path, rows: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 8))
    y = x @ np.arange(1.0, 9.0) * 0.1 + 0.5 + rng.standard_normal(rows) * 0.05
    table = pa.table({**{f"f{j}": x[:, j] for j in range(8)}, "y": y})
    pq.write_table(table, path, row_group_size=5_000)


def write_terms(path: Path, docs: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    topics = np.abs(np.random.default_rng(0).normal(size=(8, 40)))  # shared across weeks
    x = np.abs(rng.normal(size=(docs, 8))) @ topics
    pq.write_table(pa.table({f"t{j}": x[:, j] for j in range(40)}), path, row_group_size=2_000)


def lsa_and_sketch(root: Path) -> None:
    for name in ("lsa_weekly.yaml", "sketched_product.yaml"):
        shutil.copy(HERE / "pipelines" / name, root / name)
    write_terms(root / "terms.parquet", 6_000, seed=1)
    write_terms(root / "new_docs.parquet", 600, seed=2)
    sh("ingest", "terms.parquet", "data/terms.zarr", "--chunk-rows", "2000", cwd=root)
    sh("run", "lsa_weekly.yaml", cwd=root)
    sh("refresh", "lsa_weekly.yaml", "--append", "new_docs.parquet", cwd=root)
    rng = np.random.default_rng(3)
    np.save(root / "a.npy", rng.standard_normal((20_000, 30)))
    np.save(root / "b.npy", rng.standard_normal((20_000, 20)))
    sh("ingest", "a.npy", "data/A.zarr", "--chunk-rows", "4096", cwd=root)
    sh("ingest", "b.npy", "data/B.zarr", "--chunk-rows", "4096", cwd=root)
    sh("run", "sketched_product.yaml", cwd=root)
    approx = np.load(root / "out" / "sketch" / "approx.npz")
    exact = np.load(root / "out" / "sketch" / "exact.npz")
    actual = np.linalg.norm(approx["estimate"] - exact["value"])
    print(f"\nsketched AᵀB (k={int(approx['k'])}): Frobenius error {actual:.1f}, "
          f"a-posteriori estimate {float(approx['error']):.1f}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="blocklin-pipeline-") as tmp:
        root = Path(tmp)
        shutil.copy(HERE / "pipelines" / "ridge.yaml", root / "ridge.yaml")
        (root / "data").mkdir()
        write_table(root / "train.parquet", 40_000, seed=1)
        write_table(root / "week2.parquet", 5_000, seed=2)
        sh("ingest", "train.parquet", "data/X.zarr", "--label", "y", "--chunk-rows", "10000",
           cwd=root)
        sh("run", "ridge.yaml", "--dry-run", cwd=root)
        sh("run", "ridge.yaml", cwd=root)
        sh("refresh", "ridge.yaml", "--append", "week2.parquet", cwd=root)
        sh("refresh", "ridge.yaml", "--append", "week2.parquet", cwd=root)  # already applied
        sh("inspect", "data/X.zarr", cwd=root)
        sh("verify", "data/X.zarr", cwd=root)
        lsa_and_sketch(root)
        print("\npipeline demo OK")


if __name__ == "__main__":
    main()
