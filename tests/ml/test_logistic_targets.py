"""LogisticRegression refuses a continuous target as scikit-learn does, under a named error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import blocklin as bl
from blocklin.errors import InputValueError
from blocklin.ml import LogisticRegression


def test_continuous_target_is_refused_before_any_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4))
    X = bl.from_array(x, tmp_path / "X.zarr", chunks=(100, None))
    y = bl.from_array((x @ [1.0, 2.0, -1.0, 0.5])[:, None], tmp_path / "y.zarr",
                      chunks=(100, None))
    work = tmp_path / "work"
    for target in (y, y.to_numpy()[:, 0]):
        with pytest.raises(InputValueError, match=r"Unknown label type: continuous.*use "
                                                   r"LinearRegression"):
            LogisticRegression(work_dir=str(work)).fit(X, target)
    assert not work.exists()  # refused before anything was written
    # Integer-valued floats are class labels for scikit-learn too: accepted.
    labels = (x[:, 0] > 0).astype(np.float64)
    assert LogisticRegression(work_dir=str(work)).fit(X, labels).classes_.tolist() == [0.0, 1.0]
