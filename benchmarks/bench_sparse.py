"""Row updates of a truncated SVD on sparse data: blocklin against IncSVD (Deng et al.).

Two seeded CSR matrices are generated in memory: a Zipf term-document matrix
(default 55,000 × 20,000 at density 1e-3: documents of about 20 terms whose columns
are drawn with popularity ``P(j) ∝ (j+1)^-1``, values the term counts) and a wider
one (``--big-rows`` × 50,000 at 1e-4, same construction: 1,000,000 rows by default,
about 5 minutes on the 2-core box with ``--peer-budget 120``; ``--big-rows 0`` skips
it, ``--rows 0`` the first). The last
``--append`` rows (5,000) are appended in batches of b rows (10, 50, 500, 5,000) to
the exact rank-k SVD of the rows before them (``scipy.sparse.linalg.svds``, shared by
every contender), at most ``--max-updates`` batches per size.

Contenders, each timed per batch (one b-row update) in this process:

* ``blocklin``: :func:`blocklin.ops.svd_update` with ``method="sparse"`` called once
  on all the appended rows with ``batch=b`` (sub-batches of at most ``--sub-batch``
  rows for larger b). Per batch = the call's wall time (the zarr commit, the final
  V formation and the U basis write included) / number of batches.
* ``blocklin/call``: one ``svd_update`` call per batch, each durable: a log record
  (s, the small factors, V's changed base rows, the batch's U rows) per call, and a
  checkpoint (V formed, re-orthonormalized and stored, the logged U rows written as a
  basis) whenever V's delta passes its budget (n // 2 rows by default).
* ``IncSVD isvd1``: ``EvolvingMatrix(sparse=True, method="ZhaSimon")`` (Deng et al.'s
  exact sparse update) and ``IncSVD ZhaSimon``: ``sparse=False`` (the dense
  Zha–Simon update, the rows given dense, converted outside the timer). A run whose
  projected time passes ``--peer-budget`` seconds is stopped after its first three
  updates (its time per update is reported, without accuracy), or, when it is
  three updates or fewer, skipped
  (projection: the previous batch size's time per row scaled by b/b_prev: isvd1's
  Gram–Schmidt loop and Zha–Simon's n × b QR are quadratic in b per update).

Accuracy: the largest relative error of the top-10 and top-k updated singular values
against ``svds`` of all the rows absorbed (computed once per distinct row count).
The machine's BLAS threads apply to every contender alike (``--threads``, default 1:
on a shared 2-core box the small k × k products of all contenders run fastest
single-threaded).

With ``--columns``, two more tables on the first Zipf matrix instead (the row tables
are not run): its columns in a seeded random order (so the appended ones are a
sample of the vocabulary, not its rarest terms),

* *column appends*: the exact rank-k SVD of the first ``n − --append-cols`` columns
  (1,000 by default: 55,000 × 19,000), then the last columns appended in batches of
  b (10, 50, 500), one durable ``svd_update(columns=D, method="sparse")`` call per
  batch (``blocklin/call``: Deng et al.'s update, a log record per call) against
  the Householder path (``blocklin qr/call``: a plan over U's bases and a TSQR per
  call), IncSVD's ``add_column`` with isvd1 (Deng et al.) and dense Zha–Simon;
* *weight updates*: the rank-k SVD of the whole matrix, then ``--edits`` (1,000)
  documents edited, each gaining about 5 term counts drawn as the matrix's (``A[i] +=
  y_i``), b documents per low-rank update ``A + X·Yᵀ`` (X the b documents'
  indicator columns, Y their added counts): ``svd_update(low_rank=(X, Y),
  method="sparse")`` against IncSVD's ``update_weight`` (isvd1, Zha–Simon).

Errors as for rows: top-10 and top-k singular values against ``svds`` of the final
matrix.

    flock /tmp/blocklin-heavy.lock .venv/bin/python benchmarks/bench_sparse.py --columns

Also runs, when present, ``_sparse_regression.run_sparse_regression()`` and
``_sparse_sketch.run_sparse_sketch()`` (benchmarks written alongside) and prints
their dicts as tables.

    flock /tmp/blocklin-heavy.lock .venv/bin/python benchmarks/bench_sparse.py
    .venv/bin/python benchmarks/bench_sparse.py --quick
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
from threadpoolctl import threadpool_limits

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

Svd = tuple[np.ndarray, np.ndarray, np.ndarray]


# -- data ------------------------------------------------------------------------------------
def zipf_matrix(m: int, n: int, density: float, seed: int) -> sp.csr_matrix:
    """Term counts: m documents, column j drawn with probability ∝ 1/(j+1), ~density·m·n nonzeros."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n + 1)
    p /= p.sum()
    want = round(density * m * n)
    rows, cols = np.empty(0, np.int64), np.empty(0, np.int64)
    x = sp.csr_matrix((m, n))
    draw = want
    while x.nnz < want:  # repeated (row, term) pairs merge into counts: top up
        rows = np.concatenate([rows, rng.integers(0, m, draw)])
        cols = np.concatenate([cols, rng.choice(n, draw, p=p)])
        x = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(m, n))
        x.sum_duplicates()
        draw = max(int(1.2 * (want - x.nnz)), 1)
    return x


