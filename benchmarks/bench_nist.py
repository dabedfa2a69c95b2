"""NIST StRD linear regression: correct digits of blocklin's solvers against a Householder solve.

For each of the eleven datasets in ``tests/data/nist`` the design is stored as a
BlockMatrix of five or six row blocks and fitted by ``qr`` and ``auto``; the table shows
the smallest log relative error (LRE, digits) over the coefficients against the certified
values, the same for a Householder QR solve of the whole design in memory (LAPACK
``geqrf`` through scipy), the smallest per-coefficient difference (ours − Householder;
the tests require ≥ −0.5), the passes over the data and the seconds per fit.

    .venv/bin/python benchmarks/bench_nist.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "tests" / "ml"))

from test_nist import DATASETS, householder, lre, stored  # noqa: E402
from test_nist import load as load_nist  # noqa: E402

from blocklin.ml import LinearRegression  # noqa: E402


def main() -> None:
    print(f"{'dataset':<10}{'solver':>7}{'LRE':>7}{'Householder':>13}{'min diff':>10}"
          f"{'passes':>8}{'seconds':>9}")
    for name in DATASETS:
        X, y, cert, intercept = load_nist(name)
        ref = lre(householder(X, y, intercept), cert)
        for solver in ("qr", "auto"):
            with tempfile.TemporaryDirectory() as tmp:
                A, Y = stored(Path(tmp), X, y)
                t0 = time.perf_counter()
                m = LinearRegression(fit_intercept=intercept, solver=solver,
                                     work_dir=str(Path(tmp) / "w")).fit(A, Y)
                seconds = time.perf_counter() - t0
            got = np.concatenate([[m.intercept_], m.coef_]) if intercept else m.coef_
            ours = lre(got, cert)
            print(f"{name:<10}{solver:>7}{ours.min():>7.2f}{ref.min():>13.2f}"
                  f"{(ours - ref).min():>10.2f}{m.n_passes_:>8}{seconds:>9.2f}")


if __name__ == "__main__":
    main()
