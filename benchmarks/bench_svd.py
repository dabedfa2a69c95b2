"""Truncated SVD: blocklin vs dask ``svd_compressed``, scikit-learn and Spark MLlib.

Every contender reads the same zarr matrix (dense float64, a decaying spectrum:
rows ``g·diag(d)·Vᵀ`` with Gaussian g, ``d_j = exp(-j/10)`` and a random rotation V),
and runs in its own subprocess so its peak RSS (``ru_maxrss`` of that process) is its
own. Times are medians over ``--repeat`` runs, measured inside the subprocess
(imports and process start excluded; data loading included unless listed apart).
Accuracy is the largest relative error of the top-k singular values against
LAPACK's exact spectrum (``numpy.linalg.svd`` of the whole matrix, computed once).

    flock /tmp/blocklin-heavy.lock .venv/bin/python benchmarks/bench_svd.py --rows 200000
    .venv/bin/python benchmarks/bench_svd.py --quick

``--sparse``: a sparse CSR BlockMatrix instead (default 1,000,000 × 50,000 at density
1e-4, about 5 nonzeros a row, in row blocks of 65,536). Its nonzeros fall in columns
drawn with Zipf popularity ``P(j) ∝ (j+1)^-1`` (like terms in documents; a uniform
pattern would give a nearly flat spectrum), values standard normal, so the spectrum
decays like a power law (σ_j roughly ∝ j^-1/2). The exact reference is
``scipy.sparse.linalg.svds`` of the CSR in memory (ARPACK, tol=0: machine precision),
checked against PROPACK; a LAPACK reference would need the dense 50,000² Gram (20 GB).
dask runs on the same stored CSR blocks (scipy.sparse chunks, and pydata ``sparse``
COO chunks); scikit-learn on the CSR in memory; MLlib on SparseVector rows (its
distributed ARPACK mode, capped by ``--timeout``).

    flock /tmp/blocklin-heavy.lock .venv/bin/python benchmarks/bench_svd.py --sparse
    .venv/bin/python benchmarks/bench_svd.py --sparse --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _peers import combine, run_reported, spawn

HERE = Path(__file__).resolve()


# -- data ---------------------------------------------------------------------------------
def _spectrum_block(g: np.ndarray, d: np.ndarray, vt: np.ndarray) -> np.ndarray:
    return (g * d) @ vt


def make_data(path: Path, rows: int, cols: int, chunk: int, seed: int) -> Any:
    """Write (once) the benchmark matrix block by block; never whole in memory."""
    import dask.array as da

    import blocklin as bl

    if (path / "zarr.json").exists():
        A = bl.open(path)
        if A.shape == (rows, cols) and A.chunks[0] == chunk:
            return A
    rng = np.random.default_rng(seed)
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    d = np.exp(-np.arange(cols) / 10.0)
    g = da.random.default_rng(seed + 1).standard_normal((rows, cols), chunks=(chunk, cols))
    x = g.map_blocks(_spectrum_block, d, v.T, dtype=np.float64)
    return bl.from_array(x, path, chunks=(chunk, None), codec="none", overwrite=True)


#: Rows generated per random stream: the sparse matrix does not depend on its chunking.
GEN_ROWS = 10_000


def _sparse_rows(g: int, rows: int, cols: int, density: float, zipf: float, seed: int) -> Any:
    """Rows ``[g·GEN_ROWS, g·GEN_ROWS + rows)`` of the sparse benchmark matrix (CSR)."""
    import scipy.sparse as sp

    rng = np.random.default_rng([seed, g])
    nnz = int(rng.binomial(rows * cols, density))
    p = 1.0 / np.arange(1, cols + 1) ** zipf
    x = sp.csr_matrix((rng.standard_normal(nnz),
                       (np.sort(rng.integers(0, rows, nnz)), rng.choice(cols, nnz, p=p / p.sum()))),
                      shape=(rows, cols))
    x.sum_duplicates()  # two draws of one (row, column) add up
    return x


def make_sparse_data(path: Path, rows: int, cols: int, density: float, zipf: float, chunk: int,
                     seed: int) -> Any:
    """Write (once) the sparse benchmark matrix as a CSR BlockMatrix; reuse it after."""
    import scipy.sparse as sp

    import blocklin as bl

    spec = {"rows": rows, "cols": cols, "density": density, "zipf": zipf, "seed": seed,
            "values": "standard normal", "gen_rows": GEN_ROWS}
    if (path / "zarr.json").exists():
        A = bl.open(path)
        if A.chunks[0] == chunk and A.provenance.get("bench_svd") == spec:
            return A
    parts = [_sparse_rows(g, min(GEN_ROWS, rows - g * GEN_ROWS), cols, density, zipf, seed)
             for g in range(-(-rows // GEN_ROWS))]
    x = sp.vstack(parts, format="csr")
    return bl.from_array(x, path, chunks=(chunk, None), overwrite=True,
                         attrs={"bench_svd": spec})


# -- contenders (each runs in a subprocess: ``--worker NAME``) ----------------------------
def w_exact(a: argparse.Namespace) -> dict[str, Any]:
    import blocklin as bl

    x = bl.open(a.url).to_numpy()
    t0 = time.perf_counter()
    s = np.linalg.svd(x, compute_uv=False)
    return {"seconds": time.perf_counter() - t0, "s": s.tolist()}


def w_sparse_exact(a: argparse.Namespace) -> dict[str, Any]:
    """svds of the CSR in memory, to machine precision, by ARPACK and by PROPACK."""
    from scipy.sparse.linalg import svds

    import blocklin as bl
    from blocklin.storage.sparse import to_scipy

    x = to_scipy(bl.open(a.url))
    out: dict[str, Any] = {}
    for solver in ("arpack", "propack"):
        t0 = time.perf_counter()
        s = svds(x, k=a.k, tol=0, solver=solver, return_singular_vectors=False, random_state=0)
        out[solver] = np.sort(s)[::-1].tolist()
        out[f"{solver}_seconds"] = time.perf_counter() - t0
    return {**out, "s": out["arpack"], "seconds": out["arpack_seconds"]}


def _cluster(a: argparse.Namespace) -> Any:
    """A 2-worker LocalCluster (one thread each) when ``--cluster``, else None."""
    if not a.cluster:
        return None
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                           host="127.0.0.1", silence_logs=40)
    return Client(cluster)


def w_blocklin(a: argparse.Namespace) -> dict[str, Any]:
    import blocklin as bl

    A = bl.open(a.url)
    client = _cluster(a)
    t0 = time.perf_counter()
    res = bl.ops.randomized_svd(A, a.k, oversample=a.oversample, n_iter=a.n_iter, seed=0,
                                method=a.method, work_dir=a.work,
                                num_workers=None if client else a.cores, client=client)
    t1 = time.perf_counter()
    out = {"seconds": t1 - t0, "s": res.s.tolist(), "passes": res.passes}
    if a.with_u:
        res.U  # noqa: B018 - forms U (one more pass)
        out["u_seconds"] = time.perf_counter() - t1
    return out


def w_blocklin_exact(a: argparse.Namespace) -> dict[str, Any]:
    import blocklin as bl

    A = bl.open(a.url)
    f = bl.ops.svd(A)
    t0 = time.perf_counter()
    s, _ = bl.compute(f.s, f.Vt, work_dir=a.work, num_workers=a.cores)
    return {"seconds": time.perf_counter() - t0, "s": s[: a.k].tolist(), "passes": 1}


def _dask_matrix(A: Any, chunks: str) -> Any:
    """A's stored blocks as a dask array: CSR blocks stay scipy.sparse (``scipy``: typed
    as such) or become pydata ``sparse`` COO (``coo``)."""
    z = A.to_dask()
    if A.meta.format != "csr":
        return z
    if chunks == "coo":
        import sparse

        return z.map_blocks(sparse.COO.from_scipy_sparse, dtype=z.dtype,
                            meta=sparse.COO.from_numpy(np.zeros((0, 0), dtype=z.dtype)))
    import scipy.sparse as sp

    return z.map_blocks(_same, dtype=z.dtype, meta=sp.csr_matrix((0, 0), dtype=z.dtype))


def _same(block: Any) -> Any:
    return block


def w_dask(a: argparse.Namespace) -> dict[str, Any]:
    import dask
    import dask.array as da

    import blocklin as bl

    A = bl.open(a.url)
    client = _cluster(a)
    t0 = time.perf_counter()
    z = _dask_matrix(A, a.dask_chunks)
    u, s, v = da.linalg.svd_compressed(z, a.k, n_power_iter=a.n_iter, n_oversamples=a.oversample,
                                       seed=0, iterator=a.iterator)
    if client is not None:
        u, s, v = client.compute([u, s, v], sync=True)
    else:
        with dask.config.set(scheduler="threads", num_workers=a.cores):
            u, s, v = dask.compute(u, s, v)
    return {"seconds": time.perf_counter() - t0, "s": np.asarray(s).tolist(),
            "passes": 2 * a.n_iter + 2}


def w_sklearn(a: argparse.Namespace) -> dict[str, Any]:
    from sklearn.utils.extmath import randomized_svd

    import blocklin as bl
    from blocklin.storage.sparse import to_scipy

    t0 = time.perf_counter()
    A = bl.open(a.url)
    x = to_scipy(A) if A.meta.format == "csr" else A.to_numpy()
    t1 = time.perf_counter()
    _, s, _ = randomized_svd(x, a.k, n_oversamples=a.oversample, n_iter=a.n_iter,
                             random_state=0)
    return {"seconds": time.perf_counter() - t0, "load_seconds": t1 - t0, "s": s.tolist(),
            "passes": 2 * a.n_iter + 2}


def _rows_of_block(i: int, url: str) -> Any:
    """Row i's vectors: numpy rows (dense), or MLlib SparseVectors of a CSR block."""
    import blocklin as bl

    b = bl.open(url).block(i, 0)
    if not hasattr(b, "indptr"):
        return list(b)
    from pyspark.mllib.linalg import SparseVector  # noqa: TID251

    p = b.indptr
    return [SparseVector(b.shape[1], b.indices[p[r]:p[r + 1]], b.data[p[r]:p[r + 1]])
            for r in range(b.shape[0])]


