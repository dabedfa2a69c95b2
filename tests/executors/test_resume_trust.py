"""Resume never reuses a block computed from other inputs, and verifies what it skips.

Each case is a reproduction from issue 12 (main at 87a2a84 returned the stale or
poisoned result with no error): the resumed result must equal a fresh run bitwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from tests.pipelines.conftest import base_spec, run_cli

import blocklin as bl
from blocklin.executors import RunStats
from blocklin.testing import assert_bitwise_equal, inject_fault
from blocklin.testing.faults import InjectedFault


def _data(seed: int, shape: tuple[int, int] = (600, 6)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def test_resume_after_input_overwritten_through_from_array(tmp_path: Path) -> None:
    W = _data(9, (6, 3))
    C = bl.from_array(_data(1), tmp_path / "C.zarr", chunks=(100, None))
    out = str(tmp_path / "P.zarr")
    bl.ops.matmul(C, W, out=out).compute(work_dir=str(tmp_path / "w"))
    new = _data(2)
    C = bl.from_array(new, tmp_path / "C.zarr", chunks=(100, None), overwrite=True)
    stats = RunStats()
    P = bl.compute(bl.ops.matmul(C, W, out=out), work_dir=str(tmp_path / "w"), resume=True,
                   stats=stats)[0]
    np.testing.assert_allclose(P.to_numpy(), new @ W, rtol=1e-13)
    assert stats.tasks_skipped == 0


def test_resume_after_input_rewritten_in_place_by_zarr(tmp_path: Path) -> None:
    # zarr-python rewrites the chunks and leaves zarr.json (and its fingerprint) alone.
    W = _data(9, (6, 3))
    C = bl.from_array(_data(1), tmp_path / "C.zarr", chunks=(100, None))
    out = str(tmp_path / "P.zarr")
    bl.ops.matmul(C, W, out=out).compute(work_dir=str(tmp_path / "w"))
    G = bl.ops.gram(C).compute(work_dir=str(tmp_path / "w"))
    before = (tmp_path / "C.zarr" / "zarr.json").read_bytes()
    new = _data(3)
    z = zarr.open_array(tmp_path / "C.zarr", mode="r+")
    z[300:] = new[300:]  # half the row blocks change
    assert (tmp_path / "C.zarr" / "zarr.json").read_bytes() == before
    current = z[:]
    C = bl.open(tmp_path / "C.zarr")
    stats = RunStats()
    P = bl.compute(bl.ops.matmul(C, W, out=out), work_dir=str(tmp_path / "w"), resume=True,
                   stats=stats)[0]
    np.testing.assert_allclose(P.to_numpy(), current @ W, rtol=1e-13)
    assert stats.tasks_run == 3 and stats.tasks_skipped == 3  # only the changed blocks
    g = bl.compute(bl.ops.gram(C), work_dir=str(tmp_path / "w"), resume=True)[0]
    np.testing.assert_allclose(g, current.T @ current, rtol=1e-12)
    assert not np.allclose(g, G)


def test_resume_with_other_parameters_on_the_same_output(tmp_path: Path) -> None:
    C = bl.from_array(_data(1), tmp_path / "C.zarr", chunks=(100, None))
    out = str(tmp_path / "P.zarr")
    bl.ops.matmul(C, _data(9, (6, 3)), out=out).compute(work_dir=str(tmp_path / "w"))
    W2 = _data(10, (6, 3))
    P = bl.compute(bl.ops.matmul(C, W2, out=out), work_dir=str(tmp_path / "w"), resume=True)[0]
    np.testing.assert_allclose(P.to_numpy(), _data(1) @ W2, rtol=1e-13)


def _interrupted_gram(tmp_path: Path) -> tuple[bl.BlockMatrix, str, np.ndarray]:
    x = _data(4, (1200, 16))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    work = str(tmp_path / "w")
    faulty = inject_fault(bl.ops.gram(A), "gram/partial", tmp_path / "fault", succeed=8)
    with pytest.raises(InjectedFault):
        bl.compute(faulty, work_dir=work, num_workers=1)
    ref = bl.ops.gram(A).compute(work_dir=str(tmp_path / "fresh"), keep_intermediates=True)
    return A, work, ref


def _partials(work: str) -> Path:
    found = [p for p in Path(work).iterdir() if (p / ".blocklin" / "done").is_dir()
             and len(list((p / ".blocklin" / "done").iterdir())) >= 8]
    assert len(found) == 1, found
    return found[0]


def test_resume_recomputes_a_recorded_block_whose_chunk_was_deleted(tmp_path: Path) -> None:
    A, work, ref = _interrupted_gram(tmp_path)
    part = _partials(work)
    for i in (0, 3):
        (part / "c" / str(i) / "0" / "0").unlink()
    stats = RunStats()
    g = bl.compute(bl.ops.gram(A), work_dir=work, resume=True, stats=stats)[0]
    assert_bitwise_equal(g, ref)
    assert stats.stage_tasks["gram/partial"] == 4 + 2


def test_resume_distrusts_a_record_with_a_wrong_crc(tmp_path: Path) -> None:
    A, work, ref = _interrupted_gram(tmp_path)
    part = _partials(work)
    rec = part / ".blocklin" / "done" / "2.0.0"
    doc = json.loads(rec.read_text())
    doc["crc"] = "deadbeef"
    rec.write_text(json.dumps(doc))
    stats = RunStats()
    g = bl.compute(bl.ops.gram(A), work_dir=work, resume=True, stats=stats,
                   keep_intermediates=True)[0]
    assert_bitwise_equal(g, ref)
    assert stats.stage_tasks["gram/partial"] == 4 + 1
    # The partials' fingerprint is the fresh run's, not poisoned by the bad record.
    fresh = tmp_path / "fresh" / part.name
    assert json.loads((part / "zarr.json").read_text())["attributes"]["blocklin"]["fingerprint"] \
        == json.loads((fresh / "zarr.json").read_text())["attributes"]["blocklin"]["fingerprint"]


@pytest.mark.parametrize("garbage", [b"", b"zz", b"{}", b'{"crc": "12", "stage": 3}', b"\xff\xfe"])
def test_resume_treats_an_unreadable_record_as_not_done(tmp_path: Path, garbage: bytes) -> None:
    A, work, ref = _interrupted_gram(tmp_path)
    (_partials(work) / ".blocklin" / "done" / "1.0.0").write_bytes(garbage)
    g = bl.compute(bl.ops.gram(A), work_dir=work, resume=True)[0]
    assert_bitwise_equal(g, ref)


def test_resume_after_intermediate_chunks_deleted(tmp_path: Path) -> None:
    # A finished run, then every intermediate chunk lost: resume recomputes all of them.
    x = _data(5, (1200, 16))
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(100, None))
    work = tmp_path / "w"
    ref = bl.ops.gram(A).compute(work_dir=str(work), keep_intermediates=True)
    chunks = [c for c in work.glob("*/c/**/*") if c.is_file()]
    assert len(chunks) >= 12
    for chunk in chunks:
        chunk.unlink()
    g = bl.compute(bl.ops.gram(A), work_dir=str(work), resume=True)[0]
    assert_bitwise_equal(g, ref)
    np.testing.assert_allclose(g, x.T @ x, rtol=1e-12)


def test_resumed_output_is_not_readable_until_sealed_again(tmp_path: Path) -> None:
    C = bl.from_array(_data(1), tmp_path / "C.zarr", chunks=(100, None))
    out = str(tmp_path / "P.zarr")
    bl.ops.matmul(C, _data(9, (6, 3)), out=out).compute(work_dir=str(tmp_path / "w"))
    faulty = inject_fault(bl.ops.matmul(C, _data(10, (6, 3)), out=out), "matmul/panel",
                          tmp_path / "fault", succeed=2)
    with pytest.raises(InjectedFault):
        bl.compute(faulty, work_dir=str(tmp_path / "w"), resume=True, num_workers=1)
    with pytest.raises(FileNotFoundError):
        bl.open(out)  # neither the old result nor a mix of old and new blocks


def test_pipeline_resume_after_input_change(tmp_path: Path) -> None:
    x, w = _data(6, (500, 6)), _data(8, (500, 2))
    bl.from_array(x, tmp_path / "X.zarr", chunks=(120, None))
    bl.from_array(w, tmp_path / "W.zarr", chunks=(120, None))
    spec = base_spec(inputs={"X": {"path": "X.zarr"}, "W": {"path": "W.zarr"}},
                     steps=[{"name": "p", "op": "crossprod", "inputs": {"A": "X", "B": "W"}},
                            {"name": "g", "op": "gram", "inputs": {"A": "X"}}],
                     outputs={"p": {"step": "p"}, "gram": {"step": "g"}})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    res = run_cli("run", "p.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    new = _data(7, (500, 6))
    z = zarr.open_array(tmp_path / "X.zarr", mode="r+")
    z[:] = new
    res = run_cli("run", "p.yaml", "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    with np.load(tmp_path / "out" / "gram.npz") as g:
        np.testing.assert_allclose(g["value"], new.T @ new, rtol=1e-12)
    with np.load(tmp_path / "out" / "p.npz") as p:
        np.testing.assert_allclose(p["value"], new.T @ w, rtol=1e-12)
