"""Does watching a Spark compute's progress slow it down? Progress off and on, alternated.

With a progress sink, each stage group's job runs on a pooled thread while the driver
reads a Spark accumulator counting finished block tasks (see
``blocklin.executors.spark._collect_watched``); without one, the job is collected
directly. Both on one local session, in turns, medians over rounds.

    .venv/bin/python benchmarks/bench_spark_progress.py --rounds 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import blocklin as bl
from blocklin.executors.progress import HookSink
from blocklin.executors.spark import local_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=100)
    ap.add_argument("--chunk-rows", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    spark = local_session(cores=args.cores)
    with tempfile.TemporaryDirectory() as tmp:
        x = np.random.default_rng(0).standard_normal((args.rows, args.cols))
        A = bl.from_array(x, Path(tmp) / "A.zarr", chunks=(args.chunk_rows, None))
        G = bl.ops.gram(A)
        updates = [0]

        def count(stage: str, done: int, total: int) -> None:
            updates[0] += 1

        sink = HookSink(count)  # counts updates, prints nothing

        def run(progress: HookSink | None) -> float:
            t0 = time.perf_counter()
            bl.compute(G, executor="spark", spark=spark, work_dir=str(Path(tmp) / "w"),
                       progress=progress)
            return time.perf_counter() - t0

        run(None)
        run(sink)  # warm-up: Python workers, page cache, the pooled thread
        off: list[float] = []
        on: list[float] = []
        for i in range(args.rounds):
            order = [(None, off), (sink, on)] if i % 2 == 0 else [(sink, on), (None, off)]
            for progress, times in order:
                times.append(run(progress))
    spark.stop()
    m_off, m_on = statistics.median(off), statistics.median(on)
    print(f"gram {args.rows}x{args.cols}, {A.nblocks[0]} blocks, local[{args.cores}], "
          f"{args.rounds} rounds: progress off median {m_off:.3f} s (min {min(off):.3f}), "
          f"on median {m_on:.3f} s (min {min(on):.3f}), on/off {m_on / m_off:.3f}; "
          f"{updates[0]} progress updates")


if __name__ == "__main__":
    main()
