"""Window co-occurrence and the co-occurrence block pass against plain-Python counting."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.errors import InputValueError
from blocklin.storage.sparse import to_scipy
from blocklin.testing.fixtures import ExecutorCase


def _corpus(ntok: int = 1_000, vocab: int = 40, seed: int = 0, eos: int = 7) -> np.ndarray:
    """Zipf-ish token ids; about one token in 30 is the separator ``eos``, some are -1."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    ids = rng.choice(vocab, size=ntok, p=p / p.sum())
    ids[rng.random(ntok) < 1 / 30] = eos
    ids[rng.random(ntok) < 1 / 100] = -1
    return ids.astype(np.int64)


def _reference(ids: np.ndarray, vocab: int, w: int, weighting: str, eos: int | None,
               diagonal: bool) -> np.ndarray:
    """Split into documents at separators, then count every pair of positions at
    distance 1..w in exact rational arithmetic."""
    docs: list[list[int]] = [[]]
    for t in ids.tolist():
        if t < 0 or t == eos:
            docs.append([])
        else:
            docs[-1].append(t)
    c = [[Fraction(0)] * vocab for _ in range(vocab)]
    for doc in docs:
        for p in range(len(doc)):
            for q in range(len(doc)):
                d = abs(p - q)
                if d == 0 or d > w or (doc[p] == doc[q] and not diagonal):
                    continue
                wt = {"uniform": Fraction(1), "harmonic": Fraction(1, d),
                      "linear": Fraction(w - d + 1, w)}[weighting]
                c[doc[p]][doc[q]] += wt
    return np.array([[float(x) for x in row] for row in c])


@pytest.mark.parametrize("weighting", ["harmonic", "uniform", "linear"])
def test_window_counts_against_python(tmp_path: Path, weighting: str) -> None:
    ids = _corpus()
    # Blocks of 64 tokens: many pairs straddle a block boundary (the halo's job).
    T = bl.from_array(ids[:, None], tmp_path / "T.zarr", chunks=(64, None))
    C = bl.ops.cooccurrence(T, tmp_path / "C.zarr", window=5, weighting=weighting,
                            vocab_size=40, boundary=7, work_dir=str(tmp_path / "w"))
    ref = _reference(ids, 40, 5, weighting, 7, diagonal=False)
    got = to_scipy(C).toarray()
    np.testing.assert_allclose(got, ref, rtol=1e-15, atol=0)
    assert (ref > 0).sum() > 300  # a real test: many distinct pairs
    np.testing.assert_array_equal(got, got.T)


def test_window_diagonal_vocab_inferred_and_panels(tmp_path: Path) -> None:
    ids = _corpus(ntok=600, seed=1)
    T = bl.from_array(ids[:, None], tmp_path / "T.zarr", chunks=(50, None))
    ref = _reference(ids, 40, 3, "harmonic", None, diagonal=True)
    # vocab_size from the data; panels of 7 rows of C: six leaf stages, fused.
    C = bl.ops.cooccurrence(T, tmp_path / "C.zarr", window=3, diagonal=True, panel_rows=7,
                            work_dir=str(tmp_path / "w"))
    n = int(ids.max()) + 1
    np.testing.assert_allclose(to_scipy(C).toarray(), ref[:n, :n], rtol=1e-15, atol=0)


def test_item_sets_in_panels(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = sp.random(300, 30, density=0.15, random_state=rng, format="csr") * 4
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(32, None))
    C = bl.ops.cooccurrence(A, tmp_path / "C.zarr", binary=False, diagonal=True, panel_rows=4,
                            work_dir=str(tmp_path / "w"))
    np.testing.assert_allclose(to_scipy(C).toarray(), (x.T @ x).toarray(), rtol=1e-14)


