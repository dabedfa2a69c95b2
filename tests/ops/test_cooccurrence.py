"""Co-occurrence, (P)PMI, SVD embeddings and cosine neighbours against numpy/scipy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.errors import InputDtypeError, InputValueError
from blocklin.storage.sparse import to_scipy


def _baskets(m: int = 700, n: int = 25, seed: int = 0) -> sp.csr_matrix:
    """Rows as item sets, item popularity falling as a power law, counts 1..4."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n + 1) ** 0.8
    hit = rng.random((m, n)) < 0.5 * p / p.max()
    return sp.csr_matrix(hit * rng.integers(1, 5, (m, n)).astype(float))


def _pmi_reference(c: np.ndarray, alpha: float) -> np.ndarray:
    rows, ctx = c.sum(1), c.sum(0) ** alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(c / rows[:, None] / (ctx[None, :] / ctx.sum()))


@pytest.mark.parametrize("stored", ["csr", "dense"])
@pytest.mark.parametrize("binary", [True, False])
def test_cooccurrence_counts(tmp_path: Path, stored: str, binary: bool) -> None:
    x = _baskets()
    A = bl.from_array(x if stored == "csr" else x.toarray(), tmp_path / "A.zarr",
                      chunks=(128, None))
    C = bl.ops.cooccurrence(A, tmp_path / "C.zarr", binary=binary)
    b = (x != 0).astype(float) if binary else x
    ref = (b.T @ b).toarray()
    np.fill_diagonal(ref, 0.0)
    got = to_scipy(C)
    assert sp.issparse(got) and got.shape == (25, 25)
    np.testing.assert_array_equal(got.toarray(), ref)
    with_diag = bl.ops.cooccurrence(str(tmp_path / "A.zarr"), tmp_path / "D.zarr",
                                    binary=binary, diagonal=True)
    np.testing.assert_array_equal(to_scipy(with_diag).toarray(), (b.T @ b).toarray())


@pytest.mark.parametrize("alpha", [1.0, 0.75])
@pytest.mark.parametrize("positive", [True, False])
def test_ppmi_against_numpy(tmp_path: Path, alpha: float, positive: bool) -> None:
    A = bl.from_array(_baskets(), tmp_path / "A.zarr", chunks=(128, None))
    C = bl.ops.cooccurrence(A, tmp_path / "C.zarr")
    c = to_scipy(C).toarray()
    P = bl.ops.ppmi(C, tmp_path / "P.zarr", positive=positive, context_smoothing=alpha)
    ref = _pmi_reference(c, alpha)
    ref[c == 0] = 0.0
    if positive:
        ref = np.maximum(ref, 0.0)
    np.testing.assert_allclose(to_scipy(P).toarray(), ref, rtol=1e-13, atol=1e-13)
    assert (ref < 0).any() != positive  # the data has negative PMI to clip


def test_ppmi_swivel_fills_unobserved_pairs(tmp_path: Path) -> None:
    x = _baskets(m=60, seed=3)  # few rows: rare items leave pairs unobserved
    A = bl.from_array(x, tmp_path / "A.zarr", chunks=(32, None))
    C = bl.ops.cooccurrence(A, tmp_path / "C.zarr")
    c = to_scipy(C).toarray()
    assert (c == 0).sum() > 25  # unobserved pairs beyond the diagonal
    P = bl.ops.ppmi(C, tmp_path / "P.zarr", unobserved="swivel")
    rows, ctx = c.sum(1), c.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = np.where(c > 0, _pmi_reference(c, 1.0), np.log(c.sum() / np.outer(rows, ctx)))
    ref[~np.isfinite(ref)] = 0.0
    np.testing.assert_allclose(to_scipy(P).toarray(), np.maximum(ref, 0.0), rtol=1e-13,
                               atol=1e-13)


def test_embeddings_and_neighbours(tmp_path: Path) -> None:
    A = bl.from_array(_baskets(), tmp_path / "A.zarr", chunks=(128, None))
    P = bl.ops.ppmi(bl.ops.cooccurrence(A, tmp_path / "C.zarr"), tmp_path / "P.zarr")
    E = bl.ops.embed(P, 5, method="gram", work_dir=str(tmp_path / "w"))
    p = to_scipy(P).toarray()
    u, s, _ = np.linalg.svd(p)
    ref = u[:, :5] * np.sqrt(s[:5])
    signs = np.sign(np.sum(E * ref, axis=0))
    np.testing.assert_allclose(E, ref * signs, atol=1e-8)
    idx, sims = bl.ops.nearest(E, 3, n=4)
    norm = E / np.linalg.norm(E, axis=1, keepdims=True)
    brute = norm @ norm[3]
    brute[3] = -np.inf
    np.testing.assert_array_equal(idx, np.argsort(-brute, kind="stable")[:4])
    np.testing.assert_allclose(sims, brute[idx], rtol=1e-12)


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputDtypeError, match="stored matrix"):
        bl.ops.cooccurrence(np.ones((3, 3)), tmp_path / "C.zarr")
    A = bl.from_array(_baskets(), tmp_path / "A.zarr", chunks=(128, None))
    with pytest.raises(InputValueError, match="square"):
        bl.ops.ppmi(A, tmp_path / "P.zarr")
    C = bl.ops.cooccurrence(A, tmp_path / "C.zarr")
    with pytest.raises(InputValueError, match="context_smoothing"):
        bl.ops.ppmi(C, tmp_path / "P.zarr", context_smoothing=0.0)
    assert not (tmp_path / "P.zarr").exists()
