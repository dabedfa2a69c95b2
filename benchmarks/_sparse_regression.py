"""Peak memory and accuracy of a sparse 20,000 × 50,000 LinearRegression fit (issue 17).

Each fit runs in a child process, whose peak resident memory (``ru_maxrss`` of the
child) is the figure: the interpreter and its imports included, so a child that only
imports and builds the same CSR matrix is measured too (``baseline``).

What is compared: with 20,000 rows and 50,000 columns OLS is underdetermined, and
each solver returns another of its minimizers (scikit-learn's LSQR the minimum-norm one
of the centred system, L-BFGS in standardized coordinates another), so the comparison
is made on a well-posed problem: ridge with an intercept, blocklin's
``1/(2n)‖y − Xβ − b‖² + λ/2‖β‖²`` against scikit-learn's ``Ridge(alpha=nλ)`` on the
same CSR, solved by its LSQR to 1e-15 (its ``sparse_cg`` takes 8 GB here: with more
columns than rows it works on the dual). ``auto`` picks L-BFGS there
(50,000 features: the normal equations' statistics would take 18.6 GiB).

Run ``python benchmarks/_sparse_regression.py``; ``benchmarks/bench_sparse.py`` imports
:func:`run_sparse_regression`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

__all__ = ["run_sparse_regression"]

#: Ridge penalty λ (per row) of the compared fit: about the columns' variance (2e-4),
#: so both the penalty and the data shape the solution.
REG_PARAM = 1e-4

_CHILD = r"""
import json, resource, sys, time
import numpy as np
import scipy.sparse as sp

rows, cols, density, seed, mode, out, work, reg = sys.argv[1:]
rows, cols, seed = int(rows), int(cols), int(seed)
density, reg = float(density), float(reg)
rng = np.random.default_rng(seed)
# Entries at uniform positions, O(nnz) memory (scipy.sparse.random draws its positions
# from all rows x cols: an 8 GB permutation at 20,000 x 50,000).
k = round(rows * cols * density)
X = sp.csr_matrix((rng.standard_normal(k), (rng.integers(0, rows, k), rng.integers(0, cols, k))),
                  shape=(rows, cols))
X.sum_duplicates()
beta = rng.standard_normal(cols)
y = np.asarray(X @ beta).reshape(-1) + 1.0 + 0.1 * rng.standard_normal(rows)
t0 = time.perf_counter()
info = {}
if mode == "blocklin-memory" or mode == "blocklin-stored":
    import blocklin as bl
    from blocklin.ml import LinearRegression
    Xin = X
    if mode == "blocklin-stored":
        Xin = bl.from_array(X, work + "/X.zarr", chunks=(5000, None), overwrite=True)
    m = LinearRegression(reg_param=reg, tol=1e-12, max_iter=5000, work_dir=work).fit(Xin, y)
    coef, intercept = m.coef_, m.intercept_
    info = {"solver": m.solver_, "iterations": int(m.n_iter_), "passes": int(m.n_passes_)}
elif mode == "sklearn":
    from sklearn.linear_model import Ridge
    r = Ridge(alpha=reg * rows, solver="lsqr", tol=1e-15, max_iter=1000000).fit(X, y)
    coef, intercept = r.coef_, r.intercept_
    info = {"solver": "lsqr", "iterations": int(np.max(r.n_iter_))}
else:  # baseline: the imports and the matrix only
    import blocklin, blocklin.ml, sklearn.linear_model  # noqa: F401
    coef, intercept = np.zeros(cols), 0.0
info["seconds"] = time.perf_counter() - t0
info["maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
np.save(out, np.append(coef, intercept))
print(json.dumps(info))
"""


def _child(mode: str, rows: int, cols: int, density: float, seed: int,
           tmp: str) -> tuple[dict[str, Any], np.ndarray]:
    out = os.path.join(tmp, f"{mode}.npy")
    work = os.path.join(tmp, f"work-{mode}")
    os.makedirs(work, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(rows), str(cols), str(density),
                           str(seed), mode, out, work, str(REG_PARAM)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{proc.stderr[-4000:]}")
    info: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return info, np.load(out)


def run_sparse_regression(rows: int = 20000, cols: int = 50000, density: float = 0.0002,
                          seed: int = 0) -> dict[str, Any]:
    """Fit the sparse ridge problem with blocklin (in-memory and stored CSR) and scikit-learn.

    Parameters
    ----------
    rows, cols, density, seed : int, int, float, int
        The seeded CSR matrix: rows·cols·density standard normal entries at uniform
        positions (duplicates summed); y = Xβ + 1 + noise.

    Returns
    -------
    dict
        ``peak_bytes`` (largest child maxrss of the blocklin fits), ``baseline_bytes``
        (imports and matrix only), per fit its ``solver``, ``seconds``, ``maxrss_bytes``,
        and ``max_abs_diff`` / ``max_rel_diff`` of [coef, intercept] against
        scikit-learn's (relative to the largest reference coefficient), with
        ``compared`` saying what was compared.
    """
    with tempfile.TemporaryDirectory(prefix="blocklin-sparse-reg-") as tmp:
        base, _ = _child("baseline", rows, cols, density, seed, tmp)
        fits, coefs = {}, {}
        for mode in ("blocklin-memory", "blocklin-stored"):
            fits[mode], coefs[mode] = _child(mode, rows, cols, density, seed, tmp)
        ref_info, ref = _child("sklearn", rows, cols, density, seed, tmp)
        for mode, info in fits.items():
            diff = float(np.abs(coefs[mode] - ref).max())
            info.update(max_abs_diff=diff, max_rel_diff=diff / float(np.abs(ref).max()))
            fits[mode] = info
    return {
        "shape": [rows, cols], "density": density, "nnz": round(rows * cols * density),
        "compared": (f"ridge with intercept, reg_param={REG_PARAM} against scikit-learn "
                     f"Ridge(alpha={REG_PARAM * rows:g}, solver='lsqr', tol=1e-15) on "
                     "the same CSR; coefficients and intercept"),
        "baseline_bytes": base["maxrss_bytes"],
        "peak_bytes": max(f["maxrss_bytes"] for f in fits.values()),
        "sklearn": ref_info,
        "fits": fits,
    }


def main() -> None:
    t0 = time.perf_counter()
    res = run_sparse_regression()
    gib = 2**30
    print(f"sparse regression {res['shape'][0]:,} x {res['shape'][1]:,}, "
          f"density {res['density']} ({res['nnz']:,} nonzeros)")
    print(f"compared: {res['compared']}")
    print(f"baseline child (imports + matrix): {res['baseline_bytes'] / gib:.3f} GiB")
    print(f"scikit-learn: {res['sklearn']['seconds']:.1f} s, "
          f"{res['sklearn']['iterations']} LSQR iterations, "
          f"peak {res['sklearn']['maxrss_bytes'] / gib:.3f} GiB")
    for mode, f in res["fits"].items():
        print(f"{mode:16} solver={f['solver']} iterations={f['iterations']} "
              f"passes={f['passes']} {f['seconds']:.1f} s  peak {f['maxrss_bytes'] / gib:.3f} "
              f"GiB  max|Δ|={f['max_abs_diff']:.2e}  rel={f['max_rel_diff']:.2e}")
    ok_mem = res["peak_bytes"] < gib
    ok_acc = all(f["max_abs_diff"] <= 1e-8 for f in res["fits"].values())
    print(f"peak under 1 GiB: {ok_mem}; coefficients within 1e-8: {ok_acc} "
          f"({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
