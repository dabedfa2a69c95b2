"""Exact rational references (``fractions``) for the extended-precision tests."""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def solve_rational(A: list[list[Fraction]], b: list[Fraction]) -> list[Fraction]:
    """x with A x = b exactly, by Gauss-Jordan elimination (A nonsingular, no pivoting
    needed: the tests pass symmetric positive definite A)."""
    n = len(b)
    M = [[*row, bi] for row, bi in zip(A, b, strict=True)]
    for i in range(n):
        M[i] = [v / M[i][i] for v in M[i]]
        for j in range(n):
            if j != i and M[j][i] != 0:
                f = M[j][i]
                M[j] = [a - f * c for a, c in zip(M[j], M[i], strict=True)]
    return [M[i][n] for i in range(n)]


def exact_least_squares(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares solution and residual sum of squares of the float64 data X, y,
    computed exactly (normal equations over the rationals), rounded to double."""
    Z = [[Fraction(float(v)) for v in row] for row in X]
    t = [Fraction(float(v)) for v in y]
    k = X.shape[1]
    G = [[sum(r[i] * r[j] for r in Z) for j in range(k)] for i in range(k)]
    c = [sum(r[i] * ti for r, ti in zip(Z, t, strict=True)) for i in range(k)]
    sol = solve_rational(G, c)
    sse = sum((ti - sum(a * b for a, b in zip(r, sol, strict=True))) ** 2
              for r, ti in zip(Z, t, strict=True))
    return np.array([float(v) for v in sol]), float(sse)
