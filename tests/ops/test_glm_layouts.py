"""Each GLM pass partial has one layout that packs and unpacks it: fields round-trip,
counts come back as integers, and a kernel's packed partial unpacks to the numbers an
independent numpy computation gives."""

from __future__ import annotations

import numpy as np
import pytest

from blocklin.ops.glm.evaluation import AUC_BINS, EvalLayout, eval_spec
from blocklin.ops.glm.gradient import LossGradLayout, loss_grad_spec
from blocklin.ops.glm.lsqr import LsqrLayout, lsqr_spec
from blocklin.ops.glm.moments import MomentsLayout, moments_spec
from blocklin.ops.glm.newton import NewtonLayout, newton_spec
from blocklin.ops.glm.passes import run_local
from blocklin.ops.glm.qr import QRCombine, QRLayout, QRLeaf, qr_spec
from blocklin.ops.glm.refine import RefineLayout

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("d", [2, 5])
def test_moments_layout_round_trip(full: bool, d: int) -> None:
    layout = MomentsLayout(d, full)
    mean = RNG.standard_normal(d)
    C = RNG.standard_normal((d, d)) if full else RNG.standard_normal(d)
    packed = layout.pack(12.5, 20.25, 17, mean, C)
    assert packed.shape == layout.shape
    m = layout.unpack(packed)
    assert (m.W, m.W2, m.n, m.full) == (12.5, 20.25, 17, full)
    assert isinstance(m.n, int)
    np.testing.assert_array_equal(m.mean, mean)
    np.testing.assert_array_equal(m.diag, np.diag(C) if full else C)
    if full:
        np.testing.assert_array_equal(m.C, C)


def test_moments_partial_unpacks_to_numpy_statistics() -> None:
    x = RNG.standard_normal((500, 4)) + 3.0
    y = RNG.standard_normal((500, 1))
    w = RNG.uniform(0.5, 2.0, 500)
    m = MomentsLayout(5, True).unpack(run_local(moments_spec(4, 1, True, 1, True), x, y, w, 120))
    z = np.hstack([x, y])
    mu = w @ z / w.sum()
    np.testing.assert_allclose(m.mean, mu, rtol=1e-13)
    np.testing.assert_allclose(m.C, (z - mu).T @ ((z - mu) * w[:, None]), rtol=1e-11)
    assert m.n == 500 and isinstance(m.n, int)
    np.testing.assert_allclose([m.W, m.W2], [w.sum(), w @ w], rtol=1e-13)


def test_loss_grad_layout_round_trip_and_kernel() -> None:
    layout = LossGradLayout((4, 3))
    gx, gi = RNG.standard_normal((3, 3)), RNG.standard_normal(3)
    out = layout.unpack(layout.pack(1.5, 7.0, gx, gi))
    assert (out.loss, out.total_weight) == (1.5, 7.0)
    np.testing.assert_array_equal(out.grad, np.vstack([gx, gi]))
    # The squared loss's gradient against numpy: Zᵀ(Zβ − y), Z = [X 1].
    x, y = RNG.standard_normal((300, 3)), RNG.standard_normal((300, 1))
    coef = RNG.standard_normal((4, 1))
    res = LossGradLayout((4, 1)).unpack(run_local(
        loss_grad_spec("squared", coef, True, False, 1), x, y, None, 70))
    z = np.hstack([x, np.ones((300, 1))])
    r = z @ coef - y
    np.testing.assert_allclose(res.grad, z.T @ r, rtol=1e-12)
    assert res.loss == pytest.approx(0.5 * float(r[:, 0] @ r[:, 0]), rel=1e-13)
    assert res.total_weight == 300


def test_lsqr_layout_round_trip_and_kernel() -> None:
    layout = LsqrLayout(4)
    out = layout.unpack(layout.pack(2.5, np.arange(3.0), 9.0))
    assert out.sq_norm == 2.5
    np.testing.assert_array_equal(out.product, [0.0, 1.0, 2.0, 9.0])
    x, y = RNG.standard_normal((200, 3)), RNG.standard_normal((200, 1))
    coef = RNG.standard_normal(4)
    res = LsqrLayout(4).unpack(run_local(lsqr_spec(coef, 0.3, True, False, 1), x, y, None, 64))
    z = np.hstack([x, np.ones((200, 1))])
    m = z @ coef - 0.3 * y[:, 0]
    assert res.sq_norm == pytest.approx(float(m @ m), rel=1e-13)
    np.testing.assert_allclose(res.product, z.T @ m, rtol=1e-12)


def test_newton_layout_round_trip_and_kernel() -> None:
    layout = NewtonLayout(3)
    g, H = RNG.standard_normal(3), RNG.standard_normal((3, 3))
    out = layout.unpack(layout.pack(0.75, 11.0, g, H))
    assert (out.loss, out.total_weight) == (0.75, 11.0)
    np.testing.assert_array_equal(out.grad, g)
    np.testing.assert_array_equal(out.hessian, H)
    x = RNG.standard_normal((400, 2))
    y = (RNG.uniform(size=(400, 1)) < 0.4).astype(float)
    coef = RNG.standard_normal((3, 1))
    res = NewtonLayout(3).unpack(run_local(newton_spec(coef, True, False, 1), x, y, None, 90))
    z = np.hstack([x, np.ones((400, 1))])
    p = 1.0 / (1.0 + np.exp(-(z @ coef)[:, 0]))
    np.testing.assert_allclose(res.grad, z.T @ (p - y[:, 0]), rtol=1e-11)
    np.testing.assert_allclose(res.hessian, z.T @ (z * (p * (1 - p))[:, None]), rtol=1e-11)


