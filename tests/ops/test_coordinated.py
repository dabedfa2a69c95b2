"""Coordinated sketches stored as the sample they are: size, the sample itself against
a numpy reference, estimates against exact products, storage and combination across
stores and times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import blocklin as bl
from blocklin.errors import CorruptChunkError, InputValueError, MetadataError, ShapeMismatchError
from blocklin.ops._random import uniform_priorities
from blocklin.ops.sketched_matmul import (
    CoordinatedSketch,
    estimate_product,
    load_coordinated_sketch,
    sketch_for_product,
)
from blocklin.testing.faults import InjectedFault, inject_fault


def _rows_sparse(m: int, n: int, per_row: int, seed: int) -> sp.csr_matrix:
    """m × n with ``per_row`` nonzeros in every row (the issue's sparse test matrix)."""
    rng = np.random.default_rng(seed)
    # Distinct columns per row: increasing offsets below n from a random start.
    offsets = np.cumsum(rng.integers(1, n // per_row, size=(m, per_row)), axis=1)
    cols = np.sort((rng.integers(0, n, size=(m, 1)) + offsets) % n, axis=1)
    indptr = np.arange(0, m * per_row + 1, per_row)
    return sp.csr_matrix((rng.standard_normal(m * per_row), cols.ravel(), indptr), shape=(m, n))


def _reference_sample(a: sp.csr_matrix, k: int, seed: int) -> tuple[np.ndarray, float]:
    """The k rows of smallest h(i)/‖aᵢ‖² and τ, straight from the definition."""
    sq = np.asarray(a.multiply(a).sum(axis=1)).ravel()
    rank = np.full(a.shape[0], np.inf)
    nz = sq > 0
    rank[nz] = uniform_priorities(seed, 0, a.shape[0])[nz] / sq[nz]
    order = np.lexsort((np.arange(a.shape[0]), rank))
    tau = float(rank[order[k]]) if nz.sum() > k else np.inf
    return order[:min(k, int(nz.sum()))], tau


def test_sketch_size_follows_sampled_nonzeros(tmp_path: Path) -> None:
    # The case scaled to a test: 5 nonzeros per row, k rows kept of many.
    m, n, k = 30_000, 800, 2048
    a = _rows_sparse(m, n, 5, seed=1)
    A = bl.from_array(a, tmp_path / "A.zarr", chunks=(4000, None))
    sk = sketch_for_product(A, k, "coordinated", seed=3).compute(work_dir=str(tmp_path / "w"))
    assert isinstance(sk, CoordinatedSketch)
    rows, tau = _reference_sample(a, k, 3)
    np.testing.assert_array_equal(sk.rows, rows)
    assert sk.threshold == tau
    ref = a[rows]
    assert sk.nnz == ref.nnz == 5 * k
    assert (sk.values != ref).nnz == 0  # the sampled rows, bit for bit
    # Row ids, row offsets, column indices and values, and τ: nothing in k × n.
    assert sk.size == k + (k + 1) + 2 * 5 * k + 1
    assert sk.size < 0.02 * (k + 1) * (n + 2)
    sk.save(tmp_path / "s.zarr")
    on_disk = sum(f.stat().st_size for f in (tmp_path / "s.zarr").rglob("*") if f.is_file())
    # 8-byte ids and values, 4-byte column indices, a few kB of zarr.json.
    assert on_disk < 8 * (k + k + 1 + 5 * k) + 4 * 5 * k + 8000, on_disk


def test_dense_input_sample_equals_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5000, 12)) * rng.uniform(0.1, 3, size=(5000, 1))
    x[::7] = 0.0  # zero rows are never sampled
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(600, None))
    sk = sketch_for_product(A, 300, "coordinated", seed=9).compute(work_dir=str(tmp_path / "w"))
    rows, tau = _reference_sample(sp.csr_matrix(x), 300, 9)
    np.testing.assert_array_equal(sk.rows, rows)
    assert sk.threshold == tau
    np.testing.assert_array_equal(sk.values.toarray(), x[rows])


