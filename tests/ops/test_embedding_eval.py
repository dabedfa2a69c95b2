"""Embedding evaluation helpers against scipy's Spearman and brute-force cosine search."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

import blocklin as bl
from blocklin.errors import InputValueError
from blocklin.ops.embedding_eval import analogy, analogy_accuracy, similarity_correlation


def _unit(e: np.ndarray) -> np.ndarray:
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_similarity_correlation_against_scipy() -> None:
    rng = np.random.default_rng(0)
    E = rng.normal(size=(50, 6))
    pairs = rng.integers(0, 50, size=(80, 2))
    u = _unit(E)
    cos = np.sum(u[pairs[:, 0]] * u[pairs[:, 1]], axis=1)
    scores = np.round(cos * 3 + rng.normal(size=80), 0)  # integer scores: many ties
    got = similarity_correlation(E, pairs, scores)
    ref = spearmanr(cos, scores).statistic
    assert got.pairs == 80 and got.missing == 0
    assert abs(got.spearman - ref) < 1e-12
    assert 0.5 < got.spearman < 1.0
    # Out-of-vocabulary rows (past the end, or all zeros) are skipped and counted.
    E[3] = 0.0
    bad = np.vstack([pairs, [[3, 4], [60, 1]]])
    got = similarity_correlation(E, bad, np.append(scores, [1.0, 2.0]))
    keep = (pairs != 3).all(axis=1)
    assert got.missing == 2 + int((~keep).sum())
    ref = spearmanr(cos[keep], scores[keep]).statistic
    assert abs(got.spearman - ref) < 1e-12


def test_analogy_finds_the_planted_answer_and_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    E = rng.normal(size=(40, 8))
    u = _unit(E)
    E[17] = u[5] - u[2] + u[9]  # 2 : 5 :: 9 : 17
    idx, sims = analogy(E, 2, 5, 9, n=3)
    assert idx[0] == 17 and abs(sims[0] - 1.0) < 1e-12
    u = _unit(E)
    t = u[5] - u[2] + u[9]
    brute = u @ t / np.linalg.norm(t)
    brute[[2, 5, 9]] = -np.inf
    np.testing.assert_array_equal(idx, np.argsort(-brute)[:3])
    np.testing.assert_allclose(sims, brute[idx], rtol=1e-12)
    acc = analogy_accuracy(E, [[2, 5, 9, 17], [2, 5, 9, 16]])
    assert acc == 0.5


def test_nearest_is_exported_and_bad_input_refused() -> None:
    E = np.eye(4)
    E[1] = [1.0, 0.1, 0, 0]
    idx, _ = bl.ops.nearest(E, 0, n=1)
    assert idx[0] == 1
    with pytest.raises(InputValueError, match="integer"):
        similarity_correlation(E, np.ones((2, 2)), np.ones(2))
    with pytest.raises(InputValueError, match="outside"):
        analogy(E, 0, 1, 9)
    with pytest.raises(InputValueError, match=r"\(m, 4\)"):
        analogy_accuracy(E, np.zeros((0, 4), dtype=int))