def top_svd(x: sp.csr_matrix, k: int) -> Svd:
    """Exact rank-k SVD (ARPACK to machine precision), values descending."""
    u, s, vt = sla.svds(x, k, tol=0, random_state=0)
    order = np.argsort(s)[::-1]
    return u[:, order], s[order], vt[order]


def errors(s: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    rel = np.abs(np.sort(s)[::-1] - ref) / ref
    return float(rel[:10].max()), float(rel.max())


# -- contenders --------------------------------------------------------------------------------
def blocklin_once(init: Svd, new: sp.csr_matrix, b: int, sub: int, tmp: Path) -> tuple[float, np.ndarray]:
    """One svd_update call over every batch; returns (seconds, s)."""
    from blocklin.ops import SVDState, svd_update

    u, s, vt = init
    state = SVDState.create(tmp / "once", u, s, vt, overwrite=True)
    t0 = time.perf_counter()
    state = svd_update(state, rows=new, method="sparse", batch=min(b, sub))
    return time.perf_counter() - t0, state.s


def blocklin_calls(init: Svd, new: sp.csr_matrix, b: int, sub: int, tmp: Path,
                   budget: float) -> tuple[float, int, np.ndarray | None]:
    """One svd_update call (and commit) per batch: (seconds, updates made, s or None
    when stopped by the budget)."""
    from blocklin.ops import SVDState, svd_update

    u, s, vt = init
    state = SVDState.create(tmp / "calls", u, s, vt, overwrite=True)
    nb = -(-new.shape[0] // b)
    spent = 0.0
    for i, a in enumerate(range(0, new.shape[0], b), 1):
        t0 = time.perf_counter()
        state = svd_update(state, rows=new[a:a + b], method="sparse", batch=min(b, sub))
        spent += time.perf_counter() - t0
        if 3 <= i < nb and spent / i * nb > budget:
            return spent, i, None
    return spent, nb, state.s


def _evolving(init: Svd, sparse: bool) -> Any:
    """IncSVD's EvolvingMatrix on the shared initial SVD (its constructor would rerun svds)."""
    from IncSVD.EvolvingMatrix import EvolvingMatrix

    u, s, vt = init
    k = s.size
    em = EvolvingMatrix.__new__(EvolvingMatrix)
    em._m, em._n = u.shape[0], vt.shape[1]
    em._sparse = sparse
    em._method_dict = {"ZhaSimon": 1, "GKL": 2, "RPI": 3}
    em._method = 1
    em._k_dim = k
    em._Uk, em._sigmak, em._Vk = u.copy(), s.copy(), np.ascontiguousarray(vt.T)
    em._Ku = np.eye(k) if sparse else None
    em._Kv = np.eye(k) if sparse else None
    em._inverted_index = [0] * max(em._m, em._n)
    return em


def incsvd(init: Svd, new: sp.csr_matrix, b: int, sparse: bool,
           budget: float) -> tuple[float, int, np.ndarray | None]:
    """IncSVD's updates, one per batch: as :func:`blocklin_calls`."""
    em = _evolving(init, sparse)
    batches = [new[a:a + b] for a in range(0, new.shape[0], b)]
    spent = 0.0
    for i, x in enumerate(batches, 1):
        if not sparse:
            x = np.asarray(x.toarray())  # Zha–Simon's input is dense (outside the timer)
        t0 = time.perf_counter()
        em.add_row(x)
        spent += time.perf_counter() - t0
        if 3 <= i < len(batches) and spent / i * len(batches) > budget:
            return spent, i, None
    return spent, len(batches), np.asarray(em.Sigmak)


def contender(who: str, init: Svd, new: sp.csr_matrix, b: int, sub: int, tmp: Path,
              budget: float) -> tuple[float, int, np.ndarray | None]:
    if who == "blocklin":
        seconds, s = blocklin_once(init, new, b, sub, tmp)
        return seconds, -(-new.shape[0] // b), s
    if who == "blocklin/call":
        return blocklin_calls(init, new, b, sub, tmp, budget)
    return incsvd(init, new, b, who == "IncSVD isvd1", budget)


# -- one matrix --------------------------------------------------------------------------------
def run_matrix(name: str, x: sp.csr_matrix, k: int, append: int, sizes: list[int], max_updates: int,
               sub: int, budget: float, peers: bool,
               peer_memory: float = 4e9) -> list[dict[str, Any]]:
    m = x.shape[0]
    m0 = m - append
    t0 = time.perf_counter()
    init = top_svd(x[:m0], k)
    print(f"{name}: {x.shape[0]:,} x {x.shape[1]:,}, {x.nnz:,} nonzeros; initial svds of "
          f"{m0:,} rows: {time.perf_counter() - t0:.1f} s", flush=True)
    refs: dict[int, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    last: dict[str, tuple[int, float]] = {}  # contender -> (b, seconds per row) for projections
    tmp = Path(tempfile.mkdtemp(prefix="bench-sparse-"))
    try:
        for b in sizes:
            nb = max(1, min(append // b, max_updates))
            p = nb * b
            if p > append:
                continue
            new = sp.csr_matrix(x[m0:m0 + p])
            if p not in refs:
                refs[p] = top_svd(x[:m0 + p], k)[1]
            runs = ["blocklin", "blocklin/call"]
            if peers:
                runs += ["IncSVD isvd1", "IncSVD ZhaSimon"]
            for who in runs:
                row: dict[str, Any] = {"matrix": name, "b": b, "updates": nb, "who": who}
                need = (m + b) * (k + b) * 8  # Zha–Simon's dense block_diag(U, I_b)
                if who == "IncSVD ZhaSimon" and need > peer_memory:
                    row["note"] = f"skipped: its dense (m+b) x (k+b) needs {need / 2**30:.1f} GiB"
                    rows.append(row)
                    print(_line(row), flush=True)
                    continue
                # A single update cannot be stopped midway: projected from the last size.
                if who in last and who.startswith("IncSVD") and nb <= 3:
                    b0, per_row = last[who]
                    projected = per_row * p * (b / b0)
                    if projected > budget:
                        row["note"] = f"skipped: projected {projected:.0f} s > {budget:.0f} s"
                        rows.append(row)
                        print(_line(row), flush=True)
                        continue
                seconds, done, s = contender(who, init, new, b, sub, tmp, budget)
                last[who] = (b, seconds / (done * b))
                row["per_update"] = seconds / done
                if s is None:
                    row["stopped"] = f"stopped after {done} updates ({seconds:.0f} s)"
                else:
                    row["err10"], row["errk"] = errors(s, refs[p])
                rows.append(row)
                print(_line(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _line(r: dict[str, Any]) -> str:
    head = f"  b={r['b']:>5} x{r['updates']:<4} {r['who']:<16}"
    if "note" in r:
        return f"{head} {r['note']}"
    if "stopped" in r:
        return f"{head} {r['per_update']:.4f} s/update  ({r['stopped']}: no accuracy)"
    return f"{head} {r['per_update']:.4f} s/update  top-10 err {r['err10']:.1e}  top-k err {r['errk']:.1e}"


def table(rows: list[dict[str, Any]], k: int) -> str:
    out = ["| matrix | b | updates | contender | s per update | top-10 rel. err | "
           f"top-{k} rel. err |", "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if "note" in r:
            out.append(f"| {r['matrix']} | {r['b']} | {r['updates']} | {r['who']} | {r['note']} | | |")
        elif "stopped" in r:
            out.append(f"| {r['matrix']} | {r['b']} | {r['updates']} | {r['who']} | "
                       f"{r['per_update']:.4f} ({r['stopped']}) | – | – |")
        else:
            out.append(f"| {r['matrix']} | {r['b']} | {r['updates']} | {r['who']} | "
                       f"{r['per_update']:.4f} | {r['err10']:.1e} | {r['errk']:.1e} |")
    return "\n".join(out)


# -- column appends and weight (low-rank) updates ------------------------------------------
def _em_update(em: Any, kind: str, x: Any, y: Any) -> None:
    if kind == "columns":
        em.add_column(x)
    else:
        em.update_weight(x, y)


def _blocklin_lowrank(init: Svd, batches: list[tuple[Any, Any]], kind: str, method: str,
                      tmp: Path, budget: float) -> tuple[float, int, np.ndarray | None]:
    """One durable svd_update call per batch: (seconds, updates made, s or None)."""
    from blocklin.ops import SVDState, svd_update

    u, s, vt = init
    state = SVDState.create(tmp / f"{kind}-{method}", u, s, vt, overwrite=True)
    spent = 0.0
    work = str(tmp / "work")
    for i, (x, y) in enumerate(batches, 1):
        if method == "qr":
            x, y = x.toarray(), (None if y is None else y.toarray())  # outside the timer
        t0 = time.perf_counter()
        if kind == "columns":
            state = svd_update(state, columns=x, method=method, work_dir=work)
        else:
            state = svd_update(state, low_rank=(x, y), method=method, work_dir=work)
        spent += time.perf_counter() - t0
        if 3 <= i < len(batches) and spent / i * len(batches) > budget:
            return spent, i, None
    return spent, len(batches), state.s


def _incsvd_lowrank(init: Svd, batches: list[tuple[Any, Any]], kind: str, sparse: bool,
                    budget: float) -> tuple[float, int, np.ndarray | None]:
    em = _evolving(init, sparse)
    spent = 0.0
    for i, (x, y) in enumerate(batches, 1):
        if not sparse:  # Zha–Simon's input is dense (converted outside the timer)
            x = np.asarray(x.toarray())  # add_column transposes D itself
            y = None if y is None else np.asarray(y.toarray())
        t0 = time.perf_counter()
        _em_update(em, kind, x, y)
        spent += time.perf_counter() - t0
        if 3 <= i < len(batches) and spent / i * len(batches) > budget:
            return spent, i, None
    return spent, len(batches), np.asarray(em.Sigmak)


def _edits(x: sp.csc_matrix, count: int, terms: int, seed: int) -> tuple[sp.csc_matrix,
                                                                          sp.csc_matrix]:
    """``count`` distinct documents (X: their indicator columns) each gaining about
    ``terms`` counts of Zipf-drawn terms (Y, n × count)."""
    rng = np.random.default_rng(seed + 7)
    m, n = x.shape
    docs = rng.choice(m, count, replace=False)
    X = sp.csc_matrix((np.ones(count), (docs, np.arange(count))), shape=(m, count))
    # The matrix's own term popularity (its column sums), so edits look like its rows.
    pop = np.asarray(x.sum(axis=0)).ravel() + 1.0
    cols = rng.choice(n, count * terms, p=pop / pop.sum())
    Y = sp.csc_matrix((np.ones(cols.size), (cols, np.repeat(np.arange(count), terms))),
                      shape=(n, count))
    Y.sum_duplicates()
    return X, Y


def run_lowrank(x: sp.csr_matrix, k: int, append: int, edits: int, sizes: list[int],
                max_updates: int, budget: float, peers: bool, seed: int) -> list[dict[str, Any]]:
    """The column-append and weight-update tables (see the module docstring)."""
    rng = np.random.default_rng(seed + 3)
    xc = sp.csc_matrix(x)[:, rng.permutation(x.shape[1])]
    n0 = x.shape[1] - append
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-sparse-cols-"))
    whos = ["blocklin/call", "blocklin qr/call"]
    if peers:
        whos += ["IncSVD isvd1", "IncSVD ZhaSimon"]
    try:
        t0 = time.perf_counter()
        inits = {"columns": top_svd(sp.csr_matrix(xc[:, :n0]), k)}
        inits["weights"] = top_svd(sp.csr_matrix(xc), k)
        print(f"column appends: {x.shape[0]:,} x {n0:,} + {append:,} columns; weight "
              f"updates: {edits:,} documents edited; initial svds "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        X, Y = _edits(xc, edits, 5, seed)
        for kind in ("columns", "weights"):
            total = append if kind == "columns" else edits
            for b in sizes:
                nb = max(1, min(total // b, max_updates))
                p = nb * b
                if p > total:
                    continue
                if kind == "columns":
                    batches = [(sp.csc_matrix(xc[:, n0 + a:n0 + a + b]), None)
                               for a in range(0, p, b)]
                    final = xc[:, :n0 + p]
                else:
                    batches = [(X[:, a:a + b], Y[:, a:a + b]) for a in range(0, p, b)]
                    final = xc + X[:, :p] @ Y[:, :p].T
                ref = top_svd(sp.csr_matrix(final), k)[1]
                for who in whos:
                    row: dict[str, Any] = {"matrix": kind, "b": b, "updates": nb, "who": who}
                    if who.startswith("blocklin"):
                        method = "qr" if "qr" in who else "sparse"
                        seconds, done, s = _blocklin_lowrank(inits[kind], batches, kind,
                                                             method, tmp, budget)
                    else:
                        seconds, done, s = _incsvd_lowrank(inits[kind], batches, kind,
                                                           who == "IncSVD isvd1", budget)
                    row["per_update"] = seconds / done
                    if s is None:
                        row["stopped"] = f"stopped after {done} updates ({seconds:.0f} s)"
                    else:
                        row["err10"], row["errk"] = errors(s, ref)
                    rows.append(row)
                    print(_line(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


# -- the sibling benchmarks --------------------------------------------------------------------
def print_dict_table(title: str, result: Any) -> None:
    print(f"\n## {title}")
    if isinstance(result, dict) and result and all(isinstance(v, dict) for v in result.values()):
        keys = sorted({c for v in result.values() for c in v})
        print("| case | " + " | ".join(keys) + " |")
        print("|---|" + "---|" * len(keys))
        for case, v in result.items():
            print(f"| {case} | " + " | ".join(str(v.get(c, "")) for c in keys) + " |")
    elif isinstance(result, dict):
        print("| key | value |\n|---|---|")
        for key, value in result.items():
            print(f"| {key} | {value} |")
    else:
        print(result)


def siblings() -> None:
    for module, fn in (("_sparse_regression", "run_sparse_regression"),
                       ("_sparse_sketch", "run_sparse_sketch")):
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            print(f"\n## {module}: skipped ({exc})")
            continue
        if not hasattr(mod, fn):
            print(f"\n## {module}: skipped (no {fn})")
            continue
        try:
            result = getattr(mod, fn)()
        except Exception as exc:  # a sibling's failure is reported, not fatal to this table
            print(f"\n## {module}.{fn}(): failed ({type(exc).__name__}: {str(exc)[-500:]})")
            continue
        print_dict_table(f"{module}.{fn}()", result)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=55_000)
    ap.add_argument("--cols", type=int, default=20_000)
    ap.add_argument("--density", type=float, default=1e-3)
    ap.add_argument("--big-rows", type=int, default=1_000_000,
                    help="rows of the wide matrix (0 skips it)")
    ap.add_argument("--big-cols", type=int, default=50_000)
    ap.add_argument("--big-density", type=float, default=1e-4)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--append", type=int, default=5_000)
    ap.add_argument("--sizes", default="10,50,500,5000")
    ap.add_argument("--max-updates", type=int, default=1000)
    ap.add_argument("--sub-batch", type=int, default=500,
                    help="blocklin's rows per internal batch for larger b")
    ap.add_argument("--peer-budget", type=float, default=300.0)
    ap.add_argument("--peer-memory", type=float, default=4e9,
                    help="skip Zha-Simon when its dense block_diag(U, I_b) passes this (bytes)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-siblings", action="store_true")
    ap.add_argument("--siblings-only", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--columns", action="store_true",
                    help="the column-append and weight-update tables instead of the row ones")
    ap.add_argument("--append-cols", type=int, default=1_000)
    ap.add_argument("--edits", type=int, default=1_000)
    ap.add_argument("--col-sizes", default="10,50,500")
    a = ap.parse_args(argv)
    if a.quick:
        a.rows, a.cols, a.big_rows, a.big_cols, a.k, a.append = 3_000, 2_000, 0, 0, 16, 500
        a.sizes, a.density = "10,50,500", 5e-3
    if a.siblings_only:
        siblings()
        return
    if a.columns:
        if a.quick:
            a.append_cols, a.edits, a.col_sizes = 200, 200, "10,50"
        peers = not a.no_peers and importlib.util.find_spec("IncSVD") is not None
        with threadpool_limits(a.threads):
            x = zipf_matrix(a.rows, a.cols, a.density, a.seed)
            rows = run_lowrank(x, a.k, a.append_cols, a.edits,
                               [int(v) for v in a.col_sizes.split(",")], a.max_updates,
                               a.peer_budget, peers, a.seed)
        print(f"\n## Column appends and weight updates (zipf {a.rows:,}x{a.cols:,}, k = {a.k}, "
              f"BLAS threads {a.threads})\n")
        print(table(rows, a.k))
        return
    sizes = [int(v) for v in a.sizes.split(",")]
    peers = not a.no_peers and importlib.util.find_spec("IncSVD") is not None
    if not peers and not a.no_peers:
        print("IncSVD not installed (pip install 'blocklin[bench]'): blocklin only")
    rows: list[dict[str, Any]] = []
    with threadpool_limits(a.threads):
        if a.rows:  # 0 skips the term-document matrix
            x = zipf_matrix(a.rows, a.cols, a.density, a.seed)
            rows += run_matrix(f"zipf {a.rows:,}x{a.cols:,}", x, a.k, a.append, sizes,
                               a.max_updates, a.sub_batch, a.peer_budget, peers,
                               a.peer_memory)
        if a.big_rows:
            x = zipf_matrix(a.big_rows, a.big_cols, a.big_density, a.seed + 1)
            rows += run_matrix(f"zipf {a.big_rows:,}x{a.big_cols:,}", x, a.k, a.append, sizes,
                               a.max_updates, a.sub_batch, a.peer_budget, peers,
                               a.peer_memory)
    print(f"\n## Row updates (k = {a.k}, BLAS threads {a.threads})\n")
    print(table(rows, a.k))
    if not a.no_siblings:
        siblings()


if __name__ == "__main__":
    main()
