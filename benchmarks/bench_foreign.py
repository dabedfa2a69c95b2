"""blocklin and dask on zarr arrays written by zarr-python ("foreign" arrays), beside
each codec's machine limit.

Four copies of one Gaussian float64 matrix (``--rows`` × 500), written by zarr-python
in chunks of 50,000 rows: v2 Blosc-LZ4 with byte shuffle, v3 Zstd (level 1), v3
sharded (shards of 100,000 rows, Zstd inner chunks of 25,000) and v3 uncompressed,
plus a label column (blocklin-written) for the regressions. On each copy, in the same
run: gram (``XᵀX``), a right Gaussian sketch (``XG``, k=100), randomized SVD (k=50,
2 power iterations, ``rsvd``, and 0, dask's default, ``rsvd0``; with the error of its
values against the exact ones) and ``LinearRegression`` (``normal`` and ``qr``) in
blocklin; in dask (``dask.array.from_zarr``): ``X.T @ X``, ``X @ G`` and
``da.linalg.svd_compressed(X, k=50, n_power_iter=2 or 0)`` computing s and V, as
blocklin does (no linear regression in dask).

Each measurement runs in its own process (its peak RSS is its own: process and
children), after an untimed warm-up on a tiny array (imports, thread pools). The
contenders of one operation take turns, ``--repeat`` rounds of one timed run each
(blocklin, dask, blocklin, dask, ...), so each ratio compares runs taken close in
time on a shared box; the table shows medians over the rounds. (Run minutes apart,
one cell of the first table, dask's randomized SVD on the uncompressed copy, read
4.0 s beside 13.2 s for dask's gram of the same copy.)

The limit of each operation on each copy is ``passes × T_decode + flops / rate``:
``T_decode`` reads every stored chunk (inner chunk of a shard) into a reused buffer and
decodes it with numcodecs into a reused array, on all cores, measured in the run on
that copy; ``rate`` is the BLAS rate measured in the run on one 25,000 × 500 block
with every core (``syrk`` for gram and the normal equations, ``gemm`` for the
sketch and the SVD's products, ``geqrf`` for ``qr``); passes are blocklin's own
(reported by the SVD and the estimators). On 2 cores reading and BLAS share the CPUs,
so the two add up.

    flock /tmp/blocklin-heavy.lock .venv/bin/python benchmarks/bench_foreign.py \
        --rows 2000000 --repeat 3
    .venv/bin/python benchmarks/bench_foreign.py            # 200,000 rows (quick: --rows 100000)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from _peers import run_reported, spawn

HERE = Path(__file__).resolve()
COLS = 500
CHUNK = 50_000
CODECS = ("v2-blosc-lz4", "v3-zstd", "v3-sharded-zstd", "v3-none")
OPS = ("gram", "sketch", "rsvd", "rsvd0", "lr-normal", "lr-qr")
DASK_OPS = ("gram", "sketch", "rsvd", "rsvd0")
K_SKETCH, K_SVD, OVERSAMPLE, N_ITER = 100, 50, 10, 2
#: Power iterations of each SVD row: ``rsvd`` the issue's 2, ``rsvd0`` dask's default (0).
POWER = {"rsvd": N_ITER, "rsvd0": 0}


# -- data ---------------------------------------------------------------------------------
def write_copies(d: Path, rows: int, codecs: tuple[str, ...] = CODECS) -> dict[str, str]:
    """Write (once) the zarr-python copies of X named in ``codecs`` and the label y;
    return their paths. Copies already written for the same rows are kept."""
    import numcodecs
    import zarr
    import zarr.codecs as zc

    import blocklin as bl

    spec = {"rows": rows, "cols": COLS, "chunk": CHUNK, "seed": 0}
    stamp = d / "spec.json"
    paths = {c: str(d / f"{c}.zarr") for c in CODECS} | {
        "y": str(d / "y.zarr"), "y-sharded": str(d / "y-sharded.zarr")}
    if not (stamp.exists() and json.loads(stamp.read_text()) == spec):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        stamp.write_text(json.dumps(spec))
    todo = [c for c in codecs if not (d / f"{c}.done").exists()]
    with_y = not (d / "y.done").exists()
    if not todo and not with_y:
        return paths
    makers = {
        "v2-blosc-lz4": lambda: zarr.create_array(
            paths["v2-blosc-lz4"], shape=(rows, COLS), chunks=(CHUNK, COLS), dtype="f8",
            zarr_format=2, compressors=numcodecs.Blosc(cname="lz4", clevel=5,
                                                       shuffle=numcodecs.Blosc.SHUFFLE),
            overwrite=True),
        "v3-zstd": lambda: zarr.create_array(
            paths["v3-zstd"], shape=(rows, COLS), chunks=(CHUNK, COLS), dtype="f8",
            compressors=zc.ZstdCodec(level=1), overwrite=True),
        "v3-sharded-zstd": lambda: zarr.create_array(
            paths["v3-sharded-zstd"], shape=(rows, COLS), chunks=(CHUNK // 2, COLS),
            shards=(2 * CHUNK, COLS), dtype="f8", compressors=zc.ZstdCodec(level=1),
            overwrite=True),
        "v3-none": lambda: zarr.create_array(
            paths["v3-none"], shape=(rows, COLS), chunks=(CHUNK, COLS), dtype="f8",
            compressors=None, overwrite=True),
    }
    arrays = {c: makers[c]() for c in todo}
    w = np.random.default_rng(1).standard_normal(COLS)
    y = np.empty((rows, 1))
    step = 2 * CHUNK  # whole shards at a time
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        x = np.random.default_rng([0, start]).standard_normal((stop - start, COLS))
        y[start:stop, 0] = x @ w + 0.1 * np.random.default_rng([1, start]).standard_normal(
            stop - start)
        for z in arrays.values():
            z[start:stop] = x
    for c in todo:
        (d / f"{c}.done").touch()
    if with_y:
        # The estimators read y in X's row blocks: the sharded copy's are its inner chunks.
        bl.from_array(y, paths["y"], chunks=(CHUNK, None), overwrite=True)
        bl.from_array(y, paths["y-sharded"], chunks=(CHUNK // 2, None), overwrite=True)
        (d / "y.done").touch()
    return paths


def exact_singular_values(d: Path, rows: int) -> np.ndarray:
    """The top K_SVD singular values of X, from its Gram regenerated block by block (the
    copies' seeds; once per data folder): the reference for the SVDs' errors."""
    path = d / "singular_values.npy"
    if path.exists():
        return np.asarray(np.load(path))
    g = np.zeros((COLS, COLS))
    for start in range(0, rows, 2 * CHUNK):
        x = np.random.default_rng([0, start]).standard_normal(
            (min(rows, start + 2 * CHUNK) - start, COLS))
        g += x.T @ x
    sv = np.sqrt(np.clip(np.linalg.eigvalsh(g)[::-1][:K_SVD], 0.0, None))
    np.save(path, sv)
    return sv


# -- the machine limit ----------------------------------------------------------------------
def _stored_units(path: str) -> list[tuple[str, int, int]]:
    """(file, offset, length) of every stored chunk (inner chunk of a shard): what a
    decoder must read. Offsets come from the shard indexes (length -1: the whole file)."""
    out = []
    root = Path(path)
    doc = json.loads((root / "zarr.json").read_text()) if (root / "zarr.json").exists() else {}
    codecs = doc.get("codecs", [])
    sharded = bool(codecs) and codecs[0]["name"] == "sharding_indexed"
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                    and p.name != "zarr.json"):
        if not sharded:
            out.append((str(f), 0, -1))
            continue
        conf = codecs[0]["configuration"]
        n = 1
        for s, c in zip(doc["chunk_grid"]["configuration"]["chunk_shape"], conf["chunk_shape"],
                        strict=True):
            n *= s // c
        raw = f.read_bytes()[-(16 * n + 4):-4]
        for off, length in np.frombuffer(raw, "<u8").reshape(-1, 2).tolist():
            if off != 2**64 - 1:
                out.append((str(f), off, length))
    return out


def decode_seconds(path: str, cores: int, repeat: int) -> float:
    """Read and decode every stored chunk of ``path`` with numcodecs into reused buffers,
    ``cores`` at a time: the fastest any reader can turn these bytes into arrays."""
    import numcodecs

    doc_path = Path(path) / "zarr.json"
    if doc_path.exists():
        doc = json.loads(doc_path.read_text())
        codecs = doc["codecs"]
        if codecs[0]["name"] == "sharding_indexed":
            codecs = codecs[0]["configuration"]["codecs"]
        comp = [c["name"] for c in codecs[1:] if c["name"] != "crc32c"]
        codec = numcodecs.get_codec({"id": comp[0]}) if comp else None
    else:
        cfg = json.loads((Path(path) / ".zarray").read_text())["compressor"]
        codec = numcodecs.get_codec(cfg) if cfg else None
    units = _stored_units(path)
    biggest = max(os.path.getsize(f) if n < 0 else n for f, _, n in units)
    import threading

    local = threading.local()

    def one(unit: tuple[str, int, int]) -> None:
        f, off, n = unit
        if not hasattr(local, "enc"):
            local.enc = bytearray(biggest)
            local.out = np.empty(CHUNK * COLS)
        with open(f, "rb", buffering=0) as fh:
            fh.seek(off)
            size = os.fstat(fh.fileno()).st_size if n < 0 else n
            view = memoryview(local.enc)[:size]
            fh.readinto(view)
        if codec is None:
            np.frombuffer(view, "f8")  # the bytes are the array
        else:
            codec.decode(view, out=local.out)

    def run() -> None:
        with ThreadPoolExecutor(cores) as ex:
            list(ex.map(one, units))

    run()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def block_kernels(cores: int, repeat: int) -> dict[str, float]:
    """Seconds per row of each operation's dense kernel on in-memory 25,000 × 500
    blocks, the faster of threaded BLAS on one block and one single-threaded block per
    core: syrk (gram, normal equations), the sketch's gemm (n × 100), one power
    iteration's two gemms (n × 60, then its transpose) and geqrf (qr)."""
    from threadpoolctl import threadpool_limits

    rows = CHUNK // 2
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((rows, COLS)) for _ in range(cores)]
    g100 = rng.standard_normal((COLS, K_SKETCH))
    g60 = rng.standard_normal((COLS, K_SVD + OVERSAMPLE))
    kernels = {"syrk": lambda b: b.T @ b,
               "sketch": lambda b: b @ g100,
               "svd": lambda b: b.T @ (b @ g60),
               "geqrf": lambda b: np.linalg.qr(b, mode="r")}

    def median_of(fn: Any) -> float:
        fn()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    out = {}
    for name, k in kernels.items():
        with threadpool_limits(cores, user_api="blas"):
            threaded = median_of(lambda k=k: k(blocks[0])) / rows
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(cores) as ex:
            parallel = median_of(lambda k=k, ex=ex: list(ex.map(k, blocks))) / (rows * cores)
        out[name] = min(threaded, parallel)
    return out


