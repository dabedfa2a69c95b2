"""blocklin's gram graph on Spark and Dask versus MLlib's RowMatrix.computeGramianMatrix.

All three read the same zarr matrix. MLlib needs its rows inside Spark first: that
load (zarr blocks -> cached RDD of vectors, read in the executors) is timed apart
from the Gramian; "MLlib end to end" is load + Gramian.

    flock /tmp/blocklin-heavy.lock .venv/bin/python benchmarks/bench_spark.py --rows 200000 --cols 500
    .venv/bin/python benchmarks/bench_spark.py --quick
    flock /tmp/blocklin-heavy.lock .venv/bin/python benchmarks/bench_spark.py --ingest \
        --rows 1000000 --cols 20 --chunk 50000

``--ingest`` measures ``from_spark``/``to_spark`` on a generated DataFrame and the
driver's peak RSS (this Python process; in local mode Spark's executors run inside
the driver JVM, reported separately).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import blocklin as bl
from _common import median_time
from _peers import PeakRSS
from blocklin.executors.spark import local_session


def _make_matrix(rows: int, cols: int, chunk: int, path: Path) -> Any:
    import dask.array as da

    x = da.random.default_rng(0).standard_normal((rows, cols), chunks=(chunk, cols))
    return bl.from_array(x, path, chunks=(chunk, None), codec="none", overwrite=True)


def _rows_of_block(i: int, url: str) -> Any:
    A = bl.open(url)
    return list(A.block(i, 0))


def bench_gram(args: argparse.Namespace, tmp: Path) -> None:
    from pyspark.mllib.linalg.distributed import RowMatrix  # noqa: TID251

    A = _make_matrix(args.rows, args.cols, args.chunk, tmp / "A.zarr")
    spark = local_session(cores=args.cores, driver_memory=args.driver_memory)
    try:
        sc = spark.sparkContext
        gram = bl.ops.gram(A)
        work = str(tmp / "work")
        t_spark, g_spark = median_time(lambda: bl.compute(gram, executor="spark", spark=spark,
                                                      work_dir=work)[0], args.repeats)
        t_dask, g_dask = median_time(lambda: bl.compute(gram, executor="dask", work_dir=work,
                                                    num_workers=args.cores)[0], args.repeats)
        assert np.array_equal(g_spark, g_dask), "Spark and Dask gram differ"

        url = A.url

        def load() -> Any:
            rdd = sc.parallelize(range(A.nblocks[0]), A.nblocks[0]) \
                .flatMap(lambda i: _rows_of_block(i, url)).cache()
            rdd.count()
            return rdd

        t0 = time.perf_counter()
        rdd = load()
        t_load = time.perf_counter() - t0
        mat = RowMatrix(rdd)
        t_mllib, g_ml = median_time(lambda: mat.computeGramianMatrix().toArray(), args.repeats)
        rdd.unpersist()
        err = float(np.abs(g_ml - g_spark).max() / np.abs(g_spark).max())
    finally:
        spark.stop()
    e2e = t_load + t_mllib
    print(f"gram of {args.rows} x {args.cols} float64 ({A.nbytes / 2**20:.0f} MiB, "
          f"{A.nblocks[0]} row blocks), local[{args.cores}], median of {args.repeats}")
    print(f"{'engine':<38}{'seconds':>10}{'vs blocklin-spark':>20}")
    table = [("blocklin gram, Spark executor", t_spark),
             ("blocklin gram, Dask threads", t_dask),
             ("MLlib load zarr -> cached RDD (once)", t_load),
             ("MLlib computeGramianMatrix", t_mllib),
             ("MLlib end to end (load + gramian)", e2e)]
    for name, t in table:
        print(f"{name:<38}{t:>10.2f}{t / t_spark:>19.2f}x")
    print(f"max relative difference MLlib vs blocklin: {err:.1e}")


def bench_ingest(args: argparse.Namespace, tmp: Path) -> None:
    spark = local_session(cores=args.cores, driver_memory=args.driver_memory)
    rss: PeakRSS | None = None
    try:
        cols = [f"x{j}" for j in range(args.cols)]
        exprs = [f"randn({j}) as x{j}" for j in range(args.cols)]
        df = spark.range(args.rows, numPartitions=8).selectExpr(*exprs, "id % 2 as y").cache()
        df.count()
        base = psutil.Process().memory_info().rss
        rss = PeakRSS(children=False)  # the driver's Python only, not the JVM
        t0 = time.perf_counter()
        X, _y = bl.from_spark(df, cols, tmp / "X.zarr", label="y", chunks=args.chunk)
        t_in = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = bl.to_spark(X, spark, columns=cols)
        sums = back.selectExpr(*[f"sum({c})" for c in cols]).collect()[0]
        t_out = time.perf_counter() - t0
        ref = df.selectExpr(*[f"sum({c})" for c in cols]).collect()[0]
        ok = np.allclose(list(sums), list(ref), rtol=1e-9, atol=1e-6)
    finally:
        peak = max(base, rss.stop()) if rss is not None else 0
        spark.stop()
    data_mib = args.rows * args.cols * 8 / 2**20
    print(f"from_spark {args.rows} x {args.cols} (+ label): {t_in:.1f} s; to_spark + column sums: "
          f"{t_out:.1f} s; sums match: {ok}")
    print(f"driver Python RSS: before {base / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB "
          f"(+{(peak - base) / 2**20:.0f} MiB) for {data_mib:.0f} MiB of data")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--cols", type=int, default=500)
    p.add_argument("--chunk", type=int, default=10_000, help="rows per block")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--driver-memory", default="4g")
    p.add_argument("--quick", action="store_true", help="20,000 x 100, for development")
    p.add_argument("--ingest", action="store_true", help="from_spark/to_spark and driver RSS")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.cols, args.chunk = 20_000, 100, 5_000
    with tempfile.TemporaryDirectory(prefix="bench-spark-", dir="/tmp") as d:
        (bench_ingest if args.ingest else bench_gram)(args, Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
