"""The task-graph IR: arrays, stages of block tasks, and immutable plans.

See ``DESIGN.md`` beside this file for block keys, completion records and resume.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from blocklin.storage.codecs import ChunkCodec
from blocklin.storage.foreign import ForeignLayout
from blocklin.storage.meta import ArrayMeta
from blocklin.storage.stores import join_url
from blocklin.types import BlockIndex, Shape

__all__ = [
    "Affine",
    "ArrayNode",
    "Kernel",
    "Plan",
    "Stage",
    "StageInput",
    "Task",
    "TaskContext",
    "content_name",
    "jsonable",
]


def content_name(prefix: str, *parts: Any) -> str:
    """A name derived from content (operator, parameters, input names), never a counter."""
    doc = json.dumps(parts, sort_keys=True, default=_json_default)
    return f"{prefix}-{hashlib.sha256(doc.encode()).hexdigest()[:20]}"


def jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as plain JSON (arrays replaced by their content hash), for provenance."""
    result: dict[str, Any] = json.loads(json.dumps(dict(params), default=_json_default))
    return result


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"ndarray": hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest(),
                "shape": obj.shape, "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, ArrayNode):
        return obj.name
    raise TypeError(f"cannot name a plan from {type(obj).__name__}")


@dataclass(frozen=True)
class ArrayNode:
    """An array a plan reads or produces.

    Source arrays have ``url`` set; produced arrays get ``url`` from ``out_url`` or,
    for intermediates, from the run's work directory at compute time.
    """

    name: str
    shape: Shape
    chunks: Shape
    dtype: str
    codec: ChunkCodec | None = field(default_factory=ChunkCodec)
    url: str | None = None
    out_url: str | None = None
    fingerprint: str | None = None
    format: str = "dense"
    #: Bytes of the largest block once read, where that is not ``chunk_nbytes``: CSR
    #: row blocks (their three components, from the stored nnz). None for dense arrays.
    block_nbytes: int | None = None
    #: blocklin wrote every chunk (a missing one is an error); else zarr's fill rule.
    owned: bool = True
    fill_value: Any = field(default=0, compare=False)
    #: A foreign source's storage layout (its chunks are not blocklin's blocks).
    foreign: ForeignLayout | None = None

    @property
    def is_source(self) -> bool:
        return self.url is not None

    @property
    def grid(self) -> Shape:
        return tuple(-(-s // c) for s, c in zip(self.shape, self.chunks, strict=True))

    @property
    def chunk_nbytes(self) -> int:
        return int(np.prod(self.chunks)) * np.dtype(self.dtype).itemsize

    def resolve(self, work_dir: str) -> ArrayMeta:
        url = self.url or self.out_url or join_url(work_dir, self.name)
        return ArrayMeta(url=url, shape=self.shape, chunks=self.chunks, dtype=self.dtype,
                         codec=self.codec, format=self.format, owned=self.owned,
                         fill_value=self.fill_value, foreign=self.foreign)

    @classmethod
    def from_meta(cls, meta: ArrayMeta, fingerprint: str) -> ArrayNode:
        from blocklin.storage.sparse import csr_block_nbytes

        return cls(name=f"src-{fingerprint[:20]}", shape=meta.shape, chunks=meta.chunks,
                   dtype=meta.dtype, codec=meta.codec, url=meta.url, fingerprint=fingerprint,
                   format=meta.format, block_nbytes=csr_block_nbytes(meta), owned=meta.owned,
                   fill_value=meta.fill_value, foreign=meta.foreign)


@dataclass(frozen=True)
class Affine:
    """A lazy per-column transform ``(x - shift) * scale`` applied to blocks as read.

    ``params`` is a small produced array of shape (2, n): row 0 the shift, row 1 the
    scale. Operators fuse it instead of writing a centered or scaled copy.
    """

    params: ArrayNode

    @property
    def token(self) -> str:
        return self.params.name


@dataclass(frozen=True)
class StageInput:
    """An array read block by block by a stage, optionally through an :class:`Affine`."""

    array: ArrayNode
    transform: Affine | None = None

    @property
    def token(self) -> str:
        return self.array.name + (f"|{self.transform.token}" if self.transform else "")


@dataclass(frozen=True)
class Task:
    """One block task: which input blocks it reads and which output block it writes."""

    out: BlockIndex
    reads: tuple[tuple[int, BlockIndex], ...]


@dataclass(frozen=True)
class TaskContext:
    """What a kernel may know about the task it runs in."""

    task: Task
    inputs: tuple[ArrayNode, ...]
    output: ArrayNode

    def row_range(self, position: int, index: BlockIndex) -> tuple[int, int]:
        """Rows ``[start, stop)`` of block ``index`` of input ``position``."""
        node = self.inputs[position]
        start = index[0] * node.chunks[0]
        return start, min(start + node.chunks[0], node.shape[0])


class Kernel(Protocol):
    """A block kernel: input blocks (in ``task.reads`` order) to one output block."""

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class Stage:
    """A set of block tasks producing one array, one task per output block.

    Attributes
    ----------
    op : str
        Human-readable operator label (``gram/partial``).
    extra_memory : int
        Working memory per task beyond its input and output blocks, declared by the
        operator; the memory projection adds it.
    keeps_sparse : bool
        The kernel keeps CSR input blocks sparse (never densifies them): the projection
        counts such blocks read without a transform at their stored size
        (``ArrayNode.block_nbytes``), not as dense ``rows × cols``.
    params : dict
        JSON-able operator parameters (recorded as provenance).
    """

    name: str
    op: str
    kernel: Kernel
    inputs: tuple[StageInput, ...]
    output: ArrayNode
    tasks: tuple[Task, ...]
    extra_memory: int = 0
    params: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    keeps_sparse: bool = False

    def read_signature(self) -> tuple[frozenset[tuple[str, BlockIndex]], ...]:
        """Per task, the source blocks it reads (transforms ignored): equal signatures fuse."""
        return tuple(frozenset((self.inputs[p].array.name, b) for p, b in t.reads)
                     for t in self.tasks)

    @property
    def param_arrays(self) -> tuple[ArrayNode, ...]:
        return tuple(i.transform.params for i in self.inputs if i.transform is not None)


def make_stage(op: str, kernel: Kernel, inputs: Sequence[StageInput], tasks: Iterable[Task],
               *, shape: Shape, chunks: Shape, dtype: Any, params: Mapping[str, Any] | None = None,
               extra_memory: int = 0, out_url: str | None = None,
               codec: ChunkCodec | None = None, keeps_sparse: bool = False) -> Stage:
    """Build a stage whose name and output name derive from its content."""
    params = dict(params or {})
    dt = np.dtype(dtype).name
    name = content_name("s", op, params, [i.token for i in inputs], list(shape), list(chunks), dt)
    output = ArrayNode(name=name.replace("s-", "a-", 1), shape=tuple(shape), chunks=tuple(chunks),
                       dtype=dt, codec=codec or ChunkCodec(), out_url=out_url)
    return Stage(name=name, op=op, kernel=kernel, inputs=tuple(inputs), output=output,
                 tasks=tuple(tasks), extra_memory=extra_memory, params=params,
                 keeps_sparse=keeps_sparse)


@dataclass(frozen=True)
class Plan:
    """An immutable DAG of stages in topological order.

    Plans compose by :meth:`merge`; stages with the same content name are the same
    stage, so shared sub-plans are computed once.
    """

    stages: tuple[Stage, ...] = ()

    def __post_init__(self) -> None:
        produced = {s.output.name for s in self.stages}
        seen: set[str] = set()
        for s in self.stages:
            for arr in [i.array for i in s.inputs] + list(s.param_arrays):
                if arr.name in produced and arr.name not in seen:
                    raise ValueError(f"stage {s.op} reads {arr.name} before it is produced")
            seen.add(s.output.name)

    def add(self, *stages: Stage) -> Plan:
        known = {s.name for s in self.stages}
        new = [s for s in stages if s.name not in known]
        return Plan(self.stages + tuple(new))

    def merge(self, *others: Plan) -> Plan:
        out = self
        for other in others:
            out = out.add(*other.stages)
        return out

    def producer(self) -> dict[str, Stage]:
        """Map from array name to the stage producing it."""
        return {s.output.name: s for s in self.stages}

    def sources(self) -> list[ArrayNode]:
        produced = self.producer()
        seen: dict[str, ArrayNode] = {}
        for s in self.stages:
            for i in s.inputs:
                if i.array.name not in produced:
                    seen.setdefault(i.array.name, i.array)
        return list(seen.values())

    def stage_deps(self, stage: Stage) -> list[Stage]:
        produced = self.producer()
        names = [i.array.name for i in stage.inputs] + [p.name for p in stage.param_arrays]
        out: dict[str, Stage] = {}
        for n in names:
            if n in produced:
                out[produced[n].name] = produced[n]
        return list(out.values())

    def with_kernel(self, stage_name: str, wrap: Callable[[Kernel], Kernel]) -> Plan:
        """A copy whose stage ``stage_name`` runs ``wrap(kernel)`` (fault injection, tracing)."""
        from dataclasses import replace

        return Plan(tuple(replace(s, kernel=wrap(s.kernel)) if s.name == stage_name else s
                          for s in self.stages))