def w_mllib(a: argparse.Namespace) -> dict[str, Any]:
    """RowMatrix.computeSVD; cancelled after ``--timeout`` s. Passes: Spark jobs it ran
    (each reads the cached rows once: a Gramian, or one ARPACK product AᵀAv)."""
    import threading

    from pyspark.mllib.linalg.distributed import RowMatrix  # noqa: TID251

    import blocklin as bl
    from blocklin.executors.spark import local_session

    A = bl.open(a.url)
    spark = local_session(cores=a.cores, driver_memory="6g")
    timer = None
    try:
        sc, url = spark.sparkContext, a.url
        t0 = time.perf_counter()
        rdd = sc.parallelize(range(A.nblocks[0]), A.nblocks[0]) \
            .flatMap(lambda i: _rows_of_block(i, url)).cache()
        rdd.count()
        t1 = time.perf_counter()
        sc.setJobGroup("svd", "computeSVD")
        if a.timeout:
            timer = threading.Timer(a.timeout - (t1 - t0), sc.cancelJobGroup, ("svd",))
            timer.start()
        try:
            svd = RowMatrix(rdd).computeSVD(a.k, computeU=False)
        except Exception as e:  # cancelled: a Py4JJavaError
            if timer is not None and not timer.is_alive():
                return {"error": f"over the {a.timeout:.0f} s cap (load {t1 - t0:.0f} s, "
                                 f"{len(sc.statusTracker().getJobIdsForGroup('svd'))} Spark "
                                 f"jobs run); cancelled"}
            raise RuntimeError(str(e)[:2000]) from None
        s = np.asarray(svd.s.toArray())
        t2 = time.perf_counter()
        jobs = len(sc.statusTracker().getJobIdsForGroup("svd"))
    finally:
        if timer is not None:
            timer.cancel()
        spark.stop()
    return {"seconds": t2 - t0, "load_seconds": t1 - t0, "s": s.tolist(),
            "passes": jobs or "-"}


