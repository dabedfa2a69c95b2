"""from_spark / to_spark: DataFrame ⇄ BlockMatrix round trips, written in the executors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blocklin as bl
from blocklin.errors import InputDtypeError, InputValueError

pytest.importorskip("pyspark")

pytestmark = pytest.mark.spark


@pytest.fixture
def frame(spark_session: Any) -> tuple[Any, np.ndarray]:
    rng = np.random.default_rng(11)
    data = rng.standard_normal((2503, 5))
    data[:, 4] = rng.integers(0, 2, 2503)
    rows = [(i, *map(float, r[:4]), int(r[4]), "x") for i, r in enumerate(data)]
    # 7 uneven partitions against 300-row blocks: most blocks straddle partitions.
    df = spark_session.createDataFrame(rows, "id long, a double, b double, c double, d double, "
                                             "y int, s string").repartitionByRange(7, "id")
    return df, data


def test_round_trip_with_label(frame: Any, spark_session: Any, tmp_path: Path) -> None:
    df, data = frame
    assert df.rdd.getNumPartitions() == 7
    X, y = bl.from_spark(df, ["a", "b", "c", "d"], tmp_path / "X.zarr", label="y", chunks=300)
    assert X.shape == (2503, 4) and X.chunks == (300, 4)
    # The label's name is ingest's (X.label.zarr), whichever way the data came in.
    assert y.shape == (2503, 1) and y.url.endswith("X.label.zarr")
    np.testing.assert_array_equal(X.to_numpy(), data[:, :4])
    np.testing.assert_array_equal(y.to_numpy()[:, 0], data[:, 4])
    assert bl.open(X.url).provenance["operator"] == "from_spark"

    back = bl.to_spark(X, spark_session, columns=["a", "b", "c", "d"])
    assert back.rdd.getNumPartitions() == X.nblocks[0]
    np.testing.assert_array_equal(np.array(back.collect()), data[:, :4])
    # An aggregate computed by Spark itself over the blocks read in its executors.
    total = back.selectExpr("sum(a) as s").collect()[0]["s"]
    np.testing.assert_allclose(total, data[:, 0].sum(), rtol=1e-12)
    # The ingested matrix feeds a graph on the same session.
    g = bl.compute(bl.ops.gram(X), executor="spark", spark=spark_session,
                   work_dir=str(tmp_path / "w"))[0]
    np.testing.assert_allclose(g, data[:, :4].T @ data[:, :4], rtol=1e-12)


def test_bad_input_writes_nothing(frame: Any, tmp_path: Path) -> None:
    df, _ = frame
    target = tmp_path / "X.zarr"
    with pytest.raises(InputDtypeError, match="'s' is string"):
        bl.from_spark(df, ["a", "s"], target)
    with pytest.raises(InputValueError, match="no column 'zz'"):
        bl.from_spark(df, ["a", "zz"], target)
    with pytest.raises(InputValueError, match="also among"):
        bl.from_spark(df, ["a", "y"], target, label="y")
    with pytest.raises(InputValueError, match="duplicates"):
        bl.from_spark(df, ["a", "a"], target)
    with pytest.raises(InputDtypeError, match="list of column names"):
        bl.from_spark(df, "a", target)
    with pytest.raises(InputValueError, match="no rows"):
        bl.from_spark(df.filter("id < 0"), ["a"], target)
    assert not target.exists() or not any(target.iterdir())


def test_to_spark_names_columns_as_recorded(frame: Any, spark_session: Any,
                                            tmp_path: Path) -> None:
    """to_spark names columns as from_spark and ingest recorded them, not c0, c1, ..."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from blocklin.pipelines.ingest import ingest

    df, data = frame
    X, y = bl.from_spark(df, ["b", "a", "d"], tmp_path / "X.zarr", label="y", chunks=300)
    back = bl.to_spark(X, spark_session)
    assert back.columns == ["b", "a", "d"]
    np.testing.assert_array_equal(np.array(back.select("d", "b").collect()), data[:, [3, 1]])
    assert bl.to_spark(y, spark_session).columns == ["y"]

    table = pa.table({"age": data[:50, 0], "s": ["x"] * 50, "income": data[:50, 1],
                      "label": data[:50, 4]})
    pq.write_table(table, tmp_path / "t.parquet")
    res = ingest(str(tmp_path / "t.parquet"), str(tmp_path / "T.zarr"), label="label")
    assert res.label is not None
    back = bl.to_spark(res.matrix, spark_session)
    assert back.columns == ["age", "income"]
    np.testing.assert_array_equal(np.array(back.select("income").collect())[:, 0], data[:50, 1])
    assert bl.to_spark(res.label, spark_session).columns == ["label"]
    # Explicit names still win; arrays without recorded names keep c0, c1, ...
    assert bl.to_spark(res.matrix, spark_session, columns=["p", "q"]).columns == ["p", "q"]
    plain = bl.from_array(data[:10, :2], tmp_path / "P.zarr")
    assert bl.to_spark(plain, spark_session).columns == ["c0", "c1"]
