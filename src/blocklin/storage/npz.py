"""Named small arrays as ``.npz`` bytes (numpy's zip format, never pickled).

Manifests' small results, saved models and SVD log records use it: every member is
CRC-32 checked by zip when read back.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, cast

import numpy as np

__all__ = ["npz_arrays", "npz_bytes"]


def npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    """The ``.npz`` bytes of ``arrays`` (name -> array), uncompressed."""
    buf = io.BytesIO()
    # numpy's stub types **kwds against allow_pickle: bool as well.
    np.savez(buf, **cast(dict[str, Any], arrays))
    return buf.getvalue()


def npz_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of ``.npz`` bytes, read into memory; pickled members are refused.

    Raises
    ------
    ValueError, OSError, zipfile.BadZipFile
        For bytes that are not a readable ``.npz`` (a torn or corrupted file).
    """
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {key: np.array(z[key]) for key in z.files}
