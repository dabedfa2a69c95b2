"""ALS at the issue's scale: blocklin against Spark MLlib's ALS on the same ratings.

``python benchmarks/bench_recommend.py als [--users 1000000 --items 50000 --ratings
50000000 --iters 5]`` (this module holds the ALS half of bench_recommend).

Data: exactly ``--ratings`` distinct (user, item) pairs, users uniform, items by a
power-law popularity (p ∝ rank^-0.8, ranks permuted), values 3 + a planted rank-9
signal + N(0, 0.1²), seeded; 10% held out (seed 1). The training ratings are stored
by blocklin (CSR row blocks in zarr) for blocklin and as a (user, item, rating)
Parquet file for Spark. Generation is chunked: O(nnz) memory, never users × items.

Each contender runs in its own process (so its peak RSS is its own), rank 10,
λ = 0.05, the same number of iterations:

* ``blocklin``: ``ALS(..., track_objective=False).fit(path)`` (Spark evaluates no
  objective either); *load* is the time until the first half-iteration starts
  (reading the stored CSR, writing its transpose and the initial factor), *fit*
  the half-iterations, each timed (per iteration = two of them).
* ``spark``: *load* is ``spark.read.parquet(...).cache().count()``, *fit*
  ``ALS.fit`` plus counting the user factors (MLlib partitions the ratings into its
  in/out blocks inside the fit). The session start is reported apart.

Peak RSS: blocklin's process (``ru_maxrss``); Spark's Python driver plus its JVM
(``VmHWM`` of the local-mode JVM, which holds driver and executors). Both report the
RMSE on the held-out ratings whose user and item were seen in training.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bench_als import LAM, RANK, _peak_gib, _rmse, run_spark  # the same contenders' setup

_CHUNK = 4_000_000  # ratings per generation chunk (bounds the temporaries)


def planted_ratings(users: int, items: int, ratings: int,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exactly ``ratings`` distinct seeded (user, item, value) triples, sorted by
    (user, item): power-law item popularity and a planted rank-9 signal."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    cdf = np.cumsum(pop[rng.permutation(items)])
    cdf /= cdf[-1]
    keys = np.empty(0, np.int64)
    draws = int(ratings * 1.06) + 1000
    while keys.size < ratings:  # duplicates merged; draw more until there are enough
        parts = [keys]
        for s in range(0, draws, _CHUNK):
            n = min(_CHUNK, draws - s)
            item = np.searchsorted(cdf, rng.random(n), side="right").astype(np.int64)
            parts.append(rng.integers(0, users, n, dtype=np.int64) * items + item)
        keys = np.unique(np.concatenate(parts))
        draws = ratings - keys.size + ratings // 50 + 1000
    if keys.size > ratings:
        keys = np.sort(keys[rng.permutation(keys.size)[:ratings]])
    u = (keys // items).astype(np.int32)
    i = (keys % items).astype(np.int32)
    del keys
    x = rng.standard_normal((users, RANK - 1))
    y = rng.standard_normal((items, RANK - 1))
    vals = np.empty(ratings)
    for s in range(0, ratings, _CHUNK):
        sl = slice(s, s + _CHUNK)
        n = vals[sl].size
        vals[sl] = (3.0 + np.einsum("nk,nk->n", x[u[sl]], y[i[sl]]) / np.sqrt(RANK - 1)
                    + 0.1 * rng.standard_normal(n))
    return u, i, vals


def prepare(data: Path, users: int, items: int, ratings: int) -> None:
    """Generate, split, and store the training ratings (blocklin CSR zarr + Parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import blocklin as bl

    data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    u, i, v = planted_ratings(users, items, ratings)
    held = np.random.default_rng(1).random(u.size) < 0.1
    tu, ti, tv = u[~held], i[~held], v[~held]
    indptr = np.zeros(users + 1, np.int64)
    np.cumsum(np.bincount(tu, minlength=users), out=indptr[1:])
    train = sp.csr_matrix((tv, ti, indptr), shape=(users, items))
    ucount = np.diff(indptr)
    icount = np.bincount(ti, minlength=items)
    hu, hi = u[held], i[held]
    seen = (ucount[hu] > 0) & (icount[hi] > 0)
    np.save(data / "test.npy", np.column_stack([hu[seen], hi[seen], v[held][seen]]))
    del u, i, v, hu, hi
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    # CSR row blocks of about 500,000 ratings (ALS's own block size).
    rows = max(1, users * 500_000 // max(1, train.nnz))
    bl.from_array(train, str(data / "train.zarr"), chunks=(rows, None), overwrite=True)
    t_store = time.perf_counter() - t0
    pq.write_table(pa.table({"user": tu, "item": ti, "rating": tv.astype(np.float32)}),
                   data / "train.parquet", row_group_size=4_000_000)
    (data / "meta.json").write_text(json.dumps({
        "users": users, "items": items, "ratings": ratings, "train": int(train.nnz),
        "test": int(seen.sum()), "generate_s": t_gen, "store_s": t_store}))


def run_blocklin(data: Path, iters: int) -> dict[str, object]:
    from blocklin.ml import ALS

    starts: list[float] = []

    def progress(label: str, done: int, total: int) -> None:
        if done == 0:
            starts.append(time.perf_counter())

    t0 = time.perf_counter()
    model = ALS(rank=RANK, max_iter=iters, reg_param=LAM, work_dir=str(data / "work"),
                track_objective=False, progress=progress).fit(str(data / "train.zarr"))
    t1 = time.perf_counter()
    load = (starts[0] if starts else t1) - t0
    marks = [*starts, t1]
    halves = [b - a for a, b in itertools.pairwise(marks)]
    return {"load_s": load, "fit_s": t1 - t0 - load, "total_s": t1 - t0,
            "iteration_s": [halves[j] + halves[j + 1] for j in range(0, len(halves) - 1, 2)],
            "rmse": _rmse(model.user_factors_, model.item_factors_, np.load(data / "test.npy")),
            "peak_gib": _peak_gib()}


def als_main(argv: list[str]) -> None:
    """``bench_recommend.py als``: generate/store once, then each contender apart."""
    ap = argparse.ArgumentParser(prog="bench_recommend.py als",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--ratings", type=int, default=50_000_000)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--driver-memory", default="14g", help="Spark's spark.driver.memory")
    ap.add_argument("--only", choices=["blocklin", "spark"], action="append",
                    help="run only this contender (repeatable)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "blocklin-bench")
    ap.add_argument("--one", choices=["blocklin", "spark"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    data = args.data / f"als_{args.users}x{args.items}_{args.ratings}"
    if args.one:
        res = (run_blocklin(data, args.iters) if args.one == "blocklin"
               else run_spark(data, args.iters, args.driver_memory, large=True))
        print(json.dumps(res))
        return
    if not (data / "meta.json").exists():
        prepare(data, args.users, args.items, args.ratings)
    meta = json.loads((data / "meta.json").read_text())
    print(f"ratings {args.users:,} x {args.items:,}: {meta['ratings']:,} "
          f"({meta['train']:,} training, {meta['test']:,} held out; generated in "
          f"{meta['generate_s']:.0f} s, stored by blocklin in {meta['store_s']:.0f} s); "
          f"rank {RANK}, reg_param {LAM}, {args.iters} iterations, {os.cpu_count()} cores\n",
          flush=True)
    res = {}
    for name in args.only or ["blocklin", "spark"]:
        cmd = [sys.executable, str(Path(__file__).with_name("bench_recommend.py")), "als",
               "--users", str(args.users), "--items", str(args.items), "--ratings",
               str(args.ratings), "--iters", str(args.iters), "--driver-memory",
               args.driver_memory, "--data", str(args.data), "--one", name]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}", flush=True)
            continue
        res[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: {json.dumps(res[name])}", flush=True)
    print("\n| contender | load (s) | fit (s) | per iteration (s) | load + fit (s) | "
          "held-out RMSE | peak RSS (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in res.items():
        its = r["iteration_s"]
        per = (f"{r['fit_s'] / args.iters:.1f}" if len(its) < 2
               else f"{r['fit_s'] / args.iters:.1f} ({min(its):.1f}–{max(its):.1f})")
        print(f"| {name} | {r['load_s']:.1f} | {r['fit_s']:.1f} | {per} | {r['total_s']:.1f} "
              f"| {r['rmse']:.5f} | {r['peak_gib']:.2f} |")
    if "spark" in res:
        print(f"\nSpark session start (not counted): {res['spark']['session_s']:.1f} s")
    if len(res) == 2:
        print(f"end to end: Spark / blocklin = "
              f"{res['spark']['total_s'] / res['blocklin']['total_s']:.2f}x")


if __name__ == "__main__":
    sys.exit("run it as: python benchmarks/bench_recommend.py als [...]")
