"""Plans at data-center size (issue 13 item 4): planning costs per stage, submission per batch.

    python benchmarks/bench_plan.py [--blocks 100000 1000000] [--submit 2000 10000]

Part 1: a 10^10 x 10^3 float64 matrix (80 TB; metadata only, written by
``blocklin.testing.plans.metadata_only_matrix``, no chunk) in 10^5 or 10^6 row blocks.
For gram, randomized SVD and a LinearRegression (normal solver), in a fresh process
per case: ``explain`` of the plan each runs, and the refusal of the whole call under
``max_task_memory="64MiB"`` (PlanMemoryError, before anything is written); seconds,
and the process's peak RSS (``ru_maxrss``, imports included) beside its RSS before.

Part 2: the driver's cost of submitting tasks to a ``distributed`` cluster (a
LocalCluster of 2 worker processes, started in another process so the driver
process holds only the client): gram of an N x 1 array of 1 x 1 blocks (N tasks
plus the tree's), driver wall and CPU seconds per 10,000 tasks, and the driver's RSS
growth (bounded by the submission window, not by the plan).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROWS, COLS = 10**10, 1000
LIMIT = "64MiB"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ part 1 (child)
def plan_case(case: str, blocks: int, where: str) -> dict[str, Any]:
    import numpy as np

    import blocklin as bl
    from blocklin.errors import PlanMemoryError
    from blocklin.ml import LinearRegression
    from blocklin.ops.glm.moments import moments_spec
    from blocklin.ops.glm.passes import build_pass
    from blocklin.ops.svd import normal_product
    from blocklin.testing.plans import metadata_only_matrix

    chunk = ROWS // blocks
    A = metadata_only_matrix(f"{where}/A.zarr", (ROWS, COLS), (chunk, COLS))
    y = metadata_only_matrix(f"{where}/y.zarr", (ROWS, 1), (chunk, 1))
    x = np.linalg.qr(np.random.default_rng(0).standard_normal((COLS, 20)))[0]
    work = f"{where}/work"
    explain: Any
    refuse: Any
    if case == "gram":
        def explain() -> Any:
            return bl.ops.gram(A).explain("64GiB")

        def refuse() -> None:
            bl.ops.gram(A).compute(work_dir=work, max_task_memory=LIMIT)
    elif case == "randomized SVD":
        def explain() -> Any:  # a power pass: every pass but the last (TSQR)
            return normal_product(A, x).explain("64GiB")

        def refuse() -> None:
            bl.ops.randomized_svd(A, 10, work_dir=work, max_task_memory=LIMIT)
    elif case == "randomized SVD, TSQR pass":
        from blocklin.executors.lazy import Lazy
        from blocklin.ops.tsqr import plan_finish, plan_tree

        def explain() -> Any:
            plan, top = plan_finish(plan_tree([A], with_q=True, right=x, op="rsvd"), "svd",
                                    op="rsvd")
            return Lazy(plan, top, "small").explain("64GiB")

        refuse = None
    else:
        def explain() -> Any:  # LinearRegression(solver="normal")'s one pass
            return build_pass(moments_spec(COLS, 1, False, 1, True), A, y).explain("64GiB")

        def refuse() -> None:
            LinearRegression(solver="normal", work_dir=work,
                             compute_options={"max_task_memory": LIMIT}).fit(A, y)
    before = _rss_mb()
    t0 = time.perf_counter()
    report = explain()
    t_explain = time.perf_counter() - t0
    t_refuse = None
    if refuse is not None:
        t0 = time.perf_counter()
        try:
            refuse()
        except PlanMemoryError:
            t_refuse = time.perf_counter() - t0
        else:
            raise SystemExit(f"{case}: not refused under {LIMIT}")
        assert not Path(work).exists()
    return {"case": case, "blocks": blocks, "tasks": sum(r[1] for r in report.rows),
            "stages": len(report.rows), "explain_s": t_explain, "refuse_s": t_refuse,
            "rss_before_mb": before, "rss_peak_mb": _rss_mb()}


# ------------------------------------------------------------------ part 2 (child)
def submit_case(n: int, address: str, where: str, window: int) -> dict[str, Any]:
    import numpy as np
    from distributed import Client

    import blocklin as bl
    from blocklin.executors import RunStats
    from blocklin.executors.dask import BATCH_JOBS, WINDOW_JOBS, DaskExecutor

    A = bl.from_array(np.arange(1.0, n + 1).reshape(n, 1), f"{where}/A{n}.zarr", chunks=(1, 1))
    with Client(address) as client:
        warm = bl.from_array(np.ones((4, 1)), f"{where}/warm.zarr", chunks=(1, 1))
        bl.ops.gram(warm).compute(client=client, work_dir=f"{where}/w-warm")
        before = _rss_mb()
        stats = RunStats()
        c0, t0 = time.process_time(), time.perf_counter()
        engine = DaskExecutor(client=client, batch_jobs=min(BATCH_JOBS, window // 2),
                              window_jobs=window) if window else DaskExecutor(client=client)
        g = bl.ops.gram(A).compute(executor=engine, work_dir=f"{where}/w{n}", stats=stats)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert float(g[0, 0]) == float(np.sum(np.arange(1.0, n + 1) ** 2))
    return {"blocks": n, "tasks": stats.tasks_run, "wall_s": wall, "driver_cpu_s": cpu,
            "window": window or WINDOW_JOBS, "batch": engine.batch_jobs,
            "rss_before_mb": before, "rss_peak_mb": _rss_mb()}


def serve_cluster() -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        print(cluster.scheduler_address, flush=True)
        sys.stdin.read()  # until the parent closes it


# ------------------------------------------------------------------ parent
def _child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=False, timeout=3600)
    if out.returncode:
        raise SystemExit(f"{args}: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blocks", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--submit", type=int, nargs="+", default=[2_000, 10_000])
    ap.add_argument("--window", type=int, nargs="+", default=[0, 2_000],
                    help="unfinished tasks in flight (0: the executor's default)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--address", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_cluster()
        return
    if args.case:
        print(json.dumps(plan_case(args.case, args.blocks[0], args.dir)))
        return
    if args.address:
        print(json.dumps(submit_case(args.submit[0], args.address, args.dir, args.window[0])))
        return
    print(f"{ROWS:.0e} x {COLS} float64 (80 TB, metadata only); refusal under "
          f"max_task_memory={LIMIT}; one fresh process per row (RSS includes imports)")
    print(f"{'case':<26} {'blocks':>9} {'stages':>6} {'tasks':>9} {'explain s':>9} "
          f"{'refuse s':>8} {'RSS before':>10} {'RSS peak':>9}")
    for blocks in args.blocks:
        for case in ("gram", "randomized SVD", "randomized SVD, TSQR pass", "LinearRegression"):
            with tempfile.TemporaryDirectory() as d:
                r = _child("--case", case, "--blocks", str(blocks), "--dir", d)
            refuse = "-" if r["refuse_s"] is None else f"{r['refuse_s']:.3f}"
            print(f"{case:<26} {blocks:>9} {r['stages']:>6} {r['tasks']:>9} "
                  f"{r['explain_s']:>9.3f} {refuse:>8} {r['rss_before_mb']:>8.0f}MB "
                  f"{r['rss_peak_mb']:>7.0f}MB", flush=True)
    print("\nsubmission to a LocalCluster (2 worker processes, 1 thread each; scheduler in "
          "another process): gram of N x 1 in 1 x 1 blocks")
    print(f"{'blocks':>7} {'tasks':>7} {'batch':>6} {'window':>6} {'wall s':>8} "
          f"{'driver CPU s':>12} {'RSS growth':>10} {'per 10k tasks: wall s':>21} {'CPU s':>6}")
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        address = server.stdout.readline().strip()
        runs = [(n, 0) for n in args.submit] + [(max(args.submit), w) for w in args.window if w]
        for n, w in runs:
            with tempfile.TemporaryDirectory() as d:
                r = _child("--address", address, "--submit", str(n), "--window", str(w),
                           "--dir", d)
            grow = r["rss_peak_mb"] - r["rss_before_mb"]
            k = 10_000 / r["tasks"]
            print(f"{n:>7} {r['tasks']:>7} {r['batch']:>6} {r['window']:>6} {r['wall_s']:>8.1f} "
                  f"{r['driver_cpu_s']:>12.1f} "
                  f"{grow:>8.0f}MB {r['wall_s'] * k:>21.1f} {r['driver_cpu_s'] * k:>6.1f}",
                  flush=True)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
