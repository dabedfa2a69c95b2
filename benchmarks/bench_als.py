"""ALS: blocklin (ratings stored as CSR row blocks by blocklin, one stage per
half-iteration) against Spark MLlib's ALS (local mode, the ratings read from Parquet).

Data: seeded explicit ratings, ``--users`` × ``--items`` with ``--ratings`` draws of
(user, item) (duplicates merged), items by Zipf-like popularity (exponent 0.8), values
3 + a planted rank-9 signal + N(0, 0.1²); 10% held out. The training ratings are
stored by blocklin (CSR zarr) for blocklin and as a (user, item, rating) Parquet file
for Spark. Each contender runs in its own process (its peak RSS its own), same rank,
λ, iterations:

* ``blocklin``: ``ALS(...).fit(path)``. *load* is the time until its first
  half-iteration starts (reading the stored CSR, writing the transpose and the initial
  factor), *fit* the half-iterations; per iteration = fit / iterations.
* ``spark``: *load* is ``spark.read.parquet(...).cache().count()``; *fit* is
  ``ALS.fit`` (which also partitions the ratings into its in/out blocks); per
  iteration = fit / iterations. The session's start is reported apart.

Peak RSS: blocklin's process; Spark's Python driver plus its JVM (``VmHWM``).
Both report the RMSE on the held-out ratings whose user and item were seen in
training (MLlib's ``coldStartStrategy="drop"``).

``--robust S`` adds blocklin's ``robust=True`` mode (S CG steps per row, warm-started).

Run: ``python benchmarks/bench_als.py [--users 100000 --items 10000 --ratings 2000000]``

Measured on the shared 2-core box (other jobs running: load average 7-12), default
sizes (1,750,876 training ratings), ``--robust 3``:

| iterations | contender | load (s) | fit (s) | per iteration (s) | held-out RMSE | peak RSS (GiB) |
|---|---|---|---|---|---|---|
| 10 | blocklin | 1.13 | 19.7 | 1.97 | 0.7581 | 0.76 |
| 10 | blocklin robust | 0.64 | 20.3 | 2.03 | 0.8092 | 0.78 |
| 10 | Spark MLlib | 15.2 | 49.0 | 4.90 | 0.8315 | 2.05 |
| 20 | blocklin | 1.51 | 67.6 | 3.38 | 0.4378 | 0.82 |
| 20 | blocklin robust | 1.82 | 122.8 | 6.14 | 0.4364 | 0.84 |
| 20 | Spark MLlib | 19.5 | 92.5 | 4.63 | 0.4402 | 1.89 |

(The 20-iteration run had the busier box, and its robust run predates the CG
product's sparse form.) Neither side has converged at 10 iterations from its own
initial factors; at 20 the three agree within 0.9%.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

RANK = 10
LAM = 0.05


def planted(users: int, items: int, draws: int, seed: int = 0) -> sp.csr_matrix:
    """Seeded explicit ratings with a planted rank-10 structure (rank 9 + offset). O(nnz)."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    item = rng.permutation(items)[rng.choice(items, draws, p=pop / pop.sum())]
    user = rng.integers(0, users, draws)
    key = np.unique(user.astype(np.int64) * items + item)
    u, i = key // items, key % items
    x, y = rng.standard_normal((users, RANK - 1)), rng.standard_normal((items, RANK - 1))
    vals = 3.0 + np.einsum("nk,nk->n", x[u], y[i]) / np.sqrt(RANK - 1) \
        + 0.1 * rng.standard_normal(u.size)
    return sp.csr_matrix((vals, (u, i)), shape=(users, items))


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


_CHUNK = 1 << 20


def _rmse(u: np.ndarray, v: np.ndarray, test: np.ndarray) -> float:
    """Held-out RMSE of ``u·vᵀ`` on (user, item, rating) rows, in chunks of rows."""
    sq = 0.0
    for s in range(0, test.shape[0], _CHUNK):
        t = test[s:s + _CHUNK]
        p = np.einsum("nk,nk->n", u[t[:, 0].astype(np.int64)], v[t[:, 1].astype(np.int64)])
        sq += float(np.sum((p - t[:, 2]) ** 2))
    return float(np.sqrt(sq / max(1, test.shape[0])))


def run_blocklin(data: Path, iters: int, cg_steps: int = 0) -> dict[str, float]:
    from blocklin.ml import ALS

    marks: list[float] = []

    def progress(label: str, done: int, total: int) -> None:
        if done == 0:
            marks.append(time.perf_counter())

    t0 = time.perf_counter()
    model = ALS(rank=RANK, max_iter=iters, reg_param=LAM, work_dir=str(data / "work"),
                robust=cg_steps > 0, cg_steps=max(cg_steps, 1),
                progress=progress).fit(str(data / "train.zarr"))
    t1 = time.perf_counter()
    load = (marks[0] if marks else t1) - t0
    return {"load_s": load, "fit_s": t1 - t0 - load, "total_s": t1 - t0,
            "rmse": _rmse(model.user_factors_, model.item_factors_, np.load(data / "test.npy")),
            "peak_gib": _peak_gib()}


