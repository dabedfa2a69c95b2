"""The GLM block operators (``blocklin.ops.glm``) on every executor, against numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.special import expit

import blocklin as bl
from blocklin.errors import ShapeMismatchError
from blocklin.ml import LinearRegression, LogisticRegression
from blocklin.ops.glm import loss_grad, newton_pass, normal_stats
from blocklin.ops.glm.gradient import LossGradLayout
from blocklin.ops.glm.moments import _moments_in_place, moments_spec
from blocklin.ops.glm.passes import run_local

ROWS = 64


def stored(tmp_path: Path, n: int = 300, p: int = 5, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) + 10.0  # offset means: centered statistics must not cancel
    y = X @ rng.normal(size=p) + rng.normal(size=n)
    yb = (rng.uniform(size=n) < expit((X - 10.0) @ rng.normal(size=p))).astype(float)
    w = rng.uniform(0.5, 2.0, size=n)
    return {"X": X, "y": y, "yb": yb, "w": w,
            "A": bl.from_array(X, tmp_path / "X.zarr", chunks=(ROWS, 2)),
            "Y": bl.from_array(y[:, None], tmp_path / "y.zarr", chunks=(ROWS, None)),
            "YB": bl.from_array(yb[:, None], tmp_path / "yb.zarr", chunks=(ROWS, None)),
            "W": bl.from_array(w[:, None], tmp_path / "w.zarr", chunks=(ROWS, None))}


def test_normal_stats_every_executor(executor: Any, tmp_path: Path) -> None:
    d = stored(tmp_path)
    packed = executor.compute_one(normal_stats(d["A"], d["Y"], d["W"]))
    Z = np.column_stack([d["X"], d["y"]])
    w = d["w"]
    mu = w @ Z / w.sum()
    C = (Z - mu).T @ ((Z - mu) * w[:, None])
    k = Z.shape[1]
    np.testing.assert_allclose(packed[0, :3], [w.sum(), w @ w, len(w)], rtol=1e-13)
    np.testing.assert_allclose(packed[1, :k], mu, rtol=1e-13)
    np.testing.assert_allclose(packed[2:, :k], C, rtol=1e-11, atol=1e-11 * np.abs(C).max())
    # In-process runs of the same kernels over the same row blocks: bitwise identical.
    spec = moments_spec(5, 1, True, 1, True)  # in memory X is one column block
    local = run_local(spec, d["X"], d["y"][:, None], w, ROWS)
    assert np.array_equal(local, packed)


@pytest.mark.parametrize("offset", [0.1, 1e3])
def test_unweighted_moments_match_two_pass(offset: float) -> None:
    """Near-centred columns take XᵀX − nμμᵀ on the read buffer; far-off ones a centred
    copy. Both must equal two-pass centred co-moments to rounding."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(500, 6)) + offset * np.arange(1, 7)
    y = X @ rng.normal(size=6) + rng.normal(size=500)
    packed = run_local(moments_spec(6, 1, False, 1, True), X, y[:, None], None, 128)
    assert (_moments_in_place([X[:128]], 1, y[:128, None]) is None) == (offset > 1)
    Z = np.column_stack([X, y])
    C = (Z - Z.mean(axis=0)).T @ (Z - Z.mean(axis=0))
    np.testing.assert_allclose(packed[1, :7], Z.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(packed[2:, :7], C, rtol=1e-11, atol=1e-12 * np.abs(np.diag(C)).max())


def _reference(family: str, X: np.ndarray, yv: np.ndarray, w: np.ndarray,
               coef: np.ndarray) -> tuple[float, np.ndarray]:
    Z = np.column_stack([X, np.ones(len(w))])
    m = Z @ coef
    if family == "squared":
        r = m[:, 0] - yv
        return 0.5 * w @ r**2, Z.T @ (w * r)[:, None]
    if family == "binomial":
        p = expit(m[:, 0])
        return -w @ (yv * np.log(p) + (1 - yv) * np.log(1 - p)), Z.T @ (w * (p - yv))[:, None]
    P = np.exp(m) / np.exp(m).sum(axis=1, keepdims=True)
    onehot = np.eye(3)[yv.astype(int)]
    return -w @ np.log((P * onehot).sum(axis=1)), Z.T @ ((P - onehot) * w[:, None])


def test_loss_grad_every_executor(executor: Any, tmp_path: Path) -> None:
    d = stored(tmp_path)
    rng = np.random.default_rng(1)
    y3 = (np.arange(len(d["w"])) % 3).astype(float)
    Y3 = bl.from_array(y3[:, None], tmp_path / "y3.zarr", chunks=(ROWS, None))
    cases = [("squared", d["Y"], d["y"], 1), ("binomial", d["YB"], d["yb"], 1),
             ("multinomial", Y3, y3, 3)]
    coefs = [rng.normal(size=(6, k)) * 0.1 for *_, k in cases]
    # One plan for the three passes: they read the same X blocks.
    outs = executor.compute(*(loss_grad(d["A"], Y, c, family=f, sample_weight=d["W"])  # type: ignore[arg-type]
                              for (f, Y, _, _), c in zip(cases, coefs, strict=True)))
    for (family, _, yv, _), coef, out in zip(cases, coefs, outs, strict=True):
        loss, W, g = LossGradLayout(coef.shape).unpack(out)
        ref_loss, ref_g = _reference(family, d["X"], yv, d["w"], coef)
        assert abs(W - d["w"].sum()) <= 1e-14 * d["w"].sum()
        assert loss == pytest.approx(ref_loss, rel=1e-11)
        np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-10 * np.abs(ref_g).max())


