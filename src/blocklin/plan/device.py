"""Where a block kernel computes, and moving its blocks there and back.

Block kernels that declare ``on_device = True`` are written once against the array
API namespace of their blocks (:func:`namespace`): numpy on a CPU worker, CuPy on a
GPU one (``array_api_compat`` bridges the two). :func:`blocklin.plan.runtime.run_task`
reads every block on the host (chunks are decoded and their checksums verified
there), copies the blocks of such kernels to the task's device (:func:`to_device`)
and brings the kernel's output back (:func:`to_host`) before it is checked and
written. Kernels without the flag (reduction levels, the small one-task stages) get
host blocks on every device: partial results are combined on the host, in the fixed
order of :mod:`blocklin.plan.reduce`.

Devices of a task:

``cpu``               numpy and scipy.sparse; nothing is copied.
``gpu``               CuPy and ``cupyx.scipy.sparse`` on the worker's current CUDA device.
                      Dense blocks go through a pinned host buffer and an asynchronous
                      copy on the thread's own non-blocking stream (:class:`DeviceScope`),
                      so with two task threads per GPU the copy of one task's block
                      overlaps the compute of the other's.
``array_api_strict``  For tests: blocks become ``array_api_strict`` arrays, which
                      refuse every call outside the standard (a call CuPy might not
                      have), so the device code path runs, and is checked, on every
                      commit without a GPU. The strict namespace has no sparse arrays:
                      CSR blocks (and sparse sketches, :func:`like`) arrive dense there,
                      so the sparse kernels' GPU path (``cupyx.scipy.sparse``, scipy's
                      API) is the one scipy runs on the CPU.
"""

from __future__ import annotations

import platform
import threading
from functools import cache
from importlib.util import find_spec
from types import ModuleType
from typing import Any, Literal, get_args

import numpy as np
import scipy.sparse as sp

from blocklin.errors import ConfigError

__all__ = [
    "GPU_TASKS",
    "RUNTIME_DEVICES",
    "DeviceScope",
    "RuntimeDevice",
    "device_free_memory",
    "gpu_module",
    "gpu_probe",
    "gpu_tasks_for",
    "is_sparse",
    "like",
    "namespace",
    "require_gpu",
    "runs_on_device",
    "select_gpu",
    "to_device",
    "to_host",
]

#: Where a task's device kernels compute (``array_api_strict``: tests only).
RuntimeDevice = Literal["cpu", "gpu", "array_api_strict"]
RUNTIME_DEVICES: tuple[str, ...] = get_args(RuntimeDevice)


@cache
def _numpy_namespace() -> ModuleType:
    import array_api_compat.numpy as xp

    return xp


@cache
def gpu_module() -> ModuleType | None:
    """CuPy when it imports and sees a CUDA device; None otherwise (cached per process)."""
    try:
        import cupy
    except ImportError:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # CUDARuntimeError: no driver, no device
        return None
    module: ModuleType = cupy
    return module


def require_gpu(where: str = "this worker") -> ModuleType:
    """CuPy, or the error saying why a ``device="gpu"`` task cannot run here.

    Raises
    ------
    ConfigError
        When CuPy is not installed on ``where`` or sees no CUDA device.
    """
    cupy = gpu_module()
    if cupy is None:
        why = ("CuPy is installed but sees no CUDA device" if find_spec("cupy") is not None
               else "CuPy is not installed (pip install 'blocklin[gpu]')")
        raise ConfigError(f"device='gpu' but {why} on {where} (host {platform.node()}); "
                          "run GPU tasks on workers with a GPU and CuPy, or use device='cpu'")
    return cupy


def _module_of(x: Any) -> str:
    return type(x).__module__


def is_sparse(x: Any) -> bool:
    """Whether ``x`` is a sparse matrix of scipy or of ``cupyx.scipy.sparse``."""
    if sp.issparse(x):
        return True
    return _module_of(x).startswith("cupyx.scipy.sparse") and hasattr(x, "tocsr")


def _is_cupy(x: Any) -> bool:
    mod = _module_of(x)
    return mod.startswith("cupy.") or mod.startswith("cupyx.") or mod == "cupy"


def namespace(*xs: Any) -> Any:
    """The array namespace of the blocks ``xs``: ``array_api_compat``'s numpy for numpy
    arrays and scipy matrices, its cupy for CuPy arrays and ``cupyx`` matrices, and the
    arrays' own namespace otherwise (``array_api_strict``).

    The numpy case is answered without inspecting further (kernels call this once per
    task); arrays of different namespaces raise ``TypeError``.
    """
    dense = [x for x in xs if x is not None and not isinstance(x, int | float)]
    if all(type(x) is np.ndarray or sp.issparse(x) for x in dense):
        return _numpy_namespace()
    import array_api_compat

    arrays = []
    for x in dense:
        if is_sparse(x):
            # The dense namespace of the sparse matrix's device.
            arrays.append(x.data)
        else:
            arrays.append(x)
    return array_api_compat.array_namespace(*arrays)