def w_update(a: argparse.Namespace) -> dict[str, Any]:
    """A 5% row append: svd_update of a persisted state (U stored) vs nothing else."""
    import blocklin as bl
    from blocklin.ops import SVDState, svd_update
    from blocklin.ops.svd_rows import gram_step
    from blocklin.ops.svd_update import update_factors

    A = bl.open(a.url)
    B = bl.open(a.append_url)
    res = bl.ops.randomized_svd(A, a.k, oversample=a.oversample, n_iter=a.n_iter,
                                work_dir=a.work, num_workers=a.cores)
    state_path = Path(a.work) / f"svd-state-{os.getpid()}"
    state = SVDState.create(state_path, res)
    t0 = time.perf_counter()
    state = svd_update(state, B, work_dir=a.work, num_workers=a.cores)
    t1 = time.perf_counter()
    # s and Vt only, as TruncatedSVD.partial_fit does: the new rows' Gram in one pass (a
    # TSQR pass more only when the Gram is too ill-conditioned).
    g = bl.ops.gram(B).compute(work_dir=a.work, num_workers=a.cores)
    if gram_step(res.s, res.Vt, g) is None:
        update_factors(res.s, res.Vt,
                       bl.ops.tsqr_r(B).compute(work_dir=a.work, num_workers=a.cores))
    return {"seconds": t1 - t0, "sv_seconds": time.perf_counter() - t1, "s": state.s.tolist(),
            "passes": 2}


