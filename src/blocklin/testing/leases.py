"""A lease held by another live process, for tests of what removal leaves alone."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["lease_held_elsewhere"]

_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from blocklin.storage.leases import Lease
    work, command, ready, stop, *names = sys.argv[1:]
    with Lease(work, names, command=command):
        Path(ready).touch()
        while not Path(stop).exists():
            time.sleep(0.02)
""")


@contextmanager
def lease_held_elsewhere(work: str | Path, names: Sequence[str], command: str = "holder test",
                         timeout: float = 60.0) -> Iterator[subprocess.Popen[bytes]]:
    """Run a second Python process holding a lease on ``names`` in the work dir ``work``
    (its ``command`` recorded) for the duration of the block; yields the process.

    On exit the holder is told to stop and must exit cleanly (AssertionError if not).
    """
    with tempfile.TemporaryDirectory(prefix="lease-holder-") as tmp:
        ready, stop = Path(tmp) / "ready", Path(tmp) / "stop"
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(work), command,
                                 str(ready), str(stop), *names])
        try:
            deadline = time.monotonic() + timeout
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the lease holder did not start (exit {proc.poll()})")
                time.sleep(0.02)
            yield proc
        finally:
            stop.touch()
            proc.wait(30)
        if proc.returncode != 0:
            raise AssertionError(f"the lease holder exited with {proc.returncode}")