def run_spark(data: Path, iters: int, driver_memory: str = "6g",
              large: bool = False) -> dict[str, object]:
    """Spark MLlib's ALS on ``data/train.parquet``: session, load and fit timed apart.

    ``large`` sets what a fit of tens of millions of ratings needs on one machine:
    shuffle partitions 4 per core, Spark's scratch under ``data`` and Arrow transfers.
    """
    from pyspark.ml.recommendation import ALS as SparkALS  # noqa: N811, TID251
    from pyspark.sql import SparkSession  # noqa: TID251

    t0 = time.perf_counter()
    builder = (SparkSession.builder.master(f"local[{os.cpu_count()}]")
               .config("spark.driver.memory", driver_memory).config("spark.ui.enabled", "false"))
    if large:
        builder = (builder.config("spark.sql.shuffle.partitions", str(4 * (os.cpu_count() or 1)))
                   .config("spark.local.dir", str(data / "spark-local"))
                   .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.setCheckpointDir(str(data / "spark-checkpoints"))
    t_session = time.perf_counter() - t0
    t0 = time.perf_counter()
    df = spark.read.parquet(str(data / "train.parquet")).cache()
    df.count()
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = SparkALS(rank=RANK, maxIter=iters, regParam=LAM, seed=0, userCol="user",
                     itemCol="item", ratingCol="rating", coldStartStrategy="drop",
                     checkpointInterval=5).fit(df)
    model.userFactors.count()
    t_fit = time.perf_counter() - t0
    meta = json.loads((data / "meta.json").read_text())

    def dense(frame: object, n: int) -> np.ndarray:
        pdf = frame.toPandas()  # type: ignore[attr-defined]
        out = np.zeros((n, RANK))
        out[pdf["id"].to_numpy()] = np.stack(pdf["features"].to_numpy())
        return out

    u = dense(model.userFactors, meta["users"])
    v = dense(model.itemFactors, meta["items"])
    jvm_gib = _jvm_peak_gib(spark)
    spark.stop()
    return {"session_s": t_session, "load_s": t_load, "fit_s": t_fit,
            "total_s": t_load + t_fit, "iteration_s": [t_fit / iters],
            "rmse": _rmse(u, v, np.load(data / "test.npy")),
            "peak_gib": _peak_gib() + jvm_gib, "jvm_peak_gib": jvm_gib}


def _jvm_peak_gib(spark: object) -> float:
    """Peak RSS of the Spark JVM (the local-mode driver and executors), from /proc."""
    proc = getattr(getattr(spark.sparkContext, "_gateway", None), "proc", None)  # type: ignore[attr-defined]
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():  # type: ignore[union-attr]
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except (AttributeError, OSError):
        pass
    return float("nan")


def prepare(data: Path, users: int, items: int, draws: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import blocklin as bl

    data.mkdir(parents=True, exist_ok=True)
    r = planted(users, items, draws)
    coo = r.tocoo()
    held = np.random.default_rng(1).random(coo.nnz) < 0.1
    train = sp.csr_matrix((coo.data[~held], (coo.row[~held], coo.col[~held])), shape=r.shape)
    rows, cols = coo.row[held], coo.col[held]
    seen = (np.diff(train.indptr)[rows] > 0) & (np.bincount(train.indices,
                                                            minlength=items)[cols] > 0)
    np.save(data / "test.npy", np.column_stack([rows[seen], cols[seen], coo.data[held][seen]]))
    bl.from_array(train, str(data / "train.zarr"), overwrite=True)
    t = train.tocoo()
    pq.write_table(pa.table({"user": t.row.astype(np.int32), "item": t.col.astype(np.int32),
                             "rating": t.data.astype(np.float32)}), data / "train.parquet")
    (data / "meta.json").write_text(json.dumps({"users": users, "items": items,
                                                "train": int(train.nnz),
                                                "test": int(seen.sum())}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--ratings", type=int, default=2_000_000)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "blocklin-bench")
    ap.add_argument("--robust", type=int, default=0, metavar="CG_STEPS",
                    help="also run blocklin's robust mode with this many CG steps per row")
    ap.add_argument("--one", choices=["blocklin", "robust", "spark"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = args.data / f"als_{args.users}x{args.items}_{args.ratings}"
    if args.one == "robust":
        print(json.dumps(run_blocklin(data, args.iters, args.robust)))
        return
    if args.one:
        fn = run_blocklin if args.one == "blocklin" else run_spark
        print(json.dumps(fn(data, args.iters)))
        return
    if not (data / "meta.json").exists():
        prepare(data, args.users, args.items, args.ratings)
    meta = json.loads((data / "meta.json").read_text())
    print(f"ratings {args.users:,} x {args.items:,}: {meta['train']:,} training, "
          f"{meta['test']:,} held out; rank {RANK}, reg_param {LAM}, {args.iters} "
          f"iterations, {os.cpu_count()} cores\n")
    res = {}
    for name in ("blocklin", "robust", "spark"):
        if name == "robust" and not args.robust:
            continue
        proc = subprocess.run([sys.executable, __file__, "--users", str(args.users),
                               "--items", str(args.items), "--ratings", str(args.ratings),
                               "--iters", str(args.iters), "--data", str(args.data),
                               "--robust", str(args.robust), "--one", name],
                              check=True, capture_output=True, text=True)
        res[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("| contender | load (s) | fit (s) | per iteration (s) | load + fit (s) | "
          "held-out RMSE | peak RSS (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in res.items():
        label = f"blocklin robust ({args.robust} CG steps)" if name == "robust" else name
        print(f"| {label} | {r['load_s']:.2f} | {r['fit_s']:.2f} | "
              f"{r['fit_s'] / args.iters:.2f} | {r['total_s']:.2f} | {r['rmse']:.5f} | "
              f"{r['peak_gib']:.2f} |")
    print(f"\nSpark session start (not counted): {res['spark']['session_s']:.1f} s")


if __name__ == "__main__":
    main()