WORKERS = {"exact": w_exact, "sparse_exact": w_sparse_exact, "blocklin": w_blocklin,
           "blocklin_exact": w_blocklin_exact, "dask": w_dask, "sklearn": w_sklearn,
           "mllib": w_mllib, "update": w_update}


def _warm_up(a: argparse.Namespace) -> None:
    """First-call costs (lazy imports, BLAS/threadpool introspection) on a tiny matrix."""
    import blocklin as bl

    small = bl.from_array(np.random.default_rng(0).standard_normal((200, 20)),
                          Path(a.work) / f"warm-{os.getpid()}.zarr", overwrite=True)
    bl.ops.randomized_svd(small, 2, n_iter=0, work_dir=a.work).U  # noqa: B018
    bl.compute(bl.ops.svd(small).s, work_dir=a.work)
    if a.worker == "dask":
        import dask.array as da

        da.linalg.svd_compressed(small.to_dask(), 2, seed=0)[1].compute()


def run_worker(a: argparse.Namespace) -> None:
    _warm_up(a)
    run_reported(lambda: WORKERS[a.worker](a))


# -- driver -------------------------------------------------------------------------------
def _spawn(a: argparse.Namespace, worker: str, **over: Any) -> dict[str, Any]:
    # A fresh work directory per run: no run may find another's blocks (resume) or U.
    run_dir = tempfile.mkdtemp(prefix=f"{worker}-", dir=a.work)
    try:
        return _spawn_in(a, worker, run_dir, **over)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _spawn_in(a: argparse.Namespace, worker: str, run_dir: str, **over: Any) -> dict[str, Any]:
    opts = {**vars(a), **over, "work": run_dir}
    cmd = [sys.executable, str(HERE), "--worker", worker]
    for key in ("url", "append_url", "work", "k", "oversample", "n_iter", "method", "cores",
                "iterator", "dask_chunks", "timeout"):
        if opts.get(key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(opts[key])]
    for flag in ("with_u", "cluster"):
        if opts.get(flag):
            cmd.append(f"--{flag.replace('_', '-')}")
    # The worker cancels its own work at --timeout (MLlib); this is the backstop.
    limit = None if not opts.get("timeout") else opts["timeout"] + 300
    return spawn(cmd, worker, timeout=limit)