def test_every_nonzero_row_kept_gives_infinite_threshold(tmp_path: Path) -> None:
    a = _rows_sparse(400, 30, 3, seed=4)
    a = sp.csr_matrix(sp.vstack([a, sp.csr_matrix((600, 30))]))
    A = bl.from_array(a, tmp_path / "A.zarr", chunks=(250, None))
    sk = sketch_for_product(A, 500, "coordinated", seed=1).compute(work_dir=str(tmp_path / "w"))
    assert sk.threshold == np.inf
    np.testing.assert_array_equal(np.sort(sk.rows), np.arange(400))
    r = estimate_product(sk, sk)
    np.testing.assert_allclose(r.estimate, (a.T @ a).toarray(), rtol=1e-12, atol=1e-12)
    assert r.error == 0.0


def _pair(m: int, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """A and B sharing some nonzero rows (where the product lives)."""
    rng = np.random.default_rng(seed)
    a = sp.random(m, 10, density=0.05, format="csr", random_state=seed,
                  data_rvs=rng.standard_normal)
    b = sp.random(m, 8, density=0.05, format="csr", random_state=seed + 1,
                  data_rvs=rng.standard_normal)
    return sp.csr_matrix(a), sp.csr_matrix(b)


def test_estimates_are_unbiased_with_the_stated_error(tmp_path: Path) -> None:
    a, b = _pair(4000, 3)
    ref = (a.T @ b).toarray()
    A = bl.from_array(a, tmp_path / "A.zarr", chunks=(900, None))
    B = bl.from_array(b, tmp_path / "B.zarr", chunks=(1300, None))
    seeds = range(24)
    results = bl.compute(*[bl.ops.sketched_matmul(A, B, 150, kind="coordinated", seed=s)
                           for s in seeds], work_dir=str(tmp_path / "w"))
    est = np.stack([r.estimate for r in results])
    errs = np.array([np.linalg.norm(r.estimate - ref) for r in results])
    stated = np.array([r.error for r in results])
    # Horvitz–Thompson: unbiased. The mean of 24 estimates is within 3 standard errors
    # of the exact product (entrywise, using the spread of the estimates themselves).
    se = est.std(axis=0, ddof=1) / np.sqrt(len(seeds))
    assert (np.abs(est.mean(axis=0) - ref) <= 3 * se + 1e-12).mean() > 0.97
    # The a-posteriori error estimates the actual error (mean ratio near one).
    assert 0.6 < stated.mean() / errs.mean() < 1.6, (stated.mean(), errs.mean())
    # Priority sampling's variance bound (Daliri et al., VLDB 2024, for one inner
    # product: Var ≤ 2/(k − 1)·max(‖a_I‖‖b‖, ‖a‖‖b_I‖)², I the rows nonzero in both),
    # summed over the entries of AᵀB.
    both = (a.getnnz(axis=1) > 0) & (b.getnnz(axis=1) > 0)
    bound = np.sqrt(2 / 149 * ((spla.norm(a[both]) * spla.norm(b)) ** 2
                               + (spla.norm(a) * spla.norm(b[both])) ** 2))
    assert errs.mean() < bound, errs.mean() / bound


def test_sketches_stored_apart_combine_across_stores_and_times(tmp_path: Path) -> None:
    a, b = _pair(6000, 5)
    A = bl.from_array(a, tmp_path / "one" / "A.zarr", chunks=(1000, None))
    B = bl.from_array(b.toarray(), tmp_path / "two" / "B.zarr", chunks=(1500, None))
    together = bl.ops.sketched_matmul(A, B, 120, kind="coordinated", seed=4).compute(
        work_dir=str(tmp_path / "w"))
    # A is sketched and stored today; B, rechunked on another store, another day.
    sketch_for_product(A, 120, "coordinated", seed=4).compute(
        work_dir=str(tmp_path / "w1")).save(tmp_path / "one" / "sa.zarr")
    B2 = bl.from_array(b, tmp_path / "three" / "B.zarr", chunks=(700, None))
    sb = sketch_for_product(B2, 120, "coordinated", seed=4).compute(work_dir=str(tmp_path / "w2"))
    sb.save(tmp_path / "three" / "sb.zarr")
    sa2 = load_coordinated_sketch(tmp_path / "one" / "sa.zarr")
    sb2 = load_coordinated_sketch(tmp_path / "three" / "sb.zarr")
    assert (sa2.k, sa2.seed) == (120, 4)
    np.testing.assert_array_equal(sb2.rows, sb.rows)
    assert sb2.threshold == sb.threshold
    assert (sb2.values != sb.values).nnz == 0
    apart = estimate_product(sa2, sb2)
    assert apart.kind == "coordinated"
    np.testing.assert_array_equal(apart.estimate, together.estimate)
    assert apart.error == together.error
    # A sketch kept in the former dense layout still combines with a new one.
    legacy = np.full((121, a.shape[1] + 2), np.inf)
    legacy[:, 1], legacy[:, 2:] = -1.0, 0.0
    c = len(sa2.rows)
    legacy[:c, 0] = 0.0  # ranks below τ (their order is not used by the estimate)
    legacy[:c, 1] = sa2.rows
    legacy[:c, 2:] = sa2.values.toarray()
    legacy[120, 0] = sa2.threshold
    old = estimate_product(legacy, sb2, "coordinated")
    np.testing.assert_allclose(old.estimate, together.estimate, rtol=1e-13, atol=1e-13)


def test_stored_sketch_checks_and_refusals(tmp_path: Path) -> None:
    a, b = _pair(3000, 7)
    A = bl.from_array(a, tmp_path / "A.zarr", chunks=(1000, None))
    B = bl.from_array(b, tmp_path / "B.zarr", chunks=(1000, None))
    sa = sketch_for_product(A, 40, "coordinated", seed=1).compute(work_dir=str(tmp_path / "w"))
    sa.save(tmp_path / "sa.zarr")
    with pytest.raises(InputValueError, match="overwrite"):
        sa.save(tmp_path / "sa.zarr")
    sa.save(tmp_path / "sa.zarr", overwrite=True)
    chunk = tmp_path / "sa.zarr" / "data" / "c" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[3] ^= 0x10
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError, match="data"):
        load_coordinated_sketch(tmp_path / "sa.zarr")
    with pytest.raises(MetadataError, match="coordinated"):
        load_coordinated_sketch(tmp_path / "A.zarr")
    other_seed = sketch_for_product(B, 40, "coordinated", seed=2).compute(
        work_dir=str(tmp_path / "w"))
    with pytest.raises(InputValueError, match="same seed"):
        estimate_product(sa, other_seed)
    other_k = sketch_for_product(B, 41, "coordinated", seed=1).compute(
        work_dir=str(tmp_path / "w"))
    with pytest.raises(ShapeMismatchError, match="same size"):
        estimate_product(sa, other_k)