def limits(rows: int, t_decode: float, per_row: dict[str, float],
           passes: dict[str, float]) -> dict[str, float]:
    """Seconds each operation needs at least: its passes of decoding plus its kernels.

    The SVD decodes A once when its block cache holds all of A (``cache_bytes="auto"``:
    A fits the default budget), else once per pass.
    """
    from blocklin.config import default_block_cache_bytes, machine_memory

    cached = rows * COLS * 8 <= default_block_cache_bytes(machine_memory())

    def svd(op: str) -> float:
        power = passes.get(op, POWER[op] + 1)
        return (1 if cached else power) * t_decode + power * rows * per_row["svd"]

    return {
        "gram": t_decode + rows * per_row["syrk"],
        "sketch": t_decode + rows * per_row["sketch"],
        # Each of blocklin's passes runs both products (AX, then AᵀY; the finish AX and
        # AᵀQ): a power iteration's two gemms per pass.
        "rsvd": svd("rsvd"),
        "rsvd0": svd("rsvd0"),
        "lr-normal": passes.get("lr-normal", 1) * (t_decode + rows * per_row["syrk"]),
        "lr-qr": passes.get("lr-qr", 1) * (t_decode + rows * per_row["geqrf"]),
    }


# -- contenders (each in its own process: ``--worker``) --------------------------------------
def _timed(fn: Any, repeat: int, warm_up: Any = None) -> tuple[float, Any]:
    from blocklin.storage.blockcache import process_cache

    if warm_up is not None:
        warm_up()

    times, out = [], None
    for _ in range(repeat):
        process_cache().clear()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def w_blocklin(a: argparse.Namespace) -> dict[str, Any]:
    import blocklin as bl
    from blocklin.ml import LinearRegression

    X = bl.open(a.url)
    opts: dict[str, Any] = {"num_workers": a.cores}
    info: dict[str, Any] = {"read_path": X.meta.read_path}
    tiny = bl.from_array(np.ones((64, 4)), os.path.join(a.work, "warm-up.zarr"),
                         overwrite=True)

    def warm_up() -> None:
        bl.ops.gram(tiny).compute(work_dir=a.work, **opts)
    if a.op == "gram":
        secs, _ = _timed(lambda: bl.ops.gram(X).compute(work_dir=a.work, **opts), a.repeat,
                         warm_up)
    elif a.op == "sketch":
        secs, _ = _timed(lambda: bl.ops.sketch(X, K_SKETCH, side="right", seed=0)
                         .compute(work_dir=a.work, **opts), a.repeat, warm_up)
    elif a.op in POWER:
        secs, res = _timed(lambda: bl.ops.randomized_svd(
            X, K_SVD, oversample=OVERSAMPLE, n_iter=POWER[a.op], seed=0, work_dir=a.work,
            num_workers=a.cores), a.repeat, warm_up)
        info["passes"] = res.passes
        info["s"] = [float(v) for v in res.s]
    else:
        y = bl.open(a.y)
        solver = a.op.split("-", 1)[1]
        secs, m = _timed(lambda: LinearRegression(
            solver=solver, work_dir=a.work, compute_options=dict(opts)).fit(X, y), a.repeat,
            warm_up)
        info["passes"] = m.n_passes_
    return {"seconds": secs, **info}