def is_numpy(xp: Any) -> bool:
    """Whether ``xp`` is numpy's namespace (CPU kernels keep their LAPACK/BLAS paths)."""
    return xp is _numpy_namespace()


def sparse_module(x: Any) -> Any:
    """``scipy.sparse`` or ``cupyx.scipy.sparse``, whichever holds ``x``'s device's matrices;
    None for a namespace without sparse matrices."""
    if _is_cupy(x):
        import cupyx.scipy.sparse

        return cupyx.scipy.sparse
    if type(x) is np.ndarray or sp.issparse(x):
        return sp
    return None


def to_host(x: Any) -> Any:
    """``x`` as numpy (dense) or scipy (sparse); numpy and scipy objects unchanged."""
    if type(x) is np.ndarray or sp.issparse(x) or x is None:
        return x
    if isinstance(x, tuple | list):
        return type(x)(to_host(v) for v in x)
    if isinstance(x, np.generic | int | float):
        return x
    if _is_cupy(x):
        return x.get()
    return np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)


def to_device(x: Any, device: str) -> Any:
    """A host block (numpy or scipy CSR) on ``device`` (see the module notes)."""
    if device == "cpu" or x is None:
        return x
    if device == "array_api_strict":
        import array_api_strict

        # No sparse arrays in the strict namespace: a CSR block arrives dense.
        return array_api_strict.asarray(x.toarray() if sp.issparse(x) else x)
    if device != "gpu":
        raise ConfigError(f"unknown device {device!r}; expected one of {RUNTIME_DEVICES}")
    cupy = require_gpu()
    if sp.issparse(x):
        import cupyx.scipy.sparse

        scope = getattr(_local, "scope", None)
        if scope is not None:
            scope.start()

        csr = x.tocsr()
        if csr.dtype.kind != "f":  # cuSPARSE multiplies floating point only
            csr = csr.astype(np.float64)
        return cupyx.scipy.sparse.csr_matrix(csr)
    if _is_cupy(x):
        return x
    return _staged_upload(cupy, np.asarray(x))


def like(x: Any, ref: Any) -> Any:
    """Host data ``x`` (a kernel's parameter, a regenerated sketch) on ``ref``'s device,
    in ``ref``'s namespace; unchanged when ``ref`` is a host array."""
    if x is None or type(ref) is np.ndarray or sp.issparse(ref):
        return x
    if _is_cupy(ref):
        return to_device(x, "gpu")
    if is_sparse(x):
        x = x.toarray()  # the strict namespace has no sparse matrices
    xp = namespace(ref)
    return xp.asarray(x)


def runs_on_device(kernel: Any) -> bool:
    """Whether a kernel is written against the array namespace (``on_device = True``)."""
    return bool(getattr(kernel, "on_device", False))


