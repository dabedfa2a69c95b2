"""Linear and logistic regression on the same zarr data: blocklin's solvers versus Spark
MLlib, dask-ml and scikit-learn.

Every contender reads the same stored X (dense float64, Gaussian) and label columns.
MLlib needs the rows inside Spark first: its load (zarr blocks -> cached DataFrame of
(label, features), read in the executors) is timed apart from the fit, and "end to
end" is load + fit. scikit-learn loads X into memory (timed apart) and fits there.
Each measurement runs in a fresh process (so peak RSS is its own: the process and its
children, Spark's JVM included), repeated ``--repeat`` times; the table shows medians.
Accuracy: relative error of the coefficients against the least-squares solution
(LAPACK's ``lstsq`` in memory, cached beside X) or, for logistic regression, against
blocklin's Newton solution, relative objective gap in parentheses. Two machine limits
are measured in the run: one pass forming XᵀX (read + syrk), the floor of ``normal``,
and one TSQR pass of [X 1 y] (read + LAPACK Householder QR of every panel), the floor
of ``qr``; the table ends with ``qr``'s ratio to its limit and to ``normal``.

    flock /tmp/blocklin-heavy.lock .venv/bin/python benchmarks/bench_regression.py \
        --rows 200000 --cols 500
    .venv/bin/python benchmarks/bench_regression.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg.lapack as lapack
from threadpoolctl import threadpool_limits

from _common import gram_pass_limit, median_time, read_all_blocks
from _peers import combine, run_reported, spawn

HERE = Path(__file__).resolve()


# -- data -------------------------------------------------------------------------------
def make_data(d: Path, rows: int, cols: int, chunk: int,
              design: str = "gaussian") -> dict[str, str]:
    """X, a linear label y and a binary label yb, written once, row-aligned.

    ``gaussian``: iid N(0, 1) features, the easiest case for iterative solvers.
    ``correlated``: the same rows times a fixed ``cols × cols`` mixing ``diag(d)·Q``
    with ``d`` log-spaced from 1 to 1e-3 (condition number 1e3), as real designs
    with correlated, differently scaled features are; first-order methods slow down
    by about that factor, direct solvers do not.
    """
    import dask.array as da

    import blocklin as bl

    tag = "" if design == "gaussian" else f"_{design}"
    paths = {k: d / f"reg_{rows}x{cols}{tag}_{k}.zarr" for k in ("X", "y", "yb")}
    if not all((p / "zarr.json").exists() for p in paths.values()):
        rng = np.random.default_rng(1)
        beta = rng.normal(size=cols) / np.sqrt(cols)
        X = da.random.default_rng(0).standard_normal((rows, cols), chunks=(chunk, cols))
        if design == "correlated":
            q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(cols, cols)))
            mix = np.logspace(0, -3, cols)[:, None] * q
            X = X @ mix
            beta = beta / np.linalg.norm(mix @ beta)  # margins of sd 1, as for gaussian
        noise = da.random.default_rng(2).standard_normal((rows, 1), chunks=(chunk, 1))
        margin = X @ beta[:, None]
        bl.from_array(X, paths["X"], chunks=(chunk, None), codec="none", overwrite=True)
        bl.from_array(margin + 0.5 + noise, paths["y"], chunks=(chunk, None), codec="none",
                      overwrite=True)
        logistic = da.random.default_rng(3).logistic(size=(rows, 1), chunks=(chunk, 1))
        bl.from_array((2 * margin + logistic > 0).astype(np.float64), paths["yb"],
                      chunks=(chunk, None), codec="none", overwrite=True)
    return {k: str(p) for k, p in paths.items()}


# -- workers (one per process) ----------------------------------------------------------
def _blocklin(a: argparse.Namespace) -> dict[str, Any]:
    # Imports stay outside the timed region for every contender: the dask-ml worker has
    # dask imported before its clock starts, blocklin imports it on first compute.
    import dask.threaded  # noqa: F401

    import blocklin as bl
    from blocklin.executors import RunStats
    from blocklin.executors.base import collect_stats
    from blocklin.ml import LinearRegression, LogisticRegression

    X, y = bl.open(a.X), bl.open(a.yb if a.task == "logistic" else a.y)
    opts = bl.ComputeOptions(num_workers=a.cores, work_dir=a.work)
    t0 = time.perf_counter()
    with collect_stats() as runs:
        if a.task == "linear":
            m: Any = LinearRegression(solver=a.solver, compute_options=opts,
                                      max_iter=100, tol=1e-6).fit(X, y)
            coef = np.r_[m.coef_, m.intercept_]
        else:
            m = LogisticRegression(solver=a.solver, compute_options=opts,
                                   max_iter=100, tol=1e-6).fit(X, y)
            coef = np.r_[m.coef_[0], m.intercept_]
    seconds = time.perf_counter() - t0
    stats = RunStats()
    for run in runs:
        stats.merge(run)
    # Passes, and how often X was read from storage (the block cache serves the rest).
    reads = stats.array_reads.get(X.url, 0) / X.nblocks[0]
    return {"seconds": seconds, "coef": coef.tolist(), "passes": f"{m.n_passes_} ({reads:g}×X)"}


def _rows_of_block(i: int, xurl: str, yurl: str) -> Any:
    from pyspark.ml.linalg import Vectors  # noqa: TID251

    import blocklin as bl

    x, y = bl.open(xurl).block(i, 0), bl.open(yurl).block(i, 0)
    return [(float(v), Vectors.dense(r)) for v, r in zip(y[:, 0], x, strict=True)]


def _mllib(a: argparse.Namespace) -> dict[str, Any]:
    import blocklin as bl
    from blocklin.executors.spark import local_session

    X = bl.open(a.X)
    yurl = a.yb if a.task == "logistic" else a.y
    spark = local_session(cores=a.cores, driver_memory="8g")
    try:
        sc, xurl = spark.sparkContext, a.X
        t0 = time.perf_counter()
        rdd = sc.parallelize(range(X.nblocks[0]), X.nblocks[0]) \
            .flatMap(lambda i: _rows_of_block(i, xurl, yurl))
        df = spark.createDataFrame(rdd, ["label", "features"]).cache()
        df.count()
        t1 = time.perf_counter()
        if a.task == "linear":
            from pyspark.ml.regression import LinearRegression  # noqa: TID251

            model = LinearRegression(solver=a.solver, maxIter=100, tol=1e-6,
                                     standardization=False).fit(df)
        else:
            from pyspark.ml.classification import LogisticRegression  # noqa: TID251

            model = LogisticRegression(maxIter=100, tol=1e-6, standardization=False).fit(df)
        coef = np.r_[model.coefficients.toArray(), model.intercept]
        t2 = time.perf_counter()
        iters = model.summary.totalIterations
    finally:
        spark.stop()
    return {"seconds": t2 - t0, "load_seconds": t1 - t0, "coef": coef.tolist(),
            "passes": f"{iters}it"}


def _dask_ml(a: argparse.Namespace) -> dict[str, Any]:
    import dask
    from dask_ml.linear_model import LinearRegression, LogisticRegression

    import blocklin as bl

    X = bl.open(a.X).to_dask()
    y = bl.open(a.yb if a.task == "logistic" else a.y).to_dask()[:, 0]
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=a.cores):
        cls = LinearRegression if a.task == "linear" else LogisticRegression
        # "tight": scipy's L-BFGS-B run to a gradient tolerance near double rounding,
        # to time dask-ml at the accuracy blocklin's direct solvers reach.
        tol, iters = (1e-12, 2000) if a.solver == "lbfgs-tight" else (1e-6, 100)
        m = cls(solver="lbfgs", max_iter=iters, penalty="l2", C=1e12, tol=tol).fit(X, y)
    coef = np.r_[np.ravel(m.coef_), m.intercept_]
    return {"seconds": time.perf_counter() - t0, "coef": coef.tolist(),
            "passes": f"≤{iters}it"}


def _sklearn(a: argparse.Namespace) -> dict[str, Any]:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    import blocklin as bl

    t0 = time.perf_counter()
    X = bl.open(a.X).to_numpy()
    y = bl.open(a.yb if a.task == "logistic" else a.y).to_numpy()[:, 0]
    t1 = time.perf_counter()
    if a.task == "linear":
        m: Any = LinearRegression().fit(X, y)
    else:
        m = LogisticRegression(penalty=None, max_iter=1000, tol=1e-8).fit(X, y)
    coef = np.r_[np.ravel(m.coef_), m.intercept_]
    return {"seconds": time.perf_counter() - t0, "load_seconds": t1 - t0,
            "coef": coef.tolist(), "passes": "in memory"}


WORKERS = {"blocklin": _blocklin, "mllib": _mllib, "dask_ml": _dask_ml, "sklearn": _sklearn}


def run_worker(a: argparse.Namespace) -> None:
    run_reported(lambda: WORKERS[a.worker](a))


# -- driver -----------------------------------------------------------------------------
def _spawn(a: argparse.Namespace, worker: str, task: str, solver: str) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE), "--worker", worker, "--task", task, "--solver", solver,
           "--X", a.X, "--y", a.y, "--yb", a.yb, "--work", a.work, "--cores", str(a.cores)]
    return spawn(cmd, f"{worker}/{solver}", timeout=a.timeout)


def _measure(a: argparse.Namespace, worker: str, task: str, solver: str) -> dict[str, Any]:
    repeat = a.repeat if worker == "blocklin" else a.peer_repeat
    runs = [_spawn(a, worker, task, solver) for _ in range(repeat)]
    return combine(runs, ("seconds", "load_seconds"))


def _measure_blocklin(a: argparse.Namespace, task: str,
                      solvers: list[str]) -> dict[str, dict[str, Any]]:
    """blocklin's solvers, run in turn ``--repeat`` times (run 1 of each, then run 2...):
    on a shared machine the load then weighs on every solver alike, so their ratios
    hold even when the seconds drift."""
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in solvers}
    for _ in range(a.repeat):
        for s in solvers:
            runs[s].append(_spawn(a, "blocklin", task, s))
    return {f"blocklin {s}": combine(r, ("seconds", "load_seconds")) for s, r in runs.items()}


def _row(name: str, r: dict[str, Any], ref: np.ndarray, base: float) -> str:
    coef = np.asarray(r["coef"])
    err = float(np.linalg.norm(coef - ref) / np.linalg.norm(ref))
    load = r.get("load_seconds")
    fit = r["seconds"] - load if load is not None else r["seconds"]
    load_s = f"{load:>7.2f}" if load is not None else f"{'-':>7}"
    return (f"{name:<30}{load_s}{fit:>8.2f}{r['seconds']:>9.2f}{r['seconds'] / base:>8.1f}x"
            f"{r['passes']!s:>10}{r['peak_rss'] / 2**20:>9.0f}{err:>10.1e}")


HEADER = (f"{'contender':<30}{'load s':>7}{'fit s':>8}{'total s':>9}{'vs bl':>9}"
          f"{'passes':>10}{'peak MiB':>9}{'rel err':>10}")


def least_squares_reference(a: argparse.Namespace) -> np.ndarray:
    """LAPACK's least-squares solution of ``[X 1] β = y`` in memory (cached beside X)."""
    cache = Path(a.X).with_suffix(".lstsq.npy")
    if cache.exists():
        return np.load(cache)
    import blocklin as bl

    X = bl.open(a.X).to_numpy()
    Z = np.column_stack([X, np.ones(X.shape[0])])
    del X
    beta = np.linalg.lstsq(Z, bl.open(a.y).to_numpy()[:, 0], rcond=None)[0]
    np.save(cache, beta)
    return beta


