"""Saving fitted estimators and loading them back, as arrays and JSON (never pickle).

A saved model is a folder (a local directory or any fsspec URL) holding

``arrays.npz``
    The fitted arrays (``coef_``, ``components_``...), in numpy's ``.npz``, read back
    with ``allow_pickle=False``.
``model.json``
    ``format`` (``"blocklin-model"``) and ``format_version``, the estimator class, the
    blocklin and numpy versions that wrote it, the hyperparameters, every fitted
    attribute's name and how it is stored (an array of ``arrays.npz``, or a JSON
    number, string or list), and the SHA-256 of ``arrays.npz``.

``model.json`` is written last, so a folder without it is not (yet) a model. Loading
builds only the estimator classes of :func:`estimator_classes` (nothing is imported by
name), refuses a format version it does not read, and checks the arrays against
their digest: a model loads as written, or :class:`~blocklin.errors.ModelFormatError`
says why not.

The parameters that say where and how an estimator runs (``executor``, ``work_dir``,
``compute_options``, ``storage_options``, ``state_path``, ``progress``) are not
saved: they belong to the process (and ``storage_options`` holds credentials). A
loaded estimator has their defaults; ``set_params`` changes them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from blocklin.errors import InputValueError, ModelFormatError
from blocklin.storage.npz import npz_arrays, npz_bytes

if TYPE_CHECKING:
    from typing import TypeAlias

    from blocklin.ml.als import ALS
    from blocklin.ml.ease import EASE
    from blocklin.ml.linear import LinearRegression
    from blocklin.ml.logistic import LogisticRegression
    from blocklin.ml.pca import PCA
    from blocklin.ml.truncated_svd import TruncatedSVD

    Estimator: TypeAlias = LinearRegression | LogisticRegression | TruncatedSVD | EASE | PCA | ALS

__all__ = ["ARRAYS_FILE", "FORMAT", "FORMAT_VERSION", "MODEL_FILE", "RUNTIME_PARAMS",
           "SaveMixin", "estimator_classes", "load", "restore", "save"]

FORMAT = "blocklin-model"
#: Bumped when a saved model's layout changes so that an older blocklin would
#: misread it; :func:`load` reads exactly this version.
FORMAT_VERSION = 1
MODEL_FILE = "model.json"
ARRAYS_FILE = "arrays.npz"
#: Largest ``model.json`` read (a few kB of parameters and names; bounds what is parsed).
MAX_MODEL_JSON_BYTES = 4 * 2**20
#: Constructor parameters that configure the run, not the model: never saved.
RUNTIME_PARAMS = frozenset({"executor", "work_dir", "compute_options", "storage_options",
                            "state_path", "progress", "checkpoint_dir"})
#: Private fitted state an estimator needs after loading (public fitted attributes,
#: ending in ``_``, are all saved): TruncatedSVD's column summary, which ``partial_fit``
#: merges new rows into.
_PRIVATE: dict[str, tuple[str, ...]] = {"TruncatedSVD": ("_mean", "_m2")}
_SCALARS = (bool, int, float, str)


def estimator_classes() -> dict[str, type]:
    """The estimators :func:`load` builds, by the name ``model.json`` records."""
    from blocklin.ml.als import ALS
    from blocklin.ml.ease import EASE
    from blocklin.ml.linear import LinearRegression
    from blocklin.ml.logistic import LogisticRegression
    from blocklin.ml.pca import PCA
    from blocklin.ml.truncated_svd import TruncatedSVD

    classes: tuple[type, ...] = (LinearRegression, LogisticRegression, TruncatedSVD, EASE, PCA,
                                 ALS)
    return {f"blocklin.ml.{c.__name__}": c for c in classes}


class SaveMixin:
    """``save(path)`` for blocklin's estimators; :func:`blocklin.ml.load` reads it back."""

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False,
             storage_options: Mapping[str, Any] | None = None) -> None:
        """Save the fitted estimator to the folder ``path`` (arrays and JSON, no pickle).

        Parameters
        ----------
        path : str or path-like
            A local folder or an fsspec URL (``s3://bucket/models/ridge``).
        overwrite : bool
            Replace whatever is at ``path``; otherwise an existing one is an error.
        storage_options : dict, optional
            fsspec options for ``path`` (default: those registered for it); never
            written.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the estimator is not fitted.
        InputValueError
            If ``path`` exists (without ``overwrite``), or a fitted attribute cannot be
            stored without pickle (e.g. class labels that are arbitrary objects).

        Examples
        --------
        >>> LinearRegression().fit(X, y).save("models/ridge")
        >>> blocklin.ml.load("models/ridge").predict(X_new)
        """
        save(self, path, overwrite=overwrite, storage_options=storage_options)


