"""L-BFGS / OWL-QN accuracy against the exact minimizer, blocklin beside Spark MLlib.

The cases of ``tests/ml/test_solver_convergence.py`` (20,000 × 30, Toeplitz correlation
0.9, squared / binomial / multinomial loss with L2, L1 and elastic-net penalties): for
each tol, blocklin's relative coefficient error ‖θ − θ*‖/‖θ*‖ (θ = coefficients and
intercepts, multinomial intercepts centred), iterations, passes over the data and
seconds; with ``--spark``, MLlib's error, iterations and seconds on the same rows
(local mode, two cores, ``standardization=False`` so both minimize the same objective;
MLlib's linear regression fits a label divided by its standard deviation, so its
squared-loss cases with a penalty minimize a different objective: their error column is
against MLlib's own minimizer, the same reference on y/σ_y with λ/σ_y, rescaled).

    .venv/bin/python benchmarks/bench_solver_convergence.py --tol 1e-10 --spark
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "tests" / "ml"))

from test_solver_convergence import (  # noqa: E402
    CASES,
    Case,
    problem,
    reference,
    relative_error,
    run_case,
)


def spark_case(spark: Any, case: Case, tol: float) -> dict[str, Any]:
    from pyspark.ml.classification import LogisticRegression as SparkLogit  # noqa: TID251
    from pyspark.ml.linalg import Vectors  # noqa: TID251
    from pyspark.ml.regression import LinearRegression as SparkLR  # noqa: TID251

    X, y, ref, _ = problem(case)
    rows = [(float(v), Vectors.dense(x)) for v, x in zip(y, X, strict=True)]
    df = spark.createDataFrame(rows, ["label", "features"]).cache()
    df.count()
    kw = {"regParam": case.lam, "elasticNetParam": case.alpha, "standardization": False,
          "tol": tol, "maxIter": 10_000}
    if case.family == "squared":
        est: Any = SparkLR(solver="l-bfgs", **kw)
        sy = float(np.std(y, ddof=1))
        if case.lam > 0:
            # MLlib fits y/σ_y with λ/σ_y and rescales: the documented objective with
            # the L2 term divided by σ_y (blocklin's label_scaling="mllib").
            ref, _ = reference(X, y / sy, "squared", case.lam / sy, case.alpha)
            ref = ref * sy
    else:
        est = SparkLogit(family=case.family, **kw)
    t0 = time.perf_counter()
    model = est.fit(df)
    seconds = time.perf_counter() - t0
    if case.family in ("squared", "binomial"):
        theta = np.append(model.coefficients.toArray(), model.intercept)[:, None]
    else:
        theta = np.vstack([model.coefficientMatrix.toArray().T,
                           model.interceptVector.toArray()[None, :]])
        theta[-1] -= theta[-1].mean()
    df.unpersist()
    return {"error": relative_error(theta, ref), "iterations": model.summary.totalIterations,
            "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tol", type=float, nargs="+", default=[1e-10])
    ap.add_argument("--spark", action="store_true", help="also fit with Spark MLlib")
    ap.add_argument("--cases", nargs="*", default=None, help="case names (default all)")
    args = ap.parse_args()
    spark = None
    if args.spark:
        from blocklin.executors.spark import local_session

        spark = local_session(cores=2)
        spark.sparkContext.setLogLevel("ERROR")
    cases = [c for c in CASES if args.cases is None or c.name in args.cases]
    print(f"{'case':<17}{'solver':>7}{'tol':>8}{'rel err':>10}{'iters':>7}{'passes':>8}"
          f"{'sec':>7}" + (f"{'MLlib err':>11}{'iters':>7}{'sec':>7}" if spark else ""))
    for case in cases:
        problem(case)
        for tol in args.tol:
            ours = run_case(case, tol)
            line = (f"{case.name:<17}{case.solver:>7}{tol:>8.0e}{ours['error']:>10.1e}"
                    f"{ours['iterations']:>7}{ours['passes']:>8}{ours['seconds']:>7.2f}")
            if spark is not None:
                th = spark_case(spark, case, tol)
                line += f"{th['error']:>11.1e}{th['iterations']:>7}{th['seconds']:>7.2f}"
            print(line, flush=True)
    if spark is not None:
        spark.stop()


if __name__ == "__main__":
    main()
