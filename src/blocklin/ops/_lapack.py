"""LAPACK's compact-WY Householder QR (``dgeqrt``, ``dgemqrt``) called without the GIL.

scipy's f2py wrappers of these two routines hold the GIL for the whole call (unlike
``dgeqrf``'s), so tasks factoring panels on a threaded scheduler would run one at a
time. The same LAPACK routines are reached here through ``scipy.linalg.cython_lapack``'s
exported C function pointers (a stable scipy API), called by ctypes, which releases the
GIL for the duration of a foreign call: the same library, the same bits.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import numpy as np

__all__ = ["dgemqrt", "dgeqrt"]

_INT = ctypes.POINTER(ctypes.c_int)
_CHAR = ctypes.c_char_p
_PTR = ctypes.c_void_p


@cache
def _routine(name: str, *argtypes: Any) -> Any:
    """The C function ``name`` of scipy's cython_lapack as a GIL-releasing ctypes call."""
    from scipy.linalg import cython_lapack

    capsule = cython_lapack.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object,
                                                                  ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    return ctypes.CFUNCTYPE(None, *argtypes)(address)


def _int(v: int) -> Any:
    return ctypes.byref(ctypes.c_int(v))


def _check(name: str, info: ctypes.c_int, shape: tuple[int, ...]) -> None:
    if info.value != 0:
        raise ValueError(f"LAPACK {name} failed (info={info.value}) on a {shape} panel")


def _fortran(a: np.ndarray, what: str) -> None:
    if not (a.dtype == np.float64 and a.flags.f_contiguous and a.flags.writeable):
        raise ValueError(f"{what} must be a writeable Fortran-ordered float64 array; got "
                         f"{a.dtype}, flags {a.flags}")


def dgeqrt(a: np.ndarray, nb: int) -> tuple[np.ndarray, np.ndarray]:
    """Factor ``a`` (m × n, Fortran-ordered float64, nonempty) in place: reflectors below
    the diagonal, R on and above it. Returns ``(a, T)``, T the nb × min(m, n) block
    reflector factors; ``1 <= nb <= min(m, n)``."""
    _fortran(a, "dgeqrt's panel")
    m, n = a.shape
    k = min(m, n)
    t = np.zeros((nb, k), order="F")
    work = np.empty(nb * n)
    info = ctypes.c_int(0)
    fn = _routine("dgeqrt", _INT, _INT, _INT, _PTR, _INT, _PTR, _INT, _PTR, _INT)
    fn(_int(m), _int(n), _int(nb), a.ctypes.data, _int(m), t.ctypes.data, _int(nb),
       work.ctypes.data, ctypes.byref(info))
    _check("dgeqrt", info, a.shape)
    return a, t


def dgemqrt(v: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``Q @ c`` in place (c: m × p, Fortran-ordered float64) for the Q of :func:`dgeqrt`'s
    ``(v, t)`` (v: m × k reflectors)."""
    _fortran(c, "dgemqrt's product")
    m, p = c.shape
    k = t.shape[1]
    nb = t.shape[0]
    vf = np.asfortranarray(v)
    tf = np.asfortranarray(t)
    work = np.empty(max(1, nb * p))
    info = ctypes.c_int(0)
    fn = _routine("dgemqrt", _CHAR, _CHAR, _INT, _INT, _INT, _INT, _PTR, _INT, _PTR, _INT,
                  _PTR, _INT, _PTR, _INT)
    fn(b"L", b"N", _int(m), _int(p), _int(k), _int(nb), vf.ctypes.data, _int(vf.shape[0]),
       tf.ctypes.data, _int(nb), c.ctypes.data, _int(m), work.ctypes.data, ctypes.byref(info))
    _check("dgemqrt", info, c.shape)
    return c