def test_same_bits_on_every_executor(tmp_path: Path, executor: ExecutorCase) -> None:
    """Executors: the embedded threads, a distributed LocalCluster, Spark (integer
    weights are exact, so the tree and the task placement cannot change a bit)."""
    ids = _corpus(ntok=3_000, seed=2)
    T = bl.from_array(ids[:, None], tmp_path / "T.zarr", chunks=(100, None))
    counts, scale = bl.ops.cooccurrence_counts(T, window=4, vocab_size=40, boundary=7,
                                               panel_rows=16, **executor.kwargs,
                                               work_dir=str(executor.work_dir))
    local, local_scale = bl.ops.cooccurrence_counts(T, window=4, vocab_size=40, boundary=7,
                                                    work_dir=str(tmp_path / "local"))
    assert scale == local_scale == 12  # lcm(1, 2, 3, 4)
    assert counts.nnz > 500
    np.testing.assert_array_equal(counts.indptr, local.indptr)
    np.testing.assert_array_equal(counts.indices, local.indices)
    assert counts.data.tobytes() == local.data.tobytes()
    np.testing.assert_array_equal(counts.toarray() / 12,
                                  _reference(ids, 40, 4, "harmonic", 7, diagonal=False))


def test_window_inputs_refused_before_compute(tmp_path: Path) -> None:
    ids = _corpus(ntok=200)
    T = bl.from_array(ids[:, None], tmp_path / "T.zarr", chunks=(16, None))
    out = tmp_path / "C.zarr"
    with pytest.raises(InputValueError, match="window must be"):
        bl.ops.cooccurrence(T, out, window=0)
    with pytest.raises(InputValueError, match="longer than a row block"):
        bl.ops.cooccurrence(T, out, window=17, vocab_size=40)
    with pytest.raises(InputValueError, match="weighting"):
        bl.ops.cooccurrence(T, out, window=2, weighting="gaussian")  # type: ignore[arg-type]
    wide = bl.from_array(np.ones((20, 2)), tmp_path / "W.zarr")
    with pytest.raises(InputValueError, match="1-column"):
        bl.ops.cooccurrence(wide, out, window=2)
    assert not out.exists()
    with pytest.raises(InputValueError, match="vocab_size"):
        bl.ops.cooccurrence(T, out, window=2, vocab_size=10, work_dir=str(tmp_path / "w"))
    assert not out.exists()


def test_parts_sized_from_the_data_and_one_read_per_pass(tmp_path: Path) -> None:
    """A sizing pass measures each block's distinct pairs per fine panel of C's rows;
    panels join fine ones up to a budget, and each part's capacity comes from those
    counts, not from the panel's cells. Each pass reads each row block of A once (the
    panels' leaf stages fuse), and window pairs across block seams come from the
    parts' edge tokens."""
    from blocklin.executors.base import RunStats
    from blocklin.ops._cooccurrence_pass import (
        count_spec,
        pair_counts,
        partial_plan,
        plan_panels,
        sizing_plan,
    )
    from blocklin.ops.inputs import as_matrix

    ids = _corpus(ntok=1_000, seed=5)
    T = bl.from_array(ids[:, None], tmp_path / "T.zarr", chunks=(50, None))  # 20 blocks
    ref = _reference(ids, 40, 5, "uniform", 7, diagonal=False)
    m, spec = as_matrix(T), count_spec(40, 5, "uniform", 7, True, False)
    wd = str(tmp_path / "w")
    sizing = RunStats()
    (sizes,) = bl.compute(sizing_plan(m, spec, 4), stats=sizing, work_dir=wd)
    assert sizing.array_reads[T.url] == 20
    # Totals per fine panel of 4 rows bound the distinct pairs those rows hold.
    nnz_rows = (ref != 0).sum(axis=1)
    assert (sizes[0] >= np.add.reduceat(nnz_rows, np.arange(0, 40, 4))).all()
    panels = plan_panels(sizes, 40, 4, grouped=True, budget=300)
    assert 2 < len(panels) < 10
    assert all(p.total <= 300 for p in panels if p.r1 - p.r0 > 4)
    assert all(p.leaf < (p.r1 - p.r0) * 40 for p in panels)  # below the cells bound
    lazies = partial_plan(m, spec, panels)
    counting = RunStats()
    roots = bl.compute(*(lz for _, _, lz in lazies), stats=counting, work_dir=wd)
    assert counting.array_reads[T.url] == 20
    counts = pair_counts([(r0, r1, p) for (r0, r1, _), p in zip(lazies, roots, strict=True)],
                         40, 5)
    np.testing.assert_array_equal(counts.toarray(), ref)
