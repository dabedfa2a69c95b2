"""LogisticRegression.partial_fit: a warm-started refit equal to a fresh fit, in fewer passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blocklin.errors import InputValueError
from blocklin.ml import LogisticRegression, load


def _data(m: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, 6)) @ np.diag([1.0, 2, 0.5, 1, 3, 1]) + 1.0
    w = rng.standard_normal((6, k))
    logits = x @ w + rng.gumbel(size=(m, k))
    return x, (logits.argmax(axis=1) if k > 1 else (logits[:, 0] > 1.0).astype(int))


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
@pytest.mark.parametrize("classes", [1, 3])
def test_warm_refit_equals_fresh_fit_in_fewer_passes(solver: str, classes: int,
                                                     tmp_path: Path) -> None:
    x, y = _data(4000, classes)
    opts = {"solver": solver, "reg_param": 0.01, "tol": 1e-10, "max_iter": 300,
            "work_dir": str(tmp_path)}
    grown = LogisticRegression(**opts).fit(x[:3600], y[:3600])
    grown.partial_fit(x, y)  # the rows appended since: the whole set, warm-started
    fresh = LogisticRegression(**opts).fit(x, y)
    scale = np.abs(fresh.coef_).max()
    np.testing.assert_allclose(grown.coef_, fresh.coef_, atol=1e-6 * scale)
    np.testing.assert_allclose(grown.intercept_, fresh.intercept_, atol=1e-6 * scale)
    assert grown.n_passes_ < fresh.n_passes_
    # Warm-started at the optimum: a step or two (plus lbfgs's moments pass).
    again = grown.partial_fit(x, y)
    assert again.n_passes_ <= 3
    np.testing.assert_allclose(again.coef_, fresh.coef_, atol=1e-6 * scale)


def test_first_call_fits_and_classes_are_kept(tmp_path: Path) -> None:
    x, y = _data(1000, 3)
    est = LogisticRegression(work_dir=str(tmp_path))
    est.partial_fit(x[y < 2], y[y < 2], classes=[0, 1, 2])
    np.testing.assert_array_equal(est.classes_, [0, 1, 2])
    assert est.coef_.shape == (3, 6)
    est.partial_fit(x, y)
    ref = LogisticRegression(work_dir=str(tmp_path)).fit(x, y)
    np.testing.assert_allclose(est.coef_, ref.coef_, atol=1e-5 * np.abs(ref.coef_).max())
    with pytest.raises(InputValueError, match="outside the classes"):
        est.partial_fit(x, np.where(y == 2, 7, y))


def test_partial_fit_after_load(tmp_path: Path) -> None:
    x, y = _data(2000, 1)
    est = LogisticRegression(solver="lbfgs", tol=1e-10, work_dir=str(tmp_path)).fit(x, y)
    est.save(tmp_path / "lr.model")
    back = load(tmp_path / "lr.model")
    back.work_dir = str(tmp_path)
    back.partial_fit(x, y)
    assert back.n_passes_ <= 3
    np.testing.assert_allclose(back.coef_, est.coef_, atol=1e-7 * np.abs(est.coef_).max())
