"""Swivel: embeddings from a sharded fit of the PMI of co-occurrence counts.

Shazeer, Doherty, Evans & Waterson, "Swivel: Improving embeddings by noticing what's
missing", arXiv:1602.02215 (2016). With counts ``x_ij``, row and column sums ``r_i``,
``c_j`` and total D, row embeddings ``w_i`` and column embeddings ``c̃_j`` minimize

``Σ_{x_ij > 0} ½·f(x_ij)·(w_iᵀc̃_j − pmi_ij)²  +  Σ_{x_ij = 0} log(1 + exp(w_iᵀc̃_j − pmi*_ij))``

with ``pmi_ij = log(x_ij·D / (r_i·c_j))``, the confidence ``f(x) = b₀ + b₁·x^γ`` (the
paper's 0.1 + 0.25·√x) and ``pmi*_ij = log(D / (r_i·c_j))``, the PMI the pair would
have had it been seen once: the soft hinge only pushes an unobserved pair's estimate
below that bound (``unobserved="ignore"`` drops the term, fitting observed cells only,
as GloVe does).

The n × n matrix is cut into k × k shards of ``s`` rows × ``s`` columns (C's row
blocks). An epoch is k rounds; in round t, task r takes shard ``(r, (r + t) mod k)``:
the k tasks of a round touch disjoint row and column shards, so they run in parallel
without conflicting updates (the synchronous, stratified form of the paper's
asynchronous shard workers). A task makes ``steps_per_shard`` Adagrad steps (the
paper: one per visit) on the shard's full gradient and writes its row shard's and
column shard's embeddings and Adagrad accumulators as one block. Between rounds the
state lives in zarr (a ``k·s × 4d`` array per round): nothing of size n travels
through the scheduler.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from blocklin.errors import InputValueError
from blocklin.executors.lazy import Lazy
from blocklin.executors.options import OptionsLike, eager_options
from blocklin.executors.progress import operation
from blocklin.executors.progress import step as step_label
from blocklin.ops.inputs import MatrixInput, as_matrix, hstack_panel, row_panel_tasks
from blocklin.plan.graph import Plan, StageInput, Task, TaskContext, make_stage
from blocklin.plan.reduce import SumParts, tree_reduce
from blocklin.storage.blockmatrix import BlockMatrix, from_array, open_matrix
from blocklin.storage.stores import store_for

__all__ = ["SwivelResult", "SwivelUnobserved", "swivel", "swivel_loss"]

#: Swivel's treatment of pairs never seen: ``hinge`` (the paper's soft hinge against
#: the count-1 PMI bound) or ``ignore`` (no loss term: observed cells only).
SwivelUnobserved = Literal["hinge", "ignore"]

_ACC0 = 0.1  # Adagrad's initial accumulator (TensorFlow's, which Swivel used)


@dataclass(frozen=True)
class SwivelResult:
    """Row and column embeddings (n × d each) of a Swivel fit."""

    row_embeddings: np.ndarray
    col_embeddings: np.ndarray

    @property
    def embeddings(self) -> np.ndarray:
        """Row plus column embedding, the vectors Swivel's evaluation uses."""
        out: np.ndarray = self.row_embeddings + self.col_embeddings
        return out


