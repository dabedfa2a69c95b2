"""Session-wide test setup: the shared fixtures, and a guard against reads beside the clone.

A test that reads a file next to the repository (a data folder or a sibling checkout)
passes on the machine it was written on and fails in every fresh clone. The guard is an
audit hook that sees every Python-level ``open`` in this process; a read-only open of a
file that lies under the repository's parent directory but outside the repository, and
that already existed when the session started, is recorded, and the session then ends
with a nonzero exit status (``make test``, and so ``.ci/run``, fail) and a list of the
offending tests and paths.

Not reads of data: hidden entries of the parent (``~/.cache``, ``~/.config``, ``~/.ivy2``
when the clone sits in a home directory), the Python installation (a virtual environment
beside the clone), and files the session created itself (temporary directories when
the clone sits directly in the temporary directory). Worker processes (dask
``LocalCluster(processes=True)``, Spark's Python workers) have no hook, so tests that
read their own data do it in the test process.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["blocklin.testing.fixtures"]

REPO = Path(__file__).resolve().parents[1]
BESIDE = REPO.parent
_SESSION_START = time.time()
_INSTALL = tuple({os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix)})
_reads_beside: list[tuple[str, str]] = []  # (test id, path)
_current_test = "(collection or setup outside a test)"
_in_hook = threading.local()


def _is_read_beside(path: str, flags: int) -> bool:
    if flags & os.O_ACCMODE != os.O_RDONLY:
        return False
    real = os.path.realpath(path)
    beside, repo = str(BESIDE) + os.sep, str(REPO) + os.sep
    if not real.startswith(beside) or real.startswith(repo) or real.startswith(_INSTALL):
        return False
    if real[len(beside):].startswith("."):
        return False
    try:
        # Made by this session (a temporary directory, a cache): not data someone left there.
        return os.stat(real).st_ctime < _SESSION_START
    except OSError:
        return False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or getattr(_in_hook, "active", False):
        return
    path, _mode, flags = args
    if not isinstance(path, (str, bytes, os.PathLike)) or not isinstance(flags, int):
        return  # a file descriptor, or an open with no flags to tell a read from a write
    _in_hook.active = True
    try:
        name = os.fsdecode(path)
        if _is_read_beside(name, flags):
            _reads_beside.append((_current_test, os.path.realpath(name)))
    finally:
        _in_hook.active = False


sys.addaudithook(_audit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    global _current_test
    _current_test = item.nodeid
    yield
    _current_test = "(between tests)"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _reads_beside and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _reads_beside:
        return
    terminalreporter.section("reads outside the repository", red=True)
    terminalreporter.write_line(
        f"these files lie beside the clone ({BESIDE}) and are absent from a fresh one; "
        f"keep the data inside {REPO} (e.g. tests/data/):")
    for test, path in dict.fromkeys(_reads_beside):
        terminalreporter.write_line(f"  {test}: {path}")