def _measure(a: argparse.Namespace, worker: str, repeat: int, **over: Any) -> dict[str, Any]:
    """Median of ``repeat`` runs; a run that fails or is refused gives ``{"error": why}``
    (the last line of its traceback), and no more runs are made."""
    runs = []
    for _ in range(repeat):
        try:
            runs.append(_spawn(a, worker, **over))
        except (RuntimeError, TimeoutError) as e:
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            return {"error": lines[-1].strip() if lines else repr(e)}
        if "error" in runs[-1]:
            return runs[-1]
    return combine(runs, ("seconds", "u_seconds", "load_seconds", "sv_seconds"))


def _row(name: str, r: dict[str, Any], exact: np.ndarray, base: float) -> str:
    if "error" in r:
        return f"{name:<44}{'--':>9}{'--':>9}{'--':>8}{'--':>10}{'--':>11}\n    ({r['error']})"
    s = np.asarray(r["s"])[: exact.size]
    err = float(np.max(np.abs(s - exact[: s.size]) / exact[: s.size]))
    passes = r.get("passes", "-")
    return (f"{name:<44}{r['seconds']:>9.2f}{r['seconds'] / base:>8.2f}x{passes!s:>8}"
            f"{r['peak_rss'] / 2**20:>10.0f}{err:>11.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparse", action="store_true",
                    help="a sparse CSR matrix (defaults 1,000,000 x 50,000, density 1e-4)")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--cols", type=int)
    ap.add_argument("--density", type=float, default=1e-4, help="--sparse: nonzero fraction")
    ap.add_argument("--zipf", type=float, default=1.0,
                    help="--sparse: column popularity exponent, P(j) ∝ (j+1)^-zipf")
    ap.add_argument("--chunk-rows", type=int, help="rows per block (16,384; sparse 65,536)")
    ap.add_argument("--timeout", type=float,
                    help="seconds after which a contender is cancelled (MLlib); --sparse: 1800")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--oversample", type=int, default=10)
    ap.add_argument("--n-iter", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dask-iters", default="",
                    help="extra dask n_iter values with its QR iterator, e.g. 3,4")
    ap.add_argument("--skip", default="",
                    help="contenders to skip: methods,mllib,sklearn,dask,cluster,update")
    ap.add_argument("--quick", action="store_true", help="20,000 x 200, k=20, one run")
    ap.add_argument("--data", type=Path, default=HERE.parent / "data")
    ap.add_argument("--plot", type=Path, help="write a plot of singular-value errors (PNG)")
    ap.add_argument("--reference", choices=["lapack", "tsqr"], default="lapack",
                    help="exact spectrum from LAPACK in memory, or blocklin's TSQR SVD")
    # worker-side options
    ap.add_argument("--worker", choices=sorted(WORKERS))
    ap.add_argument("--url")
    ap.add_argument("--append-url")
    ap.add_argument("--work")
    ap.add_argument("--method", default="power")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--iterator", default="power", help="worker: dask's power iterator")
    ap.add_argument("--dask-chunks", default="scipy", choices=["scipy", "coo"],
                    help="worker: dask's sparse chunks, scipy.sparse CSR or pydata COO")
    ap.add_argument("--with-u", action="store_true")
    ap.add_argument("--cluster", action="store_true", help="worker: a 2-worker LocalCluster")
    a = ap.parse_args()
    if a.worker:
        run_worker(a)
        return
    if a.quick:
        a.rows, a.cols, a.k, a.repeat, a.chunk_rows = 20_000, 200, 20, 1, 4096
        if a.sparse:
            a.cols, a.density = 2_000, 1e-3
    if a.sparse:
        a.rows, a.cols = a.rows or 1_000_000, a.cols or 50_000
        a.chunk_rows = a.chunk_rows or 65_536
        a.timeout = a.timeout or 1800.0
    else:
        a.rows, a.cols, a.chunk_rows = a.rows or 200_000, a.cols or 500, a.chunk_rows or 16_384
    a.data.mkdir(parents=True, exist_ok=True)
    # Every run's blocks go under one work directory, removed at the end.
    a.work = tempfile.mkdtemp(prefix="bench-svd-", dir=a.data)
    try:
        (report_sparse if a.sparse else report)(a)
    finally:
        shutil.rmtree(a.work, ignore_errors=True)


