"""GLM passes on CSR row panels: the same partials as on the dense panel, no block densified."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.errors import PlanMemoryError
from blocklin.ops.glm.evaluation import eval_spec
from blocklin.ops.glm.gradient import loss_grad_spec
from blocklin.ops.glm.lsqr import lsqr_spec
from blocklin.ops.glm.moments import moments_spec
from blocklin.ops.glm.newton import newton_spec
from blocklin.ops.glm.passes import PassSpec, build_pass, run_local
from blocklin.ops.glm.qr import qr_spec
from blocklin.ops.glm.refine import refine_spec
from blocklin.plan.graph import Kernel, TaskContext
from blocklin.plan.memory import project_task_memory
from blocklin.storage.sparse import CSRBlock
from blocklin.testing.fixtures import ExecutorCase


class NoDense(CSRBlock):
    """A CSR block that fails the test if anything densifies it."""

    def toarray(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a CSR block was densified")

    todense = toarray


def guard(x: Any) -> Any:
    if sp.issparse(x):
        c = sp.csr_matrix(x)
        return NoDense((c.data, c.indices, c.indptr), shape=c.shape)
    return x


class Guarded:
    """Wraps a pass kernel: hands it its CSR blocks as :class:`NoDense`."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def __call__(self, ctx: TaskContext, blocks: Sequence[Any]) -> Any:
        for (pos, _), block in zip(ctx.task.reads, blocks, strict=True):
            if ctx.inputs[pos].format == "csr":
                assert isinstance(block, CSRBlock), "sparse block densified before the kernel"
        return self.kernel(ctx, [guard(b) for b in blocks])


def guarded(lazy: Any) -> Any:
    plan = lazy.plan
    for stage in plan.stages:
        if stage.op.endswith("/partial"):
            plan = plan.with_kernel(stage.name, Guarded)
    lazy.plan = plan
    return lazy


