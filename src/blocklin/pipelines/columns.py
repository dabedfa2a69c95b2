"""Matching a refresh batch's columns to the input's, by the names ingest recorded.

``blocklin ingest`` of a CSV or Parquet table records the feature columns it kept,
in order (``columns``), the kind of each (``column_kinds``: ``bool``, ``int`` or
``float``) and whether they were chosen with ``--columns`` (or some left out with
``--exclude``, which a batch may then carry). A batch appended to
such an input is read by those names, so a batch with its columns in another order
lands in the same stored columns; a batch with a column missing, renamed, added
(when ingest kept every numeric column) or of another kind is refused before
anything is appended, naming the columns.

Inputs whose columns have no names (``.npy`` or zarr sources, ``from_array``), and
batches without names (``.npy``, zarr: a matrix whose columns are the input's by
construction), are taken by position, as before; column count and kinds are checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from blocklin.errors import InputValueError
from blocklin.pipelines.ingest import detect_format, read_source, table_schema
from blocklin.storage import BlockMatrix

__all__ = ["batch_columns"]

_TABLES = ("csv", "parquet")
_NUMERIC = ("bool", "int", "float")


def batch_columns(src: str, target: BlockMatrix, label: str | None) -> list[str] | None:
    """The batch's columns to read, in the input's order (None: take them by position).

    Parameters
    ----------
    src : str
        The batch file.
    target : BlockMatrix
        The input the batch extends.
    label : str, optional
        The batch's label column (not a feature).

    Raises
    ------
    InputValueError
        Naming missing, extra, renamed or changed-kind columns.

    Notes
    -----
    Reads the batch's schema only (Parquet footer, the first CSV block).
    """
    prov = target.provenance
    raw_params = prov.get("params")
    params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
    raw = prov.get("columns")
    recorded = [str(c) for c in raw] if isinstance(raw, list) else None
    kinds = _kinds(prov, recorded)
    if recorded is None or params.get("format") not in _TABLES \
            or detect_format(src) not in _TABLES:
        _check_positional(src, target, label, kinds)
        return None
    left_out = params.get("exclude")
    _check_named(src, target, recorded, kinds, label, selected=params.get("columns") is not None,
                 excluded=[str(c) for c in left_out] if isinstance(left_out, list) else [])
    return recorded


def _kinds(prov: Mapping[str, Any], recorded: list[str] | None) -> list[str] | None:
    kinds = prov.get("column_kinds")
    if isinstance(kinds, list) and isinstance(recorded, list) and len(kinds) == len(recorded):
        return [str(k) for k in kinds]
    return None  # an input ingested before kinds were recorded


def _check_named(src: str, target: BlockMatrix, recorded: Sequence[str],
                 kinds: Sequence[str] | None, label: str | None, selected: bool,
                 excluded: Sequence[str] = ()) -> None:
    schema = table_schema(src)
    features = {n: k for n, k in schema.items() if n != label}
    missing = [c for c in recorded if c not in features]
    # Ingest without --columns kept every numeric column: a new one would be dropped
    # silently, so it is refused; with --columns, other columns were meant to be left.
    extra = [] if selected else [c for c, k in features.items()
                                 if k in _NUMERIC and c not in recorded and c not in excluded]
    changed = [] if kinds is None else [
        f"{c!r} ({k} in the input, {features[c]} in the batch)"
        for c, k in zip(recorded, kinds, strict=True) if c in features and features[c] != k]
    if not (missing or extra or changed):
        return
    problems = []
    if missing and extra:
        problems.append(f"columns {_names(missing)} are missing and {_names(extra)} are new "
                        "(renamed?)")
    elif missing:
        problems.append(f"columns {_names(missing)} are missing")
    elif extra:
        problems.append(f"columns {_names(extra)} are not in the input")
    if changed:
        problems.append(f"columns changed kind: {', '.join(changed)}")
    raise InputValueError(
        f"batch {src} does not match the columns of {target.url}: {'; '.join(problems)}. A "
        f"batch needs the input's columns ({', '.join(recorded)}), in any order, of the same "
        "kinds; fix the batch (or re-ingest the input with the new columns and rerun the "
        "pipeline). Nothing was appended")


def _check_positional(src: str, target: BlockMatrix, label: str | None,
                      kinds: Sequence[str] | None) -> None:
    if kinds is None:
        return
    got = read_source(src, label=label).kinds
    if len(got) != len(kinds):
        return  # the column count is checked, with its own message, once staged
    changed = [f"{i} ({k} in the input, {g} in the batch)"
               for i, (k, g) in enumerate(zip(kinds, got, strict=True)) if k != g]
    if changed:
        raise InputValueError(f"batch {src} does not match the column kinds of {target.url}: "
                              f"columns {', '.join(changed)}; cast the batch to the input's "
                              "kinds. Nothing was appended")


def _names(cols: Sequence[str]) -> str:
    return ", ".join(repr(c) for c in cols)
