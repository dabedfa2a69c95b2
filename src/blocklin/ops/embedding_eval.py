"""Word-similarity style evaluation of embeddings (rows of an n × d array).

:func:`similarity_correlation` is the WordSim-353 / SimLex-999 protocol: Spearman's
rank correlation between the cosine similarity of listed pairs and human scores.
:func:`analogy` answers "a is to b as c is to ?" by 3CosAdd (Mikolov et al. 2013:
the row nearest, by cosine, to ``b̂ − â + ĉ`` of the unit vectors, the three query
rows excluded), and :func:`analogy_accuracy` scores a list of such questions.
Nearest neighbours by cosine are :func:`blocklin.ops.nearest`.

All run in memory on the driver: they read the embedding once per query (an
``n × d`` product), which is what these benchmarks' few thousand queries need.

References
----------
Finkelstein et al., "Placing search in context: the concept revisited" (2002);
Mikolov, Yih & Zweig, "Linguistic regularities in continuous space word
representations" (2013); Levy & Goldberg, "Linguistic regularities in sparse and
explicit word representations" (2014).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from blocklin.errors import InputValueError

__all__ = ["SimilarityScore", "analogy", "analogy_accuracy", "similarity_correlation"]


@dataclass(frozen=True)
class SimilarityScore:
    """Spearman's ρ over the pairs scored, and how many pairs were (not) scored."""

    spearman: float
    pairs: int
    missing: int


def _unit(E: Any) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(E, dtype=np.float64)
    if e.ndim != 2:
        raise InputValueError(f"embeddings must be a 2-D array (rows are items); got {e.shape}")
    norms = np.linalg.norm(e, axis=1)
    return e / np.where(norms > 0, norms, 1.0)[:, None], norms > 0


def _ids(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise InputValueError(f"{what} must be integer row indices; got dtype {a.dtype}")
    return a.astype(np.int64)


def similarity_correlation(E: Any, pairs: Any, scores: Any) -> SimilarityScore:
    """Spearman correlation between cosine similarities of row pairs and given scores.

    Parameters
    ----------
    E : array (n, d)
        Embeddings, one row per item.
    pairs : int array (m, 2)
        Row indices of the pairs; a pair naming a row outside ``[0, n)`` or a zero row
        is skipped (an out-of-vocabulary word) and counted in ``missing``.
    scores : array (m,)
        Human similarity judgements.

    Returns
    -------
    SimilarityScore
        ``spearman`` (ties get average ranks), ``pairs`` scored, ``missing``; ρ is NaN
        when fewer than two pairs are scored.
    """
    unit, live = _unit(E)
    p = _ids(pairs, "pairs")
    s = np.asarray(scores, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or s.shape != (p.shape[0],):
        raise InputValueError(f"pairs must be (m, 2) and scores (m,); got {p.shape} and "
                              f"{s.shape}")
    inside = np.all((p >= 0) & (p < unit.shape[0]), axis=1)
    ok = inside.copy()
    ok[inside] = live[p[inside, 0]] & live[p[inside, 1]]
    q = p[ok]
    cos = np.einsum("ij,ij->i", unit[q[:, 0]], unit[q[:, 1]])
    if q.shape[0] < 2:
        return SimilarityScore(float("nan"), int(q.shape[0]), int((~ok).sum()))
    rho = float(np.corrcoef(rankdata(cos), rankdata(s[ok]))[0, 1])
    return SimilarityScore(rho, int(q.shape[0]), int((~ok).sum()))


def analogy(E: Any, a: int, b: int, c: int, n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The n rows completing ``a : b :: c : ?`` by 3CosAdd, best first.

    Returns
    -------
    (indices, similarities)
        Rows other than a, b and c (and zero rows) by decreasing cosine with
        ``b̂ − â + ĉ``.
    """
    unit, live = _unit(E)
    for v in (a, b, c):
        if not 0 <= int(v) < unit.shape[0]:
            raise InputValueError(f"row {v} is outside the embedding's {unit.shape[0]} rows")
    target = unit[b] - unit[a] + unit[c]
    sims = unit @ target / (np.linalg.norm(target) or 1.0)
    sims[~live] = -np.inf
    sims[[a, b, c]] = -np.inf
    n = min(int(n), int(np.isfinite(sims).sum()))
    idx = np.argsort(-sims, kind="stable")[:n]
    return idx, sims[idx]


def analogy_accuracy(E: Any, questions: Any) -> float:
    """Fraction of questions ``(a, b, c, d)`` whose 3CosAdd answer is d.

    Parameters
    ----------
    E : array (n, d)
    questions : int array (m, 4)
        Each row ``a, b, c, d`` reads "a is to b as c is to d".
    """
    q = _ids(questions, "questions")
    if q.ndim != 2 or q.shape[1] != 4 or q.shape[0] == 0:
        raise InputValueError(f"questions must be a non-empty (m, 4) array; got {q.shape}")
    right = sum(int(analogy(E, int(a), int(b), int(c))[0][0] == d) for a, b, c, d in q)
    return float(right) / float(q.shape[0])
