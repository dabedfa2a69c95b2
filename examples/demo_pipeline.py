"""The YAML pipeline part of ``make demo``: ingest -> run -> refresh -> inspect -> verify.

Writes a Parquet table of features and a label, ingests it into BlockMatrices,
runs ``examples/pipelines/ridge.yaml`` (ridge regression + column statistics) with
the ``blocklin`` CLI on the embedded default (local Dask threads, local zarr), then
refreshes it with a new batch of rows, and inspects and verifies the stored matrix.
Every command line is printed before it runs, as a person would type it.
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
        print("\npipeline demo OK")


if __name__ == "__main__":
    main()
