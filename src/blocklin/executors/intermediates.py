"""The lifecycle of a compute's intermediate arrays in the work directory.

Before it reads a completion record, a compute takes a lease
(:class:`blocklin.storage.leases.Lease`) on the work-directory arrays its plan writes
or reads, so neither ``blocklin gc`` nor another compute removes them under it (and
waits while another live compute writes one of the arrays it writes: the same
content-named array is written by one compute at a time). Once
its results are sealed and the small ones read back, it removes the arrays it
produced (those no other live lease names: plans share arrays by content name),
except:

- matrix results computed without ``out=``: the caller gets a BlockMatrix that lives
  there (give ``out=`` to write it elsewhere);
- everything, when asked: ``keep_intermediates=True``, or inside an
  :func:`intermediates_scope` that keeps (a pipeline's ``--keep-intermediates``).

A compute that fails or is interrupted keeps them all, so ``resume=True`` reuses its
finished blocks. Nothing a compute removes is needed to read its results.

Iterative algorithms run one compute per pass and may keep a pass's arrays for a
later one (e.g. a randomized SVD keeps its range finisher's tree for forming U).
Inside :func:`intermediates_scope`, what every compute left behind (kept arrays,
matrix results without ``out=``) is removed when the block ends without an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType

from blocklin.plan.finalize import FinalPlan
from blocklin.plan.graph import ArrayNode
from blocklin.storage.leases import Lease, remove_unused
from blocklin.storage.locations import location

__all__ = ["ComputeIntermediates", "IntermediatesScope", "intermediates_scope", "work_entries"]


@dataclass
class IntermediatesScope:
    """Arrays computes inside the scope left in work directories (``work_dir -> names``)."""

    keep: bool = False
    left: dict[str, set[str]] = field(default_factory=dict)

    def add(self, work_dir: str, names: set[str]) -> None:
        if names:
            self.left.setdefault(work_dir, set()).update(names)


_SCOPE: ContextVar[IntermediatesScope | None] = ContextVar("blocklin_intermediates_scope",
                                                           default=None)


@contextmanager
def intermediates_scope(keep: bool = False) -> Iterator[IntermediatesScope]:
    """Remove what the computes inside leave in their work directories, at the end.

    Parameters
    ----------
    keep : bool
        Keep everything instead (computes inside keep their intermediates too). An
        enclosing scope that keeps makes this one keep.

    Notes
    -----
    When the block raises, nothing is removed: a resumed run reuses the arrays. An
    enclosing scope inherits what was left, and removes it if it ends without error.
    Entries a live lease names (another compute using them) are never removed.
    """
    parent = _SCOPE.get()
    scope = IntermediatesScope(keep=keep or (parent is not None and parent.keep))
    token = _SCOPE.set(scope)
    try:
        yield scope
    except BaseException:
        _SCOPE.reset(token)
        _hand_up(parent, scope)
        raise
    _SCOPE.reset(token)
    if scope.keep:
        _hand_up(parent, scope)
        return
    for work_dir, names in scope.left.items():
        remove_unused(work_dir, names)


def _hand_up(parent: IntermediatesScope | None, scope: IntermediatesScope) -> None:
    if parent is not None:
        for work_dir, names in scope.left.items():
            parent.add(work_dir, names)


def _entry(work: tuple[str, tuple[str, ...]], url: str) -> str | None:
    """The top-level work-directory entry holding ``url``, if it lies inside it."""
    loc = location(url)
    proto, parts = work
    if loc.protocol != proto or len(loc.parts) <= len(parts) or loc.parts[:len(parts)] != parts:
        return None
    return loc.parts[len(parts)]


def work_entries(final: FinalPlan, work_dir: str) -> tuple[list[str], list[str]]:
    """The work-directory entries a plan writes (its intermediates, in stage order)
    and the ones it only reads (results earlier computes left there)."""
    produced: list[str] = []
    read: set[str] = set()
    w = location(work_dir)
    work = (w.protocol, w.parts)
    for g in final.groups:
        for stage in g.members:
            if stage.output.out_url is None:
                produced.append(stage.output.name)
            for node in [i.array for i in stage.inputs] + list(stage.param_arrays):
                if node.url is not None:
                    name = _entry(work, node.url)
                    if name is not None:
                        read.add(name)
    return produced, sorted(read - set(produced))


class ComputeIntermediates:
    """Held by one compute for its run: the lease, then the removal (see the module docs).

    Parameters
    ----------
    final : FinalPlan
        The plan about to run.
    results : sequence of (ArrayNode, kind)
        The arrays the compute returns and their kind (``"small"`` or ``"matrix"``).
    work_dir : str
        The compute's work directory.
    keep : bool or None
        Keep every intermediate; None: as the enclosing scope says (else False).
    """

    def __init__(self, final: FinalPlan, results: Sequence[tuple[ArrayNode, str]],
                 work_dir: str, keep: bool | None = None) -> None:
        self.work_dir = work_dir
        self.scope = _SCOPE.get()
        self.keep = keep if keep is not None else (self.scope is not None and self.scope.keep)
        self.produced, read = work_entries(final, work_dir)
        #: Matrix results living in the work directory: the caller holds them.
        self.results = {node.name for node, kind in results
                        if kind == "matrix" and node.out_url is None and node.url is None}
        self.lease = Lease(work_dir, read, command="compute", writes=self.produced)
        self.sealed = False
        self.removed: list[str] = []

    def done(self) -> None:
        """The results are sealed and read: the intermediates may go."""
        self.sealed = True

    def __enter__(self) -> ComputeIntermediates:
        self.lease.acquire()
        return self

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None or not self.sealed:
            self.lease.release()  # kept for resume=True
            return
        produced = set(self.produced)
        drop = set() if self.keep else produced - self.results
        if self.scope is not None:
            self.scope.add(self.work_dir, produced - drop)
        self.removed = self.lease.release(remove=[n for n in self.produced if n in drop])
