"""EASE's driver memory: the fit's peak in n × n float64 copies (tracemalloc, which
numpy reports its buffers to), the limit refused before any pass with the bytes it
would need, partial_fit's peak and what a failed update keeps; and recommend's
per-task memory: the plan's projection within the stated bound, the real peak within
the projection."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import blocklin as bl
from blocklin.errors import InputValueError, PlanMemoryError
from blocklin.ml import EASE
from blocklin.ml import ease as ease_mod
from blocklin.ops.inputs import as_matrix
from blocklin.plan.finalize import finalize

L2 = 25.0


def _reference(x: np.ndarray, l2: float) -> np.ndarray:
    """Steck's closed form with numpy's LU inverse (independent of LAPACK in place)."""
    g = x.T @ x
    p = np.linalg.inv(g + l2 * np.eye(g.shape[0]))
    b: np.ndarray = np.eye(g.shape[0]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def _sparse(users: int, items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.random(users, items, density=density, format="csr", random_state=rng,
                     data_rvs=lambda k: np.ones(k))


def _peak_copies(fn: object, n: int) -> float:
    """Peak of numpy allocations during fn(), in units of n² float64."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()  # type: ignore[operator]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / (8 * n * n)


@pytest.mark.parametrize("cholesky_max", [8192, 0])
def test_fit_peak_is_two_copies(monkeypatch: pytest.MonkeyPatch, cholesky_max: int) -> None:
    # 3,000 items (72 MB per n × n copy): the Gram, kept, and B formed in place of its
    # copy, through Cholesky (n ≤ 8,192) and through LU (the path above 8,192). The old
    # code held 3 copies through numpy.linalg.inv (its output besides the Gram and the
    # shifted copy, plus its malloc'd workspace tracemalloc does not see) and 2.5 in the
    # sparse Gram XᵀX (12-byte entries) beside its dense copy.
    monkeypatch.setattr(ease_mod, "_CHOLESKY_MAX_ITEMS", cholesky_max)
    n = 3000
    x = _sparse(4000, n, 0.05, seed=1)
    # A small fit first: the modules fit imports lazily (xarray, dask: 34 MB of Python
    # objects) are not the fit's arrays.
    EASE(l2=L2).fit(x[:50, :40])
    model = EASE(l2=L2)
    copies = _peak_copies(lambda: model.fit(x), n)
    # Margin: X itself (600,000 nonzeros, 7 MB, and its CSC copy) and a column panel.
    assert copies <= ease_mod.FIT_COPIES + 0.3, copies
    ref = _reference(x.toarray(), L2)
    assert np.abs(model.coef_ - ref).max() <= 1e-10 * np.abs(ref).max()
    # A refit drops the previous arrays first: the same peak.
    copies = _peak_copies(lambda: model.fit(x), n)
    assert copies <= ease_mod.FIT_COPIES + 0.3, copies


def test_partial_fit_peak_and_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ease_mod, "_CHOLESKY_MAX_ITEMS", 0)
    n = 2000
    x = _sparse(3000, n, 0.05, seed=2)
    model = EASE(l2=L2).fit(x[:2000])
    buf = model.coef_
    copies = _peak_copies(lambda: model.partial_fit(x[2000:]), n)
    assert copies <= ease_mod.PARTIAL_FIT_COPIES + 0.3, copies
    assert model.coef_ is buf  # B recomputed in the old B's buffer
    ref = _reference(x.toarray(), L2)
    assert np.abs(model.coef_ - ref).max() <= 1e-10 * np.abs(ref).max()
    assert model.n_samples_seen_ == 3000


def test_partial_fit_failure_keeps_gram_and_rows() -> None:
    # Adding rows only grows the Gram, so the inverse fails only for an l2 changed since
    # the fit: here 0 on a singular Gram (item 2 never seen). gram_ and the row count stay;
    # coef_ (whose buffer held the failed inverse) is removed; a valid l2 recovers.
    x = np.zeros((6, 3))
    x[:, 0] = 1.0
    x[:3, 1] = 1.0
    model = EASE(l2=2.0).fit(x[:4])
    gram = model.gram_.copy()
    model.set_params(l2=0.0)
    with pytest.raises(InputValueError, match="positive definite"):
        model.partial_fit(x[4:])
    assert not hasattr(model, "coef_")
    np.testing.assert_array_equal(model.gram_, gram)
    assert model.n_samples_seen_ == 4
    model.set_params(l2=2.0)
    model.partial_fit(x[4:])
    ref = _reference(x, 2.0)
    assert np.abs(model.coef_ - ref).max() <= 1e-10 * np.abs(ref).max()
    assert model.n_samples_seen_ == 6


