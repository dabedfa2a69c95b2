"""Soak the fault scenarios: many seeds of each, a summary table, non-zero exit on a wrong answer.

The same scenarios as ``tests/faults`` (:mod:`blocklin.testing.fault_scenarios`): the
driver and ``blocklin refresh`` SIGKILLed at seeded points and resumed, a dask worker
killed mid-compute, chunks and records damaged, inputs changed between runs, two
refreshes racing on a shared input. Seeds start at ``--first-seed`` (1000 by default, so
they differ from the tests' seeds) and go round the scenarios until ``--seeds`` each are
done or ``--minutes`` have passed.

    .venv/bin/python benchmarks/soak_faults.py --seeds 50 --minutes 20
    .venv/bin/python benchmarks/soak_faults.py --scenarios killed_driver,killed_refresh

Everything is written under ``--dir`` (default ``benchmarks/data/soak_faults``, inside the
repository and ignored by git); a trial's folder is removed when it ends equal or named,
and kept, with its logs, when it ends wrong or unnamed. Exit status 1 if any trial
returned a wrong answer or failed without a blocklin error.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from blocklin.testing.fault_scenarios import SCENARIOS, Outcome, Scenario

REPO = Path(__file__).resolve().parents[1]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20, help="seeds per scenario (default 20)")
    p.add_argument("--minutes", type=float, default=10.0, help="stop starting trials after this")
    p.add_argument("--first-seed", type=int, default=1000)
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, from {', '.join(SCENARIOS)}")
    p.add_argument("--dir", type=Path, default=REPO / "benchmarks" / "data" / "soak_faults")
    p.add_argument("--verbose", action="store_true", help="print every trial, not only failures")
    return p.parse_args(argv)


def _table(outcomes: dict[str, list[Outcome]]) -> str:
    head = ("scenario", "runs", "equal", "named errors", "unnamed errors", "wrong answers")
    rows = [head]
    for name, got in outcomes.items():
        c = Counter(o.verdict for o in got)
        rows.append((name, str(len(got)), str(c["equal"]), str(c["named"]), str(c["unnamed"]),
                     str(c["wrong"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _errors(outcomes: dict[str, list[Outcome]]) -> str:
    lines = []
    for name, got in outcomes.items():
        c = Counter(r for o in got for r in o.raised)
        if c:
            lines.append(f"{name}: " + ", ".join(f"{k} x{v}" for k, v in sorted(c.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    args.dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.minutes * 60
    scenarios: dict[str, Scenario] = {}
    outcomes: dict[str, list[Outcome]] = {n: [] for n in names}
    try:
        for n in names:
            root = args.dir / n
            shutil.rmtree(root, ignore_errors=True)
            scenarios[n] = SCENARIOS[n](root)
            scenarios[n].setup()
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            if time.monotonic() > deadline:
                print(f"time is up after seed {seed - 1}", flush=True)
                break
            for n, sc in scenarios.items():
                try:
                    o = sc.trial(seed)
                except Exception as exc:  # the harness itself failed: count it, keep going
                    o = Outcome(n, seed, "unnamed", f"trial raised {type(exc).__name__}: {exc}",
                                (type(exc).__name__,))
                outcomes[n].append(o)
                if o.verdict in ("wrong", "unnamed"):
                    print(f"!! {o}", flush=True)
                else:
                    shutil.rmtree(sc.root / f"seed-{seed}", ignore_errors=True)
                    if args.verbose:
                        print(o, flush=True)
    finally:
        for sc in scenarios.values():
            sc.close()
    print()
    print(_table(outcomes))
    named = _errors(outcomes)
    if named:
        print("\nerrors raised (also on the way to an equal result):\n" + named)
    bad = sum(o.verdict in ("wrong", "unnamed") for got in outcomes.values() for o in got)
    return 1 if bad else 0


if __name__ == "__main__":  # dask's worker processes import this file again: no side effects
    sys.exit(main())