# -- GPU: staging, streams, device selection, memory -----------------------------------
class _Staging:
    """One thread's pinned host buffers: blocks are copied into them, then to the GPU
    asynchronously. Regions handed out since :meth:`reset` stay untouched until the
    next reset, which the task's stream has passed (its results were copied back)."""

    def __init__(self) -> None:
        self.buffers: list[Any] = []
        self.sizes: list[int] = []
        self.used = 0  # bytes handed out of the last buffer
        self.current = 0

    def reset(self) -> None:
        if len(self.buffers) > 1:
            # Keep one buffer, as large as the last task needed: tasks of a stage alike.
            keep = max(range(len(self.buffers)), key=lambda i: self.sizes[i])
            self.buffers, self.sizes = [self.buffers[keep]], [self.sizes[keep]]
        self.current = 0
        self.used = 0

    def take(self, cupy: Any, nbytes: int) -> Any:
        """A pinned region of ``nbytes`` (aligned to 256 bytes), as a uint8 ndarray."""
        need = -(-nbytes // 256) * 256
        while self.current < len(self.buffers) and self.used + need > self.sizes[self.current]:
            self.current += 1
            self.used = 0
        if self.current == len(self.buffers):
            size = max(need, 2 * sum(self.sizes), 1 << 20)
            self.buffers.append(cupy.cuda.alloc_pinned_memory(size))
            self.sizes.append(size)
            self.used = 0
        mem = self.buffers[self.current]
        region = np.frombuffer(mem, dtype=np.uint8, count=nbytes, offset=self.used)
        self.used += need
        return region


_local = threading.local()

#: Tasks of one process that may hold one GPU at once (on the local threaded
#: scheduler, whose threads share it): two, so that one task's copies overlap the
#: other's compute; the plan is checked for two tasks' device memory (or it runs them
#: one at a time, see :func:`gpu_tasks_for`).
GPU_TASKS = 2

_gate_lock = threading.Lock()
_gates: dict[tuple[int, int], threading.Semaphore] = {}


def _gate(device_id: int, tasks: int) -> threading.Semaphore:
    with _gate_lock:
        key = (device_id, tasks)
        if key not in _gates:
            _gates[key] = threading.Semaphore(tasks)
        return _gates[key]


def gpu_tasks_for(task_bytes: int, limit: int | None) -> int:
    """Tasks that may share one GPU: :data:`GPU_TASKS` when that many fit ``limit``
    device bytes (or the limit is unknown), else one."""
    if limit is None or task_bytes <= 0 or GPU_TASKS * task_bytes <= limit:
        return GPU_TASKS
    return 1


def _staged_upload(cupy: Any, block: np.ndarray) -> Any:
    """``block`` on the GPU, copied through this thread's pinned buffer on its stream."""
    scope = getattr(_local, "scope", None)
    if scope is None or block.size == 0:
        # Outside a task's scope (a test, a driver): a plain synchronous copy.
        return cupy.asarray(block)
    scope.start()
    out = cupy.empty(block.shape, dtype=block.dtype)
    host = scope.staging.take(cupy, block.nbytes).view(block.dtype).reshape(block.shape)
    np.copyto(host, block)
    # Asynchronous from pinned memory on the current (the task thread's) stream: kernels
    # issued after it on that stream wait for it; other threads' work does not.
    out.set(host, stream=cupy.cuda.get_current_stream())
    return out


class DeviceScope:
    """What a task runs inside on its device. A no-op except on ``gpu``, where the
    first copy of a block to the device (none for a task of host kernels only, such
    as a reduction level on a driver without a GPU):

    - waits for one of ``tasks`` places on the GPU (:data:`GPU_TASKS`), held until the
      task leaves: reading and decoding blocks happen before, on as many threads as
      the worker has;
    - makes this thread's non-blocking CUDA stream (one per thread and device)
      current, so the copies and kernels of tasks on other threads overlap this one's;
    - recycles this thread's pinned buffers, through which dense blocks are copied.
    """

    def __init__(self, device: str, tasks: int = GPU_TASKS) -> None:
        self.device = device
        self.tasks = max(1, tasks)
        self._stream: Any = None
        self._held: threading.Semaphore | None = None
        self.staging: _Staging

    def __enter__(self) -> DeviceScope:
        if self.device == "gpu":
            _local.scope = self
        return self

    def start(self) -> None:
        """Take a place on the GPU and its stream (once per task, on the first copy)."""
        if self._stream is not None:
            return
        cupy = require_gpu()
        device_id = int(cupy.cuda.runtime.getDevice())
        gate = _gate(device_id, self.tasks)
        gate.acquire()
        self._held = gate
        streams = getattr(_local, "streams", None)
        if streams is None:
            streams = _local.streams = {}
        if device_id not in streams:
            streams[device_id] = cupy.cuda.Stream(non_blocking=True)
        stream = streams[device_id]
        staging = getattr(_local, "staging", None)
        if staging is None:
            staging = _local.staging = _Staging()
        stream.synchronize()  # the last task's copies out of the pinned regions are done
        staging.reset()
        self.staging = staging
        stream.__enter__()
        self._stream = stream

    def __exit__(self, *exc: Any) -> None:
        if self.device != "gpu":
            return
        _local.scope = None
        try:
            if self._stream is not None:
                self._stream.synchronize()
                self._stream.__exit__(*exc)
        finally:
            self._stream = None
            if self._held is not None:
                self._held.release()
                self._held = None


def select_gpu(index: int | str) -> None:
    """Make CUDA device ``index`` current for this thread (a Spark task's assigned GPU)."""
    cupy = require_gpu()
    cupy.cuda.Device(int(index)).use()


def gpu_probe() -> tuple[int | None, str]:
    """``(free device bytes, "")`` in a process with a usable GPU, else ``(None, why)``:
    what an executor asks its GPU workers before a run."""
    try:
        require_gpu()
    except ConfigError as exc:
        return None, str(exc)
    return device_free_memory(), ""


def device_free_memory() -> int | None:
    """Free bytes of this process's current CUDA device, or None without a GPU.

    CuPy's memory pool keeps freed blocks for reuse: those count as free here.
    """
    cupy = gpu_module()
    if cupy is None:
        return None
    free, _total = cupy.cuda.runtime.memGetInfo()
    pool = cupy.get_default_memory_pool()
    return int(free) + int(pool.total_bytes() - pool.used_bytes())
