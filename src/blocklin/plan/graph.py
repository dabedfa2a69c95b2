"""The task-graph IR: arrays, stages of block tasks, and immutable plans.

See ``DESIGN.md`` beside this file for block keys, completion records and resume.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, overload

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
    "RowPanelTasks",
    "Stage",
    "StageInput",
    "Task",
    "TaskContext",
    "TaskList",
    "TaskSet",
    "TreeTasks",
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


class TaskSet(Sequence[Task]):
    """The tasks of a stage, one per output block, in output order.

    Subclasses describe their tasks by rule and build each :class:`Task` only when it
    is asked for, so a plan of a million blocks holds a few objects per stage; what
    planning needs (fusion signatures, blocks read, the task writing a block) is
    computed from the rule. Enumerated tasks are the same whatever the subclass.
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def task(self, pos: int) -> Task:
        """Task ``pos`` (``0 <= pos < len(self)``)."""
        raise NotImplementedError

    def position(self, out: BlockIndex) -> int | None:
        """The position of the task writing block ``out``; None when no task does."""
        raise NotImplementedError

    def out(self, pos: int) -> BlockIndex:
        """The output block of task ``pos``."""
        return self.task(pos).out

    def signature(self, names: Sequence[str]) -> Hashable:
        """Per task, the set of ``(array name, block)`` it reads (``names[p]`` names
        input ``p``), in a canonical form: equal signatures mean equal read sets."""
        return _canonical([frozenset((names[p], b) for p, b in t.reads) for t in self])

    def read_counts(self, names: Sequence[str]) -> dict[str, int]:
        """Distinct blocks read over all tasks, by array name."""
        seen: dict[str, set[BlockIndex]] = {}
        for t in self:
            for p, b in t.reads:
                seen.setdefault(names[p], set()).add(b)
        return {n: len(bs) for n, bs in seen.items()}

    def every_task_reads(self) -> bool:
        """Whether every task reads at least one block."""
        return all(t.reads for t in self)

    def outs(self) -> Iterator[BlockIndex]:
        return (self.out(p) for p in range(len(self)))

    @overload
    def __getitem__(self, pos: int) -> Task: ...

    @overload
    def __getitem__(self, pos: slice) -> Sequence[Task]: ...

    def __getitem__(self, pos: int | slice) -> Task | Sequence[Task]:
        if isinstance(pos, slice):
            return [self.task(p) for p in range(len(self))[pos]]
        n = len(self)
        if not -n <= pos < n:
            raise IndexError(f"task {pos} of a stage of {n} tasks")
        return self.task(pos % n)

    def __iter__(self) -> Iterator[Task]:
        return (self.task(p) for p in range(len(self)))


def _canonical(per_task: list[frozenset[tuple[str, BlockIndex]]]) -> Hashable:
    """A signature in :class:`RowPanelTasks`' form when the reads follow its rule
    (task i reads column blocks 0..n-1 of row block i of some arrays), else as given."""
    first = per_task[0] if per_task else frozenset()
    panels: dict[str, int] = {}
    for name, b in first:
        if len(b) != 2 or b[0] != 0:
            return tuple(per_task)
        panels[name] = max(panels.get(name, 0), b[1] + 1)
    if not first or len(first) != sum(panels.values()):
        return tuple(per_task)
    shape = frozenset(panels.items())
    for i, reads in enumerate(per_task):
        if reads != frozenset((n, (i, j)) for n, c in panels.items() for j in range(c)):
            return tuple(per_task)
    return ("row-panels", len(per_task), shape)


@dataclass(frozen=True, eq=True)
class TaskList(TaskSet):
    """Tasks given one by one (stages of a few tasks, or no regular rule)."""

    tasks: tuple[Task, ...] = ()

    def __len__(self) -> int:
        return len(self.tasks)

    def task(self, pos: int) -> Task:
        return self.tasks[pos]

    @cached_property
    def _positions(self) -> dict[BlockIndex, int]:
        return {t.out: p for p, t in enumerate(self.tasks)}

    def position(self, out: BlockIndex) -> int | None:
        return self._positions.get(tuple(out))


