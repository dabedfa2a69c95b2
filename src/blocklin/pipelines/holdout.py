"""A held-out split of user × item interactions and recall@k on it (recommender steps).

The split holds out a fraction of each user's interactions, chosen by a hash of
(seed, user row, item column): the same cells are held out whatever the chunking,
and a user's split does not change when later users are appended (a refresh splits
the new rows alike). recall@k of a user is the number of held-out items among the top
k recommended, over min(k, held-out items); the reported figure is its mean over the
users with a held-out item. Recommendations exclude the user's training items (and,
for factor models, items without any training interaction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from blocklin.errors import InputDtypeError
from blocklin.storage.blockmatrix import BlockMatrix
from blocklin.storage.sparse import to_scipy

__all__ = ["RECALL_KS", "Recall", "als_recall", "ease_recall", "holdout_split", "ratings_csr",
           "recall_arrays", "recall_at_k"]

#: The k of the recall curve (with the step's own ``recall_k``), up to the item count.
RECALL_KS: tuple[int, ...] = (1, 5, 10, 20, 50)
#: Scores formed at once while ranking (users × items floats).
_SCORE_FLOATS = 4_000_000
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    out: np.ndarray = z ^ (z >> np.uint64(31))
    return out


def holdout_split(x: sp.csr_matrix, fraction: float, seed: int,
                  row_offset: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split each row's interactions: ``round(fraction · n)`` held out (at most n − 1).

    Parameters
    ----------
    x : scipy CSR (users × items)
    fraction : float in [0, 1)
    seed : int
    row_offset : int
        The global index of ``x``'s first row (a refresh batch's rows continue the
        input's): cells are chosen by (seed, global row, column).

    Returns
    -------
    train, held : CSR matrices of x's shape, partitioning x's nonzeros
    """
    x = sp.csr_matrix(x)
    x.sum_duplicates()
    counts = np.diff(x.indptr)
    rows = np.repeat(np.arange(x.shape[0], dtype=np.uint64), counts) + np.uint64(row_offset)
    key = rows * np.uint64(x.shape[1]) + x.indices.astype(np.uint64)
    salt = np.uint64((int(seed) * 0x9E3779B97F4A7C15) % 2**64)  # Python ints: no overflow
    h = _mix(_mix(key + salt))
    local = np.repeat(np.arange(x.shape[0]), counts)
    order = np.lexsort((h, local))  # by row, then hash
    pos = np.arange(x.nnz) - np.repeat(x.indptr[:-1], counts)
    want = np.minimum(np.floor(fraction * counts + 0.5).astype(np.int64), counts - 1)
    held = np.zeros(x.nnz, dtype=bool)
    held[order] = pos < np.repeat(np.maximum(want, 0), counts)
    return _keep(x, local, ~held), _keep(x, local, held)


def _keep(x: sp.csr_matrix, rows: np.ndarray, mask: np.ndarray) -> sp.csr_matrix:
    """The nonzeros of ``x`` under ``mask`` (``rows``: each nonzero's row)."""
    indptr = np.zeros(x.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[mask], minlength=x.shape[0]), out=indptr[1:])
    return sp.csr_matrix((x.data[mask], x.indices[mask], indptr), shape=x.shape)


def ratings_csr(x: Any) -> sp.csr_matrix:
    """A step's user × item input (stored BlockMatrix, scipy.sparse or numpy) as CSR."""
    if isinstance(x, BlockMatrix):
        return to_scipy(x)
    if sp.issparse(x) or isinstance(x, np.ndarray):
        return sp.csr_matrix(x)
    raise InputDtypeError("a held-out split needs a stored user x item matrix (or scipy.sparse "
                          f"/ numpy); got {type(x).__name__}")


@dataclass(frozen=True)
class Recall:
    """recall@k for each k of ``ks`` (``k`` the step's own), over ``users`` users with
    held-out items."""

    ks: np.ndarray
    recall: np.ndarray
    users: int
    k: int = 10


def recall_arrays(rec: Recall | None) -> dict[str, np.ndarray]:
    """The arrays a step output stores for the report (none without a holdout)."""
    if rec is None:
        return {}
    return {"recall_ks": rec.ks, "recall": rec.recall, "recall_users": np.asarray(rec.users),
            "recall_k": np.asarray(rec.k)}


def als_recall(user_factors: np.ndarray, item_factors: np.ndarray, item_counts: np.ndarray,
               train: sp.csr_matrix, held: sp.csr_matrix, k: int) -> Recall:
    """recall@k of factors: scores xᵤᵀyᵢ, items without a training rating never
    recommended."""
    def scores(a: int, b: int) -> np.ndarray:
        out: np.ndarray = user_factors[a:b] @ item_factors.T
        return out

    return recall_at_k(scores, train, held, (*RECALL_KS, k), k, item_counts == 0)


def ease_recall(coef: np.ndarray, train: sp.csr_matrix, held: sp.csr_matrix, k: int) -> Recall:
    """recall@k of an EASE model: scores xᵤB from the user's training row."""
    def scores(a: int, b: int) -> np.ndarray:
        return np.asarray(train[a:b] @ coef)

    return recall_at_k(scores, train, held, (*RECALL_KS, k), k)


def recall_at_k(scores: Callable[[int, int], np.ndarray], train: sp.csr_matrix,
                held: sp.csr_matrix, ks: Sequence[int], k: int = 10,
                exclude_items: np.ndarray | None = None) -> Recall:
    """Mean recall@k over the users with held-out items.

    Parameters
    ----------
    scores : callable (start, stop) -> ndarray (stop − start, items)
        The model's scores of a range of users.
    train, held : CSR (users × items)
        The training interactions (excluded from the ranking) and the held-out ones.
    ks : the k to report (capped at the item count)
    k : the step's own k (recorded with the curve)
    exclude_items : bool ndarray (items,), optional
        Items never recommended.

    Notes
    -----
    Users are scored in groups of at most 4 million scores; ties are ranked by item
    index (a stable sort of the negated scores).
    """
    n_items = train.shape[1]
    kk = np.array(sorted({min(int(k), n_items) for k in ks}), dtype=np.int64)
    top = int(kk[-1])
    n_held = np.diff(held.indptr)
    hits = np.zeros((held.shape[0], kk.size))
    step = max(1, _SCORE_FLOATS // max(1, n_items))
    for a in range(0, held.shape[0], step):
        b = min(held.shape[0], a + step)
        if not n_held[a:b].any():
            continue
        s = np.array(scores(a, b), dtype=np.float64)
        tr = train[a:b].tocoo()
        s[tr.row, tr.col] = -np.inf
        if exclude_items is not None:
            s[:, exclude_items] = -np.inf
        ranked = np.argsort(-s, axis=1, kind="stable")[:, :top]
        hb = held[a:b]
        member = np.zeros((b - a, n_items), dtype=bool)
        member[np.repeat(np.arange(b - a), np.diff(hb.indptr)), hb.indices] = True
        found = np.cumsum(np.take_along_axis(member, ranked, axis=1), axis=1)
        hits[a:b] = found[:, kk - 1]
    users = n_held > 0
    denom = np.minimum(kk[None, :], n_held[users][:, None])
    per_user = hits[users] / denom
    recall = per_user.mean(axis=0) if users.any() else np.full(kk.size, np.nan)
    return Recall(kk, recall, int(users.sum()), min(int(k), n_items))