def test_items_beyond_driver_memory_refused_before_any_pass(tmp_path: Path) -> None:
    # 8,193 items need 2 × 8 × 8,193² bytes (1.0 GiB) + one 256 MiB Gram panel: over a
    # 1 GiB budget, refused naming the bytes and the largest catalogue that fits.
    n = 8193
    need = ease_mod.driver_bytes(n)
    assert need == 2 * 8 * n * n + 256 * 2**20 + 8 * 64 * n
    x = sp.csr_matrix((np.ones(2), ([0, 1], [0, n - 1])), shape=(2, n))
    stored = bl.from_array(x, str(tmp_path / "X.zarr"))
    work = tmp_path / "work"
    with pytest.raises(PlanMemoryError, match=r"driver_memory of 1\.0 GiB") as err:
        EASE(l2=1.0, work_dir=str(work), driver_memory="1GiB").fit(stored)
    assert err.value.projected == need and err.value.allowed == 2**30
    top = int(str(err.value).split(" items fit")[0].rsplit(" ", 1)[1])
    assert ease_mod.driver_bytes(top) <= 2**30 < ease_mod.driver_bytes(top + 1)
    assert not work.exists()
    # The default budget is 80 % of this machine: 200,000 items (640 GB) never fit here.
    big = sp.csr_matrix((np.ones(1), ([0], [199_999])), shape=(1, 200_000))
    with pytest.raises(PlanMemoryError, match="driver_memory"):
        EASE(l2=1.0, work_dir=str(work)).fit(big)
    with pytest.raises(InputValueError):
        EASE(l2=1.0, driver_memory="lots").fit(x)


def test_recommend_tasks_within_their_projection(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The stated bound at a moderate size: 6,000 users × 1,500 items (CSR blocks of 500
    # rows), B in 2 MiB column panels (174 items: 9 panels), groups of 3 blocks. Each
    # score task is projected at ≤ 5 panels (B decoded and encoded, 3 rows × panel
    # arrays) + its CSR group twice + its output twice; and the recommend's real numpy
    # peak on one worker (tracemalloc, 18.1 MB here) stays within the largest projection
    # plus the writing of B, the candidates and the results (27 MB): a task densifying
    # its rows (1,500 × 1,500 floats, 18 MB more) would not.
    panel = 2 * 2**20
    monkeypatch.setattr(ease_mod, "_PANEL_BYTES", panel)
    n_items, users, top = 1500, 6000, 10
    x = _sparse(users, n_items, 0.02, seed=3)
    model = EASE(l2=L2, work_dir=str(tmp_path / "work"),
                 compute_options={"num_workers": 1, "cache_bytes": 0}).fit(x)
    stored = bl.from_array(x, str(tmp_path / "X.zarr"), chunks=(500, None))
    cb = panel // (8 * n_items)
    b = bl.from_array(model.coef_, str(tmp_path / "B.zarr"), chunks=(n_items, cb))
    xm = as_matrix(stored, "X")
    lazy = ease_mod.recommend_plan(xm, as_matrix(b, "B"), top)
    groups = finalize(lazy.plan, 2**40).groups
    memory = {g.members[0].op: g.memory for g in groups}
    assert set(memory) == {"ease/score", "ease/merge"}
    rows = 3 * 500
    csr_group = 2 * 3 * int(xm.node.block_nbytes or 0)
    bound = 5 * panel + csr_group + 2 * 8 * rows * 2 * top
    assert memory["ease/score"] <= bound, (memory, bound)
    assert memory["ease/merge"] <= 5 * 8 * rows * 9 * 2 * top + 2 * 8 * rows * 2 * top

    EASE(l2=L2).fit(x[:50, :40]).recommend(x[:50, :40], 2)  # lazy imports off the peak
    results = 3 * 8 * users * 2 * top
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        items, _ = model.recommend(stored, top)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Besides the largest task: a panel of B being written (and its encoded copy), the
    # score stage's (users, 9 panels × 2n) candidates (held until merged) and the results.
    candidates = 8 * users * 9 * 2 * top
    assert peak <= max(memory.values()) + 2 * panel + candidates + results, (peak, memory)
    ref_items = np.argsort(-np.where(x.toarray() != 0, -np.inf, x @ model.coef_), axis=1,
                           kind="stable")[:, :top]
    np.testing.assert_array_equal(items, ref_items)