def w_dask(a: argparse.Namespace) -> dict[str, Any]:
    import dask
    import dask.array as da

    def run(X: Any = None) -> Any:
        X = da.from_zarr(a.url) if X is None else X
        if a.op == "gram":
            r = X.T @ X
        elif a.op == "sketch":
            g = da.random.default_rng(0).standard_normal((X.shape[1], K_SKETCH))
            r = X @ g
        else:
            # s and V, as blocklin returns (U is formed on demand there; here it would
            # be one more m × k product).
            _, s, v = da.linalg.svd_compressed(X, min(K_SVD, min(X.shape)),
                                               n_power_iter=POWER[a.op], seed=0)
            r = (s, v)
        with dask.config.set(scheduler="threads", num_workers=a.cores):
            return dask.compute(r)[0]

    secs, out = _timed(run, a.repeat, lambda: run(da.ones((64, 4), chunks=(16, 4))))
    return {"seconds": secs, **({"s": [float(v) for v in out[0]]} if a.op in POWER else {})}


def w_limit(a: argparse.Namespace) -> dict[str, Any]:
    return {"decode_seconds": decode_seconds(a.url, a.cores, a.repeat)}


def w_blas(a: argparse.Namespace) -> dict[str, Any]:
    return {"per_row": block_kernels(a.cores, a.repeat)}


