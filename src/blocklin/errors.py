"""The blocklin error hierarchy.

Every error derives from :class:`BlocklinError` and also from the builtin it
refines, so callers can catch ``ValueError`` or ``OSError`` as usual.
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "STORAGE_ERRNOS",
    "BlocklinError",
    "ConfigError",
    "CorruptChunkError",
    "ExecutorError",
    "IncompleteArrayError",
    "InputChangedError",
    "InputDtypeError",
    "InputValueError",
    "LockError",
    "MetadataError",
    "MissingChunkError",
    "ModelFormatError",
    "NonFiniteError",
    "OutputAliasError",
    "PlanMemoryError",
    "ShapeMismatchError",
    "StorageError",
    "TaskFailedError",
    "WorkerEnvironmentError",
    "storage_error",
]


class BlocklinError(Exception):
    """Base class of every error raised by blocklin."""


class InputValueError(BlocklinError, ValueError):
    """An argument has an invalid value (raised before any compute starts)."""


class InputDtypeError(BlocklinError, TypeError):
    """An argument has an unsupported type or dtype."""


class ShapeMismatchError(InputValueError):
    """Operand shapes or block grids do not fit together."""


class ConfigError(InputValueError):
    """A configuration value (executor, work directory, memory limit) is invalid."""


class PlanMemoryError(BlocklinError, ValueError):
    """A stage's projected per-task memory exceeds ``max_task_memory`` (or, ``limit``
    naming it, the device memory a GPU task may use)."""

    def __init__(self, stage: str, projected: int, allowed: int, hint: str = "",
                 limit: str = "max_task_memory") -> None:
        self.stage = stage
        self.projected = projected
        self.allowed = allowed
        self.limit = limit
        msg = (
            f"stage {stage!r} needs {format_bytes(projected)} per task, over the allowed "
            f"{limit} of {format_bytes(allowed)}"
        )
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)


class CorruptChunkError(BlocklinError, OSError):
    """A stored chunk failed its checksum or could not be decoded."""

    def __init__(self, array: str, chunk: tuple[int, ...], reason: str) -> None:
        self.array = array
        self.chunk = chunk
        self.reason = reason
        key = ".".join(str(c) for c in chunk)
        super().__init__(f"corrupt chunk {key} of array {array}: {reason}")

    def __reduce__(self) -> tuple[type[CorruptChunkError], tuple[object, ...]]:
        # Rebuilt from its fields when it crosses processes (dask workers, Spark).
        return (type(self), (self.array, self.chunk, self.reason))


class MissingChunkError(CorruptChunkError):
    """A chunk of an array blocklin wrote is absent from storage.

    blocklin writes every chunk of its arrays, so an absent one was lost (deleted,
    a failed copy, an eventually consistent listing), never a fill value.
    """

    def __init__(self, array: str, chunk: tuple[int, ...], reason: str = "") -> None:
        key = ".".join(str(c) for c in chunk)
        BlocklinError.__init__(
            self, f"missing chunk {key} of array {array}: blocklin wrote every chunk of it, "
                  f"so this one was lost{'; ' + reason if reason else ''}. Rewrite the array "
                  "(or rerun the step that produced it)")
        self.array = array
        self.chunk = chunk
        self.reason = reason


class NonFiniteError(InputValueError):
    """An array holds NaN or infinity where blocklin needs finite numbers.

    Attributes name the array and block, and the row and column (global indices)
    of the first non-finite value where they are known.
    """

    def __init__(self, array: str, block: tuple[int, ...] | None = None,
                 row: int | None = None, col: int | None = None, detail: str = "") -> None:
        self.array = array
        self.block = block
        self.row = row
        self.col = col
        where = f" in block {'.'.join(str(b) for b in block)}" if block is not None else ""
        if row is not None:
            where += f" at row {row}" + (f", column {col}" if col is not None else "")
        msg = f"array {array} holds NaN or infinite values{where}"
        super().__init__(msg + (f"; {detail}" if detail else ""))
        self.detail = detail

    def __reduce__(self) -> tuple[type[NonFiniteError], tuple[object, ...]]:
        # Rebuilt from its fields when it crosses processes (dask workers, Spark).
        return (type(self), (self.array, self.block, self.row, self.col, self.detail))


class InputChangedError(BlocklinError, OSError):
    """An input's stored content changed while a run or refresh depended on it."""


class MetadataError(InputValueError):
    """Stored array metadata (``zarr.json``, ``.zarray``) is malformed; names the field."""

    def __init__(self, array: str, field: str, problem: str) -> None:
        self.array = array
        self.field = field
        super().__init__(f"array {array}: metadata field {field} {problem}")


class ModelFormatError(InputValueError):
    """A saved model cannot be loaded: written by an incompatible format version, of an
    estimator class blocklin does not know, or malformed; the message names which."""


class OutputAliasError(InputValueError):
    """An output path is, contains or lies inside an input or the work directory."""


class StorageError(BlocklinError, OSError):
    """Storage refused a write: full, over quota or a file size limit, read-only, or denied.

    ``path`` is the file or object that could not be written; ``errno`` is the OS
    error number (``errno.ENOSPC``...), None when the store gave none.
    """

    def __init__(self, path: str, reason: str, errno: int | None = None) -> None:
        self.message = (f"cannot write {path}: {reason}; free space or fix the storage's "
                        "permissions, or choose another location, then rerun (with --resume "
                        "for a pipeline run)")
        super().__init__(self.message)
        self.path = path
        self.reason = reason
        self.errno = errno
        self.filename = path

    def __reduce__(self) -> tuple[type[StorageError], tuple[object, ...]]:
        # Rebuilt from its fields when it crosses processes (dask workers, Spark).
        return (type(self), (self.path, self.reason, self.errno))

    def __str__(self) -> str:
        # OSError would print "[Errno 28] None: path" once errno and filename are set.
        return self.message


#: OS error numbers that mean "this storage will not take the write", not a bug.
STORAGE_ERRNOS = frozenset({_errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG, _errno.EROFS,
                            _errno.EACCES, _errno.EPERM})


def storage_error(exc: OSError, path: str) -> OSError:
    """``exc`` as a :class:`StorageError` naming ``path`` if storage refused the write.

    Other OS errors (a vanished directory, a network error) are returned unchanged.
    """
    if isinstance(exc, StorageError) or exc.errno not in STORAGE_ERRNOS:
        return exc
    return StorageError(path, exc.strerror or str(exc), exc.errno)


class IncompleteArrayError(BlocklinError, OSError):
    """An array was opened whose producing run has not finished writing it."""


class ExecutorError(BlocklinError, RuntimeError):
    """An executor could not be set up or reached."""


class WorkerEnvironmentError(ExecutorError):
    """An engine's workers cannot run blocklin tasks: their Python lacks blocklin (or
    runs another version of it); the message names their interpreter and what to set."""


class TaskFailedError(BlocklinError, RuntimeError):
    """A block task failed after the engine's retries were exhausted."""


class LockError(BlocklinError, RuntimeError):
    """Another run holds the lock on the same outputs."""


def format_bytes(n: int) -> str:
    """Format a byte count for messages and reports (``1.5 GiB``).

    One decimal in binary units, as every report and message of blocklin prints sizes
    (``dask.utils.format_bytes`` prints two and ``kiB``).
    """
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    raise AssertionError("unreachable")
