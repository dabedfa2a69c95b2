"""Process-wide defaults, overridable per call and through environment variables.

``BLOCKLIN_WORK_DIR``       where plans keep intermediate arrays (default
                            ``~/.cache/blocklin/work``).
``BLOCKLIN_MAX_TASK_MEMORY`` per-task memory limit in bytes (default 4 GiB).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_BLOCK_BYTES", "default_chunk_rows", "default_max_task_memory",
           "default_work_dir", "parse_memory"]

#: Target size of a row block when the caller does not choose one: large enough that
#: per-task overhead is negligible, small enough that several fit in a worker.
DEFAULT_BLOCK_BYTES = 64 * 2**20


def default_chunk_rows(ncols: int, itemsize: int) -> int:
    """Rows of a block of about ``DEFAULT_BLOCK_BYTES`` for ``ncols`` columns."""
    return max(1, DEFAULT_BLOCK_BYTES // max(1, ncols * itemsize))

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6,
          "mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12,
          "tib": 2**40}


def parse_memory(value: int | str) -> int:
    """Parse a byte count given as an int or a string such as ``"2GiB"`` or ``"500 MB"``.

    Raises
    ------
    InputValueError
        If the value is not a positive size.
    """
    from blocklin.errors import InputValueError

    if isinstance(value, bool):
        raise InputValueError(f"memory size must be an int or a string like '2GiB'; got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(digits):]
        try:
            n = int(float(digits) * _UNITS[unit])
        except (KeyError, ValueError):
            raise InputValueError(
                f"memory size must look like '2GiB', '500MB' or a byte count; got {value!r}"
            ) from None
    else:
        raise InputValueError(f"memory size must be an int or a string like '2GiB'; got {value!r}")
    if n <= 0:
        raise InputValueError(f"memory size must be positive; got {value!r}")
    return n


def default_work_dir() -> str:
    """Directory (or URL) holding intermediate arrays of plans and their completion records."""
    env = os.environ.get("BLOCKLIN_WORK_DIR")
    if env:
        return env
    return str(Path.home() / ".cache" / "blocklin" / "work")


def default_max_task_memory() -> int:
    """Per-task memory limit used when a compute call does not give one."""
    env = os.environ.get("BLOCKLIN_MAX_TASK_MEMORY")
    return parse_memory(env) if env else 4 * 2**30