WORKERS = {"blocklin": w_blocklin, "dask": w_dask, "limit": w_limit, "blas": w_blas}


# -- driver ---------------------------------------------------------------------------------
def _worker_cmd(a: argparse.Namespace, kind: str, url: str = "", op: str = "",
                y: str = "", repeat: int | None = None) -> list[str]:
    return [sys.executable, str(HERE), "--worker", kind, "--url", url, "--op", op,
            "--y", y, "--work", a.work, "--cores", str(a.cores),
            "--repeat", str(a.repeat if repeat is None else repeat)]


def _rounds(a: argparse.Namespace, url: str, op: str, y: str,
            who: list[str]) -> dict[str, dict[str, Any]]:
    """``--repeat`` rounds of one timed run of each contender in turn: the medians of
    their seconds, their largest peak RSS, and the rest of their first answer."""
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in who}
    for _ in range(a.repeat):
        for w in who:
            if runs[w] and "error" in runs[w][0]:
                continue
            try:
                r = spawn(_worker_cmd(a, w, url, op, y, repeat=1), f"{w} {op}",
                          timeout=a.timeout)
            except (RuntimeError, TimeoutError) as exc:
                r = {"error": str(exc).strip().splitlines()[-1][:200]}
            runs[w].append(r)
            shutil.rmtree(a.work, ignore_errors=True)
            os.makedirs(a.work, exist_ok=True)
    out = {}
    for w, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            out[w] = rs[0]
            continue
        out[w] = {**ok[0], "seconds": statistics.median(r["seconds"] for r in ok),
                  "runs": [round(r["seconds"], 2) for r in ok]}
        if "peak_rss" in ok[0]:
            out[w]["peak_rss"] = max(r["peak_rss"] for r in ok)
    return out


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--data", default=None, help="where the copies are written (kept)")
    p.add_argument("--codecs", default=",".join(CODECS))
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--out", default=str(HERE.parent / "results" / "bench_foreign.md"))
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--worker", choices=sorted(WORKERS))
    p.add_argument("--url", default="")
    p.add_argument("--y", default="")
    p.add_argument("--op", default="")
    p.add_argument("--work", default="")
    a = p.parse_args()
    if a.worker:
        run_reported(lambda: WORKERS[a.worker](a))
        return
    data = Path(a.data or Path(tempfile.gettempdir()) / f"blocklin-bench-foreign-{a.rows}")
    t0 = time.perf_counter()
    paths = write_copies(data, a.rows, tuple(a.codecs.split(",")))
    a.s_exact = exact_singular_values(data, a.rows) \
        if set(POWER) & set(a.ops.split(",")) else None
    print(f"data in {data} ({time.perf_counter() - t0:.0f} s)", flush=True)
    a.work = tempfile.mkdtemp(prefix="bench-foreign-work-")
    rates = spawn(_worker_cmd(a, "blas"), "blas")["per_row"]
    print("kernels, s per 25,000-row block: "
          + ", ".join(f"{k} {v * CHUNK / 2:.3f}" for k, v in rates.items()), flush=True)
    lines = []
    for codec in a.codecs.split(","):
        url = paths[codec]
        dec = spawn(_worker_cmd(a, "limit", url), f"limit {codec}")["decode_seconds"]
        gb = a.rows * COLS * 8 / 1e9
        print(f"{codec}: decode {dec:.2f} s ({gb / dec:.2f} GB/s)", flush=True)
        results: dict[str, dict[str, Any]] = {}
        y = paths["y-sharded" if "sharded" in codec else "y"]
        for op in a.ops.split(","):
            who = ["blocklin", "dask"] if op in DASK_OPS else ["blocklin"]
            for w, r in _rounds(a, url, op, y, who).items():
                results[f"{w}:{op}"] = r
                print(f"  {w:8s} {op:10s} {json.dumps(r)[:220]}", flush=True)
        passes = {op: float(str(results.get(f"blocklin:{op}", {}).get("passes", "nan")).split()[0])
                  for op in ("rsvd", "rsvd0", "lr-normal", "lr-qr")
                  if "passes" in results.get(f"blocklin:{op}", {})}
        lim = limits(a.rows, dec, rates, passes)
        read_path = next((r["read_path"] for r in results.values() if "read_path" in r), "?")
        lines.append((codec, dec, read_path, results, lim))
    shutil.rmtree(a.work, ignore_errors=True)
    text = report(a, rates, lines)
    print(text)
    Path(a.out).write_text(text)