def data(n: int = 900, p: int = 14, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray,
                                                             np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = sp.random(n, p, density=0.2, format="csr", random_state=seed,
                  data_rvs=lambda k: rng.normal(2.0, 3.0, size=k))
    x = sp.csr_matrix(x @ sp.diags((np.arange(p) != 3).astype(float)))  # an all-zero column
    x.eliminate_zeros()
    beta = rng.normal(size=p)
    y = np.asarray(x @ beta).reshape(-1) + 1.5 + rng.normal(size=n)
    labels = (y > np.median(y)).astype(float)
    classes = np.digitize(y, np.quantile(y, [0.33, 0.66])).astype(float)
    return x, y, labels, classes


def specs(p: int) -> list[tuple[str, PassSpec, str]]:
    rng = np.random.default_rng(1)
    c1 = rng.normal(size=(p + 1, 1)) * 0.1
    c3 = rng.normal(size=(p + 1, 3)) * 0.1
    return [
        ("moments full", moments_spec(p, 1, True, 1, True), "y"),
        ("moments diag", moments_spec(p, 1, True, 1, False), "y"),
        ("loss/grad squared", loss_grad_spec("squared", c1, True, True, 1), "y"),
        ("loss/grad binomial", loss_grad_spec("binomial", c1, True, True, 1), "labels"),
        ("loss/grad multinomial", loss_grad_spec("multinomial", c3, True, True, 1), "classes"),
        ("newton binomial", newton_spec(c1, True, True, 1), "labels"),
        ("newton multinomial", newton_spec(c3, True, True, 1), "classes"),
        ("newton no intercept", newton_spec(c1[:p], False, True, 1), "labels"),
        ("lsqr", lsqr_spec(c1[:, 0], 0.7, True, True, 1), "y"),
        ("refine", refine_spec(c1[:, 0], True, True, 1), "y"),
        ("eval squared", eval_spec("squared", c1, True, True, 1, 1.0), "y"),
        ("eval binomial", eval_spec("binomial", c1, True, True, 1), "labels"),
    ]


@pytest.mark.parametrize("case", range(12))
def test_sparse_partials_equal_dense_ones_without_densifying(case: int) -> None:
    x, y, labels, classes = data()
    name, spec, target = specs(x.shape[1])[case]
    t = {"y": y, "labels": labels, "classes": classes}[target][:, None]
    w = np.random.default_rng(2).uniform(0.2, 3.0, size=x.shape[0])
    dense = run_local(spec, x.toarray(), t, w, 256)
    # The in-memory route slices CSR chunks; each goes to the kernel as NoDense.
    parts = [spec.kernel(None, [guard(x[s:s + 256]), t[s:s + 256], w[s:s + 256, None]])  # type: ignore[arg-type]
             for s in range(0, x.shape[0], 256)]
    while len(parts) > 1:
        parts = [spec.combine(None, parts[k:k + 8]) for k in range(0, len(parts), 8)]  # type: ignore[arg-type]
    got = parts[0][0]
    scale = np.abs(dense).max()
    # Same sums in another order (sparse products, implicit centring): rounding only.
    assert np.abs(got - dense).max() <= 1e-12 * scale, name
    assert np.array_equal(run_local(spec, x, t, w, 256), got), name


@pytest.mark.parametrize("intercept", [True, False])
def test_tsqr_of_a_well_conditioned_csr_panel_comes_from_its_sparse_gram(intercept: bool) -> None:
    x, y, _, _ = data()
    x = sp.csr_matrix(x[:, [j for j in range(x.shape[1]) if j != 3]])  # full column rank
    spec = qr_spec(x.shape[1], 1, intercept, False, 1)
    got = spec.kernel(None, [guard(x), y[:, None]])[0]  # type: ignore[arg-type]
    dense = spec.kernel(None, [x.toarray(), y[:, None]])[0]  # type: ignore[arg-type]
    c = x.shape[1] + int(intercept) + 1
    # R is unique up to the signs of its rows: compare RᵀR, and |R| to rounding.
    np.testing.assert_allclose(got[:c].T @ got[:c], dense[:c].T @ dense[:c], rtol=1e-10,
                               atol=1e-10 * np.abs(dense[:c]).max() ** 2)
    np.testing.assert_allclose(np.abs(got[:c]), np.abs(dense[:c]), rtol=1e-8,
                               atol=1e-10 * np.abs(dense[:c]).max())


def test_tsqr_densifies_only_panels_its_gram_cannot_serve() -> None:
    # An ill-conditioned panel (two nearly equal columns) takes Householder: densified.
    x, y, _, _ = data()
    x = sp.csr_matrix(sp.hstack([x, x[:, :1] * (1 + 1e-9)]))
    spec = qr_spec(x.shape[1], 1, True, False, 1)
    assert not spec.keeps_sparse
    with pytest.raises(AssertionError, match="densified"):
        spec.kernel(None, [guard(x), y[:, None]])  # type: ignore[arg-type]


@pytest.mark.parametrize("case", [0, 1, 2, 4, 6, 8, 9])
def test_stored_csr_passes_never_densify(case: int, tmp_path: Path,
                                         executor: ExecutorCase) -> None:
    x, y, labels, classes = data()
    name, spec, target = specs(x.shape[1])[case]
    t = {"y": y, "labels": labels, "classes": classes}[target][:, None]
    w = np.random.default_rng(2).uniform(0.2, 3.0, size=x.shape[0])
    X = bl.from_array(x, tmp_path / "X.zarr", chunks=(200, None))
    Y = bl.from_array(t, tmp_path / "y.zarr", chunks=(200, None))
    W = bl.from_array(w[:, None], tmp_path / "w.zarr", chunks=(200, None))
    lazy = build_pass(spec, X, Y, W)
    assert lazy.plan.stages[0].keeps_sparse
    if executor.name != "spark":  # Spark workers cannot import the test module's wrapper
        lazy = guarded(lazy)
    got = np.asarray(executor.compute(lazy)[0])
    ref = run_local(spec, x.toarray(), t, w, 200)
    assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max(), name


def test_wide_csr_passes_are_projected_at_their_stored_size(tmp_path: Path) -> None:
    # 1,500 × 6,000 at 0.2%: a 500-row panel is 24 MB dense, ~80 KB as CSR. The
    # gradient pass fits a 16 MiB task budget; the TSQR pass (dense panel) does not.
    x = sp.random(1500, 6000, density=2e-3, format="csr", random_state=1)
    y = np.ones((1500, 1))
    X = bl.from_array(x, tmp_path / "X.zarr", chunks=(500, None))
    Y = bl.from_array(y, tmp_path / "y.zarr", chunks=(500, None))
    coef = np.zeros((6001, 1))
    small = 16 * 2**20
    for spec in (loss_grad_spec("squared", coef, True, False, 1),
                 moments_spec(6000, 1, False, 1, False), lsqr_spec(coef[:, 0], 1.0, True, False, 1)):
        stage = build_pass(spec, X, Y).plan.stages[0]
        assert project_task_memory([stage]) < small, spec.op
    build_pass(loss_grad_spec("squared", coef, True, False, 1), X, Y).explain(
        max_task_memory=small)
    with pytest.raises(PlanMemoryError):
        build_pass(qr_spec(6000, 1, True, False, 1), X, Y).explain(max_task_memory=small)
