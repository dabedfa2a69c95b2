"""Outputs never overwrite inputs or the work directory (issue 12, item 5).

Every case is refused before anything is written: the inputs' bytes are compared
file by file before and after, and the places the run would write are checked absent.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.pipelines.conftest import run_cli

import blocklin as bl
from blocklin.errors import OutputAliasError
from blocklin.pipelines.runner import load_pipeline, run_pipeline
from blocklin.storage.leases import flush_removals
from blocklin.storage.locations import location, overlaps


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (names and contents), to prove nothing was written."""
    flush_removals()  # removed arrays leave the tree before the walk, not under it
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    d = tmp_path / "data"
    x = np.random.default_rng(3).normal(size=(2000, 6))
    w = np.random.default_rng(4).normal(size=(6, 4))
    bl.from_array(x, d / "X.zarr", chunks=(500, None))
    bl.from_array(w, d / "W.zarr")
    return d, x, w


def _spec(d: Path, output: str = "X", output_dir: str = ".", work_dir: str | None = None) -> Path:
    import yaml

    doc: dict[str, Any] = {
        "name": "alias",
        "inputs": {"X": {"path": "X.zarr"}, "W": {"path": "W.zarr"}},
        "steps": [{"name": "p", "op": "matmul", "inputs": {"A": "X", "B": "W"}}],
        "outputs": {output: {"step": "p"}},
        "output_dir": output_dir,
    }
    if work_dir is not None:
        doc["executor"] = {"work_dir": work_dir}
    path = d / f"spec-{output}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_cli_output_named_like_an_input_is_refused(data: Any) -> None:
    # The issue's reproduction: output_dir is the inputs' directory and the output is
    # named X, so the run would replace data/X.zarr by X @ W (it did, exit 0).
    d, x, _ = data
    spec = _spec(d)
    before = _snapshot(d)
    res = run_cli("run", str(spec))
    assert res.returncode == 2, res.stderr
    assert "output 'X'" in res.stderr and "input 'X'" in res.stderr
    assert _snapshot(d) == before  # X.zarr bit for bit, and no lock, staging or manifest
    np.testing.assert_array_equal(bl.open(d / "X.zarr").to_numpy(), x)
    dry = run_cli("run", str(spec), "--dry-run")
    assert dry.returncode == 2 and "output 'X'" in dry.stderr


def test_output_dir_beside_inputs_with_other_names_runs(data: Any) -> None:
    d, x, w = data
    before = _snapshot(d / "X.zarr")
    run_pipeline(load_pipeline(_spec(d, output="P")))
    np.testing.assert_allclose(bl.open(d / "P.zarr").to_numpy(), x @ w, rtol=1e-12)
    assert _snapshot(d / "X.zarr") == before


@pytest.mark.parametrize("case", ["output_dir_in_input", "work_dir_in_input",
                                  "work_dir_is_output"])
def test_pipeline_paths_overlapping_inputs_are_refused(data: Any, case: str) -> None:
    d, _, _ = data
    spec = {"output_dir_in_input": lambda: _spec(d, "P", output_dir="X.zarr/out"),
            "work_dir_in_input": lambda: _spec(d, "P", output_dir="out", work_dir="W.zarr/w"),
            "work_dir_is_output": lambda: _spec(d, "P", output_dir="out",
                                                work_dir="out/P.zarr")}[case]()
    before = _snapshot(d)
    with pytest.raises(OutputAliasError, match=r"spec-P\.yaml: output_dir: "):
        run_pipeline(load_pipeline(spec))
    assert _snapshot(d) == before
    assert not (d / "out").exists()