@pytest.mark.parametrize("extended", [True, False])
def test_qr_layout_round_trip(extended: bool) -> None:
    layout = QRLayout(4, extended)
    R = np.triu(RNG.standard_normal((4, 4)))
    gram = RNG.standard_normal((2, 4, 4)) if extended else None
    part = layout.unpack(layout.pack(R, gram_panels=3, panels=5, slices=2, gram=gram))
    assert (part.gram_panels, part.panels, part.slices) == (3, 5, 2)
    assert all(isinstance(v, int) for v in (part.gram_panels, part.panels, part.slices))
    np.testing.assert_array_equal(part.R, R)
    if extended:
        assert part.gram is not None and gram is not None
        np.testing.assert_array_equal(part.gram, gram)
    else:
        assert part.gram is None


def test_qr_combine_counts_panels_and_keeps_the_gram_only_when_every_panel_has_one() -> None:
    """A well-conditioned panel skips its exact Gram (slices 0), an ill-conditioned one
    forms it: the combined partial counts 1 of 2 and offers no Gram; two ill-conditioned
    panels offer the double-double sum of theirs, with the fewer slices of the two."""
    good = RNG.standard_normal((200, 3))
    bad = RNG.standard_normal((200, 3))
    bad[:, 1] = bad[:, 0] + 1e-9 * bad[:, 1]
    y = RNG.standard_normal((200, 1))
    leaf, layout = QRLeaf(1, False, True, extend_above=100.0), QRLayout(5, True)
    p_good, p_bad = leaf(None, [good, y]), leaf(None, [bad, y])
    assert layout.unpack(p_good[0]).slices == 0 and layout.unpack(p_bad[0]).slices > 0
    mixed = layout.unpack(QRCombine(5, True)(None, [p_good, p_bad])[0])
    assert (mixed.gram_panels, mixed.panels) == (1, 2)
    assert layout.factor(QRCombine(5, True)(None, [p_good, p_bad])[0]).gram is None
    bad2 = bad[::-1].copy()
    both = QRCombine(5, True)(None, [p_bad, leaf(None, [bad2, y])])[0]
    factor = layout.factor(both)
    assert factor.gram is not None and factor.serves > 0
    z1 = np.hstack([bad, np.ones((200, 1)), y])
    z2 = np.hstack([bad2, np.ones((200, 1)), y])
    np.testing.assert_allclose(factor.gram[0] + factor.gram[1], z1.T @ z1 + z2.T @ z2,
                               rtol=1e-13)
    # R of the pass is the R of the stacked panels: RᵀR is their Gram.
    R = QRLayout(5, False).factor(run_local(qr_spec(3, 1, True, False, 1), good, y, None, 50)).R
    zg = np.hstack([good, np.ones((200, 1)), y])
    np.testing.assert_allclose(R.T @ R, zg.T @ zg, rtol=1e-11, atol=1e-9)


def test_refine_layout_round_trip() -> None:
    layout = RefineLayout(3)
    hi, lo = RNG.standard_normal(4), 1e-20 * RNG.standard_normal(4)
    out = layout.unpack(layout.pack((hi[:1], lo[:1]), (hi[1:], lo[1:])))
    assert out.sse == float(hi[0] + lo[0])
    np.testing.assert_array_equal(out.grad, hi[1:] + lo[1:])


@pytest.mark.parametrize("family", ["squared", "binomial", "multinomial"])
def test_eval_layout_round_trip(family: str) -> None:
    layout = EvalLayout(family)
    if family == "squared":
        sums = list(RNG.standard_normal(7))
        packed = layout.pack(4.5, 9, sums)
        assert packed.shape == (1, layout.width)
        res = layout.unpack_residuals(packed)
        assert (res.total_weight, res.rows) == (4.5, 9) and isinstance(res.rows, int)
        assert list(res[2:]) == sums
        return
    hist = (RNG.uniform(size=AUC_BINS), RNG.uniform(size=AUC_BINS)) \
        if family == "binomial" else None
    packed = layout.pack(4.5, 9, [0.25, 3.0], hist)
    assert packed.shape == (1, layout.width)
    got = layout.unpack_classifier(packed)
    assert (got.total_weight, got.rows, got.loss, got.correct) == (4.5, 9, 0.25, 3.0)
    if hist is None:
        assert got.positives is None and got.negatives is None
    else:
        assert got.positives is not None and got.negatives is not None
        np.testing.assert_array_equal(got.positives, hist[0])
        np.testing.assert_array_equal(got.negatives, hist[1])


def test_eval_partial_unpacks_to_numpy_sums() -> None:
    x, y = RNG.standard_normal((300, 3)), RNG.standard_normal((300, 1))
    coef = RNG.standard_normal((4, 1))
    res = EvalLayout("squared").unpack_residuals(
        run_local(eval_spec("squared", coef, True, False, 1, 0.5), x, y, None, 64))
    r = np.hstack([x, np.ones((300, 1))]) @ coef[:, 0] - y[:, 0]
    assert res.rows == 300 and res.total_weight == 300.0
    assert res.sse == pytest.approx(float(r @ r), rel=1e-13)
    assert res.sae == pytest.approx(float(np.abs(r).sum()), rel=1e-13)
    assert res.sy == pytest.approx(float((y[:, 0] - 0.5).sum()), rel=1e-12)