def test_newton_pass_every_executor(executor: Any, tmp_path: Path) -> None:
    d = stored(tmp_path)
    coef = np.linspace(-0.1, 0.1, 6)[:, None]
    out = executor.compute_one(newton_pass(d["A"], d["YB"], coef, sample_weight=d["W"]))
    Z = np.column_stack([d["X"], np.ones(len(d["w"]))])
    p = expit(Z @ coef[:, 0])
    H = Z.T @ (Z * (d["w"] * p * (1 - p))[:, None])
    np.testing.assert_allclose(out[2:8, :6], H, rtol=1e-11)
    np.testing.assert_allclose(out[1, :6], Z.T @ (d["w"] * (p - d["yb"])), rtol=1e-9)


def test_estimators_every_executor(executor: Any, tmp_path: Path) -> None:
    d = stored(tmp_path)
    opts = dict(executor.kwargs)
    work = str(tmp_path / "w")
    lin = LinearRegression(solver="normal", work_dir=work, compute_options=opts)
    lin.fit(d["A"], d["Y"], sample_weight=d["w"])
    sw = np.sqrt(d["w"])
    Z = np.column_stack([d["X"], np.ones(len(d["w"]))])
    ref = np.linalg.lstsq(Z * sw[:, None], d["y"] * sw, rcond=None)[0]
    np.testing.assert_allclose(lin.coef_, ref[:-1], rtol=1e-9)
    assert lin.n_passes_ == 1
    # Three Newton passes, as in memory (the same kernels over the same row blocks).
    logit = LogisticRegression(reg_param=0.01, max_iter=3, work_dir=work, compute_options=opts)
    logit.fit(d["A"], d["yb"])
    local = LogisticRegression(reg_param=0.01, max_iter=3).fit(d["X"], d["yb"])
    assert logit.n_passes_ == 3
    np.testing.assert_allclose(logit.coef_, local.coef_, rtol=1e-10)


def test_labels_in_other_row_blocks_are_realigned(tmp_path: Path) -> None:
    """from_array picks each array's row blocks from its own width, so X and a label
    stored apart rarely share them: the pass re-blocks the narrow operands (y, w) into
    X's row blocks (blocks of 70 and 45 against X's) and gives the aligned result, bit
    for bit; a label with other rows than X is still refused."""
    d = stored(tmp_path)
    work = str(tmp_path / "w")
    ref = normal_stats(d["A"], d["Y"], d["W"]).compute(work_dir=work)
    Y = bl.from_array(d["y"][:, None], tmp_path / "y70.zarr", chunks=(70, None))
    W = bl.from_array(d["w"][:, None], tmp_path / "w45.zarr", chunks=(45, None))
    np.testing.assert_array_equal(normal_stats(d["A"], Y, W).compute(work_dir=work), ref)
    fit = LinearRegression(solver="qr", work_dir=work).fit(d["A"], Y, sample_weight=W)
    aligned = LinearRegression(solver="qr", work_dir=work).fit(d["A"], d["Y"],
                                                                sample_weight=d["W"])
    np.testing.assert_array_equal(fit.coef_, aligned.coef_)
    short = bl.from_array(d["y"][:-1, None], tmp_path / "short.zarr")
    with pytest.raises(ShapeMismatchError, match="rows"):
        normal_stats(d["A"], short)