def _sv_error(r: dict[str, Any], exact: np.ndarray) -> str:
    if "s" not in r:
        return "—"
    s = np.asarray(r["s"])[: exact.size]
    return f"{float(np.max(np.abs(s - exact[: s.size]) / exact[: s.size])):.2e}"


def _secs(r: dict[str, Any]) -> float | None:
    v = r.get("seconds")
    return v if isinstance(v, float) else None


def _row(codec: str, op: str, b: dict[str, Any], d: dict[str, Any], lim: float) -> str:
    bs, ds = _secs(b), _secs(d)
    label = op + (f" ({b['passes']} passes)" if "passes" in b else "")
    cells = [codec, label,
             f"{bs:.2f}" if bs else ("err" if b else "—"),
             f"{lim:.2f}",
             f"{bs / lim:.2f}" if bs else "—",
             f"{ds:.2f}" if ds else ("err" if d else "—"),
             f"{ds / bs:.2f}" if ds and bs else "—",
             _gib(b["peak_rss"]) if "peak_rss" in b else "—",
             _gib(d["peak_rss"]) if "peak_rss" in d else "—"]
    return "| " + " | ".join(cells) + " |"


def report(a: argparse.Namespace, rates: dict[str, float], lines: list[Any]) -> str:
    gb = a.rows * COLS * 8 / 1e9
    out = [f"# blocklin vs dask on zarr-python arrays, {a.rows:,} × {COLS} float64 "
           f"({gb:.1f} GB), {a.cores} cores",
           "",
           f"Medians of {a.repeat} rounds per cell, the contenders of an operation in turn, "
           "each run in its own process after an untimed warm-up (peak RSS its own). "
           "limit = passes × numcodecs decode of every stored chunk "
           "(measured in this run) + the operation's dense kernels on in-memory blocks, "
           "measured in this run (s per 25,000 × 500 block: "
           + ", ".join(f"{k} {v * CHUNK / 2:.3f}" for k, v in rates.items()) + ").",
           "Taken on a shared 2-core box while other engineers ran builds and tests: "
           "ratios within one table are comparable, absolute times are noisy.",
           "",
           "| codec | op | blocklin s | limit s | blocklin/limit | dask s | dask/blocklin "
           "| blocklin peak | dask peak |",
           "|---|---|---|---|---|---|---|---|---|"]
    for codec, _, _, results, lim in lines:
        for op in a.ops.split(","):
            out.append(_row(codec, op, results.get(f"blocklin:{op}", {}),
                            results.get(f"dask:{op}", {}), lim[op]))
    out += ["", "Read paths and decode rates:", ""]
    for codec, dec, read_path, _, _ in lines:
        out.append(f"- {codec}: numcodecs decode {dec:.2f} s ({gb / dec:.2f} GB/s); blocklin "
                   f"reads it by {read_path}")
    if a.s_exact is not None:
        out += ["", f"Randomized SVD accuracy (k={K_SVD}; the same number of power "
                "iterations on both sides, so the same subspace's degree): largest relative "
                "error of the k singular values against the exact ones (eigenvalues of the "
                "Gram):", ""]
        for codec, _, _, results, _ in lines:
            for op in (o for o in POWER if o in a.ops.split(",")):
                errs = {w: _sv_error(results.get(f"{w}:{op}", {}), a.s_exact)
                        for w in ("blocklin", "dask")}
                out.append(f"- {codec}, {op} ({POWER[op]} power iterations): "
                           + ", ".join(f"{w} {e}" for w, e in errs.items()))
    errors = [(c, k, r["error"]) for c, _, _, res, _ in lines for k, r in res.items()
              if "error" in r]
    if errors:
        out += ["", "Failures:", ""] + [f"- {c} {k}: {e}" for c, k, e in errors]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
