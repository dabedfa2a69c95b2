"""Fault scenarios: a run killed, damaged, changed under or raced, then finished, and judged.

Each scenario prepares its data and an uninterrupted reference once (``setup``), then
runs seeded trials (``trial(seed)``). A trial returns an :class:`Outcome`:

``equal``
    The finished run's results equal the reference bit for bit (where the reference is
    numpy, as in :class:`RacingRefreshes`, to the stated tolerance).
``named``
    A blocklin error (a :class:`~blocklin.errors.BlocklinError`) was raised, by name.
``unnamed``
    Something else failed: an exception that is not blocklin's, a process that crashed.
``wrong``
    A result came back and differs from the reference: the outcome blocklin must never
    produce. The detail says what differed.

The driver's processes are real ones (``python -m blocklin.testing.fault_scenarios``,
``python -m blocklin._cli``) killed with SIGKILL; the dask workers are a real
``distributed.LocalCluster``'s. ``tests/faults`` runs a few seeds of each scenario;
``benchmarks/soak_faults.py`` runs many.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

import blocklin as bl
from blocklin import errors
from blocklin.executors.base import RunStats
from blocklin.executors.lazy import Lazy
from blocklin.plan.graph import Plan
from blocklin.storage.npz import npz_bytes
from blocklin.testing.faults import FailAfter, InjectedFault, slow_down

__all__ = [
    "SCENARIOS",
    "ChangedInputs",
    "DamagedIntermediates",
    "DamagedSource",
    "KilledDriver",
    "KilledRefresh",
    "KilledWorker",
    "Outcome",
    "RacingRefreshes",
    "Scenario",
    "compare",
    "count_records",
    "kill_when",
    "run_chain",
]

Verdict = Literal["equal", "named", "unnamed", "wrong"]
Results = dict[str, np.ndarray]

#: Exit status of a child job that stopped on a blocklin error (its name on stderr).
EXIT_NAMED = 10
_CHUNK_ROWS = 100


@dataclass(frozen=True)
class Outcome:
    """How one seeded trial of a scenario ended (see the module docs for verdicts)."""

    scenario: str
    seed: int
    verdict: Verdict
    detail: str = ""
    #: The errors raised on the way, by class name (also for trials that ended equal).
    raised: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.scenario}[seed={self.seed}]: {self.verdict} ({self.detail})"


# -- comparing and classifying --------------------------------------------------------------
def compare(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> str:
    """Empty if ``got`` equals ``ref`` bit for bit, else what differs (key, count, size)."""
    if set(got) != set(ref):
        return f"result keys {sorted(got)} differ from the reference's {sorted(ref)}"
    diffs = []
    for key in sorted(ref):
        a, b = np.asarray(got[key]), np.asarray(ref[key])
        if a.shape != b.shape or a.dtype != b.dtype:
            diffs.append(f"{key}: {a.shape} {a.dtype} vs reference {b.shape} {b.dtype}")
        elif a.tobytes() != b.tobytes():
            n = int(np.count_nonzero(a != b))
            big = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            diffs.append(f"{key}: {n} of {a.size} values differ, max |diff| {big:.3g}")
    return "; ".join(diffs)


def is_named(name: str) -> bool:
    """Whether ``name`` is a blocklin error class (``SpecError`` and the like included)."""
    if name == "SpecError":
        return True
    cls = getattr(errors, name, None)
    return isinstance(cls, type) and issubclass(cls, errors.BlocklinError)


def _error_of(exc: BaseException) -> tuple[Verdict, str]:
    name = type(exc).__name__
    kind: Verdict = "named" if isinstance(exc, errors.BlocklinError) else "unnamed"
    return kind, f"{name}: {str(exc).splitlines()[0] if str(exc) else ''}"


# -- processes ------------------------------------------------------------------------------
def count_records(*dirs: Path) -> int:
    """Completion records (``<array>/.blocklin/done/*``) of the arrays in ``dirs``."""
    n = 0
    for d in dirs:
        try:
            entries = list(os.scandir(d))
        except FileNotFoundError:
            continue
        for e in entries:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                n += len(os.listdir(os.path.join(e.path, ".blocklin", "done")))
    return n


def kill_when(proc: subprocess.Popen[Any], ready: Callable[[], bool], delay: float,
              timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds; True if it was killed
    (False: it exited by itself first)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if ready():
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return proc.returncode == -signal.SIGKILL
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise TimeoutError(f"child {proc.args!r} ran over {timeout} s")
        time.sleep(0.001)
    return False


def _spawn(args: Sequence[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[Any]:
    """``python ARGS`` with its output appended to ``log`` (a file: no pipe to fill)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, *args], stdout=f, stderr=f, cwd=cwd,
                                env={**os.environ, "BLOCKLIN_DEBUG": "0"})


def _finish(proc: subprocess.Popen[Any], timeout: float = 120.0) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def _ran(stats: RunStats) -> str:
    return f"ran {stats.tasks_run} tasks, skipped {stats.tasks_skipped}"


def _stats_in_log(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return next((line[6:] for line in reversed(lines) if line.startswith("STATS ")), "")


def _named_in_log(log: Path) -> str:
    """The ``NAMED <class>: message`` line a child job printed, or the log's last line."""
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    for line in reversed(lines):
        if line.startswith("NAMED "):
            return line[6:]
    return lines[-1] if lines else "(no output)"


# -- the multi-stage chain ------------------------------------------------------------------
def chain_results(A: bl.BlockMatrix, W: np.ndarray, out: Path) -> tuple[Lazy, ...]:
    """One plan of 15 stages: TSQR (leaves, tree, finish, Q to ``out``), Q·W to ``out``,
    AᵀA, QᵀQ and A's column statistics, reading A once per pass."""
    Q, R = bl.ops.tsqr(A, out=str(out / "Q.zarr"))
    P = bl.ops.matmul(Q, W, out=str(out / "P.zarr"))
    return Q, R, P, bl.ops.gram(A), bl.ops.gram(Q), bl.ops.column_stats(A)


def _as_results(values: Sequence[Any]) -> Results:
    q, r, p, g, gq, stats = values
    res: Results = {"Q": q.to_numpy(), "R": np.asarray(r), "P": p.to_numpy(),
                    "G": np.asarray(g), "GQ": np.asarray(gq)}
    for f in fields(stats):
        res[f"stats.{f.name}"] = np.asarray(getattr(stats, f.name))
    return res


def run_chain(data: Path, work: Path, out: Path, *, resume: bool = False, slow: float = 0.0,
              plan_hook: Callable[[Plan], Plan] | None = None, **compute_kw: Any) -> Results:
    """Compute the chain on ``data/A.zarr`` and ``data/W.npy``; every result as numpy.

    ``slow`` makes each task sleep that long; ``plan_hook`` rewrites the plan (fault
    injection) without changing which arrays it writes.
    """
    A = bl.open(data / "A.zarr")
    results = chain_results(A, np.load(data / "W.npy"), out)
    if slow:
        results = slow_down(*results, seconds=slow)
    if plan_hook is not None:
        plan = plan_hook(Plan().merge(*(r.plan for r in results)))
        results = tuple(Lazy(plan, r.output, r.kind, r.present, r.label) for r in results)
    values = bl.compute(*results, work_dir=str(work), resume=resume, **compute_kw)
    return _as_results(values)


def check_chain(res: Results, x: np.ndarray, W: np.ndarray) -> str:
    """Empty if the chain's results agree with numpy (to rounding), else what does not."""
    checks = [("Q R = A", res["Q"] @ res["R"], x, 1e-12), ("P = Q W", res["P"], res["Q"] @ W, 1e-12),
              ("AᵀA", res["G"], x.T @ x, 1e-11), ("QᵀQ", res["GQ"], np.eye(x.shape[1]), 1e-12),
              ("mean", res["stats.mean"], x.mean(0), 1e-11)]
    bad = [name for name, got, want, tol in checks
           if not np.allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max())))]
    return ", ".join(bad)


def _write_data(data: Path, x: np.ndarray, w: np.ndarray) -> None:
    data.mkdir(parents=True, exist_ok=True)
    bl.from_array(x, data / "A.zarr", chunks=(_CHUNK_ROWS, None), overwrite=True)
    np.save(data / "W.npy", w)


def _chain_data(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 12)), rng.normal(size=(12, 3))


def _save(path: Path, res: Results) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    tmp.write_bytes(npz_bytes(res))
    os.replace(tmp, path)


def _load(path: Path) -> Results:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


class Scenario:
    """Base of the scenarios: a folder of its own, ``setup`` once, then seeded trials."""

    name = "scenario"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def setup(self) -> None:
        """Prepare data and the uninterrupted reference (once)."""

    def trial(self, seed: int) -> Outcome:
        """One seeded fault and its recovery."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``setup`` started (processes, clusters)."""

    def outcome(self, seed: int, verdict: Verdict, detail: str,
                raised: Sequence[str] = ()) -> Outcome:
        return Outcome(self.name, seed, verdict, detail, tuple(raised))

    def fresh(self, seed: int) -> Path:
        """An empty folder for one trial: ``<root>/seed-<seed>`` (the soak removes it)."""
        t = self.root / f"seed-{seed}"
        shutil.rmtree(t, ignore_errors=True)
        t.mkdir(parents=True)
        return t


# -- 1. the driver killed -------------------------------------------------------------------
class KilledDriver(Scenario):
    """The driver process SIGKILLed at a seeded point of the chain (after a seeded number of
    completion records plus a seeded delay), then resumed in a new process."""

    name = "killed_driver"

    def __init__(self, root: Path, rows: int = 2400, slow: float = 0.004) -> None:
        super().__init__(root)
        self.rows, self.slow = rows, slow
        self.data = self.root / "data"
        self.ref: Results = {}
        self.total = 0

    def _job(self, t: Path, resume: bool) -> subprocess.Popen[Any]:
        args = ["-m", "blocklin.testing.fault_scenarios", "chain", str(self.data), str(t / "work"),
                str(t / "out"), "--slow", str(self.slow)] + (["--resume"] if resume else [])
        return _spawn(args, t / "log.txt")

    def setup(self) -> None:
        x, w = _chain_data(self.rows)
        _write_data(self.data, x, w)
        ref = self.root / "reference"
        shutil.rmtree(ref, ignore_errors=True)
        if _finish(self._job(ref, resume=False)) != 0:
            raise RuntimeError(f"the reference run failed: {_named_in_log(ref / 'log.txt')}")
        self.ref = _load(ref / "out" / "result.npz")
        self.total = count_records(ref / "work", ref / "out")
        bad = check_chain(self.ref, x, w)
        if bad:
            raise AssertionError(f"the uninterrupted chain disagrees with numpy: {bad}")

    def trial(self, seed: int) -> Outcome:
        rng = np.random.default_rng(seed)
        k, delay = int(rng.integers(0, self.total + 1)), float(rng.uniform(0.0, 0.02))
        t = self.fresh(seed)
        proc = self._job(t, resume=False)
        killed = kill_when(proc, lambda: count_records(t / "work", t / "out") >= k, delay)
        at = count_records(t / "work", t / "out")
        where = (f"killed at {at}/{self.total} records (k={k}, +{delay * 1e3:.1f} ms)" if killed
                 else f"not killed (exit {proc.returncode} before k={k})")
        if not killed and proc.returncode != 0:
            return self._failed(seed, proc.returncode, t, where)
        (t / "out" / "result.npz").unlink(missing_ok=True)
        rc = _finish(self._job(t, resume=True))
        if rc != 0:
            return self._failed(seed, rc, t, where + "; the resume failed")
        diff = compare(_load(t / "out" / "result.npz"), self.ref)
        where += f"; the resume {_stats_in_log(t / 'log.txt')}"
        return self.outcome(seed, "wrong" if diff else "equal", where + (f"; {diff}" if diff else ""))

    def _failed(self, seed: int, rc: int, t: Path, where: str) -> Outcome:
        msg = _named_in_log(t / "log.txt")
        verdict: Verdict = "named" if rc == EXIT_NAMED else "unnamed"
        return self.outcome(seed, verdict, f"{where}: exit {rc}, {msg}", [msg.split(":")[0]])


# -- 2. a refresh killed --------------------------------------------------------------------
_REFRESH_SPEC: dict[str, Any] = {
    "name": "faults",
    "inputs": {"X": {"path": "X.zarr"}},
    "steps": [{"name": "g", "op": "gram", "inputs": {"A": "X"}},
              {"name": "stats", "op": "column_stats", "inputs": {"A": "X"}}],
    "outputs": {"gram": {"step": "g"}, "stats": {"step": "stats"}},
    "output_dir": "out",
    "refresh": {"input": "X"},
}


def _write_spec(path: Path, **over: Any) -> Path:
    path.write_text(yaml.safe_dump({**_REFRESH_SPEC, **over}, sort_keys=False))
    return path


def _refresh(folder: Path, spec: str, batch: str, log: Path) -> subprocess.Popen[Any]:
    return _spawn(["-m", "blocklin._cli", "refresh", spec, "--append", batch, "--json"], log,
                  cwd=folder)


def _cli_error(log: Path) -> tuple[str, str]:
    """The error class and message a ``--json`` CLI run reported (``?`` and the log's end
    if it reported none, e.g. a crash)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    start = text.rfind('{\n "error"')
    try:
        doc = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        doc = {}
    if not doc:
        return "?", f"no error reported; log ends {text[-300:]!r}"
    return str(doc.get("type", "?")), str(doc.get("error", ""))


def _outputs(out: Path) -> Results:
    res: Results = {}
    for name in ("gram", "stats"):
        with np.load(out / f"{name}.npz", allow_pickle=False) as f:
            res.update({f"{name}.{k}": f[k] for k in f.files})
    return res


def _batches_of(x_path: Path) -> list[str]:
    return [b["fingerprint"] for b in bl.open(x_path).provenance.get("batches", [])]


class KilledRefresh(Scenario):
    """``blocklin refresh`` SIGKILLed a seeded time after it takes the output lock, then run
    again: outputs equal an uninterrupted refresh's bit for bit, X holds the batch once.

    Bit for bit, not to a tolerance: whichever step the kill interrupts, the rerun takes
    the same incremental path as the uninterrupted refresh (merge the committed state
    with the same batch's Gram and statistics), with the same operations in the same
    order. Only a full recompute would round differently, and no output here needs one.
    """

    name = "killed_refresh"

    def __init__(self, root: Path, rows: int = 1200, batch_rows: int = 430) -> None:
        super().__init__(root)
        self.rows, self.batch_rows = rows, batch_rows
        self.base = self.root / "base"
        self.ref: Results = {}
        self.window = 1.0
        self.x = np.empty((0, 0))

    def setup(self) -> None:
        from blocklin.pipelines.runner import load_pipeline, run_pipeline

        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        rng = np.random.default_rng(3)
        x, b = rng.normal(size=(self.rows, 6)), rng.normal(size=(self.batch_rows, 6)) * 2
        bl.from_array(x, self.base / "X.zarr", chunks=(_CHUNK_ROWS, None))
        np.save(self.base / "b.npy", b)
        # No report: the kills should land in the refresh's work, not in plotting.
        run_pipeline(load_pipeline(_write_spec(self.base / "spec.yaml", report=False)))
        self.x = np.vstack([x, b])
        ref = self._copy("reference")
        proc = _refresh(ref, "spec.yaml", "b.npy", ref / "log.txt")
        # The window for kills: while the refresh holds its lock (staging, appending,
        # computing, committing), not the process's start-up and exit.
        lock = ref / "out" / ".blocklin.lock"
        while proc.poll() is None and not lock.exists():
            time.sleep(0.001)
        t0 = time.monotonic()
        while proc.poll() is None and lock.exists():
            time.sleep(0.001)
        self.window = max(time.monotonic() - t0, 0.05)
        if _finish(proc) != 0:
            raise RuntimeError(f"the reference refresh failed: {_cli_error(ref / 'log.txt')}")
        self.ref = _outputs(ref / "out")
        bad = self._check_input(ref)
        if bad:
            raise AssertionError(f"the uninterrupted refresh is wrong: {bad}")

    def _copy(self, name: str) -> Path:
        t = self.root / name
        shutil.rmtree(t, ignore_errors=True)
        shutil.copytree(self.base, t)
        return t

    def _check_input(self, t: Path) -> str:
        got = bl.open(t / "X.zarr").to_numpy()
        if got.shape != self.x.shape or got.tobytes() != self.x.tobytes():
            return f"X is {got.shape}, not the input with the batch appended once {self.x.shape}"
        fps = _batches_of(t / "X.zarr")
        return "" if len(fps) == 1 else f"X records batches {fps}, not the batch once"

    def trial(self, seed: int) -> Outcome:
        rng = np.random.default_rng(seed)
        # Squared: staging and appending the batch take the first tenth of the window,
        # the compute and commit the rest; a third of the kills land in that tenth.
        delay = float(rng.uniform(0.0, 1.0) ** 2 * self.window * 1.1)
        t = self._copy(f"seed-{seed}")
        proc = _refresh(t, "spec.yaml", "b.npy", t / "log.txt")
        lock = t / "out" / ".blocklin.lock"
        killed = kill_when(proc, lock.exists, delay)
        where = (f"killed {delay * 1e3:.0f} ms after the lock (window {self.window * 1e3:.0f} ms"
                 f"; {self._phase(t)})" if killed else f"not killed (exit {proc.returncode})")
        if not killed and proc.returncode != 0:
            return self._failed(seed, t, where)
        if _finish(_refresh(t, "spec.yaml", "b.npy", t / "log.txt")) != 0:
            return self._failed(seed, t, where + "; the rerun failed")
        problems = [p for p in (self._check_input(t), compare(_outputs(t / "out"), self.ref)) if p]
        return self.outcome(seed, "wrong" if problems else "equal", "; ".join([where, *problems]))

    def _phase(self, t: Path) -> str:
        """How far the killed refresh got: batch staged, appended to X, manifest committed."""
        staged = any(not p.name.startswith("incoming")
                     for p in (t / "out" / ".refresh" / "batches").glob("*"))
        try:
            appended = str(bool(_batches_of(t / "X.zarr")))
        except Exception as exc:  # reported, then the rerun must still cope
            appended = f"unreadable ({type(exc).__name__})"
        man = t / "out" / "manifest.json"
        committed = man.exists() and man.read_bytes() != (self.base / "out" / "manifest.json").read_bytes()
        return f"staged {staged}, appended {appended}, committed {committed}"

    def _failed(self, seed: int, t: Path, where: str) -> Outcome:
        name, msg = _cli_error(t / "log.txt")
        return self.outcome(seed, "named" if is_named(name) else "unnamed",
                            f"{where}: {name}: {msg}", [name])


# -- 3. a dask worker killed ----------------------------------------------------------------
class KilledWorker(Scenario):
    """One worker process of a real ``LocalCluster`` SIGKILLed mid-compute: the compute
    completes equal (distributed reruns the lost tasks) or raises a blocklin error; a
    resume on the cluster then equals the reference."""

    name = "killed_worker"

    def __init__(self, root: Path, rows: int = 1200, slow: float = 0.02,
                 n_workers: int = 2) -> None:
        super().__init__(root)
        self.rows, self.slow, self.n_workers = rows, slow, n_workers
        self.data = self.root / "data"
        self.ref: Results = {}
        self.total = 0
        self.cluster: Any = None
        self.client: Any = None

    def setup(self) -> None:
        from distributed import Client, LocalCluster

        x, w = _chain_data(self.rows, seed=1)
        _write_data(self.data, x, w)
        ref = self.root / "reference"
        shutil.rmtree(ref, ignore_errors=True)
        # The reference runs on local threads: bits are the same on every executor.
        self.ref = run_chain(self.data, ref / "work", ref / "out")
        self.total = count_records(ref / "work", ref / "out")
        bad = check_chain(self.ref, x, w)
        if bad:
            raise AssertionError(f"the uninterrupted chain disagrees with numpy: {bad}")
        self.cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=1,
                                    processes=True, dashboard_address=":0", host="127.0.0.1",
                                    silence_logs=50)
        self.client = Client(self.cluster, set_as_default=False)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            # After a retired nanny, distributed's worker-status watcher may have died on a
            # KeyError (an address it never listed); close re-raises it once workers and
            # scheduler are already shut down.
            with contextlib.suppress(KeyError):
                self.cluster.close()
        self.client = self.cluster = None

    def _full_strength(self, timeout: float = 90.0) -> None:
        """Wait until the cluster has all its workers again.

        A nanny restarts its killed worker; but when the restarted worker has not
        registered within ``lost-worker-timeout`` (15 s; seen about once in ten trials on
        a loaded machine), the cluster closes that nanny for good. Add it back, as an
        operator would.
        """
        deadline = time.monotonic() + timeout
        while len(self.client.scheduler_info(n_workers=-1)["workers"]) < self.n_workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not get back to {self.n_workers} workers "
                                   f"in {timeout} s")
            if len(self.cluster.workers) < self.n_workers:
                self.cluster.scale(self.n_workers)
            time.sleep(0.2)

    def trial(self, seed: int) -> Outcome:
        rng = np.random.default_rng(seed)
        k, delay = int(rng.integers(1, self.total)), float(rng.uniform(0.0, self.slow))
        t = self.fresh(seed)
        self._full_strength()
        pids = self.client.run(os.getpid)
        victim = int(pids[sorted(pids)[int(rng.integers(0, len(pids)))]])
        shot = threading.Event()

        def killer() -> None:
            deadline = time.monotonic() + 60
            while count_records(t / "work", t / "out") < k and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(delay)
            os.kill(victim, signal.SIGKILL)
            shot.set()

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        raised: list[str] = []
        notes = [f"worker pid {victim} killed after {k}/{self.total} records +{delay * 1e3:.1f} ms"]
        try:
            first = run_chain(self.data, t / "work", t / "out", slow=self.slow, client=self.client)
        except Exception as exc:
            verdict, msg = _error_of(exc)
            raised.append(type(exc).__name__)
            if verdict != "named":
                thread.join()
                return self.outcome(seed, "unnamed", f"{notes[0]}; compute raised {msg}", raised)
            notes.append(f"compute raised {msg}")
        else:
            diff = compare(first, self.ref)
            if diff:
                thread.join()
                return self.outcome(seed, "wrong", f"{notes[0]}; the compute returned {diff}")
            notes.append("the compute completed equal")
        thread.join()
        if not shot.is_set():
            notes.append("(the kill came after the compute)")
        self._full_strength()
        try:
            again = run_chain(self.data, t / "work", t / "out", resume=True, client=self.client)
        except Exception as exc:
            verdict, msg = _error_of(exc)
            return self.outcome(seed, verdict, "; ".join([*notes, f"the resume raised {msg}"]),
                                [*raised, type(exc).__name__])
        diff = compare(again, self.ref)
        return self.outcome(seed, "wrong" if diff else "equal",
                            "; ".join([*notes, f"the resume returned {diff}" if diff else
                                       "the resume equal"]), raised)


# -- 4. damaged chunks and records ----------------------------------------------------------
Damage = Literal["delete", "flip", "flip_trailer", "truncate", "garbage", "empty"]
DAMAGES: tuple[Damage, ...] = ("delete", "flip", "flip_trailer", "truncate", "garbage", "empty")


def damage(path: Path, how: Damage, rng: np.random.Generator) -> str:
    """Damage one stored file; return a description (``flip`` spares the last 4 bytes,
    blocklin's checksum trailer; ``flip_trailer`` hits them)."""
    data = bytearray(path.read_bytes())
    if how == "delete" or not data:
        path.unlink()
        return f"deleted {path.name}"
    if how in ("flip", "flip_trailer"):
        lo, hi = (max(len(data) - 4, 0), len(data)) if how == "flip_trailer" \
            else (0, max(len(data) - 4, 1))
        pos = int(rng.integers(lo, hi))
        data[pos] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(data))
        return f"flipped byte {pos}/{len(data)}"
    if how == "truncate":
        n = int(rng.integers(0, len(data)))
        path.write_bytes(bytes(data[:n]))
        return f"truncated to {n}/{len(data)}"
    if how == "garbage":
        path.write_bytes(rng.integers(0, 256, size=len(data), dtype=np.uint8).tobytes())
        return f"garbage of {len(data)} bytes"
    path.write_bytes(b"")
    return "emptied"


def _stored_files(*dirs: Path) -> list[Path]:
    """Chunks, completion records and array metadata under ``dirs``, in a fixed order.

    Arrays a compute removed are first deleted for good: they wait in the work dir's
    ``.blocklin/trash`` for a background thread, which must not delete under the walk.
    """
    from blocklin.storage.leases import flush_removals

    flush_removals()
    found = []
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.relative_to(d).parts[:2] == (".blocklin", "trash"):
                continue
            if p.is_file() and p.suffix != ".npz" and (
                    "c" in p.relative_to(d).parts or ".blocklin" in p.parts
                    or p.name == "zarr.json"):
                found.append(p)
    return found


class _InProcessChain(Scenario):
    """The chain computed in this process (threads): an uninterrupted reference, and a
    first run per trial that is either complete or stopped by an injected fault."""

    rows = 1200

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.data = self.root / "data"
        self.ref: Results = {}
        self.x, self.w = _chain_data(self.rows, seed=2)

    def setup(self) -> None:
        _write_data(self.data, self.x, self.w)
        ref = self.root / "reference"
        shutil.rmtree(ref, ignore_errors=True)
        self.ref = run_chain(self.data, ref / "work", ref / "out")
        bad = check_chain(self.ref, self.x, self.w)
        if bad:
            raise AssertionError(f"the uninterrupted chain disagrees with numpy: {bad}")

    def first_run(self, rng: np.random.Generator, data: Path, t: Path) -> str:
        """A complete run, or one stopped by an injected fault in a seeded stage."""
        if rng.random() < 0.25:
            run_chain(data, t / "work", t / "out")
            return "after a complete run"
        where: list[str] = []

        def hook(plan: Plan) -> Plan:
            stage = plan.stages[int(rng.integers(0, len(plan.stages)))]
            succeed = int(rng.integers(0, len(stage.tasks)))
            where.append(f"{stage.op} failing after {succeed}/{len(stage.tasks)} tasks")
            return plan.with_kernel(stage.name,
                                    lambda k: FailAfter(k, str(t / "fault"), succeed))

        try:
            run_chain(data, t / "work", t / "out", plan_hook=hook)
        except InjectedFault:
            return f"after a run stopped at {where[0]}"
        return f"after a run that finished despite {where[0]}"


class DamagedIntermediates(_InProcessChain):
    """Between an interrupted (or complete) run and its resume, seeded chunks, completion
    records and metadata of intermediates and outputs are deleted, flipped, truncated or
    replaced: the resume equals the reference, or raises a blocklin error naming the chunk
    and a run without ``resume`` then equals the reference.

    Resume checks a recorded chunk by its 4-byte checksum trailer only, so a chunk whose
    body was flipped (trailer intact) is skipped as done; the task that later decodes it
    raises CorruptChunkError instead of the block being recomputed. The detail counts
    such flips (``chunk bodies flipped``).
    """

    name = "damaged_intermediates"

    def trial(self, seed: int) -> Outcome:
        rng = np.random.default_rng(seed)
        t = self.fresh(seed)
        first = self.first_run(rng, self.data, t)
        files = _stored_files(t / "work", t / "out")
        done, silent = [], 0
        for i in rng.choice(len(files), size=min(len(files), int(rng.integers(1, 7))),
                            replace=False):
            how = DAMAGES[int(rng.integers(0, len(DAMAGES)))]
            rel = files[i].relative_to(t)
            silent += how == "flip" and "c" in rel.parts
            done.append(f"{rel}: {damage(files[i], how, rng)}")
        # A flipped chunk body keeps its checksum trailer, which is all resume reads of a
        # recorded chunk: only decoding it (a task reading it) finds the damage.
        where = f"{first}; {', '.join(done)}; chunk bodies flipped: {silent}"
        stats = RunStats()
        try:
            got = run_chain(self.data, t / "work", t / "out", resume=True, stats=stats)
        except Exception as exc:
            verdict, msg = _error_of(exc)
            if verdict == "named":
                # The documented way out of a damaged work directory: run without resume.
                diff = compare(run_chain(self.data, t / "work", t / "out"), self.ref)
                if diff:
                    return self.outcome(seed, "wrong", f"{where}; the resume raised {msg}; "
                                        f"a run without resume then returned {diff}")
                msg += "; a run without resume then equal"
            return self.outcome(seed, verdict, f"{where}; the resume raised {msg}",
                                [type(exc).__name__])
        diff = compare(got, self.ref)
        where += f"; the resume {_ran(stats)}"
        return self.outcome(seed, "wrong" if diff else "equal", where + (f"; {diff}" if diff else ""))


class DamagedSource(_InProcessChain):
    """A seeded chunk of the source A damaged after a run: a fresh run raises
    CorruptChunkError (MissingChunkError when deleted); a resume raises it too or, if no
    task left to run reads that chunk, returns the reference's result."""

    name = "damaged_source"

    def trial(self, seed: int) -> Outcome:
        rng = np.random.default_rng(seed)
        t = self.fresh(seed)
        data = t / "data"
        shutil.copytree(self.data, data)
        first = self.first_run(rng, data, t)
        chunks = sorted(p for p in (data / "A.zarr" / "c").rglob("*") if p.is_file())
        victim = chunks[int(rng.integers(0, len(chunks)))]
        how: Damage = ("delete", "flip", "flip_trailer", "truncate", "garbage")[int(rng.integers(0, 5))]
        where = f"{first}; A chunk {victim.relative_to(data)}: {damage(victim, how, rng)}"
        raised: list[str] = []
        try:
            run_chain(data, t / "fresh-work", t / "fresh-out")
        except errors.CorruptChunkError as exc:
            raised.append(type(exc).__name__)
        except Exception as exc:
            verdict, msg = _error_of(exc)
            return self.outcome(seed, verdict, f"{where}; a fresh run raised {msg}",
                                [type(exc).__name__])
        else:
            return self.outcome(seed, "wrong", f"{where}; a fresh run returned a result")
        try:
            got = run_chain(data, t / "work", t / "out", resume=True)
        except Exception as exc:
            verdict, msg = _error_of(exc)
            ok = isinstance(exc, errors.CorruptChunkError)
            return self.outcome(seed, "named" if ok else verdict,
                                f"{where}; fresh run {raised[0]}, resume raised {msg}",
                                [*raised, type(exc).__name__])
        diff = compare(got, self.ref)
        return self.outcome(seed, "wrong" if diff else "named",
                            f"{where}; fresh run {raised[0]}, resume returned "
                            + (diff or "the reference (no pending task read the chunk)"), raised)


# -- 5. inputs changed between runs ---------------------------------------------------------
class ChangedInputs(_InProcessChain):
    """Between a first run and its resume, A is rewritten: through ``bl.from_array`` (some
    row blocks new) or in place by zarr-python (seeded rectangles, ``zarr.json`` untouched).
    The resume equals a fresh run on the new A, which agrees with numpy."""

    name = "changed_inputs"

    def trial(self, seed: int) -> Outcome:
        import zarr

        rng = np.random.default_rng(seed)
        t = self.fresh(seed)
        data = t / "data"
        shutil.copytree(self.data, data)
        first = self.first_run(rng, data, t)
        new = self.x.copy()
        if rng.random() < 0.4:
            for b in rng.choice(self.rows // _CHUNK_ROWS, size=int(rng.integers(1, 4)), replace=False):
                new[b * _CHUNK_ROWS:(b + 1) * _CHUNK_ROWS] = rng.normal(size=(_CHUNK_ROWS, 12))
            bl.from_array(new, data / "A.zarr", chunks=(_CHUNK_ROWS, None), overwrite=True)
            change = "A rewritten by bl.from_array"
        else:
            z = zarr.open_array(data / "A.zarr", mode="r+")
            spots = []
            for _ in range(int(rng.integers(1, 4))):
                r0 = int(rng.integers(0, self.rows - 1))
                r1 = min(self.rows, r0 + int(rng.integers(1, 150)))
                c0 = int(rng.integers(0, 12))
                vals = rng.normal(size=(r1 - r0, 12 - c0))
                z[r0:r1, c0:] = vals
                new[r0:r1, c0:] = vals
                spots.append(f"[{r0}:{r1}, {c0}:]")
            change = "A rewritten in place by zarr at " + " ".join(spots)
        stats = RunStats()
        try:
            got = run_chain(data, t / "work", t / "out", resume=True, stats=stats)
            fresh = run_chain(data, t / "fresh-work", t / "fresh-out")
        except Exception as exc:
            verdict, msg = _error_of(exc)
            return self.outcome(seed, verdict, f"{first}; {change}; raised {msg}",
                                [type(exc).__name__])
        problems = [p for p in (compare(got, fresh), check_chain(fresh, new, self.w)) if p]
        return self.outcome(seed, "wrong" if problems else "equal",
                            "; ".join([first, change, f"the resume {_ran(stats)}", *problems]))


# -- 6. two refreshes racing on a shared input ----------------------------------------------
class RacingRefreshes(Scenario):
    """Two pipelines read the same input X and are refreshed at once with different
    batches (two real ``blocklin refresh`` processes, a seeded stagger). Each either
    succeeds or stops with LockError and succeeds when retried. Then X holds both batches
    exactly once, and each pipeline's Gram equals numpy's of the rows its manifest says
    it covers (to 1e-11: an incremental merge rounds differently from one product);
    once both are refreshed again, both equal numpy's XᵀX of the final X."""

    name = "racing_refreshes"
    retries = 5

    def trial(self, seed: int) -> Outcome:
        from blocklin.pipelines.refresh import refresh_pipeline
        from blocklin.pipelines.runner import load_pipeline, run_pipeline

        rng = np.random.default_rng(seed)
        t = self.fresh(seed)
        x = rng.normal(size=(600, 5))
        bl.from_array(x, t / "X.zarr", chunks=(_CHUNK_ROWS, None))
        batches = {}
        for p in ("p1", "p2"):
            b = rng.normal(size=(int(rng.integers(40, 260)), 5))
            np.save(t / f"{p}.npy", b)
            batches[p] = b
            spec = _write_spec(t / f"{p}.yaml", name=p, output_dir=f"out-{p}", report=False,
                               steps=[{"name": "g", "op": "gram", "inputs": {"A": "X"}}],
                               outputs={"gram": {"step": "g"}})
            run_pipeline(load_pipeline(spec))
        stagger = float(rng.uniform(0.0, 0.1))
        raised: list[str] = []
        procs = {}
        for i, p in enumerate(("p1", "p2")):
            if i:
                time.sleep(stagger)
            procs[p] = _refresh(t, f"{p}.yaml", f"{p}.npy", t / f"{p}.log")
        failed: list[tuple[str, str]] = []
        for p, proc in procs.items():
            err = self._settle(t, p, proc, t / f"{p}.log", raised)
            if err:
                failed.append(err)
        where = f"stagger {stagger * 1e3:.0f} ms" + (f", retried after {raised}" if raised else "")
        if failed:
            named = all(is_named(name) for name, _ in failed)
            return self.outcome(seed, "named" if named else "unnamed",
                                f"{where}; {'; '.join(msg for _, msg in failed)}",
                                [*raised, *(name for name, _ in failed)])
        problems = self._check(t, x, batches, final=False)
        for p in ("p1", "p2"):  # the next scheduled refresh catches up with the other's batch
            try:
                refresh_pipeline(load_pipeline(t / f"{p}.yaml"), str(t / f"{p}.npy"))
            except Exception as exc:
                problems.append(f"{p} catching up raised {_error_of(exc)[1]}")
        problems += self._check(t, x, batches, final=True)
        return self.outcome(seed, "wrong" if problems else "equal", "; ".join([where, *problems]),
                            raised)

    def _settle(self, t: Path, p: str, proc: subprocess.Popen[Any], log: Path,
                raised: list[str]) -> tuple[str, str] | None:
        """Wait for a refresh, rerunning it while it stops on LockError; None on success,
        else the error's class name and a message."""
        for attempt in range(1, self.retries + 2):
            rc = _finish(proc)
            if rc == 0:
                return None
            name, msg = _cli_error(log)
            if name != "LockError" or attempt > self.retries:
                return name, f"{p}: exit {rc}, {name}: {msg}"
            raised.append(name)
            time.sleep(0.1)
            log = log.with_name(f"{log.stem}-retry{attempt}.log")
            proc = _refresh(t, f"{p}.yaml", f"{p}.npy", log)
        raise AssertionError("unreachable")

    @staticmethod
    def _check(t: Path, x: np.ndarray, batches: Mapping[str, np.ndarray], final: bool) -> list[str]:
        X = bl.open(t / "X.zarr")
        got = X.to_numpy()
        orders = [np.vstack([x, batches["p1"], batches["p2"]]),
                  np.vstack([x, batches["p2"], batches["p1"]])]
        problems = []
        if not any(o.shape == got.shape and o.tobytes() == got.tobytes() for o in orders):
            problems.append(f"X has {got.shape[0]} rows, not {x.shape[0]} + both batches "
                            f"({batches['p1'].shape[0]}, {batches['p2'].shape[0]}) once")
        fps = _batches_of(t / "X.zarr")
        if len(fps) != 2 or len(set(fps)) != 2:
            problems.append(f"X records batches {fps}, not two distinct ones")
        for p in ("p1", "p2"):
            from blocklin.pipelines.manifest import load_manifest

            man = load_manifest(t / f"out-{p}") or {}
            rows = int(man.get("refresh", {}).get("rows", x.shape[0]))
            if final and rows != got.shape[0]:
                problems.append(f"{p}'s manifest covers {rows} rows after catching up, "
                                f"X has {got.shape[0]}")
            part = got[:rows]
            with np.load(t / f"out-{p}" / "gram.npz") as f:
                g = f["value"]
            if not np.allclose(g, part.T @ part, rtol=1e-11, atol=1e-11 * np.abs(g).max()):
                problems.append(f"{p}'s Gram differs from numpy's XᵀX of X's first {rows} rows "
                                f"by {np.abs(g - part.T @ part).max():.3g}"
                                + (" (after catching up)" if final else ""))
        return problems


SCENARIOS: dict[str, Callable[[Path], Scenario]] = {
    KilledDriver.name: KilledDriver,
    KilledRefresh.name: KilledRefresh,
    KilledWorker.name: KilledWorker,
    DamagedIntermediates.name: DamagedIntermediates,
    DamagedSource.name: DamagedSource,
    ChangedInputs.name: ChangedInputs,
    RacingRefreshes.name: RacingRefreshes,
}


# -- the child job ----------------------------------------------------------------------------
def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blocklin.testing.fault_scenarios")
    sub = parser.add_subparsers(dest="job", required=True)
    chain = sub.add_parser("chain", help="compute the chain; results to OUT/result.npz")
    chain.add_argument("data", type=Path)
    chain.add_argument("work", type=Path)
    chain.add_argument("out", type=Path)
    chain.add_argument("--resume", action="store_true")
    chain.add_argument("--slow", type=float, default=0.0)
    args = parser.parse_args(argv)
    stats = RunStats()
    try:
        res = run_chain(args.data, args.work, args.out, resume=args.resume, slow=args.slow,
                        stats=stats)
    except errors.BlocklinError as exc:
        sys.stderr.write(f"NAMED {type(exc).__name__}: {exc}\n")
        return EXIT_NAMED
    _save(args.out / "result.npz", res)
    sys.stderr.write(f"STATS {_ran(stats)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
