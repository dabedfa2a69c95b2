"""What xarray (and any zarr reader) sees of blocklin's arrays: dimensions and coordinates.

xarray opens zarr *groups*, one variable per array, named along the array's zarr v3
``dimension_names``. Every array blocklin writes carries them: ``("row", "col")`` for a
matrix (:data:`~blocklin.storage.meta.MATRIX_DIMS`), ``("row", "label")`` for a label
column. Where blocklin writes a matrix whose columns have names (``blocklin ingest`` of
a table, :func:`~blocklin.from_spark`), the folder holding it is made a zarr group and
the names are written beside it as coordinate arrays, ``col`` (the features) and
``label`` (the label column's name), so that::

    ds = xr.open_zarr("data", consolidated=False)
    ds["X.zarr"].sel(col="age")           # X (row, col), column names on col
    ds["X.label.zarr"]                    # the labels (row, label)

The group's other entries are left alone; ``bl.open("data/X.zarr")`` is unchanged.
One folder holds one table's coordinates: when another table with other column names
is written into the same folder, the clashing coordinate is removed (xarray then
shows positions, never another table's names) and the names stay in each array's
``blocklin.columns`` attribute.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from blocklin.storage.meta import ATTRS_NAMESPACE, MATRIX_DIMS, METADATA_KEY
from blocklin.storage.stores import Store, storage_options_for, store_for

__all__ = ["LABEL_DIMS", "MATRIX_DIMS", "column_names", "label_path_for", "write_coordinates"]

log = logging.getLogger(__name__)

#: The dimensions of a label column (n × 1) written beside a matrix: the matrix's rows,
#: and ``label``, whose coordinate is the label column's name.
LABEL_DIMS = ("row", "label")
#: The ``blocklin.operator`` of the coordinate arrays written here (only those are
#: ever replaced or removed).
_COORDINATE = "coordinate"


def label_path_for(path: str | os.PathLike[str]) -> str:
    """Where the label column of the matrix at ``path`` is written by default:
    ``X.zarr`` → ``X.label.zarr`` (``blocklin ingest --label`` and ``from_spark(label=)``)."""
    p = os.fspath(path).rstrip("/")
    return (p[:-5] if p.endswith(".zarr") else p) + ".label.zarr"


def column_names(attrs: Mapping[str, Any], ncols: int) -> list[str] | None:
    """The column names recorded in an array's attributes (by ingest or from_spark);
    None when there are none for its ``ncols`` columns."""
    doc = attrs.get(ATTRS_NAMESPACE)
    if not isinstance(doc, Mapping):
        return None
    names = doc.get("columns")
    if isinstance(names, list) and len(names) == ncols and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _parent(url: str) -> str:
    if "://" in url and not url.startswith("file://"):
        return posixpath.dirname(url.rstrip("/"))
    return os.path.dirname(os.path.abspath(url.removeprefix("file://").rstrip("/")))


def write_coordinates(matrix_url: str, coords: Mapping[str, Sequence[str]]) -> None:
    """Make the folder of ``matrix_url`` a zarr group and write ``coords`` into it.

    Parameters
    ----------
    matrix_url : str
        A matrix blocklin has written (its folder becomes the group).
    coords : mapping of str to sequence of str
        Coordinate name (a dimension of the matrix, ``col`` or ``label``) to the names
        along it.

    Notes
    -----
    An existing group is kept, and so is any entry blocklin did not write. A
    coordinate written for this matrix before (an ingest redone) is replaced; one
    written for another matrix in the same folder with other names is removed rather
    than left naming the wrong columns.
    """
    # The folder takes the matrix's storage options (registered for the matrix's URL,
    # which the folder is above).
    group = store_for(_parent(matrix_url), storage_options=storage_options_for(matrix_url))
    if not _make_group(group):
        return
    owner = posixpath.basename(matrix_url.rstrip("/"))
    for name, values in coords.items():
        _write_coordinate(group, name, [str(v) for v in values], owner)


def _make_group(store: Store) -> bool:
    """Whether ``store`` is (now) a zarr group; a folder without metadata becomes one."""
    raw = store.get(METADATA_KEY)
    if raw is None:
        store.put(METADATA_KEY, json.dumps({"zarr_format": 3, "node_type": "group",
                                            "attributes": {}}).encode())
        return True
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("node_type") == "group"


def _write_coordinate(group: Store, name: str, values: list[str], owner: str) -> None:
    child = group.child(name)
    found = _coordinate(child)
    if found is None:
        if child.list(""):
            return  # not written by blocklin: left alone
    else:
        written_for, existing = found
        if existing == values:
            return
        if written_for != owner and existing:
            log.warning("%s names the columns of %s; %s has other columns, so the coordinate "
                        "is removed (xarray shows positions along %r)", child.url, written_for,
                        owner, name)
            child.delete_prefix("")
            return
        child.delete_prefix("")  # this matrix's own, from an earlier write (or damaged)
    import numpy as np
    import zarr

    arr = zarr.create_array(group.zarr_store(), name=name, shape=(len(values),),
                            chunks=(max(len(values), 1),), dtype=str, dimension_names=(name,),
                            compressors=None,
                            attributes={ATTRS_NAMESPACE: {"operator": _COORDINATE,
                                                          "for": owner}})
    arr[...] = np.asarray(values, dtype=str)


def _coordinate(child: Store) -> tuple[str, list[str]] | None:
    """(the matrix it was written for, its names) of a coordinate array blocklin wrote
    at ``child``; None when there is none of blocklin's there."""
    raw = child.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    ns = attrs.get(ATTRS_NAMESPACE) if isinstance(attrs, dict) else None
    if not isinstance(ns, dict) or ns.get("operator") != _COORDINATE:
        return None
    import numpy as np
    import zarr

    try:
        stored = np.asarray(zarr.open_array(child.zarr_store(), mode="r")[...])
        values = [str(v) for v in stored.ravel()]
    except Exception:  # a damaged coordinate of ours is rewritten
        values = []
    return str(ns.get("for")), values
