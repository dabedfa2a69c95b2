"""Metadata read from storage is validated field by field before anything uses it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.pipelines.conftest import run_cli

import blocklin as bl
from blocklin.errors import MetadataError


def _tamper(path: Path, **fields: Any) -> None:
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    for key, value in fields.items():
        if key == "chunk_shape":
            doc["chunk_grid"]["configuration"]["chunk_shape"] = value
        else:
            doc[key] = value
    meta.write_text(json.dumps(doc))


@pytest.mark.parametrize(("fields", "named"), [
    ({"chunk_shape": [0, 4]}, "chunk_grid.configuration.chunk_shape"),
    ({"chunk_shape": [-10, 4]}, "chunk_grid.configuration.chunk_shape"),
    ({"shape": [-60, 4]}, "shape"),
    ({"shape": [60.5, 4]}, "shape"),
    ({"shape": "60x4"}, "shape"),
    ({"chunk_shape": [10]}, "chunk_grid.configuration.chunk_shape"),
    ({"codecs": "bytes"}, "codecs"),
    ({"attributes": [1, 2]}, "attributes"),
    ({"fill_value": "lots"}, "fill_value"),
])
def test_malformed_fields_are_named(tmp_path: Path, fields: dict[str, Any], named: str) -> None:
    bl.from_array(np.ones((60, 4)), tmp_path / "A.zarr", chunks=(10, None))
    _tamper(tmp_path / "A.zarr", **fields)
    with pytest.raises(MetadataError, match=f"field {named.replace('.', '[.]')} ") as info:
        bl.open(tmp_path / "A.zarr")
    assert info.value.field == named
    res = run_cli("inspect", "A.zarr", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert named in res.stderr and "Traceback" not in res.stderr


def test_not_json_and_oversized_metadata(tmp_path: Path) -> None:
    bl.from_array(np.ones((60, 4)), tmp_path / "A.zarr", chunks=(10, None))
    (tmp_path / "A.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(MetadataError, match="not valid JSON"):
        bl.open(tmp_path / "A.zarr")
    (tmp_path / "A.zarr" / "zarr.json").write_bytes(b" " * (64 * 2**20 + 1))
    with pytest.raises(MetadataError, match="over the"):
        bl.open(tmp_path / "A.zarr")


def test_zarr_v2_chunks_zero(tmp_path: Path) -> None:
    import zarr

    zarr.create_array(tmp_path / "B.zarr", shape=(20, 3), chunks=(5, 3), dtype="f8",
                      zarr_format=2)
    doc = json.loads((tmp_path / "B.zarr" / ".zarray").read_text())
    doc["chunks"] = [0, 3]
    (tmp_path / "B.zarr" / ".zarray").write_text(json.dumps(doc))
    with pytest.raises(MetadataError, match=r"\.zarray chunks"):
        bl.open(tmp_path / "B.zarr")
