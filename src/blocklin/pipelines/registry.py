"""The operator registry: the only things a pipeline step can call.

Each :class:`Operator` declares its matrix arguments, a pydantic model of its
parameters (frozen, unknown keys refused), what its result is (``small``: a numpy
value; ``matrix``: a stored BlockMatrix; ``view``: a lazy transform other steps
read; ``eager``: an iterative algorithm that runs its own computes), how to turn the
result into named arrays, and, where the result can absorb appended rows, how to
merge a batch's result into the previous one (used by ``blocklin refresh``).

The matrix-product operators are registered below; those over blocklin's sketches,
SVD, TSQR and estimators in :mod:`blocklin.pipelines._library_ops`, loaded by plain
import on the first :func:`registry` call (a module that fails to import fails the
registry loudly).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from blocklin.executors.options import ComputeOptions

__all__ = ["BuildContext", "Operator", "Params", "UpdateContext", "operator_names", "register",
           "registry", "to_arrays"]

Kind = Literal["small", "matrix", "view", "eager"]
Arrays = dict[str, np.ndarray]


class Params(BaseModel):
    """Base of operator parameter models: frozen, strict, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


@dataclass(frozen=True)
class BuildContext:
    """What a step's builder may use besides its inputs and parameters.

    ``out`` is where a ``matrix`` result must be stored when it is a pipeline
    output; ``compute`` holds the run's compute options (built once from the spec
    and the command line) for ``eager`` operators.
    """

    out: str | None = None
    compute: ComputeOptions = field(default_factory=ComputeOptions)


Builder = Callable[[Mapping[str, Any], Any, BuildContext], Any]
Merger = Callable[[Arrays, Arrays], Arrays]
Extractor = Callable[[Any], Arrays]
#: ``persist(value, state_dir)``: keep what a later refresh needs beyond the outputs.
Persister = Callable[[Any, str], None]
#: ``check(inputs, params, ctx)``: a dry run's checks of an eager step, returning its
#: projected passes (a :class:`blocklin.pipelines.checks.StepPlan`).
Checker = Callable[[Mapping[str, Any], Any, BuildContext], Any]


