"""``ComputeOptions``: how and where a compute runs, as one frozen value.

Every entry point that runs passes takes the same value the same way: keyword
``compute_options`` (a :class:`ComputeOptions`, or a dict of its fields) on
:func:`blocklin.compute`, on every eager operator (``randomized_svd``, ``pca``,
``svd_update``, ``embed``...) and on every estimator. :func:`blocklin.compute` and
the eager operators also take the fields as keywords, which override the value's
(``bl.compute(G, executor="spark")``). A pipeline builds one value from its spec and
the command line and hands it to every step.

>>> opts = bl.ComputeOptions(executor="dask", address="tcp://sched:8786",
...                          work_dir="s3://bucket/work", max_task_memory="2GiB")
>>> bl.compute(bl.ops.gram(A), compute_options=opts)
>>> bl.ops.randomized_svd(A, 20, compute_options=opts)
>>> LinearRegression(compute_options=opts).fit(X, y)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from blocklin.config import parse_cache_bytes, parse_memory
from blocklin.errors import ConfigError
from blocklin.types import DEVICES, EXECUTORS, parse_option

if TYPE_CHECKING:
    from distributed import Client, Security

    from blocklin.executors.base import Executor
    from blocklin.executors.progress import Progress

__all__ = ["ComputeOptions", "OptionsLike", "eager_options"]


@dataclass(frozen=True, kw_only=True)
class ComputeOptions:
    """How and where a compute runs.

    Parameters
    ----------
    executor : {"dask", "spark"} or Executor
        Engine. ``dask`` runs on local threads unless ``address`` or ``client`` is
        given; ``spark`` runs in local mode unless ``address`` (a master URL) or
        ``spark`` (a SparkSession) is given.
    address : str, optional
        A dask scheduler address or a Spark master URL.
    client : distributed.Client, optional
        A dask client to run on (not closed by blocklin).
    spark : SparkSession, optional
        A Spark session to run on.
    num_workers : int, optional
        Threads of the local dask scheduler.
    device : {"cpu", "gpu"}
        Where tasks compute: ``gpu`` requests one GPU per task (dask worker resource
        ``GPU``, Spark ``spark.task.resource.gpu.amount``; the local threaded
        scheduler uses this machine's GPU) and runs the block kernels there with CuPy
        (see ``docs/gpu.md``); reductions of partial results stay on the host, in
        their fixed order. Needs CuPy and a CUDA device on every worker running them
        (``ConfigError`` otherwise).
    work_dir : str, optional
        Directory or URL for intermediate arrays (default ``BLOCKLIN_WORK_DIR``).
        Must be reachable from every worker.
    storage_options : dict, optional
        fsspec options (credentials, ``endpoint_url``...) for ``work_dir`` and for
        every ``out=`` target that has none of its own yet (see
        :func:`blocklin.storage.stores.register_storage_options`). They reach every
        worker and are never written or printed. Inputs keep the options they were
        opened with.
    max_task_memory : int or str, optional
        Per-task memory limit; a plan over it is refused before anything runs.
    max_device_memory : int or str, optional
        Device memory the GPU tasks may use (``"16GiB"``); default: the free memory
        of this process's GPU when it has one (a dask cluster's GPU workers are asked
        too). A plan whose task does not fit is refused before anything runs.
    cache_bytes : int, str or None
        Keep the decoded blocks of source arrays in each worker process's memory, for
        later computes over the same data (iterative solvers pass ``"auto"`` for their
        passes): at most this many bytes per process (``"2GiB"`` works too; ``"auto"``:
        ``BLOCKLIN_BLOCK_CACHE_BYTES``, else a quarter of the process's memory bound).
        The executor lowers it so that the cache plus the plan's per-task memory for
        each of a process's threads fits the process's memory (the machine, a dask
        worker's ``memory_limit``, Spark's ``spark.executor.pyspark.memory`` per core);
        blocks beyond it are read again. Results are identical with or without it.
        None or 0 (default): no cache, and blocks cached by earlier computes are freed
        as this compute's tasks start.
    resume : bool
        Skip blocks recorded complete by an earlier run of the same plan.
    progress : bool, callable or ProgressSink, optional
        Where progress goes (see :mod:`blocklin.executors.progress`): a
        ``progress(stage_label, done, total)`` callable is called on the driver once per
        stage group before running (``done`` counting blocks skipped by ``resume``) and
        as tasks finish; a sink receives the pass, its stage groups and their tasks;
        ``True`` reports to the enclosing sink, else to stderr (a bar on a terminal,
        plain lines otherwise). None or False (default): the enclosing
        :func:`~blocklin.executors.progress.progress_to` block's sink, if any.
    connect_timeout : float, optional
        Seconds to wait for the dask scheduler at ``address`` (default 10).
    worker_timeout : float, optional
        Seconds to wait for a first worker when the dask cluster has none (default 60).
    security : distributed.Security, optional
        TLS settings for a ``tls://`` dask scheduler (``Security(tls_ca_file=...,
        tls_client_cert=..., tls_client_key=...)``); without it a ``tls://`` address
        uses dask's configuration (``distributed.comm.tls``).
    keep_intermediates : bool, optional
        Keep the intermediate arrays in ``work_dir`` after a successful compute (a
        later ``resume=True`` of the same plan then skips them). Default (None): they
        are removed once the results are sealed, unless an enclosing
        :func:`~blocklin.executors.intermediates.intermediates_scope` keeps them. A
        failed compute always keeps them for ``resume``; matrix results without
        ``out=`` stay in ``work_dir`` (the returned BlockMatrix lives there);
        ``blocklin gc`` frees what is left.

    Raises
    ------
    ConfigError
        For an unknown executor or device or a field of the wrong type, when the value
        is built (before anything runs).
    InputValueError
        For a malformed memory size.
    """

    executor: str | Executor = "dask"
    address: str | None = None
    client: Client | None = None
    spark: Any = None
    num_workers: int | None = None
    device: str = "cpu"
    work_dir: str | None = None
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False)
    max_task_memory: int | str | None = None
    max_device_memory: int | str | None = None
    cache_bytes: int | str | None = None
    resume: bool = False
    progress: Progress = None
    connect_timeout: float | None = None
    worker_timeout: float | None = None
    security: Security | None = None
    keep_intermediates: bool | None = None

    def __post_init__(self) -> None:
        try:
            if isinstance(self.executor, str):
                object.__setattr__(self, "executor",
                                   parse_option("executor", self.executor, EXECUTORS))
            object.__setattr__(self, "device", parse_option("device", self.device, DEVICES))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for name in ("max_task_memory", "max_device_memory"):
            if getattr(self, name) is not None:
                parse_memory(getattr(self, name))  # InputValueError for a malformed size
        parse_cache_bytes(self.cache_bytes)
        if not isinstance(self.resume, bool):
            raise ConfigError(f"resume must be a bool; got {self.resume!r}")
        if self.num_workers is not None and (isinstance(self.num_workers, bool)
                                             or not isinstance(self.num_workers, int)
                                             or self.num_workers < 1):
            raise ConfigError(f"num_workers must be a positive int; got {self.num_workers!r}")
        for name in ("address", "work_dir"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
            elif value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a string; got {type(value).__name__}")
        if self.storage_options is not None and not isinstance(self.storage_options, Mapping):
            raise ConfigError("storage_options must be a dict of fsspec options")

    @classmethod
    def of(cls, value: OptionsLike = None, /, **overrides: Any) -> ComputeOptions:
        """The options ``value`` names, with ``overrides`` (fields) replacing its own.

        Parameters
        ----------
        value : ComputeOptions, dict or None
            A value, a dict of field names, or None for the defaults.
        **overrides
            Fields to replace.

        Raises
        ------
        ConfigError
            For a name that is not a field, or a bad value (see the class).
        """
        if value is None:
            base = cls()
        elif isinstance(value, ComputeOptions):
            base = value
        elif isinstance(value, Mapping):
            base = cls()
            overrides = {**value, **overrides}
        else:
            raise ConfigError(f"compute_options must be a ComputeOptions or a dict of its "
                              f"fields; got {type(value).__name__}")
        return base.replace(**overrides) if overrides else base

    def replace(self, **changes: Any) -> ComputeOptions:
        """A copy with ``changes`` (fields) replaced; unknown names raise ConfigError."""
        unknown = sorted(set(changes) - _FIELDS)
        if unknown:
            raise ConfigError(f"unknown compute option(s) {', '.join(map(repr, unknown))}; "
                              f"the options are {', '.join(sorted(_FIELDS))}")
        return dataclasses.replace(self, **changes)

    def updated(self, **defaults: Any) -> ComputeOptions:
        """A copy where each of ``defaults`` fills a field still at its default value."""
        return self.replace(**{name: v for name, v in defaults.items()
                               if getattr(self, name) == _DEFAULTS[name]})


OptionsLike = ComputeOptions | Mapping[str, Any] | None
_FIELDS = frozenset(f.name for f in fields(ComputeOptions))
_DEFAULTS = {f.name: f.default for f in fields(ComputeOptions)}


def eager_options(compute_options: OptionsLike,
                  options: Mapping[str, Any]) -> tuple[ComputeOptions, Progress]:
    """An eager operator's options: those its passes run with, and its ``progress``.

    The operator reports as one operation (``with operation(name, progress)``); its
    passes report to that operation, so their own ``progress`` is unset.

    Raises
    ------
    ConfigError
        For an unknown option or a bad value (see :class:`ComputeOptions`).
    """
    opts = ComputeOptions.of(compute_options, **options)
    return opts.replace(progress=None), opts.progress
