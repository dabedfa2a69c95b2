"""The output lock: a second run refuses; a crashed holder's lock is taken over; unlock."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.pipelines.conftest import base_spec, run_cli

from blocklin.errors import LockError
from blocklin.pipelines.lock import LOCK_NAME, OutputLock, break_lock, read_lock
from blocklin.pipelines.runner import load_pipeline, run_pipeline


def _write_lock(folder: Path, pid: int, host: str | None = None, started: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                "started": started or time.time(), "command": "test"}))
    return path


@pytest.fixture
def live_pid() -> Any:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_second_run_refuses_while_first_holds_lock_then_takes_over_after_crash(
        matrix: Any, write_spec: Any, tmp_path: Path) -> None:
    spec = write_spec(base_spec())
    out = tmp_path / "out"
    # A real holder: another process takes the lock with the same code a run uses.
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\n"
                               "from blocklin.pipelines.lock import OutputLock\n"
                               f"OutputLock({str(out)!r}, 'holder').acquire()\n"
                               "print('locked', flush=True)\n"
                               "time.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        res = run_cli("run", str(spec))
        assert res.returncode == 3, res.stderr
        assert f"locked by pid {holder.pid}" in res.stderr
        assert "wait for it to finish" in res.stderr
        assert not (out / "manifest.json").exists()
        res = run_cli("unlock", str(spec))  # refuses a live holder without --force
        assert res.returncode == 3 and "is alive" in res.stderr
    finally:
        holder.kill()  # the holder crashes: its lock file stays behind
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert (out / LOCK_NAME).exists()
    run_pipeline(load_pipeline(spec))  # the stale lock is taken over
    assert (out / "manifest.json").is_file() and not (out / LOCK_NAME).exists()


def test_stale_lock_of_crashed_holder_is_taken_over(matrix: Any, write_spec: Any,
                                                    tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that no longer runs: the crashed holder
    _write_lock(tmp_path / "out", proc.pid)
    run_pipeline(load_pipeline(write_spec(base_spec())))
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_recycled_pid_counts_as_stale(tmp_path: Path, live_pid: int) -> None:
    # The live process started after the lock was written: it is not the holder.
    _write_lock(tmp_path, live_pid, started=time.time() - 3600)
    with OutputLock(tmp_path) as lock:
        assert lock.held
    assert read_lock(tmp_path / LOCK_NAME) is None


def test_lock_from_another_host_needs_force(tmp_path: Path, write_spec: Any,
                                            matrix: Any) -> None:
    spec = write_spec(base_spec())
    _write_lock(tmp_path / "out", 1, host="elsewhere.example")
    with pytest.raises(LockError, match="blocklin unlock SPEC --force"):
        OutputLock(tmp_path / "out").acquire()
    with pytest.raises(LockError, match="another host"):
        break_lock(tmp_path / "out")
    res = run_cli("unlock", str(spec), "--force", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["removed"] is True
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_lock_is_exclusive_within_process(tmp_path: Path) -> None:
    with OutputLock(tmp_path), pytest.raises(LockError, match="locked by pid"):
        OutputLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
