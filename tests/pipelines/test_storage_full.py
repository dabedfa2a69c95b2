"""A write that storage refuses (full disk, file size limit) is a StorageError naming the
path, exit 6 from the CLI, not "internal error, a bug". Real OS errors: a 1 MiB tmpfs
(ENOSPC, needs root to mount) and RLIMIT_FSIZE in a child process (EFBIG)."""

from __future__ import annotations

import errno
import os
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.pipelines.conftest import CLI

_LIMIT = 256 * 1024


def _limit_file_size() -> None:
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead.
    resource.setrlimit(resource.RLIMIT_FSIZE, (_LIMIT, _LIMIT))


def _run(args: list[str], cwd: Path, limited: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BLOCKLIN_DEBUG": "0"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False, preexec_fn=_limit_file_size if limited else None)


def test_ingest_past_the_file_size_limit_exits_6_naming_the_chunk(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(2000, 100)))
    res = _run([*CLI, "ingest", "x.npy", "X.zarr", "--chunk-rows", "1000"], tmp_path,
               limited=True)
    assert res.returncode == 6, res.stderr
    assert f"cannot write {tmp_path / 'X.zarr' / 'c' / '0' / '0'}: File too large" in res.stderr
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr


def test_compute_raises_storage_error_with_errno_and_path(tmp_path: Path) -> None:
    code = (
        "import errno, numpy as np, blocklin as bl\n"
        "from blocklin.errors import StorageError\n"
        "x = bl.from_array(np.ones((400, 400)), 'X.zarr', chunks=(50, None))\n"
        "try:\n"
        "    bl.compute(bl.ops.gram(x), work_dir='work')\n"
        "except StorageError as e:\n"
        "    assert isinstance(e, OSError) and e.errno == errno.EFBIG, e.errno\n"
        "    print('PATH', e.path)\n"
        "else:\n"
        "    raise SystemExit('no error')\n")
    res = _run([sys.executable, "-c", code], tmp_path, limited=True)
    assert res.returncode == 0, res.stderr
    path = res.stdout.split("PATH ", 1)[1].strip()
    # A 400 x 400 float64 partial gram block (1.28 MB) is what did not fit.
    assert path.startswith(str(tmp_path / "work")) and re.search(r"/c/\d+/0/0$", path), path


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test (root only)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                         capture_output=True, text=True, check=False)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {got.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_run_on_a_full_disk_exits_6_naming_the_path(tmp_path: Path, tiny_disk: Path) -> None:
    import blocklin as bl

    bl.from_array(np.random.default_rng(1).normal(size=(400, 400)), tmp_path / "X.zarr",
                  chunks=(100, None))
    spec = {"name": "full", "inputs": {"X": {"path": "X.zarr"}},
            "steps": [{"name": "g", "op": "gram", "inputs": {"A": "X"}}],
            "outputs": {"gram": {"step": "g"}}, "output_dir": str(tiny_disk / "out")}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    res = _run([*CLI, "run", "spec.yaml"], tmp_path)
    assert res.returncode == 6, res.stderr
    assert f"cannot write {tiny_disk}" in res.stderr
    assert os.strerror(errno.ENOSPC) in res.stderr
    assert "internal error" not in res.stderr