def test_refresh_with_a_work_dir_inside_the_input_appends_nothing(data: Any,
                                                                  tmp_path: Path) -> None:
    d, x, _ = data
    spec = _spec(d, "P", output_dir="out")
    import yaml

    doc = yaml.safe_load(spec.read_text())
    doc["refresh"] = {"input": "X"}
    spec.write_text(yaml.safe_dump(doc))
    run_pipeline(load_pipeline(spec))
    np.save(tmp_path / "b.npy", np.ones((10, 6)))
    before = _snapshot(d)
    res = run_cli("refresh", str(spec), "--append", str(tmp_path / "b.npy"),
                  "--work-dir", str(d / "X.zarr" / "work"))
    assert res.returncode == 2, res.stderr
    assert "work directory" in res.stderr
    assert _snapshot(d) == before
    np.testing.assert_array_equal(bl.open(d / "X.zarr").to_numpy(), x)


def test_python_out_equal_to_an_input_is_refused(data: Any, tmp_path: Path) -> None:
    d, x, w = data
    A, W = bl.open(d / "X.zarr"), bl.open(d / "W.zarr")
    before = _snapshot(d)
    work = tmp_path / "work"
    for out in (d / "X.zarr", str(d / "X.zarr") + "/", d / "W.zarr", d,
                d / "X.zarr" / "P.zarr", d / "sub" / ".." / "X.zarr"):
        with pytest.raises(OutputAliasError, match="an input"):
            bl.ops.matmul(A, W, out=str(out)).compute(work_dir=str(work))
    assert _snapshot(d) == before
    assert not work.exists()
    # The same product written elsewhere is right.
    got = bl.ops.matmul(A, W, out=str(tmp_path / "P.zarr")).compute(work_dir=str(work))
    np.testing.assert_allclose(got.to_numpy(), x @ w, rtol=1e-12)


def test_python_out_through_a_symlink_is_refused(data: Any, tmp_path: Path) -> None:
    d, _, w = data
    os.symlink(d, tmp_path / "link")
    before = _snapshot(d)
    with pytest.raises(OutputAliasError, match="same place"):
        bl.ops.matmul(bl.open(d / "X.zarr"), w, out=str(tmp_path / "link" / "X.zarr")) \
            .compute(work_dir=str(tmp_path / "work"))
    assert _snapshot(d) == before


def test_python_work_dir_cases(data: Any, tmp_path: Path) -> None:
    d, x, w = data
    A = bl.open(d / "X.zarr")
    before = _snapshot(d)
    work = tmp_path / "runs" / "work"
    with pytest.raises(OutputAliasError, match="work directory"):  # out inside the work dir
        bl.ops.matmul(A, w, out=str(work / "P.zarr")).compute(work_dir=str(work))
    with pytest.raises(OutputAliasError, match="work directory"):  # out containing it
        bl.ops.matmul(A, w, out=str(tmp_path / "runs")).compute(work_dir=str(work))
    with pytest.raises(OutputAliasError, match="work directory"):  # work dir inside an input
        bl.ops.gram(A).compute(work_dir=str(d / "X.zarr" / "w"))
    assert _snapshot(d) == before
    assert not work.exists()
    # An input inside the work dir is fine: a result left there is read by the next compute.
    p = bl.ops.matmul(A, w).compute(work_dir=str(work))
    assert overlaps(p.url, work)
    g = bl.ops.gram(p).compute(work_dir=str(work))
    np.testing.assert_allclose(g, (x @ w).T @ (x @ w), rtol=1e-10)


def test_fsspec_urls_are_compared_normalized() -> None:
    x = np.arange(24.0).reshape(8, 3)
    A = bl.from_array(x, "memory://alias-test/A.zarr", chunks=(4, None))
    try:
        for out in ("memory://alias-test/A.zarr", "memory:///alias-test/A.zarr/",
                    "memory://alias-test"):
            with pytest.raises(OutputAliasError):
                bl.ops.matmul(A, np.eye(3), out=out).compute(work_dir="memory://alias-work")
        np.testing.assert_array_equal(bl.open("memory://alias-test/A.zarr").to_numpy(), x)
    finally:
        from blocklin.storage import store_for

        store_for("memory://alias-test").delete_prefix("")
    assert location("s3a://bucket/k/") == location("s3://bucket/k")
    assert not overlaps("memory://a/b", "/a/b")
    assert not overlaps("/data/X.zarr", "/data/X.zarr2")
