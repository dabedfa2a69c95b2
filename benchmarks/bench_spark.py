"""blocklin's gram graph on Spark (local mode and a standalone cluster) and on Dask
threads, and versus MLlib's RowMatrix.computeGramianMatrix.

All read the same zarr matrix. Spark and Dask computes alternate in one process on one
started session, so their medians and ratio come from the same minutes of a shared
machine; the session's start-up and the first compute (which starts Spark's Python
workers and imports blocklin in them) are reported apart. ``--standalone`` then starts
a standalone master and worker (pyspark's ``spark-class``, loopback, the same cores)
and times the same plan there, again beside Dask. MLlib (``--mllib``) needs its rows
inside Spark first: that load (zarr blocks -> cached RDD of vectors, read in the
executors) is timed apart from the Gramian; "MLlib end to end" is load + Gramian.

    flock /tmp/blocklin-heavy.lock .venv/bin/python benchmarks/bench_spark.py --standalone
    flock /tmp/blocklin-heavy.lock .venv/bin/python benchmarks/bench_spark.py --mllib
    .venv/bin/python benchmarks/bench_spark.py --quick
    flock /tmp/blocklin-heavy.lock .venv/bin/python benchmarks/bench_spark.py --ingest \
        --rows 1000000 --cols 20 --chunk 50000

``--ingest`` measures ``from_spark``/``to_spark`` on a generated DataFrame and the
driver's peak RSS (this Python process; in local mode Spark's executors run inside
the driver JVM, reported separately).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import blocklin as bl
from _common import median_time
from _peers import PeakRSS
from blocklin.executors.spark import local_session, session_conf
from blocklin.testing.spark_cluster import standalone_cluster


def _make_matrix(rows: int, cols: int, chunk: int, path: Path) -> Any:
    import dask.array as da

    x = da.random.default_rng(0).standard_normal((rows, cols), chunks=(chunk, cols))
    return bl.from_array(x, path, chunks=(chunk, None), codec="none", overwrite=True)


def _rows_of_block(i: int, url: str) -> Any:
    A = bl.open(url)
    return list(A.block(i, 0))


def _alternate(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Time each contender ``repeats`` times, interleaved (a, b, a, b...), so that load
    from other work on the machine falls on all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def _spark_vs_dask(gram: Any, spark: Any, work: str, args: argparse.Namespace) -> dict[str, Any]:
    """First compute on ``spark`` (Python workers start), then Spark and Dask threads
    alternated; checks the results are bit-identical."""
    def on_spark() -> Any:
        return bl.compute(gram, executor="spark", spark=spark, work_dir=work)[0]

    def on_dask() -> Any:
        return bl.compute(gram, executor="dask", work_dir=work, num_workers=args.cores)[0]

    t0 = time.perf_counter()
    g_spark = on_spark()
    first = time.perf_counter() - t0
    assert np.array_equal(g_spark, on_dask()), "Spark and Dask gram differ"
    times = _alternate({"spark": on_spark, "dask": on_dask}, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"first": first, "spark": med["spark"], "dask": med["dask"],
            "ratio": med["spark"] / med["dask"], "times": times, "gram": g_spark}


def _standalone_session(url: str, cores: int) -> Any:
    conf = session_conf(url)
    conf.update({"spark.executor.memory": "2g", "spark.cores.max": str(cores),
                 "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
                 "spark.ui.enabled": "false"})
    from pyspark.sql import SparkSession  # noqa: TID251

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers run this Python
    builder = SparkSession.builder.master(url)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    # Wait for the executor to register: defaultParallelism counts its cores.
    deadline = time.monotonic() + 60
    while spark.sparkContext.defaultParallelism < cores and time.monotonic() < deadline:
        time.sleep(0.2)
    return spark


def _report_row(name: str, r: dict[str, Any], session: float) -> str:
    return (f"| {name} | {session:.1f} | {r['first']:.2f} | {r['spark']:.2f} | {r['dask']:.2f} "
            f"| {r['ratio']:.2f}x |")


def bench_gram(args: argparse.Namespace, tmp: Path) -> None:
    A = _make_matrix(args.rows, args.cols, args.chunk, tmp / "A.zarr")
    gram = bl.ops.gram(A)
    work = str(tmp / "work")
    t0 = time.perf_counter()
    spark = local_session(cores=args.cores, driver_memory=args.driver_memory)
    t_session = time.perf_counter() - t0
    try:
        local = _spark_vs_dask(gram, spark, work, args)
        mllib = _bench_mllib(A, spark, local["gram"], args) if args.mllib else None
    finally:
        spark.stop()
    rows = [_report_row(f"local[{args.cores}]", local, t_session)]
    if args.standalone:
        with standalone_cluster(tmp / "standalone", cores=args.cores, memory="3g") as url:
            t0 = time.perf_counter()
            spark = _standalone_session(url, args.cores)
            t_session = time.perf_counter() - t0
            try:
                cluster = _spark_vs_dask(gram, spark, work, args)
            finally:
                spark.stop()
        assert np.array_equal(cluster["gram"], local["gram"]), "standalone and local differ"
        rows.append(_report_row(f"standalone, 1 worker x {args.cores} cores", cluster, t_session))
    print(f"gram of {args.rows} x {args.cols} float64 ({A.nbytes / 2**20:.0f} MiB, "
          f"{A.nblocks[0]} row blocks of {A.chunks[0]}), Spark on {args.cores} cores vs Dask "
          f"threads (num_workers={args.cores}), alternated, median of {args.repeats}; load "
          f"average {os.getloadavg()[0]:.1f} at the end (shared machine)")
    print("\n| Spark | session start s | first compute s | Spark s | Dask threads s "
          "| Spark / Dask |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    if mllib is not None:
        _print_mllib(mllib, local["spark"])


def _bench_mllib(A: Any, spark: Any, g_ref: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    from pyspark.mllib.linalg.distributed import RowMatrix  # noqa: TID251

    sc = spark.sparkContext
    url = A.url
    t0 = time.perf_counter()
    rdd = sc.parallelize(range(A.nblocks[0]), A.nblocks[0]) \
        .flatMap(lambda i: _rows_of_block(i, url)).cache()
    rdd.count()
    t_load = time.perf_counter() - t0
    mat = RowMatrix(rdd)
    t_mllib, g_ml = median_time(lambda: mat.computeGramianMatrix().toArray(), args.repeats)
    rdd.unpersist()
    err = float(np.abs(g_ml - g_ref).max() / np.abs(g_ref).max())
    return {"load": t_load, "gramian": t_mllib, "err": err}


def _print_mllib(m: dict[str, float], t_spark: float) -> None:
    print(f"\n{'engine':<38}{'seconds':>10}{'vs blocklin-spark':>20}")
    for name, t in (("blocklin gram, Spark executor", t_spark),
                    ("MLlib load zarr -> cached RDD (once)", m["load"]),
                    ("MLlib computeGramianMatrix", m["gramian"]),
                    ("MLlib end to end (load + gramian)", m["load"] + m["gramian"])):
        print(f"{name:<38}{t:>10.2f}{t / t_spark:>19.2f}x")
    print(f"max relative difference MLlib vs blocklin: {m['err']:.1e}")


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
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--driver-memory", default="4g")
    p.add_argument("--quick", action="store_true", help="20,000 x 100, for development")
    p.add_argument("--standalone", action="store_true",
                   help="also on a standalone master + worker started here")
    p.add_argument("--mllib", action="store_true",
                   help="also MLlib's computeGramianMatrix (minutes at 200,000 x 500)")
    p.add_argument("--ingest", action="store_true", help="from_spark/to_spark and driver RSS")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.cols, args.chunk = 20_000, 100, 5_000
    with tempfile.TemporaryDirectory(prefix="bench-spark-", dir="/tmp") as d:
        (bench_ingest if args.ingest else bench_gram)(args, Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
