"""Hostile or mistaken input is refused fast with a named error: YAML alias bombs and
oversized spec files, and block grids too large for ``verify`` to enumerate."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from tests.pipelines.conftest import run_cli

import blocklin as bl
from blocklin.errors import InputValueError
from blocklin.pipelines.inspect import verify_array
from blocklin.pipelines.spec import MAX_SPEC_BYTES, SpecError, load_spec

_HEAD = ("version: 1\nname: p\ninputs: {X: {path: X.zarr}}\n"
         "steps:\n- name: g\n  op: gram\n  inputs: {A: X}\n  params:\n")
_TAIL = "outputs: {g: {step: g}}\noutput_dir: out\n"


def _alias_bomb(levels: int) -> str:
    """Each level lists the previous one 9 times: 9**levels strings in ~60 bytes a level."""
    lines = ['    a0: &a0 ["x","x","x","x","x","x","x","x","x"]\n']
    for n in range(1, levels):
        lines.append(f"    a{n}: &a{n} [" + ",".join([f"*a{n - 1}"] * 9) + "]\n")
    return _HEAD + "".join(lines) + _TAIL


def test_alias_bomb_is_refused_in_milliseconds(tmp_path: Path) -> None:
    # 9**7 = 4.8 million strings from 500 bytes: the old loader spent seconds and
    # hundreds of MB in validation; 9**9 took minutes and gigabytes.
    text = _alias_bomb(9)
    assert len(text) < 800
    spec = tmp_path / "bomb.yaml"
    spec.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=r"expands to more than 100000 values.*alias"):
        load_spec(spec)
    assert time.perf_counter() - t0 < 0.5


def test_alias_bomb_exits_2_from_the_cli(tmp_path: Path) -> None:
    spec = tmp_path / "bomb.yaml"
    spec.write_text(_alias_bomb(9))
    res = run_cli("run", str(spec), "--dry-run", cwd=tmp_path, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "bomb.yaml" in res.stderr and "alias" in res.stderr


def test_modest_aliases_still_load(tmp_path: Path) -> None:
    spec = tmp_path / "ok.yaml"
    spec.write_text(_alias_bomb(3))  # 9**3 = 729 strings: legitimate reuse
    doc = load_spec(spec)
    assert len(doc.steps[0].params["a2"]) == 9  # type: ignore[arg-type]


def test_recursive_anchor_is_refused(tmp_path: Path) -> None:
    spec = tmp_path / "rec.yaml"
    spec.write_text(_HEAD + "    a: &a [1, *a]\n" + _TAIL)
    with pytest.raises(SpecError, match="recursive anchor"):
        load_spec(spec)


def test_oversized_spec_file_is_refused_before_parsing(tmp_path: Path) -> None:
    spec = tmp_path / "big.yaml"
    spec.write_text(_HEAD + "    pad: '" + "x" * MAX_SPEC_BYTES + "'\n" + _TAIL)
    with pytest.raises(SpecError, match=r"bytes, over the limit of 1048576"):
        load_spec(spec)


def _declare(path: Path, shape: list[int], chunks: list[int]) -> None:
    """Rewrite a stored array's zarr.json to declare another shape and chunk shape."""
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"] = shape
    meta["chunk_grid"]["configuration"]["chunk_shape"] = chunks
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize(("shape", "chunks", "blocks"), [
    ([10**6, 10**6], [1, 1], 10**12),
    ([10**15, 10**6], [10**5, 10**6], 10**10),
])
def test_verify_refuses_a_huge_grid_without_enumerating(tmp_path: Path, shape: list[int],
                                                        chunks: list[int], blocks: int) -> None:
    path = tmp_path / "X.zarr"
    bl.from_array(np.ones((4, 4)), path, chunks=(2, 2))
    _declare(path, shape, chunks)
    t0 = time.perf_counter()
    with pytest.raises(InputValueError, match=rf"has {blocks} blocks.*--max-blocks"):
        verify_array(str(path))
    assert time.perf_counter() - t0 < 0.5
    res = run_cli("verify", str(path), timeout=60)
    assert res.returncode == 2, res.stderr
    assert f"{blocks} blocks" in res.stderr and "--max-blocks" in res.stderr


def test_verify_max_blocks_is_an_option(tmp_path: Path) -> None:
    x = np.arange(64.0).reshape(8, 8)
    path = tmp_path / "X.zarr"
    bl.from_array(x, path, chunks=(2, 2))  # 16 blocks
    with pytest.raises(InputValueError, match="has 16 blocks"):
        verify_array(str(path), max_blocks=15)
    d = verify_array(str(path), max_blocks=16)
    assert d["ok"] and d["checked"] == 16 and d["fingerprint_ok"] is True
    res = run_cli("verify", str(path), "--max-blocks", "15", timeout=60)
    assert res.returncode == 2 and "has 16 blocks" in res.stderr
    res = run_cli("verify", str(path), "--max-blocks", "16", "--json", timeout=60)
    assert res.returncode == 0 and json.loads(res.stdout)["checked"] == 16
