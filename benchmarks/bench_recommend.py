"""EASE: blocklin (stored CSR interactions, one Gram pass, driver inverse, block-task
recommend) against an in-memory scipy/numpy build of the same model.

Data: seeded users × items binary interactions with power-law item popularity
(p ∝ rank^-0.9), about ``--per-user`` interactions per user, stored by blocklin as CSR
row blocks. Each contender runs in its own process, so its peak resident memory
(``ru_maxrss``) is its own:

* ``blocklin``: ``EASE(l2).fit(path)`` (the Gram by column panels over the stored
  matrix, then the inverse in place on the driver: LAPACK Cholesky up to 8,192 items, LU
  beyond; two n × n arrays at the peak), then ``recommend(path, 10)`` (block tasks, top
  10 per user).
* ``scipy``: the CSR loaded in memory, ``(X.T @ X).toarray()``, ``numpy.linalg.inv``,
  B = I − P/diag(P), and top 10 per user by slices of 10,000 users (a users × items
  score matrix whole would not fit).

The two models are compared (max |ΔB| / max |B|) and their top-10 lists. A contender
that fails (e.g. killed out of memory) is reported with its exit status and the peak
RSS it reached (``os.wait4``'s rusage of that child), and the other still runs.

Run: ``python benchmarks/bench_recommend.py [--users 200000 --items 20000 --per-user 40]``

``python benchmarks/bench_recommend.py als [--users 1000000 --items 50000 --ratings
50000000 --iters 5]`` runs ALS against Spark MLlib instead (``bench_recommend_als.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

L2 = 500.0
TOP = 10


def interactions(users: int, items: int, per_user: int, seed: int = 0) -> sp.csr_matrix:
    """Binary users × items interactions with power-law popularity, seeded."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.9
    pop = pop[rng.permutation(items)]
    pop /= pop.sum()
    counts = rng.poisson(per_user, size=users) + 1
    rows = np.repeat(np.arange(users), counts)
    cols = rng.choice(items, size=rows.size, p=pop)
    x = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(users, items))
    x.data[:] = 1.0  # repeated draws of one item count once
    return x


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_blocklin(data: Path, out: Path) -> dict[str, float]:
    from blocklin.ml import EASE
    from blocklin.ml import ease as ease_mod

    # The fit's inverse timed apart from its Gram passes.
    inverse = ease_mod.ease_weights
    spent: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        b = inverse(*args, **kwargs)
        spent.append(time.perf_counter() - t)
        return b

    ease_mod.ease_weights = timed
    work = str(data / "work")
    t0 = time.perf_counter()
    model = EASE(l2=L2, work_dir=work).fit(str(data / "X.zarr"))
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    items, _ = model.recommend(str(data / "X.zarr"), TOP)
    t_rec = time.perf_counter() - t0
    np.save(out / "blocklin_B.npy", model.coef_)
    np.save(out / "blocklin_top.npy", items)
    return {"fit_s": t_fit, "inverse_s": sum(spent), "recommend_s": t_rec,
            "peak_gib": _peak_gib()}


def run_scipy(data: Path, out: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    x = sp.load_npz(data / "X.npz").tocsr()
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = (x.T @ x).toarray()
    g[np.diag_indices_from(g)] += L2
    t1 = time.perf_counter()
    p = np.linalg.inv(g)
    t_inv = time.perf_counter() - t1
    del g
    b = p / (-np.diag(p))[None, :]
    del p
    np.fill_diagonal(b, 0.0)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    tops = []
    for s in range(0, x.shape[0], 10_000):
        rows = x[s:s + 10_000]
        scores = np.asarray(rows @ b)
        r, c = rows.nonzero()
        scores[r, c] = -np.inf
        part = np.argpartition(-scores, TOP - 1, axis=1)[:, :TOP]
        vals = np.take_along_axis(scores, part, axis=1)
        tops.append(np.take_along_axis(part, np.lexsort((part, -vals), axis=1), axis=1))
    t_rec = time.perf_counter() - t0
    np.save(out / "scipy_B.npy", b)
    np.save(out / "scipy_top.npy", np.concatenate(tops))
    return {"load_s": t_load, "fit_s": t_fit, "inverse_s": t_inv, "recommend_s": t_rec,
            "peak_gib": _peak_gib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--per-user", type=int, default=40)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "blocklin-bench")
    ap.add_argument("--one", choices=["blocklin", "scipy"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = args.data / f"ease_{args.users}x{args.items}_{args.per_user}"
    out = data / "results"
    if args.one:
        fn = run_blocklin if args.one == "blocklin" else run_scipy
        print(json.dumps(fn(data, out)))
        return

    import blocklin as bl

    out.mkdir(parents=True, exist_ok=True)
    if not (data / "X.npz").exists():
        x = interactions(args.users, args.items, args.per_user)
        sp.save_npz(data / "X.npz", x)
        bl.from_array(x, str(data / "X.zarr"), overwrite=True)
    X = bl.open(str(data / "X.zarr"))
    print(f"EASE on {args.items:,} items against a scipy in-memory build")
    print(f"interactions {X.shape}, {sp.load_npz(data / 'X.npz').nnz:,} nonzeros, "
          f"{X.nblocks[0]} CSR row blocks, {os.cpu_count()} cores, l2={L2}\n")
    res = {name: _run_child(name, args) for name in ("blocklin", "scipy")}
    print("| contender | load (s) | fit (s) | of which inverse (s) | recommend top-10 (s) "
          "| peak RSS (GiB) |")
    print("|---|---|---|---|---|---|")
    for name, r in res.items():
        if "failed" in r:
            print(f"| {name} | {r['failed']} | | | | {r['peak_gib']:.2f} |")
            continue
        load = f"{r['load_s']:.2f}" if "load_s" in r else "(in the fit's pass)"
        print(f"| {name} | {load} | {r['fit_s']:.2f} | {r['inverse_s']:.2f} | "
              f"{r['recommend_s']:.2f} | {r['peak_gib']:.2f} |")
    if any("failed" in r for r in res.values()):
        return
    b1, b2 = np.load(out / "blocklin_B.npy"), np.load(out / "scipy_B.npy")
    agree = float(np.abs(b1 - b2).max() / np.abs(b2).max())
    del b1, b2
    same_top = float(np.mean(np.load(out / "blocklin_top.npy") == np.load(out / "scipy_top.npy")))
    print(f"\nmax |B_blocklin - B_scipy| / max |B_scipy| = {agree:.2e}; "
          f"top-10 entries equal: {same_top:.4%}")


def _run_child(name: str, args: argparse.Namespace) -> dict[str, object]:
    """One contender in its own process; its own peak RSS from wait4 even if it dies."""
    cmd = [sys.executable, __file__, "--users", str(args.users), "--items", str(args.items),
           "--per-user", str(args.per_user), "--data", str(args.data), "--one", name]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak = usage.ru_maxrss / 2**20  # KiB on Linux
        if proc.returncode:
            err.seek(0)
            why = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
                   else f"exit status {proc.returncode}")
            print(f"{name} failed ({why}), peak RSS {peak:.2f} GiB:\n{err.read()[-4000:]}",
                  file=sys.stderr)
            return {"failed": why, "peak_gib": peak}
        out.seek(0)
        result: dict[str, object] = json.loads(out.read().strip().splitlines()[-1])
        return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["als"]:
        from bench_recommend_als import als_main

        als_main(sys.argv[2:])
    else:
        main()
