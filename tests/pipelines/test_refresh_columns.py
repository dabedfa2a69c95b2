"""Refresh matches a table batch's columns by the names ingest recorded (issue 12, item 6).

A reordered batch lands in the same stored columns as a correctly ordered one; a batch
with missing, extra, renamed or changed-kind columns is refused naming them, with
nothing appended, the manifest unchanged and the batch not recorded as applied.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from tests.pipelines.conftest import base_spec, run_cli

import blocklin as bl
from blocklin.errors import InputValueError
from blocklin.pipelines.ingest import ingest
from blocklin.pipelines.manifest import load_small
from blocklin.pipelines.refresh import refresh_pipeline
from blocklin.pipelines.runner import load_pipeline, run_pipeline
from blocklin.storage.leases import flush_removals

NAMES = [f"s{i}" for i in range(1, 7)]


def _table(x: np.ndarray, names: list[str] = NAMES, **more: Any) -> pa.Table:
    cols: dict[str, Any] = {"id": [f"r{i}" for i in range(len(x))]}  # ignored: not numeric
    cols.update({n: x[:, NAMES.index(n) if n in NAMES else 0] for n in names})
    cols.update(more)
    return pa.table(cols)


def _write(t: pa.Table, path: Path) -> str:
    if path.suffix == ".csv":
        pcsv.write_csv(t, path)
    else:
        pq.write_table(t, path)
    return str(path)


def _snapshot(root: Path) -> dict[str, str]:
    flush_removals()  # removed arrays leave the tree before the walk, not under it
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _setup(root: Path, fmt: str, x: np.ndarray, columns: list[str] | None = None,
           exclude: tuple[str, ...] = ()) -> Any:
    import yaml

    root.mkdir()
    ingest(_write(_table(x), root / f"train.{fmt}"), str(root / "X.zarr"), chunk_rows=64,
           columns=columns, exclude=exclude)
    (root / "spec.yaml").write_text(yaml.safe_dump(base_spec()))
    pipe = load_pipeline(root / "spec.yaml")
    run_pipeline(pipe)
    return pipe


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_reordered_batch_equals_ordered_batch(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(5)
    x, b = rng.normal(size=(200, 6)), rng.normal(size=(50, 6)) * 10
    ordered = _setup(tmp_path / "ordered", fmt, x)
    shuffled = _setup(tmp_path / "shuffled", fmt, x)
    refresh_pipeline(ordered, _write(_table(b), tmp_path / f"b.{fmt}"))
    refresh_pipeline(shuffled, _write(_table(b, NAMES[::-1]), tmp_path / f"rev.{fmt}"))
    full = np.vstack([x, b])
    for root in (tmp_path / "ordered", tmp_path / "shuffled"):
        np.testing.assert_array_equal(bl.open(root / "X.zarr").to_numpy(), full)
        np.testing.assert_allclose(load_small(root / "out" / "gram.npz")["value"], full.T @ full,
                                   rtol=1e-12)
        np.testing.assert_allclose(load_small(root / "out" / "stats.npz")["mean"], full.mean(0),
                                   rtol=1e-12, atol=1e-14)


def test_columns_chosen_at_ingest_are_read_by_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    x, b = rng.normal(size=(100, 6)), rng.normal(size=(30, 6))
    pipe = _setup(tmp_path / "p", "parquet", x, columns=["s3", "s1"])
    # The batch has every column, in another order: the others were left out at ingest.
    refresh_pipeline(pipe, _write(_table(b, NAMES[::-1]), tmp_path / "b.parquet"))
    full = np.vstack([x, b])[:, [2, 0]]
    np.testing.assert_array_equal(bl.open(tmp_path / "p" / "X.zarr").to_numpy(), full)


def test_columns_excluded_at_ingest_may_ride_along_in_a_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    x, b = rng.normal(size=(100, 6)), rng.normal(size=(30, 6))
    pipe = _setup(tmp_path / "p", "parquet", x, exclude=("s2", "s5"))
    refresh_pipeline(pipe, _write(_table(b, NAMES[::-1]), tmp_path / "b.parquet"))
    full = np.vstack([x, b])[:, [0, 2, 3, 5]]
    np.testing.assert_array_equal(bl.open(tmp_path / "p" / "X.zarr").to_numpy(), full)
    # a column that was neither kept nor excluded is still refused as new
    with pytest.raises(InputValueError, match="'s7'"):
        refresh_pipeline(pipe, _write(_table(b, NAMES, s7=np.ones(30)), tmp_path / "c.parquet"))


@pytest.mark.parametrize(("case", "names", "more", "words"), [
    ("renamed", ["s1", "s2", "s3", "s4", "s5", "z6"], {}, ["'s6'", "'z6'", "renamed"]),
    ("missing", ["s1", "s2", "s4", "s5", "s6"], {}, ["'s3'", "missing"]),
    ("extra", NAMES, {"s7": np.ones(40)}, ["'s7'", "not in the input"]),
    ("kind", ["s1", "s3", "s4", "s5", "s6"], {"s2": np.arange(40)}, ["'s2'", "float", "int"]),
])
def test_mismatched_batch_is_refused_and_nothing_changes(tmp_path: Path, case: str,
                                                         names: list[str], more: dict[str, Any],
                                                         words: list[str]) -> None:
    x = np.random.default_rng(7).normal(size=(100, 6))
    root = tmp_path / "p"
    pipe = _setup(root, "parquet", x)
    b = np.random.default_rng(8).normal(size=(40, 6))
    src = _write(_table(b, names, **more), tmp_path / f"{case}.parquet")
    before = _snapshot(root)
    with pytest.raises(InputValueError) as err:
        refresh_pipeline(pipe, src)
    for w in words:
        assert w in str(err.value)
    assert _snapshot(root) == before  # input, manifest and outputs byte for byte
    assert bl.open(root / "X.zarr").provenance.get("batches", []) == []
    # The command line says the same, with exit status 2.
    res = run_cli("refresh", str(root / "spec.yaml"), "--append", src)
    assert res.returncode == 2 and words[0] in res.stderr, res.stderr
    assert _snapshot(root) == before


def test_batch_without_names_is_taken_by_position_kinds_checked(tmp_path: Path) -> None:
    # A .npy batch has no names to match: its columns are the input's by position (the
    # documented cron workflow), but a column of another kind is still refused.
    root = tmp_path / "p"
    x = np.random.default_rng(9).normal(size=(100, 6))
    pipe = _setup(root, "parquet", x)
    np.save(tmp_path / "ints.npy", np.ones((10, 6), dtype=np.int64))
    with pytest.raises(InputValueError, match=r"0 \(float in the input, int in the batch\)"):
        refresh_pipeline(pipe, str(tmp_path / "ints.npy"))
    assert bl.open(root / "X.zarr").shape == (100, 6)
    b = np.random.default_rng(10).normal(size=(10, 6))
    np.save(tmp_path / "b.npy", b)
    refresh_pipeline(pipe, str(tmp_path / "b.npy"))
    np.testing.assert_array_equal(bl.open(root / "X.zarr").to_numpy(), np.vstack([x, b]))


def test_positional_input_refuses_a_batch_of_another_kind(tmp_path: Path) -> None:
    import yaml

    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(100, 3)))
    ingest(str(tmp_path / "x.npy"), str(tmp_path / "X.zarr"), chunk_rows=64)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(base_spec()))
    pipe = load_pipeline(tmp_path / "spec.yaml")
    run_pipeline(pipe)
    np.save(tmp_path / "ints.npy", np.arange(30).reshape(10, 3))
    with pytest.raises(InputValueError, match=r"0 \(float in the input, int in the batch\)"):
        refresh_pipeline(pipe, str(tmp_path / "ints.npy"))
    assert bl.open(tmp_path / "X.zarr").shape == (100, 3)
    np.save(tmp_path / "floats.npy", np.ones((10, 3)))
    refresh_pipeline(pipe, str(tmp_path / "floats.npy"))
    assert bl.open(tmp_path / "X.zarr").shape == (110, 3)
