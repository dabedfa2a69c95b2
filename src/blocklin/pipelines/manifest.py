"""Run manifests and output files: what a reader of an output directory can rely on.

Layout of a pipeline's ``output_dir`` (a local folder or an fsspec URL)::

    manifest.json         written last: the record of the run that produced the outputs
    <output>.npz          small results, as named arrays          (local folders)
    <output>.zarr/        matrix results (BlockMatrix)             (local folders)
    report/               report.md and PNG plots                  (local folders)
    runs/<run id>/        a run's outputs and report              (object stores)
    .staging/             a local run's outputs before they are moved into place
    .refresh/             row batches, merge states and persisted state of refreshes
    .blocklin.lock        present while a run holds the directory

``manifest.json`` is the commit point, and the only way in: each output's ``path``
in it is relative to the output directory, its record holds the output's identity
(``digest`` of a small output's arrays, ``fingerprint`` of a matrix). It is replaced
in one step (a rename locally, a single PUT on object stores), so a reader sees the
previous run's manifest or this one's, never part of either.

In a local folder, outputs are written to ``.staging`` and renamed into place one
by one just before the manifest is replaced; between those renames and the manifest,
a file at an output's name may already be the new run's. On an object store nothing
is renamed: a run writes every output, and its report, under ``runs/<run id>/``,
which nothing names until the manifest does, and which is never written again once
committed. So a reader of an object-store ``output_dir`` that

- reads ``manifest.json`` once and then the paths it names gets exactly the outputs
  of that run (all of them, complete), never a mixture of two runs;
- finds those paths readable at least until the run after the next one commits
  (older ``runs/`` prefixes are removed after a commit);
- should not read ``runs/`` prefixes the manifest does not name: they belong to a run
  that has not committed (or was killed) and may be incomplete.

:func:`load_output` and :func:`verify_outputs` (``blocklin verify OUTPUT_DIR``)
follow that rule, and check each output against the identity its record holds.
"""

from __future__ import annotations

import hashlib
import json
import platform
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from blocklin.pipelines.outdir import OutputDir, output_dir_for
from blocklin.storage.npz import npz_arrays, npz_bytes

__all__ = ["MANIFEST_NAME", "arrays_digest", "load_manifest", "load_output", "load_small",
           "peak_rss_bytes", "save_small", "verify_outputs", "versions", "write_json_atomic"]

MANIFEST_NAME = "manifest.json"

Where = str | Path | OutputDir


def write_json_atomic(where: OutputDir, rel: str, doc: Any) -> None:
    """Write JSON in one step (temp file and rename, or one PUT): never half a document."""
    data = json.dumps(doc, indent=1, sort_keys=True, default=_default) + "\n"
    where.write_bytes(rel, data.encode())


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} into a manifest")


def load_manifest(output_dir: Where) -> dict[str, Any] | None:
    """The manifest of the last committed run in ``output_dir``, or None if none ran."""
    data = output_dir_for(output_dir).read_bytes(MANIFEST_NAME)
    if data is None:
        return None
    doc = json.loads(data)
    return doc if isinstance(doc, dict) else None


def save_small(where: OutputDir, rel: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Save named arrays as ``.npz`` (no pickles), atomically."""
    where.write_bytes(rel, npz_bytes(arrays))


def load_small(where: Where, rel: str | None = None) -> dict[str, np.ndarray]:
    """Named arrays saved by :func:`save_small`: ``load_small(path)`` for a file, or
    ``load_small(output_dir, rel)`` for one inside an output directory.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    """
    if rel is None:
        text = str(where).rstrip("/")
        parent, _, rel = text.rpartition("/")
        where = parent or "/"
    out = output_dir_for(where)
    data = out.read_bytes(rel)
    if data is None:
        raise FileNotFoundError(f"no such file: {out.url(rel)}")
    return npz_arrays(data)


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """A content hash of named arrays (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def _committed(output_dir: Where) -> tuple[OutputDir, dict[str, Any]]:
    out = output_dir_for(output_dir)
    manifest = load_manifest(out)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {out.location}: no run has committed "
                                "outputs there (run the pipeline first)")
    return out, manifest


def load_output(output_dir: Where, name: str) -> Any:
    """An output of the last committed run, found through the manifest and checked.

    Parameters
    ----------
    output_dir : str, path or OutputDir
        The pipeline's output directory (a URL's storage options registered first).
    name : str
        The output's name in the spec.

    Returns
    -------
    dict of numpy arrays or BlockMatrix
        A small output's arrays (their digest checked against the manifest's), or a
        matrix output (its fingerprint checked).

    Raises
    ------
    FileNotFoundError
        No run has committed, or the output it names is gone.
    KeyError
        The manifest has no output ``name``.
    InputChangedError
        The stored output is not the one the manifest records.
    """
    from blocklin.errors import InputChangedError
    from blocklin.storage import open_matrix

    out, manifest = _committed(output_dir)
    outputs = manifest.get("outputs", {})
    if name not in outputs:
        raise KeyError(f"the manifest in {out.location} has no output {name!r} (outputs: "
                       f"{', '.join(outputs) or 'none'})")
    rec = outputs[name]
    if rec.get("kind") == "matrix":
        m = open_matrix(out.url(rec["path"]))
        got = m.fingerprint
        want = rec.get("fingerprint")
        value: Any = m
    else:
        value = load_small(out, rec["path"])
        got, want = arrays_digest(value), rec.get("digest")
    if want is not None and got != want:
        raise InputChangedError(f"output {name!r} at {out.url(rec['path'])} is not the one "
                                f"the manifest records (identity {got}, manifest {want}); "
                                "rerun the pipeline")
    return value


def verify_outputs(output_dir: Where, max_blocks: int | None = None) -> dict[str, Any]:
    """Check every output the manifest names: matrices chunk by chunk (checksums,
    missing chunks, fingerprint against the manifest's), small outputs by digest.

    Returns
    -------
    dict
        ``ok``, ``manifest`` and per output ``{"path", "kind", "ok", ...}``.
    """
    from blocklin.errors import IncompleteArrayError
    from blocklin.pipelines.inspect import verify_array
    from blocklin.storage import open_matrix

    out, manifest = _committed(output_dir)
    results: dict[str, Any] = {}
    for name, rec in manifest.get("outputs", {}).items():
        url = out.url(rec["path"])
        if rec.get("kind") == "matrix":
            kw = {} if max_blocks is None else {"max_blocks": max_blocks}
            try:
                d = verify_array(url, **kw)
                recorded = open_matrix(url).fingerprint
            except (FileNotFoundError, IncompleteArrayError) as exc:
                results[name] = {"path": url, "kind": "matrix", "ok": False, "error": str(exc)}
                continue
            same = recorded == rec.get("fingerprint")
            results[name] = {**d, "path": url, "kind": "matrix", "ok": bool(d["ok"]) and same,
                             "fingerprint": recorded,
                             "manifest_fingerprint": rec.get("fingerprint")}
        else:
            try:
                digest = arrays_digest(load_small(out, rec["path"]))
            except (FileNotFoundError, ValueError, OSError) as exc:
                results[name] = {"path": url, "kind": "small", "ok": False, "error": str(exc)}
                continue
            results[name] = {"path": url, "kind": "small", "ok": digest == rec.get("digest"),
                             "digest": digest, "manifest_digest": rec.get("digest")}
    return {"url": out.location, "manifest": out.url(MANIFEST_NAME),
            "ok": all(r["ok"] for r in results.values()), "outputs": results}


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