def machine_limit(a: argparse.Namespace) -> float:
    """Print and return this machine's limit for one pass forming XᵀX (read + syrk):
    what the one-pass solvers cost at best, and a floor for every exact solver."""
    import blocklin as bl

    X = bl.open(a.X)
    t_read, t_tasks, t_blas = gram_pass_limit(X, a.cores, max(a.repeat, 3))
    t_syrk = min(t_tasks, t_blas)
    flops = X.shape[0] * X.shape[1] ** 2
    print(f"# machine limit, one pass forming XᵀX: read {t_read:.2f} s "
          f"({X.nbytes / t_read / 1e9:.1f} GB/s) + syrk {t_syrk:.2f} s "
          f"({flops / t_syrk / 1e9:.0f} GFLOP/s) = {t_read + t_syrk:.2f} s")
    return t_read + t_syrk


def _panel_design(X: Any, y: Any) -> np.ndarray:
    """The first row panel's ``[X 1 y]`` in Fortran order: what a TSQR leaf factors."""
    x = X.block(0, 0)
    z = np.empty((x.shape[0], x.shape[1] + 2), order="F")
    z[:, :-2], z[:, -2], z[:, -1] = x, 1.0, y.block(0, 0)[:, 0]
    return z


def _panel_qr_seconds(z: np.ndarray, routine: str, threads: int, repeat: int) -> float:
    """Median wall time of ``threads`` single-threaded LAPACK QRs of copies of ``z`` run
    at once (one per core, as the pass runs its tasks): one panel's time with every
    core busy. The copies are made before the clock starts."""
    # scipy's f2py dgeqrt holds the GIL (its threads would run one at a time): dgeqrt
    # is called as blocklin calls it, GIL released; scipy's dgeqrf releases it itself.
    from blocklin.ops import _lapack

    lwork = int(lapack.dgeqrf_lwork(*z.shape)[0])

    def one(buf: np.ndarray) -> None:
        if routine == "dgeqrf":
            lapack.dgeqrf(buf, lwork=lwork, overwrite_a=1)
        else:
            _lapack.dgeqrt(buf, min(48, z.shape[1]))

    times = []
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as ex:
        for _ in range(repeat):
            bufs = [z.copy(order="F") for _ in range(threads)]
            t0 = time.perf_counter()
            list(ex.map(one, bufs))
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def qr_machine_limit(a: argparse.Namespace) -> tuple[float, float]:
    """Print and return this machine's limit for one TSQR pass of ``[X 1 y]`` (read +
    Householder QR of every panel) and its read share, measured now.

    T_read reads and verifies every chunk of X with all cores (as the XᵀX limit does);
    the panel QR is LAPACK's on the first panel, ``--cores`` at once, times the panels
    (rows / panel rows) over the cores. Both LAPACK Householder QRs are timed: ``dgeqrf``
    (scipy's ``qr``) and ``dgeqrt`` (blocklin's kernel); the limit takes the faster.
    It is the limit of a Householder pass: panels whose centred design is well
    conditioned take R from their Gram instead (a third of the flops), so on such a
    design ``qr`` runs below it, and its ratio to the XᵀX limit is printed beside.
    """
    import blocklin as bl

    X, y = bl.open(a.X), bl.open(a.y)
    repeat = max(a.repeat, 3)
    read_all_blocks(X, a.cores)  # warm the page cache and the buffers
    t_read, _ = median_time(lambda: read_all_blocks(X, a.cores), repeat)
    z = _panel_design(X, y)
    panels = X.shape[0] / z.shape[0]
    per = {r: _panel_qr_seconds(z, r, a.cores, repeat) for r in ("dgeqrf", "dgeqrt")}
    t_qr = min(per.values()) * panels / a.cores
    flops = 2 * z.shape[0] * z.shape[1] ** 2 - 2 * z.shape[1] ** 3 / 3
    print(f"# machine limit, one TSQR pass of [X 1 y]: read {t_read:.2f} s + panel QR "
          f"{min(per.values()):.3f} s x {panels:.1f} panels / {a.cores} cores = "
          f"{t_read + t_qr:.2f} s (one {z.shape[0]} x {z.shape[1]} panel, {a.cores} at once: "
          + ", ".join(f"{r} {t:.3f} s, {flops / t / 1e9:.0f} GFLOP/s a core"
                      for r, t in per.items()) + ")")
    return t_read + t_qr, t_read


