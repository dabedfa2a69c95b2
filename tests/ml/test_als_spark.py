"""ALS against ``pyspark.ml.recommendation.ALS`` on the same seeded ratings (power-law item
popularity, a planted rank-10 signal; 104,316 ratings before the 10% held out): explicit
and implicit, rank 10. MLlib draws its own initial factors, so the comparison is of what
both minimize: the objective (MLlib's, evaluated by :func:`blocklin.ml.als.als_objective`
at each side's factors) and the RMSE on held-out ratings, within 1%. Also: the fit on
the Spark executor equals the dask fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from blocklin.ml import ALS
from blocklin.ml.als import als_objective

pytestmark = pytest.mark.spark

RANK = 10
ITERS = 20
LAM = 0.05


def planted_ratings(users: int, items: int, nnz: int, seed: int,
                    implicit: bool) -> sp.csr_matrix:
    """``nnz`` draws of (user, item) with Zipf-like item popularity (exponent 0.8) and a
    value from a planted rank-10 matrix: ratings 3 + signal + noise (explicit), or
    interaction counts that grow with the signal (implicit). O(nnz) memory."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    item = rng.permutation(items)[rng.choice(items, nnz, p=pop / pop.sum())]
    user = rng.integers(0, users, nnz)
    key = np.unique(user.astype(np.int64) * items + item)
    u, i = key // items, key % items
    # Rank 9 plus the explicit ratings' offset: rank 10 in all.
    x, y = rng.standard_normal((users, RANK - 1)), rng.standard_normal((items, RANK - 1))
    signal = np.einsum("nk,nk->n", x[u], y[i]) / np.sqrt(RANK - 1)
    if implicit:
        vals = rng.poisson(np.exp(0.7 * signal)).astype(float) + 1.0
    else:
        vals = 3.0 + signal + 0.1 * rng.standard_normal(u.size)
    return sp.csr_matrix((vals, (u, i)), shape=(users, items))


def split(r: sp.csr_matrix, seed: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    coo = r.tocoo()
    test = np.random.default_rng(seed).random(coo.nnz) < 0.1
    train = sp.csr_matrix((coo.data[~test], (coo.row[~test], coo.col[~test])), shape=r.shape)
    # Held-out pairs of users and items seen in training (MLlib's coldStartStrategy=drop).
    rows, cols = coo.row[test], coo.col[test]
    seen = (np.diff(train.indptr)[rows] > 0) & (np.bincount(train.indices,
                                                            minlength=r.shape[1])[cols] > 0)
    return train, np.column_stack([rows[seen], cols[seen]]), coo.data[test][seen]


def spark_factors(spark: Any, train: sp.csr_matrix, implicit: bool, alpha: float,
                  checkpoints: Path) -> tuple[np.ndarray, np.ndarray]:
    from pyspark.ml.recommendation import ALS as SparkALS  # noqa: N811, TID251

    # Without checkpoints, 20 iterations' lineage overflows the JVM stack on serialization.
    spark.sparkContext.setCheckpointDir(str(checkpoints))
    coo = train.tocoo()
    df = spark.createDataFrame(list(zip(coo.row.tolist(), coo.col.tolist(),
                                        coo.data.tolist(), strict=True)),
                               ["user", "item", "rating"])
    model = SparkALS(rank=RANK, maxIter=ITERS, regParam=LAM, implicitPrefs=implicit,
                     alpha=alpha, seed=7, numUserBlocks=2, numItemBlocks=2,
                     coldStartStrategy="drop", checkpointInterval=5).fit(df)

    def dense(frame: Any, n: int) -> np.ndarray:
        out = np.zeros((n, RANK))
        for row in frame.collect():
            out[row["id"]] = row["features"]
        return out

    return dense(model.userFactors, train.shape[0]), dense(model.itemFactors, train.shape[1])


@pytest.mark.parametrize("implicit", [False, True])
def test_als_matches_mllib(spark_session: Any, tmp_path: Path, implicit: bool) -> None:
    r = planted_ratings(1_500, 600, 140_000, seed=11, implicit=implicit)
    train, pairs, truth = split(r, 0)
    alpha = 0.5
    ours = ALS(rank=RANK, max_iter=ITERS, reg_param=LAM, implicit_prefs=implicit, alpha=alpha,
               seed=3, work_dir=str(tmp_path)).fit(train)
    su, si = spark_factors(spark_session, train, implicit, alpha, tmp_path / "spark-ckpt")

    f_ours = als_objective(train, ours.user_factors_, ours.item_factors_, LAM, implicit, alpha)
    f_spark = als_objective(train, su, si, LAM, implicit, alpha)
    rmse_ours = float(np.sqrt(np.mean((ours.predict(pairs) - truth) ** 2)))
    s = np.einsum("nk,nk->n", su[pairs[:, 0]], si[pairs[:, 1]])
    rmse_spark = float(np.sqrt(np.mean((s - truth) ** 2)))
    print(f"implicit={implicit}: objective {f_ours:.6g} vs MLlib {f_spark:.6g}; "
          f"held-out RMSE {rmse_ours:.6g} vs MLlib {rmse_spark:.6g}")
    assert abs(f_ours / f_spark - 1) < 0.01
    assert abs(rmse_ours / rmse_spark - 1) < 0.01
    if not implicit:
        assert rmse_ours < 0.6  # the planted signal is learned (mean-only RMSE is ~1)


def test_als_on_the_spark_executor_equals_dask(spark_session: Any, tmp_path: Path) -> None:
    r = planted_ratings(300, 120, 4_000, seed=12, implicit=False)
    common = dict(rank=4, max_iter=3, reg_param=LAM, block_rows=64, work_dir=str(tmp_path))
    on_dask = ALS(**common).fit(r)
    on_spark = ALS(executor="spark", compute_options={"spark": spark_session},
                   **common).fit(r)
    # The same kernels on other worker processes: equal up to BLAS rounding at most.
    np.testing.assert_allclose(on_spark.user_factors_, on_dask.user_factors_, rtol=0,
                               atol=1e-12)
    np.testing.assert_allclose(on_spark.item_factors_, on_dask.item_factors_, rtol=0,
                               atol=1e-12)
