"""save / blocklin.ml.load: every estimator round-trips through arrays and JSON, bit for bit;
incompatible or tampered models are refused by name; pipeline outputs load back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.exceptions import NotFittedError

import blocklin as bl
from blocklin.errors import InputValueError, ModelFormatError
from blocklin.ml import LinearRegression, LogisticRegression, TruncatedSVD, load
from blocklin.ml.persist import ARRAYS_FILE, MODEL_FILE, RUNTIME_PARAMS


def _params(est: Any) -> dict[str, Any]:
    return {k: v for k, v in est.get_params(deep=False).items() if k not in RUNTIME_PARAMS}


def _same_fit(a: Any, b: Any) -> None:
    """Every fitted attribute equal, in value and type."""
    fitted = {k for k in vars(a) if k.endswith("_") and not k.startswith("_")}
    assert fitted == {k for k in vars(b) if k.endswith("_") and not k.startswith("_")}
    for k in fitted:
        va, vb = getattr(a, k), getattr(b, k)
        assert type(va) is type(vb), k
        if isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype, k
            np.testing.assert_array_equal(va, vb)
        else:
            assert va == vb, k


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 5))
    return X, X @ np.array([1.5, -2.0, 0.0, 0.7, 3.0]) + 0.25 + 0.1 * rng.normal(size=300)


def test_linear_regression_round_trip(data: Any, tmp_path: Path) -> None:
    X, y = data
    est = LinearRegression(reg_param=0.05, elastic_net_param=0.5, solver="normal",
                           executor="dask", work_dir=str(tmp_path / "w")).fit(X, y)
    est.save(tmp_path / "m")
    back = load(tmp_path / "m")
    assert type(back) is LinearRegression
    assert _params(back) == _params(est)
    assert back.executor == "dask" and back.work_dir is None  # run settings: defaults
    _same_fit(est, back)
    X_new = np.random.default_rng(4).normal(size=(50, 5))
    np.testing.assert_array_equal(back.predict(X_new), est.predict(X_new))
    np.testing.assert_array_equal(back.predict(X_new), X_new @ est.coef_ + est.intercept_)
    doc = json.loads((tmp_path / "m" / MODEL_FILE).read_text())
    assert doc["estimator"] == "blocklin.ml.LinearRegression"
    assert doc["format_version"] == 1 and doc["blocklin_version"] == bl.__version__
    assert {"coef_", "intercept_", "n_features_in_", "solver_"} <= set(doc["fitted"])
    assert not set(doc["params"]) & RUNTIME_PARAMS


def test_partial_fit_continues_after_load(data: Any, tmp_path: Path) -> None:
    X, y = data
    est = LinearRegression(solver="normal").fit(X[:200], y[:200])
    est.save(tmp_path / "m")
    back = load(tmp_path / "m")
    est.partial_fit(X[200:], y[200:])
    back.partial_fit(X[200:], y[200:])
    np.testing.assert_array_equal(back.coef_, est.coef_)
    np.testing.assert_allclose(back.coef_, LinearRegression().fit(X, y).coef_, rtol=1e-10)


@pytest.mark.parametrize("classes", [2, 4])
def test_logistic_regression_round_trip(data: Any, tmp_path: Path, classes: int) -> None:
    X, y = data
    labels = np.array(["ant", "bee", "cat", "dog"])[:classes]
    codes = np.digitize(y, np.quantile(y, np.linspace(0, 1, classes + 1)[1:-1]))
    est = LogisticRegression(reg_param=0.01).fit(X, labels[codes])
    assert est.coef_.shape[0] == (1 if classes == 2 else classes)
    est.save(tmp_path / "m")
    back = load(tmp_path / "m")
    assert _params(back) == _params(est)
    _same_fit(est, back)
    X_new = np.random.default_rng(5).normal(size=(40, 5))
    np.testing.assert_array_equal(back.predict(X_new), est.predict(X_new))
    np.testing.assert_array_equal(back.predict_proba(X_new), est.predict_proba(X_new))
    np.testing.assert_array_equal(back.decision_function(X_new), est.decision_function(X_new))


def test_object_class_labels_round_trip_without_pickle(data: Any, tmp_path: Path) -> None:
    X, y = data
    est = LogisticRegression().fit(X, np.where(y > 0, "pos", "neg").astype(object))
    assert est.classes_.dtype == object
    est.save(tmp_path / "m")
    back = load(tmp_path / "m")
    assert back.classes_.dtype == object and list(back.classes_) == ["neg", "pos"]
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    # A label no JSON type can hold is refused before anything is written.
    est.classes_ = np.array([object(), object()], dtype=object)
    with pytest.raises(InputValueError, match="only pickle"):
        est.save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_truncated_svd_round_trip_and_partial_fit(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    X = rng.normal(size=(200, 4)) @ rng.normal(size=(4, 9))
    est = TruncatedSVD(n_components=3, n_iter=3, random_state=7).fit(X)
    est.save(tmp_path / "m")
    back = load(tmp_path / "m")
    assert type(back) is TruncatedSVD and _params(back) == _params(est)
    _same_fit(est, back)
    np.testing.assert_array_equal(back.transform(X), est.transform(X))
    X_more = rng.normal(size=(30, 4)) @ rng.normal(size=(4, 9))
    # partial_fit needs the column summary, saved with the model.
    est.partial_fit(X_more)
    back.partial_fit(X_more)
    np.testing.assert_array_equal(back.singular_values_, est.singular_values_)
    np.testing.assert_array_equal(back.explained_variance_ratio_, est.explained_variance_ratio_)


def test_random_state_object_is_not_saved(tmp_path: Path) -> None:
    X = np.random.default_rng(8).normal(size=(60, 5))
    est = TruncatedSVD(n_components=2, random_state=np.random.RandomState(1)).fit(X)
    est.save(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / MODEL_FILE).read_text())
    assert doc["params_not_saved"] == ["random_state"]
    np.testing.assert_array_equal(load(tmp_path / "m").transform(X), est.transform(X))


def test_fsspec_url(data: Any) -> None:
    X, y = data
    est = LinearRegression().fit(X, y)
    url = "memory://blocklin-persist-test/models/lin"
    est.save(url, overwrite=True)
    np.testing.assert_array_equal(load(url).predict(X), est.predict(X))


def test_save_refuses(data: Any, tmp_path: Path) -> None:
    X, y = data
    with pytest.raises(NotFittedError):
        LinearRegression().save(tmp_path / "unfitted")
    assert not (tmp_path / "unfitted").exists()
    est = LinearRegression().fit(X, y)
    est.save(tmp_path / "m")
    with pytest.raises(InputValueError, match="already exists; pass overwrite=True"):
        est.save(tmp_path / "m")
    LinearRegression(reg_param=1.0).fit(X, y).save(tmp_path / "m", overwrite=True)
    assert load(tmp_path / "m").reg_param == 1.0

    class Sub(LinearRegression):  # type: ignore[misc]
        pass

    with pytest.raises(InputValueError, match="subclass would load as its base"):
        Sub().fit(X, y).save(tmp_path / "sub")


def _tamper(path: Path, **changes: Any) -> None:
    doc = json.loads((path / MODEL_FILE).read_text())
    for key, value in changes.items():
        target = doc
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    (path / MODEL_FILE).write_text(json.dumps(doc))


@pytest.fixture
def saved(data: Any, tmp_path: Path) -> Path:
    X, y = data
    LinearRegression().fit(X, y).save(tmp_path / "m")
    return tmp_path / "m"


def test_refuses_another_format_version(saved: Path) -> None:
    _tamper(saved, format_version=2)
    with pytest.raises(ModelFormatError, match=r"model format 2 by blocklin .*reads format 1"):
        load(saved)


def test_refuses_an_unknown_class(saved: Path) -> None:
    # A tampered class name is never imported: only the registered classes are built.
    _tamper(saved, estimator="os.system")
    with pytest.raises(ModelFormatError, match=r"unknown estimator class 'os\.system'"):
        load(saved)
    _tamper(saved, estimator="sklearn.linear_model.LinearRegression")
    with pytest.raises(ModelFormatError, match="unknown estimator class"):
        load(saved)


@pytest.mark.parametrize(("change", "match"), [
    ({"params.not_a_param": 1}, "has no parameters"),
    ({"params.reg_param": [1, 2]}, "must be a JSON scalar"),
    ({"fitted.__class__": {"kind": "json", "value": 1}}, "not a fitted attribute"),
    ({"fitted.coef_": {"kind": "pickle"}}, "unknown kind"),
    ({"format": "something-else"}, "not a blocklin model"),
])
def test_refuses_malformed_model_json(saved: Path, change: dict[str, Any], match: str) -> None:
    _tamper(saved, **change)
    with pytest.raises(ModelFormatError, match=match):
        load(saved)


def test_refuses_changed_arrays(saved: Path) -> None:
    import io

    with np.load(saved / ARRAYS_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["coef_"] = arrays["coef_"] * 2
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (saved / ARRAYS_FILE).write_bytes(buf.getvalue())
    with pytest.raises(ModelFormatError, match="does not match the digest"):
        load(saved)
    with pytest.raises(FileNotFoundError, match="no saved model"):
        load(saved.parent / "nothing-here")


def _pipeline(tmp_path: Path, steps: list[dict[str, Any]], outputs: dict[str, Any],
              y_path: str = "y.zarr", **extra: Any) -> Any:
    from blocklin.pipelines.runner import load_pipeline

    spec = {"name": "m", "inputs": {"X": {"path": "X.zarr"}, "y": {"path": y_path}},
            "steps": steps, "outputs": outputs, "output_dir": "out", "report": False, **extra}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_pipeline(tmp_path / "spec.yaml")


def test_pipeline_outputs_load_back(data: Any, tmp_path: Path) -> None:
    from blocklin.pipelines.manifest import load_small
    from blocklin.pipelines.runner import run_pipeline

    X, y = data
    bl.from_array(X, tmp_path / "X.zarr", chunks=(128, None))
    bl.from_array((y > 0).astype(float)[:, None], tmp_path / "y.zarr", chunks=(128, None))
    steps = [{"name": "model", "op": "logistic_regression", "inputs": {"X": "X", "y": "y"},
              "params": {"reg_param": 0.01}},
             {"name": "svd", "op": "truncated_svd", "inputs": {"A": "X"},
              "params": {"n_components": 2}},
             {"name": "g", "op": "gram", "inputs": {"A": "X"}}]
    manifest = run_pipeline(_pipeline(tmp_path, steps, {"model": {"step": "model"},
                                                        "svd": {"step": "svd"},
                                                        "gram": {"step": "g"}}))
    out = tmp_path / "out"
    assert manifest["outputs"]["model"]["model"] == "model.model"
    assert manifest["outputs"]["model"]["estimator"] == "blocklin.ml.LogisticRegression"
    assert "model" not in manifest["outputs"]["gram"] and not (out / "gram.model").exists()
    model = load(out / "model.model")
    arrays = load_small(out / "model.npz")  # the old output stays, and agrees
    np.testing.assert_array_equal(model.coef_, arrays["coef"])
    np.testing.assert_array_equal(model.predict(X), (X @ arrays["coef"][0] + arrays["intercept"]
                                                      > 0).astype(float))
    # Stored input: the same predictions (one pass over the stored X).
    np.testing.assert_array_equal(model.predict(bl.open(tmp_path / "X.zarr")), model.predict(X))
    svd = load(out / "svd.model")
    np.testing.assert_array_equal(svd.components_, load_small(out / "svd.npz")["components"])
    np.testing.assert_allclose(svd.transform(X), X @ svd.components_.T, rtol=1e-12)


def test_refreshed_pipeline_model_follows_the_refresh(data: Any, tmp_path: Path) -> None:
    """A refresh updates the saved model with the merged state, not just the .npz."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from blocklin.pipelines.ingest import ingest
    from blocklin.pipelines.refresh import refresh_pipeline
    from blocklin.pipelines.runner import run_pipeline

    X, y = data
    pq.write_table(pa.table({**{f"f{j}": X[:200, j] for j in range(5)}, "y": y[:200]}),
                   tmp_path / "train.parquet")
    pq.write_table(pa.table({**{f"f{j}": X[200:, j] for j in range(5)}, "y": y[200:]}),
                   tmp_path / "new.parquet")
    ingest(str(tmp_path / "train.parquet"), str(tmp_path / "X.zarr"), label="y")
    steps = [{"name": "fit", "op": "linear_regression", "inputs": {"X": "X", "y": "y"},
              "params": {"solver": "normal", "reg_param": 0.01}}]
    pipe = _pipeline(tmp_path, steps, {"fit": {"step": "fit"}}, y_path="X.label.zarr",
                     refresh={"input": "X", "label_input": "y", "label_column": "y"})
    run_pipeline(pipe)
    first = load(tmp_path / "out" / "fit.model")
    m = refresh_pipeline(pipe, str(tmp_path / "new.parquet"))
    assert m["refresh"]["outputs"] == {"fit": "incremental"}
    model = load(tmp_path / "out" / "fit.model")
    full = LinearRegression(solver="normal", reg_param=0.01).fit(X, y)
    assert not np.array_equal(model.coef_, first.coef_)
    np.testing.assert_allclose(model.coef_, full.coef_, rtol=1e-9)
    np.testing.assert_allclose(model.predict(X), full.predict(X), rtol=1e-9)
    assert model.reg_param == 0.01 and model.solver_ == "normal"
