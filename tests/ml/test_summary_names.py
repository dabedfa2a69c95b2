"""Training summaries answer to MLlib's names too, and give their values as arrays."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import log_loss, mean_absolute_error, roc_auc_score

from blocklin.ml import LinearRegression, LogisticRegression


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 4))
    return x, x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.7 + rng.normal(size=400)


def test_linear_summary_mllib_names_match_closed_forms() -> None:
    x, y = _data()
    s = LinearRegression(solver="normal").fit(x, y).summary
    z = np.column_stack([x, np.ones(len(x))])
    beta, *_ = np.linalg.lstsq(z, y, rcond=None)
    r = y - z @ beta
    dof = len(y) - z.shape[1]
    se = np.sqrt(np.diag(np.linalg.inv(z.T @ z)) * (r @ r) / dof)
    p = 2 * scipy.stats.t.sf(np.abs(beta / se), dof)
    assert s.rootMeanSquaredError == s.root_mean_squared_error
    np.testing.assert_allclose(s.rootMeanSquaredError, np.sqrt(np.mean(r ** 2)), rtol=1e-10)
    np.testing.assert_allclose(s.meanAbsoluteError, mean_absolute_error(y, y - r), rtol=1e-10)
    np.testing.assert_allclose(s.coefficientStandardErrors, se, rtol=1e-8)
    np.testing.assert_allclose(s.tValues, beta / se, rtol=1e-8)
    np.testing.assert_allclose(s.pValues, p, rtol=1e-6, atol=1e-300)
    assert s.degreesOfFreedom == dof and s.numInstances == len(y) and s.r2adj < s.r2
    arrays = s.as_arrays()
    np.testing.assert_array_equal(arrays["p_values"], s.p_values)
    assert arrays["r2"].shape == () and arrays["r2"] == s.r2
    with pytest.raises(AttributeError, match="rootMeanSquaredErr"):
        _ = s.rootMeanSquaredErr


def test_logistic_summary_mllib_names() -> None:
    x, y = _data()
    labels = (y > 0.7).astype(int)
    est = LogisticRegression(solver="newton").fit(x, labels)
    s = est.summary
    prob = est.predict_proba(x)[:, 1]
    np.testing.assert_allclose(s.areaUnderROC, roc_auc_score(labels, prob), atol=2e-3)
    np.testing.assert_allclose(s.log_loss, log_loss(labels, prob), rtol=1e-8)
    assert s.totalIterations == est.n_iter_ and s.objectiveHistory == s.objective_history
    assert "area_under_roc" in s.as_arrays()
