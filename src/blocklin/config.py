"""Process-wide defaults, overridable per call and through environment variables.

``BLOCKLIN_WORK_DIR``       where plans keep intermediate arrays (default
                            ``~/.cache/blocklin/work``).
``BLOCKLIN_MAX_TASK_MEMORY`` per-task memory limit in bytes (default 4 GiB).
``BLOCKLIN_BLOCK_CACHE_BYTES`` per-process budget of the decoded-block cache that
                            iterative solvers use (default a quarter of the process's
                            memory bound; ``0`` turns the cache off).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BLOCK_CACHE_FRACTION", "DEFAULT_BLOCK_BYTES", "default_block_cache_bytes",
           "default_chunk_rows", "default_max_task_memory", "default_work_dir",
           "machine_memory", "parse_cache_bytes", "parse_memory"]

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


#: Share of a process's memory bound the block cache takes when no budget is given: the
#: rest stays for the tasks (whose projected memory is reserved on top, per thread).
BLOCK_CACHE_FRACTION = 0.25


def parse_cache_bytes(value: int | str | None) -> int | None:
    """Parse a ``cache_bytes`` option: None/0 off (0), ``"auto"`` the default (None), else bytes.

    Raises
    ------
    InputValueError
        If the value is neither ``"auto"`` nor a size (0 allowed).
    """
    if value is None:
        return 0
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if (value == 0 and not isinstance(value, bool)) or value == "0":
        return 0
    return parse_memory(value)


def default_block_cache_bytes(process_memory: int) -> int:
    """Cache budget of a process whose memory bound is ``process_memory`` bytes."""
    env = os.environ.get("BLOCKLIN_BLOCK_CACHE_BYTES")
    if env:
        budget = parse_cache_bytes(env)
        if budget is not None:
            return budget
    return int(BLOCK_CACHE_FRACTION * process_memory)


def machine_memory() -> int:
    """Physical memory of this machine, or the container's limit when that is lower."""
    import psutil

    total = int(psutil.virtual_memory().total)
    # cgroup v2, then v1: a container sees the host's memory in /proc but may use less.
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total
