"""An ALS fit SIGKILLed in a child process, then fitted again with the same checkpoint
directory: it resumes at its last finished half-iteration and ends with the factors of
an uninterrupted fit, bit for bit."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from blocklin.ml import ALS
from blocklin.testing.fault_scenarios import kill_when

ITERS = 10
PARAMS = dict(rank=4, max_iter=ITERS, reg_param=0.05, seed=1, block_rows=40)

CHILD = textwrap.dedent("""
    import sys
    import scipy.sparse as sp
    from blocklin.ml import ALS
    r = sp.load_npz(sys.argv[1])
    ALS(checkpoint_dir=sys.argv[2], work_dir=sys.argv[3], robust=sys.argv[4] == "1",
        **{params}).fit(r)
""").format(params=repr(PARAMS))


def _done(ckpt: Path) -> int:
    try:
        return int(json.loads((ckpt / "state.json").read_text())["done"])
    except (FileNotFoundError, ValueError, KeyError):
        return -1


@pytest.mark.parametrize(("robust", "after", "delay"), [(False, 3, 0.0), (True, 6, 0.03)])
def test_killed_fit_resumes_to_the_uninterrupted_factors(tmp_path: Path, robust: bool,
                                                         after: int, delay: float) -> None:
    import subprocess

    rng = np.random.default_rng(0)
    r = sp.random(400, 200, density=0.08, format="csr", random_state=rng,
                  data_rvs=lambda n: rng.integers(1, 6, n).astype(float))
    sp.save_npz(tmp_path / "r.npz", r)
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "r.npz"), str(ckpt),
                             str(tmp_path / "work"), "1" if robust else "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = kill_when(proc, lambda: _done(ckpt) >= after, delay)
    at_kill = _done(ckpt)
    # Not vacuous: killed mid-fit, after some half-iterations were recorded.
    assert killed and after <= at_kill < 2 * ITERS, (killed, at_kill)

    resumed = ALS(checkpoint_dir=str(ckpt), work_dir=str(tmp_path / "work"), robust=robust,
                  **PARAMS).fit(r)
    assert _done(ckpt) == 2 * ITERS
    whole = ALS(work_dir=str(tmp_path / "work"), robust=robust, **PARAMS).fit(r)
    np.testing.assert_array_equal(resumed.user_factors_, whole.user_factors_)
    np.testing.assert_array_equal(resumed.item_factors_, whole.item_factors_)
    # Only the factors still read are kept (the last two half-iterations').
    assert sorted(p.name for p in (ckpt / "factors").iterdir()) == \
        [f"f{2 * ITERS - 2:05d}.zarr", f"f{2 * ITERS - 1:05d}.zarr"]