def _pmi_terms(x: np.ndarray, rs: np.ndarray, cs: np.ndarray,
               total: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(observed mask, live mask, pmi on observed cells, pmi* bound) of a dense shard."""
    live = (rs > 0)[:, None] & (cs > 0)[None, :]
    with np.errstate(divide="ignore"):
        bound = np.log(total) - np.log(rs)[:, None] - np.log(cs)[None, :]
        bound = np.where(live, bound, 0.0)
        obs = (x > 0) & live
        pmi = np.where(obs, np.log(np.where(obs, x, 1.0)) + bound, 0.0)
    return obs, live, pmi, bound


def _grad(x: np.ndarray, pred: np.ndarray, obs: np.ndarray, live: np.ndarray, pmi: np.ndarray,
          bound: np.ndarray, conf: tuple[float, float, float],
          unobserved: SwivelUnobserved) -> np.ndarray:
    f = conf[0] + conf[1] * np.where(obs, x, 0.0) ** conf[2]
    g = np.where(obs, f * (pred - pmi), 0.0)
    if unobserved == "hinge":
        g += np.where(live & ~obs, expit(pred - bound), 0.0)
    return g


def swivel_loss(counts: Any, row_embeddings: np.ndarray, col_embeddings: np.ndarray, *,
                unobserved: SwivelUnobserved = "hinge",
                confidence: tuple[float, float, float] = (0.1, 0.25, 0.5)) -> float:
    """Swivel's objective (module docstring) of embeddings on in-memory counts.

    For evaluation on matrices that fit in memory densely (n × n floats).
    """
    x = counts.toarray() if sp.issparse(counts) else np.asarray(counts, dtype=np.float64)
    rs, cs = x.sum(axis=1), x.sum(axis=0)
    obs, live, pmi, bound = _pmi_terms(x, rs, cs, float(x.sum()))
    pred = np.asarray(row_embeddings) @ np.asarray(col_embeddings).T
    f = confidence[0] + confidence[1] * np.where(obs, x, 0.0) ** confidence[2]
    loss = float(np.sum(np.where(obs, 0.5 * f * (pred - pmi) ** 2, 0.0)))
    if unobserved == "hinge":
        loss += float(np.sum(np.where(live & ~obs, np.logaddexp(0.0, pred - bound), 0.0)))
    return loss


@dataclass(frozen=True)
class _Layout:
    n: int
    s: int
    k: int
    d: int

    def size(self, shard: int) -> int:
        return min(self.s, self.n - shard * self.s)


@dataclass(frozen=True)
class InitState:
    """Round −1's state block r: row shard r's and column shard (r − 1) mod k's
    embeddings drawn N(0, scale²) from Philox streams keyed by (seed, side, shard)."""

    lay: _Layout
    seed: int
    scale: float

    def _draw(self, side: int, shard: int) -> np.ndarray:
        ss = np.random.SeedSequence(entropy=self.seed, spawn_key=(0x5717E1, side, shard))
        rng = np.random.Generator(np.random.Philox(ss))
        return rng.standard_normal((self.lay.size(shard), self.lay.d)) * self.scale

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        lay = self.lay
        r = ctx.task.out[0]
        c = (r - 1) % lay.k
        out = np.zeros((lay.s, 4 * lay.d))
        out[: lay.size(r), : lay.d] = self._draw(0, r)
        out[: lay.size(c), lay.d: 2 * lay.d] = self._draw(1, c)
        out[:, 2 * lay.d:] = _ACC0
        return out


@dataclass(frozen=True)
class ShardStep:
    """Round t's task r: Adagrad steps on shard (r, (r + t) mod k). Reads C's row block
    r, the margins (row 0 row sums, row 1 column sums), and the previous round's
    blocks r (row shard r) and (r + 1) mod k (column shard (r + t) mod k)."""

    lay: _Layout
    t: int
    lr: float
    steps: int
    unobserved: SwivelUnobserved
    conf: tuple[float, float, float]
    ncol: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        lay, d = self.lay, self.lay.d
        r = ctx.task.out[0]
        c = (r + self.t) % lay.k
        sr, sc = lay.size(r), lay.size(c)
        cblock = hstack_panel(blocks[: self.ncol])
        margins = np.asarray(blocks[self.ncol])
        own, nxt = np.asarray(blocks[self.ncol + 1]), np.asarray(blocks[self.ncol + 2])
        cols = slice(c * lay.s, c * lay.s + sc)
        x = cblock[:, cols].toarray() if sp.issparse(cblock) else np.asarray(cblock)[:, cols]
        x = np.asarray(x, dtype=np.float64)
        rs = margins[0, r * lay.s: r * lay.s + sr]
        cs = margins[1, cols]
        obs, live, pmi, bound = _pmi_terms(x, rs, cs, float(margins[0].sum()))
        w, wacc = own[:sr, :d].copy(), own[:sr, 2 * d: 3 * d].copy()
        v, vacc = nxt[:sc, d: 2 * d].copy(), nxt[:sc, 3 * d:].copy()
        for _ in range(self.steps):
            g = _grad(x, w @ v.T, obs, live, pmi, bound, self.conf, self.unobserved)
            gw, gv = g @ v, g.T @ w
            wacc += gw * gw
            vacc += gv * gv
            w -= self.lr * gw / np.sqrt(wacc)
            v -= self.lr * gv / np.sqrt(vacc)
        out = np.zeros((lay.s, 4 * d))
        out[:sr, :d], out[:sc, d: 2 * d] = w, v
        out[:, 2 * d:] = _ACC0
        out[:sr, 2 * d: 3 * d], out[:sc, 3 * d:] = wacc, vacc
        return out


@dataclass(frozen=True)
class MarginPart:
    """Row and column sums of one row block of C, as a (1, 2, n) part."""

    ncol: int

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        b = hstack_panel(blocks)
        start, stop = ctx.row_range(0, ctx.task.reads[0][1])
        n = ctx.output.shape[2]
        out = np.zeros((1, 2, n))
        out[0, 0, start:stop] = np.asarray(b.sum(axis=1)).ravel()
        out[0, 1] = np.asarray(b.sum(axis=0)).ravel()
        return out


def _margins(m: MatrixInput) -> Lazy:
    n = m.shape[1]
    stage = make_stage("swivel/margins", MarginPart(m.grid[1]), [m.input], row_panel_tasks([m]),
                       shape=(m.grid[0], 2, n), chunks=(1, 2, n), dtype="float64",
                       extra_memory=16 * n, keeps_sparse=True)
    plan, out = tree_reduce(m.plan.add(stage), stage.output, SumParts(), op="swivel/margins")
    return Lazy(plan, out, "small", lambda p: p[0], label="swivel.margins")


def _epoch(m: MatrixInput, margins: MatrixInput, prev: MatrixInput | None, lay: _Layout,
           epoch: int, step: dict[str, Any], out_url: str) -> Lazy:
    """One epoch's k rounds as one plan; round −1 (the initial state) when ``prev`` is
    None. Its last round is written to ``out_url``."""
    plan = m.plan
    s, d, k = lay.s, lay.d, lay.k
    shard_bytes = 8 * s * s * 8 + 4 * 8 * s * 4 * d  # x, pmi, bound, f, pred, g... + states
    state = prev.input if prev is not None else None
    if state is None:
        init = make_stage("swivel/init", InitState(lay, step["seed"], step["init_scale"]),
                          [margins.input], [Task((r, 0), ((0, (0, 0)),)) for r in range(k)],
                          shape=(k * s, 4 * d), chunks=(s, 4 * d), dtype="float64",
                          params={"seed": step["seed"], "d": d, "s": s},
                          extra_memory=16 * s * d)
        plan = plan.add(init)
        state = StageInput(init.output)
    ncol = m.grid[1]
    for t in range(k):
        tasks = [Task((r, 0), (*((0, (r, j)) for j in range(ncol)), (1, (0, 0)),
                               (2, (r, 0)), (2, ((r + 1) % k, 0)))) for r in range(k)]
        kernel = ShardStep(lay, t, step["lr"], step["steps"], step["unobserved"],
                           step["conf"], ncol)
        last = t == k - 1
        st = make_stage(f"swivel/round{t}", kernel, [m.input, margins.input, state], tasks,
                        shape=(k * s, 4 * d), chunks=(s, 4 * d), dtype="float64",
                        params={"epoch": epoch, "round": t,
                                **{a: b for a, b in step.items() if a != "conf"},
                                "conf": list(step["conf"])},
                        extra_memory=shard_bytes, out_url=out_url if last else None,
                        keeps_sparse=True)
        plan = plan.add(st)
        state = StageInput(st.output)
    return Lazy(Plan().merge(plan, margins.plan), state.array, "matrix", label="swivel.epoch")


def swivel(C: Any, d: int, *, epochs: int = 20, learning_rate: float = 0.05,
           steps_per_shard: int = 1, unobserved: SwivelUnobserved = "hinge",
           confidence: tuple[float, float, float] = (0.1, 0.25, 0.5),
           init_scale: float = 0.1, seed: int = 0,
           checkpoint_dir: str | os.PathLike[str] | None = None,
           compute_options: OptionsLike = None, **options: Any) -> SwivelResult:
    """Row and column embeddings of co-occurrence counts by Swivel's sharded fit.

    Parameters
    ----------
    C : BlockMatrix or path
        Stored n × n co-occurrence counts (as :func:`~blocklin.ops.cooccurrence`
        writes), dense or CSR. Its row blocks are the shards: ``s = C.chunks[0]`` rows
        and columns per shard, ``k = ⌈n / s⌉`` shards each way.
    d : int
        Embedding dimension.
    epochs : int
        Passes over all k² shards (each epoch is k rounds of k parallel tasks).
    learning_rate : float
        Adagrad's step size.
    steps_per_shard : int
        Adagrad steps per shard visit (1: the paper's one minibatch step per shard).
    unobserved : {"hinge", "ignore"}
        ``hinge``: Swivel's soft hinge on pairs never seen (their estimated PMI is
        pushed below ``pmi*``, the PMI of a single observation); ``ignore``: no term.
    confidence : (b0, b1, gamma)
        ``f(x) = b0 + b1·x^gamma`` weighting the squared error of observed cells.
    init_scale : float
        Standard deviation of the initial embeddings.
    seed : int
        Seeds the initial embeddings (Philox streams keyed by seed, side and shard):
        the same seed gives the same embeddings on every executor.
    checkpoint_dir : path, optional
        Where the margins and the state between epochs are kept (default: a scratch
        folder in the work directory, removed afterwards).
    compute_options : ComputeOptions or dict, optional
        How and where the passes run (executor, cluster, work directory, ...).
    **options
        Fields of ComputeOptions replacing those of ``compute_options``.

    Returns
    -------
    SwivelResult
        ``row_embeddings`` and ``col_embeddings`` (n × d); ``embeddings`` their sum.

    Raises
    ------
    InputValueError
        C not square, or a bad parameter (before any compute).

    Notes
    -----
    One pass over C for the margins, then per epoch one graph of k rounds, each
    reading every row block of C once (each task one row block; column shards are
    its column slices): k reads of C per epoch, served from the block cache
    (``cache_bytes="auto"`` unless set) when C's blocks fit in it.

    Memory per task: the shard, densely, ``s × s`` cells (about eight arrays of
    them: counts, PMI, bound, confidence, prediction, gradient), plus C's row block
    and two state blocks of ``s × 4d``. No task holds anything n × n, so n is bounded
    only by the 2 × n margins every task reads. Shards are contiguous id ranges (the
    paper deals items to shards by frequency rank; ids ordered by frequency give the
    same balance). Results are deterministic for a seed: every task's arithmetic is
    fixed and the rounds run in a fixed order.

    References
    ----------
    Shazeer et al., "Swivel: Improving embeddings by noticing what's missing",
    arXiv:1602.02215 (2016).
    """
    from blocklin.executors.api import compute

    M = C if isinstance(C, BlockMatrix) else open_matrix(C)
    n = M.shape[0]
    if M.shape[0] != M.shape[1]:
        raise InputValueError(f"swivel takes a square co-occurrence matrix; got {M.shape}")
    for name, v, lo in (("d", d, 1), ("epochs", epochs, 1), ("steps_per_shard",
                                                             steps_per_shard, 1)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise InputValueError(f"{name} must be an integer >= {lo}; got {v!r}")
    if not learning_rate > 0 or not init_scale > 0:
        raise InputValueError("learning_rate and init_scale must be positive")
    if unobserved not in ("hinge", "ignore"):
        raise InputValueError(f"unobserved must be 'hinge' or 'ignore'; got {unobserved!r}")
    if len(confidence) != 3 or confidence[0] < 0 or confidence[1] < 0:
        raise InputValueError(f"confidence must be (b0 >= 0, b1 >= 0, gamma); got {confidence}")
    lay = _Layout(n, M.chunks[0], -(-n // M.chunks[0]), int(d))
    step = {"lr": float(learning_rate), "steps": int(steps_per_shard), "unobserved": unobserved,
            "conf": tuple(float(c) for c in confidence), "seed": int(seed),
            "init_scale": float(init_scale)}
    m = as_matrix(M, "C")
    base, progress = eager_options(compute_options, options)
    with operation("swivel", progress), _folder(checkpoint_dir, base.work_dir) as ckpt:
        # The passes' intermediates go to a work directory inside the folder: the
        # epochs' states are outputs, which may not live in a work directory.
        opts = base.replace(work_dir=f"{ckpt}/work")
        # Every round reads each row block of C again: decoded once per process.
        opts = opts.updated(cache_bytes="auto")
        (marg,) = compute(_margins(m), compute_options=opts)
        margins = as_matrix(from_array(np.asarray(marg), f"{ckpt}/margins.zarr",
                                       chunks=(2, n), overwrite=True), "margins")
        prev: MatrixInput | None = None
        for e in range(int(epochs)):
            url = f"{ckpt}/epoch{e:05d}.zarr"
            with step_label(f"epoch {e + 1}/{epochs}"):
                (res,) = compute(_epoch(m, margins, prev, lay, e, step, url),
                                 compute_options=opts)
            if prev is not None:
                store_for(f"{ckpt}/epoch{e - 1:05d}.zarr").delete_prefix("")
            prev = as_matrix(res, "state")
        assert prev is not None
        state = open_matrix(prev.node.url or "").to_numpy()
    return _unpack(state, lay)


def _unpack(state: np.ndarray, lay: _Layout) -> SwivelResult:
    """Row shard r is in block r; column shard (r − 1) mod k too (after a whole epoch)."""
    rows = np.zeros((lay.n, lay.d))
    cols = np.zeros((lay.n, lay.d))
    for r in range(lay.k):
        block = state[r * lay.s:(r + 1) * lay.s]
        c = (r - 1) % lay.k
        rows[r * lay.s: r * lay.s + lay.size(r)] = block[: lay.size(r), : lay.d]
        cols[c * lay.s: c * lay.s + lay.size(c)] = block[: lay.size(c), lay.d: 2 * lay.d]
    return SwivelResult(rows, cols)


@contextmanager
def _folder(given: str | os.PathLike[str] | None, work_dir: str | None) -> Iterator[str]:
    """The checkpoint folder: the one given, or a scratch folder of the work directory
    (leased while the fit runs, removed after it)."""
    if given is not None:
        yield os.fspath(given).rstrip("/")
        return
    from blocklin.config import default_work_dir
    from blocklin.storage.leases import scratch_folder

    with scratch_folder(work_dir or default_work_dir(), "swivel-") as path:
        yield path
