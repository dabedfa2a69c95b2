"""What the SVD-based transformers (``TruncatedSVD``, ``PCA``) share."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils import check_random_state


def seed_of(random_state: Any) -> int:
    """The seed of the Gaussian test matrix: an int as given, else one drawn from the
    RandomState (or fresh entropy for None), as scikit-learn's ``random_state``."""
    if isinstance(random_state, int | np.integer) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def transformer_tags(tags: Any) -> Any:
    """scikit-learn tags of a float64 transformer that takes sparse X."""
    tags.transformer_tags.preserves_dtype = ["float64"]
    tags.input_tags.sparse = True
    return tags
