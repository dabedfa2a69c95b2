"""The guard in tests/conftest.py: a test that reads beside the clone fails the session.

Each case runs a real pytest session in a subprocess on a throwaway repository
(``tmp_path/repo``) holding a copy of this repository's conftest and one test file, with
a data file beside it (``tmp_path/beside.dat``). The test itself passes either way, so
the exit status is the guard's alone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent / "conftest.py"


def run_session(tmp_path: Path, test_body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "beside.dat").write_text("1 2 3\n")
    tests = tmp_path / "repo" / "tests"
    tests.mkdir(parents=True)
    (tests / "data.dat").write_text("4 5 6\n")
    shutil.copy(CONFTEST, tests / "conftest.py")
    (tests / "test_reads.py").write_text(
        "from pathlib import Path\n\n"
        "HERE = Path(__file__).resolve().parent\n\n\n"
        f"def test_reads() -> None:\n    {test_body}\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path / "repo", capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("body", [
    "assert (HERE / '..' / '..' / 'beside.dat').read_text() == '1 2 3\\n'",
    "assert open('../beside.dat', 'rb').read() == b'1 2 3\\n'",  # relative to the repo root
])
def test_read_beside_the_clone_fails_the_session(tmp_path: Path, body: str) -> None:
    done = run_session(tmp_path, body)
    assert "1 passed" in done.stdout, done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert "reads outside the repository" in done.stdout
    assert f"tests/test_reads.py::test_reads: {tmp_path.resolve() / 'beside.dat'}" in done.stdout


def test_reads_inside_the_clone_and_writes_beside_it_pass(tmp_path: Path) -> None:
    # Writing beside the clone (and reading back what the session wrote) is not a read
    # of data a fresh clone lacks; the guard must stay quiet so the exit status is 0.
    body = ("assert (HERE / 'data.dat').read_text() == '4 5 6\\n'; "
            "(HERE.parents[1] / 'made.dat').write_text('x'); "
            "assert (HERE.parents[1] / 'made.dat').read_text() == 'x'")
    done = run_session(tmp_path, body)
    assert done.returncode == pytest.ExitCode.OK, done.stdout + done.stderr
    assert "reads outside the repository" not in done.stdout
