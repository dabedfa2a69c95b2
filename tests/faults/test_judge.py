"""The fault suite's own instruments can fail: a differing result is told apart from an
equal one, and a child process is really killed."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from blocklin.testing.fault_scenarios import compare, kill_when


def test_compare_tells_one_flipped_bit() -> None:
    ref = {"G": np.arange(6.0).reshape(2, 3)}
    got = {"G": ref["G"].copy()}
    assert compare(got, ref) == ""
    got["G"].view(np.uint64)[1, 2] ^= 1  # one ulp
    assert "G: 1 of 6 values differ" in compare(got, ref)
    assert "float32 vs reference (2, 3) float64" in compare({"G": ref["G"].astype(np.float32)}, ref)
    assert "keys" in compare({}, ref)


def test_kill_when_sigkills_a_running_child() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.monotonic()
    assert kill_when(proc, lambda: time.monotonic() - t0 > 0.05, delay=0.01)
    assert proc.returncode == -9
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    assert not kill_when(done, lambda: False, delay=0.0)
