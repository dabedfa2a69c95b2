"""Run manifests and output files.

Layout of a pipeline's ``output_dir``::

    manifest.json         written last: the record of the run that produced the outputs
    <output>.npz          small results, as named arrays
    <output>.zarr/        matrix results (BlockMatrix)
    report/               report.md and PNG plots
    .staging/             a run's outputs before they are moved into place
    .refresh/             row batches applied by ``blocklin refresh``
    .blocklin.lock        present while a run holds the directory

Outputs are written to ``.staging`` and renamed into place one by one, then the
manifest is replaced atomically; readers that go through the manifest see either
the previous run or this one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MANIFEST_NAME", "arrays_digest", "load_manifest", "load_small", "peak_rss_bytes",
           "save_small", "versions", "write_json_atomic"]

MANIFEST_NAME = "manifest.json"


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write JSON by temp file and rename, so readers never see half a document."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=_default) + "\n")
    os.replace(tmp, path)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} into a manifest")


def load_manifest(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    return doc if isinstance(doc, dict) else None


def save_small(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save named arrays as ``.npz`` (no pickles), atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def load_small(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """A content hash of named arrays (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def move_into_place(src: Path, dst: Path) -> None:
    """Replace ``dst`` by ``src`` (a file or a directory), keeping the window short."""
    if src.is_dir():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        if dst.exists():
            os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (the driver)."""
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def versions() -> dict[str, str]:
    """Versions of blocklin and the libraries that shape its numbers."""
    from importlib.metadata import version

    import scipy
    import zarr

    import blocklin

    return {"blocklin": blocklin.__version__, "python": platform.python_version(),
            "numpy": np.__version__, "scipy": scipy.__version__, "dask": version("dask"),
            "zarr": zarr.__version__, "platform": platform.platform()}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