def report(a: argparse.Namespace) -> None:
    skip = set(filter(None, a.skip.split(",")))
    print(f"# {a.rows} x {a.cols} ({a.design} design), row blocks of {a.chunk_rows}, "
          f"{a.cores} cores, median of {a.repeat} runs (peers {a.peer_repeat}), fresh process "
          "each, blocklin's solvers in turn")
    limit = machine_limit(a)
    qr_limit = qr_machine_limit(a)[0] if "linear" in a.tasks.split(",") else None
    for task in a.tasks.split(","):
        solvers = (["auto", "normal", "qr", "sketch", "lbfgs"] if task == "linear"
                   else ["auto", "lbfgs"])
        if a.solvers:
            solvers = [s for s in solvers if s == "auto" or s in a.solvers.split(",")]
        results = _measure_blocklin(a, task, solvers)
        ref = (least_squares_reference(a) if task == "linear"
               else np.asarray(results["blocklin auto"]["coef"]))
        base = results["blocklin auto"]["seconds"]
        print(f"\n## {task} regression\n{HEADER}")
        for name, r in results.items():
            print(_row(name, r, ref, base), flush=True)
        print(f"{'(blocklin auto / machine limit)':<30}{base / limit:>33.1f}x", flush=True)
        if task == "linear" and "blocklin qr" in results and qr_limit is not None:
            qr = results["blocklin qr"]["seconds"]
            print(f"{'(blocklin qr / qr limit)':<30}{qr / qr_limit:>33.1f}x", flush=True)
            print(f"{'(blocklin qr / XᵀX limit)':<30}{qr / limit:>33.1f}x", flush=True)
            if "blocklin normal" in results:
                ratio = qr / results["blocklin normal"]["seconds"]
                print(f"{'(blocklin qr / normal)':<30}{ratio:>33.1f}x", flush=True)
        peers: list[tuple[str, str, str]] = []
        if "mllib" not in skip:
            mllib = ([m for m in ("normal", "l-bfgs") if f"mllib-{m}" not in skip]
                     if task == "linear" else ["l-bfgs"])
            peers += [(f"MLlib {m} (load + fit)", "mllib", m) for m in mllib]
        if "dask" not in skip:
            peers.append(("dask-ml lbfgs", "dask_ml", "lbfgs"))
            if a.dask_tight:
                peers.append(("dask-ml lbfgs, tol 1e-12", "dask_ml", "lbfgs-tight"))
        if "sklearn" not in skip:
            peers.append(("scikit-learn (load + fit)", "sklearn", "-"))
        for name, worker, solver in peers:
            # A peer that fails or overruns --timeout gets a row saying so; the table
            # goes on (rows print as they finish).
            try:
                print(_row(name, _measure(a, worker, task, solver), ref, base), flush=True)
            except (RuntimeError, TimeoutError) as exc:
                print(f"{name:<30}  failed: {str(exc).splitlines()[0]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=500)
    ap.add_argument("--chunk-rows", type=int, default=16_384)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--peer-repeat", type=int, default=None,
                    help="runs of each peer (default --repeat)")
    ap.add_argument("--skip", default="",
                    help="contenders to skip: mllib, mllib-normal or mllib-l-bfgs (linear "
                         "only), dask, sklearn")
    ap.add_argument("--dask-tight", action="store_true",
                    help="also run dask-ml to gradient tol 1e-12 (slow: hours at full size)")
    ap.add_argument("--timeout", type=float, default=1200.0,
                    help="seconds after which a contender's run is killed and reported")
    ap.add_argument("--tasks", default="linear,logistic", help="linear, logistic or both")
    ap.add_argument("--solvers", default="",
                    help="blocklin solvers to run besides auto (default: all)")
    ap.add_argument("--design", choices=["gaussian", "correlated"], default="gaussian",
                    help="iid features, or correlated ones with condition number 1e3")
    ap.add_argument("--quick", action="store_true", help="20,000 x 50, one run")
    ap.add_argument("--data", type=Path, default=HERE.parent / "data")
    ap.add_argument("--worker", choices=sorted(WORKERS))
    ap.add_argument("--task", choices=["linear", "logistic"])
    ap.add_argument("--solver")
    ap.add_argument("--X")
    ap.add_argument("--y")
    ap.add_argument("--yb")
    ap.add_argument("--work")
    a = ap.parse_args()
    if a.worker:
        run_worker(a)
        return
    if a.quick:
        a.rows, a.cols, a.repeat, a.chunk_rows = 20_000, 50, 1, 4096
    if a.peer_repeat is None:
        a.peer_repeat = a.repeat
    a.data.mkdir(parents=True, exist_ok=True)
    paths = make_data(a.data, a.rows, a.cols, a.chunk_rows, a.design)
    a.X, a.y, a.yb = paths["X"], paths["y"], paths["yb"]
    with tempfile.TemporaryDirectory(dir=a.data, prefix="bench-reg-") as work:
        a.work = work
        report(a)


if __name__ == "__main__":
    main()
