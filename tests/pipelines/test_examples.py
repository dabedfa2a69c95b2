"""The runnable example specs in examples/pipelines, on generated data, against references."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from sklearn.linear_model import Ridge

import blocklin as bl
from blocklin.pipelines.ingest import ingest
from blocklin.pipelines.manifest import load_small
from blocklin.pipelines.refresh import refresh_pipeline
from blocklin.pipelines.runner import load_pipeline, run_pipeline

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pipelines"


def _copy(name: str, tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    return Path(shutil.copy(EXAMPLES / name, tmp_path / name))


def _table(x: np.ndarray, y: np.ndarray | None = None) -> pa.Table:
    cols = {f"t{i}": x[:, i] for i in range(x.shape[1])}
    return pa.table(cols | ({"y": y} if y is not None else {}))


def _sparse_factor(rows: int, cols: int, per_row: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Nonnegative, ``per_row`` nonzeros in each row."""
    idx = np.argsort(rng.random((rows, cols)), axis=1)[:, :per_row]
    return sp.csr_matrix((np.abs(rng.normal(size=rows * per_row)) + 0.1,
                          (np.repeat(np.arange(rows), per_row), idx.ravel())), shape=(rows, cols))


def test_lsa_weekly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # A sparse rank-8 nonnegative "tf-idf" matrix (each document in 2 of 8 topics, each
    # topic 6 of 40 terms): the randomized SVD and its row updates are exact for it (to
    # rounding), so they must match LAPACK.
    terms = _sparse_factor(8, 40, 6, rng)
    docs, new = _sparse_factor(700, 8, 2, rng), _sparse_factor(120, 8, 2, rng)
    sp.save_npz(tmp_path / "terms.npz", sp.csr_matrix(docs @ terms))
    sp.save_npz(tmp_path / "week2.npz", sp.csr_matrix(new @ terms))
    spec = _copy("lsa_weekly.yaml", tmp_path)
    stored = ingest(str(tmp_path / "terms.npz"), str(tmp_path / "data" / "terms.zarr"),
                    chunk_rows=200).matrix
    assert stored.meta.format == "csr"
    pipe = load_pipeline(spec)
    run_pipeline(pipe)
    out = tmp_path / "out" / "lsa"
    s_ref = np.linalg.svd((docs @ terms).toarray(), compute_uv=False)[:8]
    np.testing.assert_allclose(load_small(out / "embedding.npz")["singular_values"], s_ref,
                               rtol=1e-8)
    m = refresh_pipeline(pipe, str(tmp_path / "week2.npz"))
    assert m["refresh"]["outputs"] == {"embedding": "incremental", "term_stats": "incremental"}
    grown = bl.open(tmp_path / "data" / "terms.zarr")
    assert grown.meta.format == "csr" and grown.shape == (820, 40)  # appended as CSR
    full = (sp.vstack([docs, new]) @ terms).toarray()
    s_full, vt_full = np.linalg.svd(full, full_matrices=False)[1:]
    got = load_small(out / "embedding.npz")
    np.testing.assert_allclose(got["singular_values"], s_full[:8], rtol=1e-8)
    # Same subspace of term embeddings (rows of Vt, up to sign).
    np.testing.assert_allclose(np.abs(got["components"] @ vt_full[:8].T), np.eye(8), atol=1e-6)
    np.testing.assert_allclose(load_small(out / "term_stats.npz")["mean"], full.mean(0),
                               rtol=1e-10)
    assert (out / "report" / "embedding-spectrum.png").is_file()


def test_ridge(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x, x2 = rng.normal(size=(900, 6)), rng.normal(size=(200, 6))
    beta = np.linspace(-2, 2, 6)
    y, y2 = x @ beta + 1 + 0.3 * rng.normal(size=900), x2 @ beta + 1 + 0.3 * rng.normal(size=200)
    pq.write_table(_table(x, y), tmp_path / "train.parquet", row_group_size=300)
    pq.write_table(_table(x2, y2), tmp_path / "new.parquet")
    spec = _copy("ridge.yaml", tmp_path)
    ingest(str(tmp_path / "train.parquet"), str(tmp_path / "data" / "X.zarr"), label="y",
           chunk_rows=256)
    pipe = load_pipeline(spec)
    run_pipeline(pipe)
    out = tmp_path / "out" / "ridge"
    # MLlib's objective 1/(2n)‖y − Xβ − b‖² + λ/2‖β‖² is scikit-learn's Ridge with α = nλ.
    ref = Ridge(alpha=900 * 0.01).fit(x, y)
    model = load_small(out / "model.npz")
    np.testing.assert_allclose(model["coef"], ref.coef_, rtol=1e-9)
    np.testing.assert_allclose(model["intercept"], ref.intercept_, rtol=1e-9)
    resid = y - ref.predict(x)
    np.testing.assert_allclose(model["summary_root_mean_squared_error"],
                               np.sqrt(np.mean(resid ** 2)), rtol=1e-8)
    np.testing.assert_allclose(model["summary_r2"], ref.score(x, y), rtol=1e-10)
    assert (out / "report" / "model-residuals.png").is_file()
    m = refresh_pipeline(pipe, str(tmp_path / "new.parquet"))
    assert m["refresh"]["outputs"]["model"] == "incremental"
    ref = Ridge(alpha=1100 * 0.01).fit(np.vstack([x, x2]), np.concatenate([y, y2]))
    model = load_small(out / "model.npz")
    np.testing.assert_allclose(model["coef"], ref.coef_, rtol=1e-9)
    np.testing.assert_allclose(model["intercept"], ref.intercept_, rtol=1e-9)


def test_sketched_product(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(3000, 5))
    b = a[:, :3] + 0.5 * rng.normal(size=(3000, 3))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    spec = _copy("sketched_product.yaml", tmp_path)
    for name, arr in (("A", "a"), ("B", "b")):
        ingest(str(tmp_path / f"{arr}.npy"), str(tmp_path / "data" / f"{name}.zarr"),
               chunk_rows=1024)
    run_pipeline(load_pipeline(spec))
    out = tmp_path / "out" / "sketch"
    exact = a.T @ b
    np.testing.assert_allclose(load_small(out / "exact.npz")["value"], exact, rtol=1e-10)
    got = load_small(out / "approx.npz")
    approx = got["estimate"]
    # E‖(SA)ᵀSB − AᵀB‖_F² = (‖A‖²‖B‖² + ‖AᵀB‖²)/k for Gaussian S: allow 4 standard errors.
    bound = 4 * np.sqrt((np.linalg.norm(a) ** 2 * np.linalg.norm(b) ** 2
                         + np.linalg.norm(exact) ** 2) / 400)
    err = np.linalg.norm(approx - exact)
    assert 0 < err < bound
    # The operator's own error estimate is of the right size.
    assert 0.25 * err < float(got["error"]) < 4 * err


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_spec_validates(name: str) -> None:
    from blocklin.pipelines.runner import check_spec
    from blocklin.pipelines.spec import load_spec

    spec = load_spec(EXAMPLES / name)
    check_spec(spec, name, EXAMPLES)