def save(est: Any, path: str | os.PathLike[str], *, overwrite: bool = False,
         storage_options: Mapping[str, Any] | None = None) -> None:
    """Save a fitted estimator (see :meth:`SaveMixin.save` and the module docstring)."""
    from sklearn.utils.validation import check_is_fitted

    from blocklin import __version__
    from blocklin.storage.stores import store_for

    name = _class_name(est)
    check_is_fitted(est)
    # Everything is encoded before anything is written: a refusal leaves no folder.
    params, skipped = _params(est)
    arrays: dict[str, np.ndarray] = {}
    fitted = {attr: _encode(attr, value, arrays) for attr, value in _fitted(est, name).items()}
    data = npz_bytes(arrays)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "estimator": name,
           "blocklin_version": __version__, "numpy_version": np.__version__,
           "params": params, "params_not_saved": skipped, "fitted": fitted,
           "arrays_sha256": hashlib.sha256(data).hexdigest()}
    store = store_for(path, storage_options=storage_options)
    if store.list("") or store.exists(MODEL_FILE):
        if not overwrite:
            raise InputValueError(f"{store.url} already exists; pass overwrite=True to replace "
                                  "it")
        store.delete_prefix("")
    store.put(ARRAYS_FILE, data)
    store.put(MODEL_FILE, json.dumps(doc, indent=1, sort_keys=True).encode())


def load(path: str | os.PathLike[str], *,
         storage_options: Mapping[str, Any] | None = None) -> Estimator:
    """Load an estimator saved by ``save``; it predicts and transforms as the one saved.

    Parameters
    ----------
    path : str or path-like
        The folder given to ``save``: a local path or an fsspec URL. A pipeline writes
        one per estimator output, ``<output_dir>/<output>.model``.
    storage_options : dict, optional
        fsspec options for ``path`` (default: those registered for it).

    Returns
    -------
    LinearRegression, LogisticRegression, TruncatedSVD, EASE or PCA
        Fitted, with the saved hyperparameters; the run parameters (``executor``,
        ``work_dir``...) have their defaults.

    Raises
    ------
    FileNotFoundError
        If ``path`` holds no ``model.json``.
    ModelFormatError
        If the model was written in another format version, names an estimator class
        blocklin does not build, or its files are malformed or do not match.

    Examples
    --------
    >>> model = blocklin.ml.load("out/ridge/model.model")
    >>> model.predict(bl.open("data/X_new.zarr"))
    """
    from blocklin.storage.stores import store_for

    store = store_for(path, read_only=True, storage_options=storage_options)
    raw = store.get(MODEL_FILE)
    if raw is None:
        raise FileNotFoundError(f"no saved model at {store.url} (no {MODEL_FILE})")
    doc = _parse(raw, store.url)
    arrays = _read_arrays(store, doc)
    return restore(doc["estimator"], doc.get("params", {}), _decode_all(doc, arrays, store.url),
                   where=store.url)


def restore(name: str, params: Mapping[str, Any], fitted: Mapping[str, Any],
            where: str = "the model") -> Estimator:
    """Build the estimator ``name`` with ``params`` and set its fitted attributes.

    Used by :func:`load` and by pipelines (a refresh's merged arrays). Only the
    classes of :func:`estimator_classes`, their own parameters, and fitted attribute
    names (public ones ending in ``_``, or the class's known private state) are
    accepted.

    Raises
    ------
    ModelFormatError
        For an unknown class, parameter or attribute name.
    """
    classes = estimator_classes()
    cls = classes.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ModelFormatError(
            f"{where}: unknown estimator class {str(name)[:200]!r}; blocklin.ml.load builds "
            f"only {', '.join(sorted(classes))} (it imports nothing by name)")
    known = set(cls().get_params(deep=False))
    if not isinstance(params, Mapping):
        raise ModelFormatError(f"{where}: params must be a JSON object")
    unknown = sorted(set(params) - known)
    if unknown:
        raise ModelFormatError(f"{where}: {cls.__name__} has no parameters {unknown[:10]} (saved "
                               "by a newer blocklin?)")
    for key, value in params.items():
        if value is not None and not isinstance(value, _SCALARS):
            raise ModelFormatError(f"{where}: parameter {key!r} must be a JSON scalar; got "
                                   f"{type(value).__name__}")
    est = cls(**params)
    private = _PRIVATE.get(cls.__name__, ())
    for attr, value in fitted.items():
        if not (_public_fitted(attr) or attr in private):
            raise ModelFormatError(f"{where}: {str(attr)[:100]!r} is not a fitted attribute "
                                   f"of {cls.__name__}")
        setattr(est, attr, value)
    out: Estimator = est
    return out


# -- saving ------------------------------------------------------------------------------
def _class_name(est: Any) -> str:
    for name, cls in estimator_classes().items():
        if type(est) is cls:
            return name
    raise InputValueError(f"save supports {', '.join(sorted(estimator_classes()))}; got "
                          f"{type(est).__module__}.{type(est).__qualname__} (a subclass would "
                          "load as its base class)")


def _public_fitted(attr: Any) -> bool:
    return isinstance(attr, str) and attr.isidentifier() and attr.endswith("_") \
        and not attr.startswith("_")


def _params(est: Any) -> tuple[dict[str, Any], list[str]]:
    """The hyperparameters as JSON scalars, and the names of those that are not
    (e.g. a ``RandomState`` instance: a loaded model gets the default)."""
    params: dict[str, Any] = {}
    skipped = []
    for key, value in est.get_params(deep=False).items():
        if key in RUNTIME_PARAMS:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or isinstance(value, _SCALARS):
            params[key] = value
        else:
            skipped.append(key)
    return params, skipped


