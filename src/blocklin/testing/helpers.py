"""Assertion helpers and test matrices."""

from __future__ import annotations

import socket
from typing import Any

import numpy as np

__all__ = ["assert_bitwise_equal", "free_ports", "random_matrix"]


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now (for servers a test starts)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sk in socks:
            sk.bind(("127.0.0.1", 0))
        return [int(sk.getsockname()[1]) for sk in socks]
    finally:
        for sk in socks:
            sk.close()


def assert_bitwise_equal(a: Any, b: Any) -> None:
    """Assert two arrays are identical bit for bit (NaNs included)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise AssertionError(f"shape/dtype differ: {a.shape} {a.dtype} vs {b.shape} {b.dtype}")
    if a.tobytes() != b.tobytes():
        diff = np.flatnonzero(a.view(np.uint8) != b.view(np.uint8))
        raise AssertionError(f"arrays differ in {diff.size} bytes; first at byte {diff[0]}")


def random_matrix(m: int, n: int, *, kind: str = "gaussian", cond: float = 1e3, seed: int = 0,
                  dtype: Any = np.float64) -> np.ndarray:
    """Test matrices: ``gaussian``, ``conditioned`` (given 2-norm condition number),
    ``lowrank`` (rank min(m, n)//4), ``integer`` (small integers, exactly representable).
    """
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        x = rng.standard_normal((m, n))
    elif kind == "conditioned":
        u, _ = np.linalg.qr(rng.standard_normal((m, n)))
        v, _ = np.linalg.qr(rng.standard_normal((n, n)))
        x = (u * np.logspace(0, -np.log10(cond), n)) @ v.T
    elif kind == "lowrank":
        r = max(1, min(m, n) // 4)
        x = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
    elif kind == "integer":
        x = rng.integers(-8, 9, size=(m, n)).astype(np.float64)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return x.astype(dtype)