def test_interrupted_sketch_resumes_from_its_stored_records(tmp_path: Path) -> None:
    a = _rows_sparse(6000, 40, 3, seed=8)
    A = bl.from_array(a, tmp_path / "A.zarr", chunks=(500, None))  # 12 partials, 2 levels
    lazy = sketch_for_product(A, 64, "coordinated", seed=5)
    ref = lazy.compute(work_dir=str(tmp_path / "ref"))
    work = str(tmp_path / "w")
    with pytest.raises(InjectedFault):
        inject_fault(lazy, "coordinated/reduce1", tmp_path / "fail", succeed=0).compute(
            work_dir=work)
    # Resumed: no partial is recomputed (each is a stored, checksummed record), the
    # merge that failed is, and the sample is the uninterrupted one, bit for bit.
    counted = inject_fault(lazy, "coordinated/partial", tmp_path / "calls", succeed=10**6)
    again = counted.compute(work_dir=work, resume=True)
    assert not list((tmp_path / "calls").glob("call-*"))
    np.testing.assert_array_equal(again.rows, ref.rows)
    assert again.threshold == ref.threshold
    assert (again.values != ref.values).nnz == 0
    # The count is real: a fresh run calls the partial kernel once per row panel.
    counted.compute(work_dir=str(tmp_path / "fresh"))
    assert len(list((tmp_path / "calls").glob("call-*"))) == 12