@dataclass(frozen=True, eq=True)
class RowPanelTasks(TaskSet):
    """Task ``i`` reads row block ``i`` of some inputs, every column block of each in
    order, and writes block ``(i, 0, ...)`` of an output of ``out_ndim`` dimensions.

    ``panels`` lists ``(input position, column blocks)`` in read order; a width of
    1 reads the input's single column block.
    """

    nrows: int
    panels: tuple[tuple[int, int], ...]
    out_ndim: int = 3

    def __len__(self) -> int:
        return self.nrows

    def task(self, pos: int) -> Task:
        return Task(out=self.out(pos),
                    reads=tuple((p, (pos, j)) for p, n in self.panels for j in range(n)))

    def out(self, pos: int) -> BlockIndex:
        return (pos,) + (0,) * (self.out_ndim - 1)

    def position(self, out: BlockIndex) -> int | None:
        ok = (len(out) == self.out_ndim and 0 <= out[0] < self.nrows
              and not any(out[1:]))
        return int(out[0]) if ok else None

    def signature(self, names: Sequence[str]) -> Hashable:
        if not self.nrows or not any(n for _, n in self.panels):
            return super().signature(names)
        return ("row-panels", self.nrows, frozenset(self._widths(names).items()))

    def _widths(self, names: Sequence[str]) -> dict[str, int]:
        """Column blocks read of each array (an array read twice counts once)."""
        widths: dict[str, int] = {}
        for p, n in self.panels:
            if n:
                widths[names[p]] = max(widths.get(names[p], 0), n)
        return widths

    def read_counts(self, names: Sequence[str]) -> dict[str, int]:
        if not self.nrows:
            return {}
        return {name: self.nrows * n for name, n in self._widths(names).items()}

    def every_task_reads(self) -> bool:
        return any(n for _, n in self.panels)


@dataclass(frozen=True, eq=True)
class TreeTasks(TaskSet):
    """One level of a fixed fan-in tree over the parts of input 0: task ``j`` reads
    parts ``j·fan_in`` up to ``(j+1)·fan_in`` (fewer for the last), in order, and
    writes part ``j`` (indices padded with ``ndim - 1`` zeros)."""

    nparts: int
    fan_in: int
    ndim: int

    def __len__(self) -> int:
        return -(-self.nparts // self.fan_in)

    def task(self, pos: int) -> Task:
        rest = (0,) * (self.ndim - 1)
        hi = min(self.nparts, (pos + 1) * self.fan_in)
        return Task(out=(pos, *rest),
                    reads=tuple((0, (k, *rest)) for k in range(pos * self.fan_in, hi)))

    def out(self, pos: int) -> BlockIndex:
        return (pos,) + (0,) * (self.ndim - 1)

    def position(self, out: BlockIndex) -> int | None:
        ok = len(out) == self.ndim and 0 <= out[0] < len(self) and not any(out[1:])
        return int(out[0]) if ok else None

    def signature(self, names: Sequence[str]) -> Hashable:
        return ("tree", self.nparts, self.fan_in, self.ndim, names[0])

    def read_counts(self, names: Sequence[str]) -> dict[str, int]:
        return {names[0]: self.nparts} if self.nparts else {}

    def every_task_reads(self) -> bool:
        return True


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
    tasks: TaskSet
    extra_memory: int = 0
    params: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    keeps_sparse: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.tasks, TaskSet):  # tasks given one by one
            object.__setattr__(self, "tasks", TaskList(tuple(self.tasks)))

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.array.name for i in self.inputs)

    def read_signature(self) -> Hashable:
        """Per task, the source blocks it reads (transforms ignored): equal signatures
        fuse. Computed from the stage's rule, not by listing its tasks."""
        return self.tasks.signature(self.input_names)

    @property
    def param_arrays(self) -> tuple[ArrayNode, ...]:
        return tuple(i.transform.params for i in self.inputs if i.transform is not None)


def make_stage(op: str, kernel: Kernel, inputs: Sequence[StageInput],
               tasks: TaskSet | Iterable[Task],
               *, shape: Shape, chunks: Shape, dtype: Any, params: Mapping[str, Any] | None = None,
               extra_memory: int = 0, out_url: str | None = None,
               codec: ChunkCodec | None = None, keeps_sparse: bool = False) -> Stage:
    """Build a stage whose name and output name derive from its content.

    ``tasks`` is a :class:`TaskSet` (a rule, for stages of one task per row block) or
    the tasks one by one.
    """
    params = dict(params or {})
    dt = np.dtype(dtype).name
    name = content_name("s", op, params, [i.token for i in inputs], list(shape), list(chunks), dt)
    output = ArrayNode(name=name.replace("s-", "a-", 1), shape=tuple(shape), chunks=tuple(chunks),
                       dtype=dt, codec=codec or ChunkCodec(), out_url=out_url)
    return Stage(name=name, op=op, kernel=kernel, inputs=tuple(inputs), output=output,
                 tasks=tasks if isinstance(tasks, TaskSet) else TaskList(tuple(tasks)),
                 extra_memory=extra_memory, params=params,
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
