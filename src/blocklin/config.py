"""Process-wide defaults, overridable per call and through environment variables.

``BLOCKLIN_WORK_DIR``       where plans keep intermediate arrays (default
                            ``~/.cache/blocklin/work``); a compute removes its own once
                            its results are sealed, ``blocklin gc`` the rest.
``BLOCKLIN_CHUNK_BYTES``    target size of a stored block when no chunk shape is given
                            (default 64 MiB); small arrays take one block of their own
                            rows, larger ones equal blocks, never padded up to the target.
``BLOCKLIN_MAX_TASK_MEMORY`` per-task memory limit in bytes (default 4 GiB).
``BLOCKLIN_BLOCK_CACHE_BYTES`` per-process budget of the decoded-block cache that
                            iterative solvers use (default a quarter of the process's
                            memory bound; ``0`` turns the cache off).
``BLOCKLIN_LOG_LEVEL``      level of blocklin's log messages on stderr (``DEBUG``,
                            ``INFO``, ``WARNING``, ``ERROR`` or a number): the CLI's default
                            (``-v``/``--quiet`` override it; else WARNING); set when
                            ``blocklin`` is imported in Python, it installs a stderr
                            handler on the ``blocklin`` logger (unset: a NullHandler only).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BLOCK_CACHE_FRACTION", "DEFAULT_BLOCK_BYTES", "chunk_rows_for",
           "default_block_cache_bytes", "default_chunk_bytes", "default_chunk_rows",
           "default_log_level", "default_max_task_memory", "default_work_dir", "machine_memory",
           "parse_cache_bytes", "parse_duration", "parse_log_level", "parse_memory"]

#: Target size of a row block when the caller does not choose one: large enough that
#: per-task overhead is negligible, small enough that several fit in a worker.
DEFAULT_BLOCK_BYTES = 64 * 2**20


def default_chunk_bytes() -> int:
    """Target bytes of a stored block: ``BLOCKLIN_CHUNK_BYTES``, else ``DEFAULT_BLOCK_BYTES``."""
    env = os.environ.get("BLOCKLIN_CHUNK_BYTES")
    return parse_memory(env) if env else DEFAULT_BLOCK_BYTES


def default_chunk_rows(ncols: int, itemsize: int) -> int:
    """Rows of a block of about :func:`default_chunk_bytes` for ``ncols`` columns (for
    writers that do not know the row count yet; see :func:`chunk_rows_for`)."""
    return max(1, default_chunk_bytes() // max(1, ncols * itemsize))


def chunk_rows_for(nrows: int, ncols: int, itemsize: int) -> int:
    """Rows per block of an ``nrows × ncols`` array when the caller does not choose.

    At most :func:`default_chunk_rows`; a smaller array is one block of its own rows,
    and a larger one is cut into equal blocks (the fewest of at most the target
    size). zarr stores an edge chunk padded to the full chunk shape, so a fixed
    target would pad the last block by up to a whole target (a 442 × 2 table took
    64 MiB): with equal blocks the padding is under one row per block.
    """
    target = default_chunk_rows(ncols, itemsize)
    if nrows <= target:
        return max(1, nrows)
    nblocks = -(-nrows // target)
    return -(-nrows // nblocks)


#: Single-letter units are binary, as in Spark and JVM memory settings (``512m`` is
#: 512 MiB; ``spark.executor.pyspark.memory`` is read with this function), where
#: ``dask.utils.parse_bytes`` reads them as decimal.
_BINARY_LETTERS = frozenset("kmgtp")


def parse_memory(value: int | str) -> int:
    """Parse a byte count given as an int or a string such as ``"2GiB"`` or ``"500 MB"``.

    Raises
    ------
    InputValueError
        If the value is not a positive size.
    """
    from dask.utils import parse_bytes

    from blocklin.errors import InputValueError

    if isinstance(value, bool):
        raise InputValueError(f"memory size must be an int or a string like '2GiB'; got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(digits):]
        if unit in _BINARY_LETTERS:
            unit += "i"
        try:
            if not digits:  # dask reads a bare unit as one of it
                raise ValueError(value)
            n = parse_bytes(digits + unit)
        except ValueError:
            raise InputValueError(
                f"memory size must look like '2GiB', '500MB' or a byte count; got {value!r}"
            ) from None
    else:
        raise InputValueError(f"memory size must be an int or a string like '2GiB'; got {value!r}")
    if n <= 0:
        raise InputValueError(f"memory size must be positive; got {value!r}")
    return n


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(value: float | int | str) -> float:
    """Parse an age given as seconds or a string such as ``"7d"``, ``"12h"``, ``"30m"``.

    Raises
    ------
    InputValueError
        If the value is not a non-negative duration.
    """
    from blocklin.errors import InputValueError

    if isinstance(value, bool):
        raise InputValueError(f"a duration must look like '7d', '12h', '30m' or '90s'; got "
                              f"{value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        unit = text[-1:] if text[-1:] in _DURATION_UNITS else "s"
        digits = text[:-1] if text[-1:] in _DURATION_UNITS else text
        try:
            seconds = float(digits) * _DURATION_UNITS[unit]
        except ValueError:
            raise InputValueError(f"a duration must look like '7d', '12h', '30m' or '90s'; "
                                  f"got {value!r}") from None
    else:
        raise InputValueError(f"a duration must look like '7d', '12h', '30m' or '90s'; got "
                              f"{value!r}")
    if not seconds >= 0 or seconds == float("inf"):
        raise InputValueError(f"a duration must be finite and non-negative; got {value!r}")
    return seconds


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


_LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50}


def parse_log_level(value: str | int) -> int:
    """A logging level from a name (``"debug"``, ``"INFO"``...) or a number.

    Raises
    ------
    ConfigError
        For anything else, naming the accepted values.
    """
    from blocklin.errors import ConfigError

    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = str(value).strip().lower()
    if text.isdigit():
        return int(text)
    if text in _LOG_LEVELS:
        return _LOG_LEVELS[text]
    raise ConfigError(f"log level must be DEBUG, INFO, WARNING, ERROR, CRITICAL or a number; "
                      f"got {value!r} (BLOCKLIN_LOG_LEVEL)")


def default_log_level() -> int | None:
    """The level ``BLOCKLIN_LOG_LEVEL`` names, or None when it is unset or empty.

    Raises
    ------
    ConfigError
        For a value that names no level.
    """
    env = os.environ.get("BLOCKLIN_LOG_LEVEL", "").strip()
    return parse_log_level(env) if env else None