def _plot(path: Path, rows: list[tuple[str, dict[str, Any]]], exact: np.ndarray) -> None:
    """Relative error of each singular value, per contender (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, r in rows:
        s = np.asarray(r["s"])[: exact.size]
        err = np.maximum(np.abs(s - exact[: s.size]) / exact[: s.size], 1e-17)
        ax.semilogy(np.arange(1, s.size + 1), err, marker=".", label=name)
    ax.set_xlabel("index j")
    ax.set_ylabel("|s_j - σ_j| / σ_j")
    ax.set_title("top-k singular value error vs the exact spectrum")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def report(a: argparse.Namespace) -> None:
    tag = f"{a.rows}x{a.cols}"
    A = make_data(a.data / f"svd_{tag}.zarr", a.rows, a.cols, a.chunk_rows, seed=0)
    B = make_data(a.data / f"svd_{tag}_append5.zarr", a.rows // 20, a.cols, a.chunk_rows, seed=7)
    a.url, a.append_url = A.url, B.url
    skip = set(filter(None, a.skip.split(",")))
    exact_file = a.data / f"svd_{tag}_exact.npy"
    if not exact_file.exists():
        # LAPACK on the whole matrix in memory, or (--reference tsqr, for matrices that
        # do not fit) blocklin's TSQR SVD, which matches LAPACK to 1e-14 at 200,000 x 500.
        ref = "exact" if a.reference == "lapack" else "blocklin_exact"
        np.save(exact_file, np.asarray(_spawn(a, ref, k=a.cols)["s"]))
    exact = np.load(exact_file)[: a.k]
    print(f"A: {a.rows} x {a.cols} float64 ({A.nbytes / 2**20:.0f} MiB, {A.nblocks[0]} row "
          f"blocks of {A.chunks[0]}), k={a.k}, oversample={a.oversample}, n_iter={a.n_iter}, "
          f"{a.cores} cores, median of {a.repeat}; σ₁={exact[0]:.4g}, σ_k={exact[-1]:.4g}")
    rows, base = _contenders(a, skip, sparse=False)
    _print_table(a, rows, exact, base)
    t0 = base["seconds"]
    if "update" not in skip:
        up = _measure(a, "update", a.repeat)
        t_u = t0 + base.get("u_seconds", 0.0)
        print(f"update for a 5% row append ({B.shape[0]} rows), U kept (2 passes over the new "
              f"rows): {up['seconds']:.2f} s = {up['seconds'] / t_u:.1%} of the blocklin power "
              f"recompute of A with U ({t_u:.2f} s)")
        print(f"update of s and Vt only (TruncatedSVD.partial_fit; 1 pass over the new rows): "
              f"{up['sv_seconds']:.2f} s = {up['sv_seconds'] / t0:.1%} of the recompute of s, Vt "
              f"({t0:.2f} s)")


def report_sparse(a: argparse.Namespace) -> None:
    """The sparse case: the same contenders on one stored CSR matrix (no append update)."""
    tag = f"svd_sparse_{a.rows}x{a.cols}_d{a.density:g}_z{a.zipf:g}"
    A = make_sparse_data(a.data / f"{tag}.zarr", a.rows, a.cols, a.density, a.zipf,
                         a.chunk_rows, seed=0)
    a.url, a.append_url = A.url, None
    skip = set(filter(None, a.skip.split(",")))
    exact_file = a.data / f"{tag}_exact_k{a.k}.npz"
    if not exact_file.exists():
        ref = _spawn(a, "sparse_exact")
        np.savez(exact_file, **{key: np.asarray(ref[key]) for key in
                                ("arpack", "propack", "arpack_seconds", "propack_seconds")})
    ref = np.load(exact_file)
    exact = ref["arpack"][: a.k]
    agree = float(np.max(np.abs(ref["propack"][: a.k] - exact) / exact))
    nnz = sum(A.provenance["layout"]["nnz"])
    print(f"A: {a.rows} x {a.cols} CSR, {nnz} nonzeros ({nnz / a.rows:.2f} a row, density "
          f"{nnz / a.rows / a.cols:.3g}; Zipf {a.zipf:g} columns), {A.nblocks[0]} row blocks "
          f"of {A.chunks[0]}; k={a.k}, oversample={a.oversample}, n_iter={a.n_iter}, "
          f"{a.cores} cores, median of {a.repeat}")
    print(f"exact: svds ARPACK tol=0 ({float(ref['arpack_seconds']):.1f} s), PROPACK agrees to "
          f"{agree:.1e} ({float(ref['propack_seconds']):.1f} s); σ₁={exact[0]:.4g}, "
          f"σ_k={exact[-1]:.4g}, σ_k/σ₁={exact[-1] / exact[0]:.3f}")
    rows, base = _contenders(a, skip, sparse=True)
    _print_table(a, rows, exact, base)


def _contenders(a: argparse.Namespace, skip: set[str],
                sparse: bool) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """Measure every contender not skipped; return the table rows and blocklin power's."""
    rows: list[tuple[str, dict[str, Any]]] = []
    base = _measure(a, "blocklin", a.repeat, method="power", with_u=True)
    rows.append((f"blocklin power (n_iter={a.n_iter})", base))
    # Sparse: gram and exact need an n × n matrix (AᵀA, or TSQR's R) and are refused
    # before any pass, so one attempt shows it.
    once = 1 if sparse else a.repeat
    if "methods" not in skip:
        rows.append(("blocklin krylov", _measure(a, "blocklin", a.repeat, method="krylov")))
        rows.append(("blocklin gram", _measure(a, "blocklin", once, method="gram")))
        rows.append(("blocklin exact (TSQR svd, s+Vt)", _measure(a, "blocklin_exact", once)))
    if "cluster" not in skip:
        rows.append(("blocklin power, 2-worker LocalCluster",
                     _measure(a, "blocklin", a.repeat, method="power", cluster=True)))
    if "dask" not in skip:
        rows.append((f"dask svd_compressed threads (n_iter={a.n_iter})",
                     _measure(a, "dask", a.repeat)))
        if sparse:
            rows.append(("dask svd_compressed threads, COO chunks",
                         _measure(a, "dask", a.repeat, dask_chunks="coo")))
        # dask's default "power" iterator does not re-orthonormalize between products
        # and collapses for larger n_iter on decaying spectra; "QR" is its stable one.
        for it in [int(i) for i in a.dask_iters.split(",") if i]:
            rows.append((f"dask svd_compressed threads QR (n_iter={it})",
                         _measure(a, "dask", a.repeat, n_iter=it, iterator="QR")))
        if "cluster" not in skip:
            rows.append(("dask svd_compressed, 2-worker LocalCluster",
                         _measure(a, "dask", a.repeat, cluster=True)))
    if "sklearn" not in skip:
        label = "on CSR" if sparse else "in memory"
        rows.append((f"sklearn randomized_svd {label} (+load)", _measure(a, "sklearn", a.repeat)))
    if "mllib" not in skip:
        rows.append(("Spark MLlib computeSVD (load + compute)", _measure(a, "mllib", 1)))
    return rows, base


def _print_table(a: argparse.Namespace, rows: list[tuple[str, dict[str, Any]]],
                 exact: np.ndarray, base: dict[str, Any]) -> None:
    if "error" in base:
        raise SystemExit(f"blocklin power failed: {base['error']}")
    print(f"\n{'contender':<44}{'seconds':>9}{'ratio':>9}{'passes':>8}{'peak MiB':>10}"
          f"{'max rel err':>11}")
    for name, r in rows:
        print(_row(name, r, exact, base["seconds"]))
    print(f"\nblocklin power: U formed on demand in {base.get('u_seconds', 0):.2f} s (1 pass)")
    for name, r in rows:
        if "load_seconds" in r:
            print(f"{name}: of which loading {r['load_seconds']:.2f} s")
    if a.plot is not None:
        _plot(a.plot, [(n, r) for n, r in rows if "error" not in r], exact)


if __name__ == "__main__":
    main()
