"""Coordinated sketch vs Gaussian sketch of sparse data: stored size at equal error.

Data (generated, seeded): A, 100,000 × 1,000 with 5 nonzeros in every row (the matrix
of issue 17), and B of the same rows and columns, nonzero in half of the rows, on the
same columns as A there, with values half A's plus noise (two logs of the same users
and items: a user active in one is not always active in the other). Rows are
unbalanced: each row's values are scaled by a lognormal(0, 1) weight.

Measured, on the product AᵀB (1,000 × 1,000):

* coordinated sampling at k = 4096 (``sketch_for_product(..., "coordinated")``),
  ``--seeds`` seeds: the numbers each stored sketch holds (row ids, CSR offsets,
  column indices, values, τ), its sampled nonzeros, its bytes on disk once saved
  (``CoordinatedSketch.save``: zarr, crc32c), and the RMS of ‖est − AᵀB‖_F; next to
  it the (k + 1) × (n + 2) numbers of the former dense layout;
* the Gaussian sketch at k = 4096 (SA, k × n), measured the same way (error, and
  bytes of SA stored with ``bl.from_array``);
* the Gaussian sketch at equal error: its k from the closed form
  E‖(SA)ᵀ(SB) − AᵀB‖²_F = (‖A‖²_F‖B‖²_F + ‖AᵀB‖²_F)/k (exact for Gaussian S; the
  k = 4096 row checks it against measurement), and its size, k × n numbers, bytes
  scaled from the stored k = 4096 sketch.

Run alone: ``python benchmarks/_sparse_sketch.py`` (``--quick``: 20,000 rows, k =
1024); ``benchmarks/bench_sparse.py`` imports :func:`run_sparse_sketch`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

import blocklin as bl
from blocklin.ops.sketched_matmul import estimate_product, sketch_for_product


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _pair(rng: np.random.Generator, m: int, n: int,
          per_row: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """A: ``per_row`` distinct columns in every row, values N(0, 1) times a lognormal(0, 1)
    row weight. B: in a random half of the rows, the same columns (the same items seen
    in the second log), values half A's plus independent noise of the row's weight;
    the other rows of B are empty."""
    offsets = np.cumsum(rng.integers(1, n // per_row, size=(m, per_row)), axis=1)
    cols = np.sort((rng.integers(0, n, size=(m, 1)) + offsets) % n, axis=1)
    weight = rng.lognormal(0.0, 1.0, size=(m, 1))
    va = rng.standard_normal((m, per_row)) * weight
    indptr = np.arange(0, m * per_row + 1, per_row)
    a = sp.csr_matrix((va.ravel(), cols.ravel(), indptr), shape=(m, n))
    vb = 0.5 * va + rng.standard_normal((m, per_row)) * weight
    keep = np.zeros(m, dtype=bool)
    keep[rng.choice(m, size=m // 2, replace=False)] = True
    vb[~keep] = 0.0
    b = sp.csr_matrix((vb.ravel(), cols.ravel(), indptr), shape=(m, n))
    b.eliminate_zeros()
    return a, b


def run_sparse_sketch(seed: int = 0, rows: int = 100_000, cols: int = 1_000, per_row: int = 5,
                      k: int = 4096, seeds: int = 3) -> dict[str, dict[str, Any]]:
    """Stored size of the coordinated and the Gaussian sketch of the same sparse data,
    at equal product-estimation error (see the module docstring). Returns rows of a
    table keyed by case."""
    rng = np.random.default_rng(seed)
    a, b = _pair(rng, rows, cols, per_row)
    ref = (a.T @ b).toarray()
    na, nb, nab = (float(sp.linalg.norm(a)), float(sp.linalg.norm(b)),
                   float(np.linalg.norm(ref)))
    out: dict[str, dict[str, Any]] = {"data": {
        "A": f"{rows:,} x {cols:,}, {per_row} nnz/row ({a.nnz:,})",
        "B": f"{rows:,} x {cols:,}, A's columns in half the rows ({b.nnz:,} nnz)",
        "k": k, "seeds": seeds, "norm_A_norm_B": f"{na * nb:.4g}", "norm_AtB": f"{nab:.4g}"}}
    with tempfile.TemporaryDirectory(prefix="bl-sparse-sketch-") as tmp:
        root = Path(tmp)
        A = bl.from_array(a, root / "A.zarr")
        B = bl.from_array(b, root / "B.zarr")
        work = str(root / "w")

        errs, t0 = [], time.perf_counter()
        for s in range(seed, seed + seeds):
            sa = sketch_for_product(A, k, "coordinated", seed=s).compute(work_dir=work)
            sb = sketch_for_product(B, k, "coordinated", seed=s).compute(work_dir=work)
            errs.append(float(np.linalg.norm(estimate_product(sa, sb).estimate - ref)))
        t_coord = (time.perf_counter() - t0) / seeds
        sa.save(root / "sa.zarr")
        sb.save(root / "sb.zarr")
        rms_c = float(np.sqrt(np.mean(np.square(errs))))
        out["coordinated"] = {
            "k": k, "numbers_A": sa.size, "sampled_nnz_A": sa.nnz,
            "bytes_on_disk_A": _disk_bytes(root / "sa.zarr"), "numbers_B": sb.size,
            "bytes_on_disk_B": _disk_bytes(root / "sb.zarr"),
            "rms_err": f"{rms_c:.4g}", "rel_err_vs_normA_normB": f"{rms_c / (na * nb):.3e}",
            "seconds_per_pair": round(t_coord, 2)}
        out["coordinated, former dense layout"] = {
            "k": k, "numbers_A": (k + 1) * (cols + 2), "numbers_B": (k + 1) * (cols + 2),
            "bytes_on_disk_A": 8 * (k + 1) * (cols + 2)}

        gerrs, t0 = [], time.perf_counter()
        for s in range(seed, seed + seeds):
            ga = sketch_for_product(A, k, "gaussian", seed=s).compute(work_dir=work)
            gb = sketch_for_product(B, k, "gaussian", seed=s).compute(work_dir=work)
            gerrs.append(float(np.linalg.norm(estimate_product(ga, gb).estimate - ref)))
        t_gauss = (time.perf_counter() - t0) / seeds
        bl.from_array(ga, root / "ga.zarr")
        g_bytes = _disk_bytes(root / "ga.zarr")
        theory = (na**2 * nb**2 + nab**2)
        rms_g = float(np.sqrt(np.mean(np.square(gerrs))))
        out["gaussian"] = {
            "k": k, "numbers_A": ga.size, "bytes_on_disk_A": g_bytes,
            "numbers_B": gb.size, "rms_err": f"{rms_g:.4g}",
            "rel_err_vs_normA_normB": f"{rms_g / (na * nb):.3e}",
            "closed_form_rms_err": f"{np.sqrt(theory / k):.4g}",
            "seconds_per_pair": round(t_gauss, 2)}

    k_eq = int(np.ceil(theory / rms_c**2))
    out["gaussian at the coordinated error"] = {
        "k": k_eq, "numbers_A": k_eq * cols, "bytes_on_disk_A": int(g_bytes * k_eq / k),
        "rms_err": f"{np.sqrt(theory / k_eq):.4g} (closed form)",
        "numbers_x_coordinated": round(k_eq * cols / sa.size, 1),
        "bytes_x_coordinated": round(g_bytes * k_eq / k / out["coordinated"]["bytes_on_disk_A"], 1),
        "note": ("k beyond the row count: no Gaussian sketch smaller than A reaches it"
                 if k_eq > rows else "")}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="20,000 rows, k = 1024")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    kw: dict[str, Any] = {"rows": 20_000, "k": 1024} if a.quick else {}
    result = run_sparse_sketch(a.seed, seeds=a.seeds, **kw)
    if a.json:
        print(json.dumps(result, indent=1))
        return
    keys = ["k", "numbers_A", "sampled_nnz_A", "bytes_on_disk_A", "numbers_B", "rms_err",
            "rel_err_vs_normA_normB", "closed_form_rms_err", "numbers_x_coordinated",
            "bytes_x_coordinated", "seconds_per_pair", "note"]
    for key, value in result["data"].items():
        print(f"{key}: {value}")
    print("\n| case | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for case, row in result.items():
        if case != "data":
            print(f"| {case} | " + " | ".join(str(row.get(c, "")) for c in keys) + " |")


if __name__ == "__main__":
    main()
