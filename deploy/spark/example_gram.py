"""Example driver for submit.sh: Gram matrix and column stats of a stored matrix on Spark.

    deploy/spark/submit.sh --master spark://host:7077 deploy/spark/example_gram.py \
        /shared/A.zarr /shared/blocklin-work /shared/gram.npy
"""

from __future__ import annotations

import sys

import numpy as np
from pyspark.sql import SparkSession  # noqa: TID251

import blocklin as bl


def main(path: str, work_dir: str, out: str) -> None:
    spark = SparkSession.builder.appName("blocklin-gram").getOrCreate()
    A = bl.open(path)
    g, stats = bl.compute(bl.ops.gram(A), bl.ops.column_stats(A), executor="spark",
                          spark=spark, work_dir=work_dir)
    np.save(out, g)
    print(f"gram of {A.shape}: trace {np.trace(g):.6g}; column means {stats.mean[:3]}...")
    spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:4])