def _fitted(est: Any, name: str) -> dict[str, Any]:
    private = _PRIVATE.get(name.rsplit(".", 1)[-1], ())
    return {k: v for k, v in sorted(vars(est).items())
            if _public_fitted(k) or (k in private and v is not None)}


def _encode(attr: str, value: Any, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """How ``model.json`` records a fitted attribute (arrays go to ``arrays``)."""
    if value is None:
        return {"kind": "none"}
    if isinstance(value, np.ndarray):
        if not value.dtype.hasobject:
            arrays[attr] = value
            return {"kind": "array"}
        items = value.ravel().tolist()
        if all(isinstance(v, _SCALARS) for v in items):
            # Class labels or feature names held as Python objects: exact in JSON.
            return {"kind": "object_array", "shape": list(value.shape), "values": items}
        raise InputValueError(f"cannot save {attr}: it holds "
                              f"{sorted({type(v).__name__ for v in items})} objects, which only "
                              "pickle could store")
    if isinstance(value, np.generic) and value.dtype.kind in "biufU":
        return {"kind": "scalar", "dtype": value.dtype.str, "value": value.item()}
    if isinstance(value, _SCALARS):
        return {"kind": "json", "value": value}
    if isinstance(value, list | tuple) and all(isinstance(v, (*_SCALARS, np.generic))
                                                for v in value):
        items = [v.item() if isinstance(v, np.generic) else v for v in value]
        if all(isinstance(v, _SCALARS) for v in items):
            return {"kind": type(value).__name__, "values": items}
    raise InputValueError(f"cannot save {attr} ({type(value).__name__}) without pickle")


# -- loading -----------------------------------------------------------------------------
def _parse(raw: bytes, url: str) -> dict[str, Any]:
    from blocklin import __version__

    if len(raw) > MAX_MODEL_JSON_BYTES:
        raise ModelFormatError(f"{url}: {MODEL_FILE} is {len(raw)} bytes, over the "
                               f"{MAX_MODEL_JSON_BYTES} a model's is")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ModelFormatError(f"{url}: {MODEL_FILE} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFormatError(f"{url}: {MODEL_FILE} is not a blocklin model (no "
                               f"format {FORMAT!r})")
    version = doc.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ModelFormatError(
            f"{url} was written in model format {str(version)[:20]} by blocklin "
            f"{str(doc.get('blocklin_version'))[:40]}; this blocklin ({__version__}) reads "
            f"format {FORMAT_VERSION} only. Load it with the blocklin that wrote it (or a "
            "newer one), or refit and save it again")
    for key, kind in (("fitted", dict), ("params", dict), ("estimator", str)):
        if not isinstance(doc.get(key), kind):
            raise ModelFormatError(f"{url}: {MODEL_FILE} field {key!r} must be a JSON "
                                   f"{'object' if kind is dict else 'string'}")
    return doc


def _read_arrays(store: Any, doc: Mapping[str, Any]) -> dict[str, np.ndarray]:
    data = store.get(ARRAYS_FILE)
    if data is None:
        raise ModelFormatError(f"{store.url}: {ARRAYS_FILE} is missing")
    if hashlib.sha256(data).hexdigest() != doc.get("arrays_sha256"):
        raise ModelFormatError(f"{store.url}: {ARRAYS_FILE} does not match the digest in "
                               f"{MODEL_FILE} (changed or damaged since it was saved)")
    try:
        return npz_arrays(data)
    except (ValueError, OSError) as exc:
        raise ModelFormatError(f"{store.url}: {ARRAYS_FILE} cannot be read ({exc})") from None


def _decode_all(doc: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                url: str) -> dict[str, Any]:
    out = {}
    for attr, spec in doc["fitted"].items():
        try:
            out[attr] = _decode(attr, spec, arrays)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{url}: fitted attribute {str(attr)[:100]!r} cannot be "
                                   f"read ({exc})") from None
    return out


def _decode(attr: str, spec: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    kind = spec["kind"]
    if kind == "none":
        return None
    if kind == "array":
        return arrays[attr]
    if kind == "object_array":
        values = spec["values"]
        if not all(isinstance(v, _SCALARS) for v in values):
            raise ValueError("object_array values must be JSON scalars")
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out.reshape(tuple(int(n) for n in spec["shape"]))
    if kind == "scalar":
        dt = np.dtype(spec["dtype"])
        if dt.kind not in "biufU":
            raise ValueError(f"scalar dtype {dt} is not a number or string")
        return dt.type(spec["value"])
    if kind == "json" and isinstance(spec["value"], _SCALARS):
        return spec["value"]
    if kind in ("list", "tuple") and all(isinstance(v, _SCALARS) for v in spec["values"]):
        return list(spec["values"]) if kind == "list" else tuple(spec["values"])
    raise ValueError(f"unknown kind {str(kind)[:40]!r}")
