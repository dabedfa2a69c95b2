"""Finalizing a plan: fusing stages that share a pass, projecting memory, explaining.

Stages whose tasks read exactly the same source blocks (``gram`` and
``column_stats`` of one matrix, say) are fused into one group: each group task reads
its blocks once and runs every member's kernel on them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from blocklin.errors import PlanMemoryError, format_bytes
from blocklin.plan.graph import ArrayNode, Plan, Stage
from blocklin.plan.memory import input_block_bytes, project_task_memory

__all__ = ["FinalPlan", "PlanReport", "StageGroup", "finalize"]


@dataclass(frozen=True)
class StageGroup:
    """Stages run together, task by task: same task count, same blocks read."""

    name: str
    members: tuple[Stage, ...]
    memory: int

    @property
    def ntasks(self) -> int:
        return len(self.members[0].tasks)

    @property
    def label(self) -> str:
        return " + ".join(m.op for m in self.members)


@dataclass(frozen=True)
class FinalPlan:
    """A plan ready to run: groups in topological order, checked against the memory limit."""

    plan: Plan
    groups: tuple[StageGroup, ...]
    max_task_memory: int

    def report(self, results: Sequence[ArrayNode] = ()) -> PlanReport:
        """What ``explain()`` shows; ``results`` are the arrays the compute returns."""
        return PlanReport.build(self, results)


@dataclass(frozen=True)
class PlanReport:
    """What ``explain()`` shows: stages, tasks, passes, projected memory, bytes moved,
    and what the run keeps in the work directory.

    ``intermediates`` and ``intermediate_bytes`` count the arrays the plan writes in
    the work directory that a successful compute removes (uncompressed chunk bytes: an
    upper bound); ``kept_bytes`` those that stay there, matrix results returned
    without ``out=``.
    """

    rows: tuple[tuple[str, int, int, int, int], ...]  # label, tasks, memory, read, written
    passes: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    max_task_memory: int = 0
    intermediates: int = 0
    intermediate_bytes: int = 0
    kept_bytes: int = 0

    @classmethod
    def build(cls, final: FinalPlan, results: Sequence[ArrayNode] = ()) -> PlanReport:
        reads: Counter[str] = Counter()
        nodes: dict[str, ArrayNode] = {}
        rows = []
        for g in final.groups:
            # Fused members read the same blocks (equal signatures): the first one's
            # reads are the group's, counted from its rule, never by listing tasks.
            first = g.members[0]
            read_bytes = 0
            for name, count in first.tasks.read_counts(first.input_names).items():
                node = next(i.array for i in first.inputs if i.array.name == name)
                nodes[name] = node
                reads[name] += count
                read_bytes += count * _stored_block_bytes(node)
            written = sum(m.output.chunk_nbytes * len(m.tasks) for m in g.members)
            rows.append((g.label, g.ntasks, g.memory, read_bytes, written))
        passes = {}
        labels = {}
        for name, count in reads.items():
            node = nodes[name]
            nblocks = 1
            for n in node.grid:
                nblocks *= n
            passes[name] = count / max(1, nblocks)
            labels[name] = node.url or node.out_url or f"(intermediate {name})"
        work = [m.output for g in final.groups for m in g.members if m.output.out_url is None]
        stays = {r.name for r in results if r.out_url is None and r.url is None
                 and len(r.shape) == 2}
        gone = [a for a in work if a.name not in stays]
        return cls(tuple(rows), passes, labels, final.max_task_memory, len(gone),
                   sum(_written_bytes(a) for a in gone),
                   sum(_written_bytes(a) for a in work if a.name in stays))

    def source_passes(self) -> dict[str, float]:
        """Passes over each stored input array (by URL)."""
        return {self.inputs[n]: p for n, p in self.passes.items() if not n.startswith("a-")}

    def __str__(self) -> str:
        width = max([len(r[0]) for r in self.rows] + [5])
        tw = max([len(str(r[1])) for r in self.rows] + [6])
        lines = [f"{'stage':<{width}}  {'tasks':>{tw}}  {'mem/task':>10}  {'read':>10}  "
                 f"{'written':>10}"]
        for label, ntasks, mem, rd, wr in self.rows:
            lines.append(f"{label:<{width}}  {ntasks:>{tw}}  {format_bytes(mem):>10}  "
                         f"{format_bytes(rd):>10}  {format_bytes(wr):>10}")
        lines.append(f"max_task_memory: {format_bytes(self.max_task_memory)}")
        lines.append("passes over inputs:")
        for url, p in self.source_passes().items():
            lines.append(f"  {url}: {p:g}")
        if self.intermediates:
            lines.append(f"work dir: {self.intermediates} intermediate arrays, up to "
                         f"{format_bytes(self.intermediate_bytes)}, removed once the compute "
                         "succeeds (kept after a failure, for resume=True; "
                         "keep_intermediates=True keeps them)")
        if self.kept_bytes:
            lines.append(f"work dir: the result ({format_bytes(self.kept_bytes)}) stays there "
                         "(give out= to write it elsewhere)")
        return "\n".join(lines)

    __repr__ = __str__


def _written_bytes(node: ArrayNode) -> int:
    """Bytes a produced array takes at most: every chunk, padded, uncompressed."""
    nblocks = 1
    for n in node.grid:
        nblocks *= n
    return nblocks * node.chunk_nbytes


def _stored_block_bytes(node: ArrayNode) -> int:
    """Bytes explain counts for reading one block of ``node``."""
    if node.block_nbytes is not None:  # CSR: what is stored
        return node.block_nbytes
    return input_block_bytes(node) if node.codec else node.chunk_nbytes


def finalize(plan: Plan, max_task_memory: int) -> FinalPlan:
    """Fuse stages sharing a pass, then refuse any group over ``max_task_memory``.

    Costs in proportion to the number of stages: signatures, reads and memory come
    from each stage's task rule (:class:`~blocklin.plan.graph.TaskSet`).

    Raises
    ------
    PlanMemoryError
        Naming the first stage whose projected per-task memory is over the limit.
    """
    groups: list[list[Stage]] = []
    group_of: dict[str, int] = {}
    signatures: list[Hashable] = []
    for stage in plan.stages:
        sig = stage.read_signature()
        deps = [group_of[d.name] for d in plan.stage_deps(stage)]
        target = None
        if len(stage.tasks) and stage.tasks.every_task_reads():
            for gi, gsig in enumerate(signatures):
                if gsig == sig and all(d < gi for d in deps):
                    target = gi
                    break
        if target is None:
            groups.append([stage])
            signatures.append(sig)
            target = len(groups) - 1
        else:
            groups[target].append(stage)
        group_of[stage.name] = target
    out = []
    for members in groups:
        mem = project_task_memory(members)
        if mem > max_task_memory:
            worst = max(members, key=lambda m: project_task_memory([m]))
            raise PlanMemoryError(
                worst.op, mem, max_task_memory,
                hint="store the input with smaller row blocks (bl.from_array(..., "
                     "chunks=(rows, None))) or raise max_task_memory")
        name = members[0].name if len(members) == 1 else "g-" + members[0].name[2:]
        out.append(StageGroup(name=name, members=tuple(members), memory=mem))
    return FinalPlan(plan=plan, groups=tuple(out), max_task_memory=max_task_memory)