@dataclass(frozen=True)
class UpdateContext:
    """What an eager operator's ``update`` gets for one appended batch.

    ``inputs`` are the step's whole inputs, every pending batch appended (an update
    that revisits old rows, such as ALS's warm start, reads their first
    ``rows[1]``); ``record`` takes facts the update adds to its step's run record
    (the manifest's ``step_runs``), such as iterations run.
    """

    previous: Arrays
    batch: Mapping[str, Any]
    rows: tuple[int, int]
    state_dir: str
    compute: ComputeOptions
    inputs: Mapping[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


Updater = Callable[[UpdateContext, Any], Arrays]


@dataclass(frozen=True)
class Operator:
    """A registered operator (see the module docstring)."""

    name: str
    summary: str
    inputs: tuple[str, ...]
    params: type[Params]
    kind: Kind
    build: Builder
    merge_rows: Merger | None = None
    fields: tuple[str, ...] = ()
    extract: Extractor | None = None
    persist: Persister | None = None
    update: Updater | None = None
    updatable: Callable[[Any], bool] | None = None
    check: Checker | None = None

    @property
    def incremental(self) -> bool:
        return self.merge_rows is not None or self.update is not None

    def can_update(self, params: Any) -> bool:
        """Whether results with these parameters absorb appended rows without a recompute."""
        return self.incremental and (self.updatable is None or self.updatable(params))

    def arrays(self, value: Any) -> Arrays:
        """The named arrays stored for a result of this operator."""
        return self.extract(value) if self.extract is not None else to_arrays(value, self.fields)


_REGISTRY: dict[str, Operator] = {}


def register(op: Operator) -> Operator:
    """Add an operator (a later registration of the same name replaces the earlier)."""
    _REGISTRY[op.name] = op
    return op


def registry() -> dict[str, Operator]:
    """All registered operators (the library's own are loaded on first use)."""
    _load_library()
    return dict(_REGISTRY)


def operator_names() -> list[str]:
    return sorted(registry())


# -- turning results into named arrays ---------------------------------------------------
def to_arrays(value: Any, names: tuple[str, ...] = ()) -> Arrays:
    """Named numpy arrays of a small result (array, dataclass, tuple, dict or estimator)."""
    if isinstance(value, np.ndarray | np.generic | int | float):
        return {"value": np.asarray(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        pairs = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {k: np.asarray(v) for k, v in pairs.items() if _arraylike(v)}
    if isinstance(value, tuple):
        keys = names if len(names) == len(value) else tuple(str(i) for i in range(len(value)))
        out: Arrays = {}
        for k, v in zip(keys, value, strict=True):
            if _arraylike(v):
                out[k] = np.asarray(v)
        return out
    if isinstance(value, Mapping):
        return {str(k): np.asarray(v) for k, v in value.items() if _arraylike(v)}
    # A fitted estimator: its learned attributes (scikit-learn's trailing underscore).
    learned = {k: v for k, v in vars(value).items() if k.endswith("_") and not k.startswith("_")}
    return {k.rstrip("_"): np.asarray(v) for k, v in learned.items() if _arraylike(v)}


def _arraylike(v: Any) -> bool:
    if isinstance(v, np.ndarray | np.generic | int | float | bool):
        return True
    return isinstance(v, list) and all(isinstance(x, int | float) for x in v)


# -- built-in operators ------------------------------------------------------------------
class NoParams(Params):
    pass


class StandardizeParams(Params):
    with_mean: bool = True
    with_std: bool = True
    ddof: int = Field(1, ge=0)


def _gram(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> Any:
    from blocklin.ops import gram

    return gram(inputs["A"])


def _column_stats(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> Any:
    from blocklin.ops import column_stats

    return column_stats(inputs["A"])


def _matmul(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> Any:
    from blocklin.ops import matmul

    return matmul(inputs["A"], inputs["B"], out=ctx.out)


def _crossprod(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> Any:
    from blocklin.errors import InputValueError
    from blocklin.ops import matmul
    from blocklin.storage import BlockMatrix

    a = inputs["A"]
    if not isinstance(a, BlockMatrix):
        raise InputValueError("crossprod reads A transposed, so A must be a stored input, not "
                              "a step result")
    return matmul(a.T, inputs["B"])


def _standardize(inputs: Mapping[str, Any], p: Any, ctx: BuildContext) -> Any:
    from blocklin.ops import standardize

    return standardize(inputs["A"], with_mean=p.with_mean, with_std=p.with_std, ddof=p.ddof)


def merge_sum(prev: Arrays, new: Arrays) -> Arrays:
    """Results additive over rows (AᵀA, AᵀB): add the batch's value."""
    return {k: prev[k] + new[k] for k in prev}


def merge_column_stats(prev: Arrays, new: Arrays) -> Arrays:
    """Merge two stored column summaries (see :meth:`blocklin.ops.ColumnStats.merge`)."""
    from blocklin.ops import ColumnStats

    def unpack(a: Arrays) -> ColumnStats:
        return ColumnStats(count=int(a["count"]), mean=a["mean"], variance=a["variance"],
                           min=a["min"], max=a["max"], norm_l1=a["norm_l1"],
                           norm_l2=a["norm_l2"], num_nonzeros=a["num_nonzeros"])

    return to_arrays(unpack(prev).merge(unpack(new)))


register(Operator("gram", "AᵀA (one pass; refresh adds the new rows' AᵀA)", ("A",), NoParams,
                  "small", _gram, merge_rows=merge_sum))
register(Operator("column_stats", "count, mean, variance, min, max, norms, nonzeros per column",
                  ("A",), NoParams, "small", _column_stats, merge_rows=merge_column_stats))
register(Operator("matmul", "A @ B, stored as a BlockMatrix", ("A", "B"), NoParams, "matrix",
                  _matmul))
register(Operator("crossprod", "AᵀB of row-aligned stored A and B (refresh adds new rows)",
                  ("A", "B"), NoParams, "small", _crossprod, merge_rows=merge_sum))
register(Operator("standardize", "lazy (A - mean) / std view read by later steps", ("A",),
                  StandardizeParams, "view", _standardize))


# -- the library's sketch, SVD and estimator operators ------------------------------------
_LOADED = False


def _load_library() -> None:
    global _LOADED
    if _LOADED:
        return
    # Imported here, not at the top: that module imports this one (Operator, Params),
    # and loads the estimators (scikit-learn), which most imports of this module never use.
    from blocklin.pipelines import _cooccurrence_ops, _library_ops

    for op in _library_ops.library_operators():
        register(op)
    for op in _cooccurrence_ops.cooccurrence_operators():
        register(op)
    _LOADED = True
