"""A catalogue of bad specs and bad inputs: each fails with a clear one-line error naming
the file, the field and what was expected, exits 2, and leaves no output behind."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.pipelines.conftest import base_spec
from typer.testing import CliRunner

import blocklin as bl
from blocklin._cli import app


def _mutate(path: str, value: Any) -> Any:
    def apply(spec: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(spec)
        keys = path.split(".")
        node: Any = spec
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if value is _DELETE:
            if isinstance(node, list):
                del node[int(last)]
            else:
                del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return spec

    return apply


_DELETE = object()

# (id, change to the base spec or raw YAML text, expected field, expected words)
CASES: list[tuple[str, Any, str, str]] = [
    ("yaml-syntax", "name: t\ninputs: {X: [\n", "line", "invalid YAML"),
    ("not-a-mapping", "- just\n- a list\n", "", "a pipeline spec is a mapping"),
    ("python-tag", "name: !!python/object/apply:os.system ['true']\n", "line", "invalid YAML"),
    ("missing-name", _mutate("name", _DELETE), "name", "required field is missing"),
    ("bad-name", _mutate("name", "has space"), "name", "should match pattern"),
    ("unknown-top-field", _mutate("stepz", []), "stepz", "unknown field"),
    ("no-inputs", _mutate("inputs", {}), "inputs", "at least 1"),
    ("input-not-mapping", _mutate("inputs.X", "X.zarr"), "inputs.X", "valid dictionary"),
    ("input-unknown-field", _mutate("inputs.X", {"path": "X.zarr", "pth": 1}), "inputs.X.pth",
     "unknown field"),
    ("no-steps", _mutate("steps", []), "steps", "at least 1"),
    ("step-missing-op", _mutate("steps.0", {"name": "g", "inputs": {"A": "X"}}), "steps[0].op",
     "required"),
    ("unknown-op", _mutate("steps.0.op", "gramm"), "steps[0].op", "did you mean 'gram'"),
    ("eval-attempt-op", _mutate("steps.0.op", "__import__('os').system"), "steps[0].op",
     "unknown operator"),
    ("unknown-param", _mutate("steps.0.params", {"k": 3}), "steps[0].params.k",
     "has no parameter 'k'"),
    ("param-wrong-type", _mutate("steps", [{"name": "z", "op": "standardize",
                                            "inputs": {"A": "X"},
                                            "params": {"ddof": "one"}},
                                           {"name": "g", "op": "gram", "inputs": {"A": "z"}},
                                           {"name": "stats", "op": "column_stats",
                                            "inputs": {"A": "X"}}]),
     "steps[0].params.ddof", "valid integer"),
    ("param-out-of-range", _mutate("steps", [{"name": "z", "op": "standardize",
                                              "inputs": {"A": "X"}, "params": {"ddof": -1}},
                                             {"name": "g", "op": "gram", "inputs": {"A": "z"}},
                                             {"name": "stats", "op": "column_stats",
                                              "inputs": {"A": "X"}}]),
     "steps[0].params.ddof", "greater than or equal to 0"),
    ("missing-argument", _mutate("steps.0.inputs", {}), "steps[0].inputs", "needs argument 'A'"),
    ("extra-argument", _mutate("steps.0.inputs", {"A": "X", "B": "X"}), "steps[0].inputs.B",
     "takes no argument 'B'"),
    ("unknown-reference", _mutate("steps.0.inputs.A", "Y"), "steps[0].inputs.A",
     "neither an input nor an earlier step"),
    ("forward-reference", _mutate("steps.0.inputs.A", "stats"), "steps[0].inputs.A",
     "later step"),
    ("self-reference", _mutate("steps.0.inputs.A", "g"), "steps[0].inputs.A", "later step"),
    ("small-result-as-matrix", _mutate("steps.1.inputs.A", "g"), "steps[1].inputs.A",
     "gives a small result, not a matrix"),
    ("duplicate-step", _mutate("steps.1.name", "g"), "steps[1].name", "already the name"),
    ("step-named-like-input", _mutate("steps.0.name", "X"), "steps[0].name",
     "already the name of an input"),
    ("no-outputs", _mutate("outputs", {}), "outputs", "at least 1"),
    ("output-unknown-step", _mutate("outputs.gram.step", "nope"), "outputs.gram.step",
     "is not a step"),
    ("output-a-view", lambda s: {**_mutate("steps", [
        {"name": "z", "op": "standardize", "inputs": {"A": "X"}},
        {"name": "g", "op": "gram", "inputs": {"A": "z"}},
        {"name": "stats", "op": "column_stats", "inputs": {"A": "X"}}])(s),
        "outputs": {"z": {"step": "z"}}}, "outputs.z.step", "lazy view"),
    ("bad-executor", _mutate("executor", {"executor": "ray"}), "executor.executor",
     "'dask' or 'spark'"),
    ("bad-workers", _mutate("executor", {"num_workers": 0}), "executor.num_workers",
     "greater than or equal to 1"),
    ("bad-memory", _mutate("resources", {"max_task_memory": "lots"}),
     "resources.max_task_memory", "memory size must look like"),
    ("bad-device", _mutate("resources", {"device": "tpu"}), "resources.device", "'cpu' or 'gpu'"),
    ("refresh-unknown-input", _mutate("refresh", {"input": "Y"}), "refresh.input",
     "is not an input"),
    ("wrong-version", _mutate("version", 2), "version", "Input should be 1"),
    ("missing-input-array", _mutate("inputs.X.path", "nothere.zarr"), "inputs.X.path",
     "no zarr array at"),
    ("memory-over-limit", _mutate("resources", {"max_task_memory": "1KiB"}),
     "resources.max_task_memory",
     "over the allowed max_task_memory"),
    ("matmul-shape-mismatch", lambda s: {**s, "inputs": {"X": {"path": "X.zarr"},
                                                         "W": {"path": "W.zarr"}},
                                         "steps": [{"name": "p", "op": "matmul",
                                                    "inputs": {"A": "X", "B": "W"}}],
                                         "outputs": {"p": {"step": "p"}}},
     "steps[0]", "inner dimensions differ"),
]


@pytest.mark.parametrize(("case", "change", "field", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_spec_fails_clearly_and_writes_nothing(matrix: Any, write_spec: Any, tmp_path: Path,
                                                   case: str, change: Any, field: str,
                                                   words: str) -> None:
    bl.from_array(np.ones((7, 3)), tmp_path / "W.zarr")
    doc = change if isinstance(change, str) else change(base_spec())
    spec = write_spec(doc)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = CliRunner().invoke(app, ["run", str(spec)])
    assert res.exit_code == 2, (res.stdout, res.stderr)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err  # one clear line, no traceback
    assert err.startswith(f"error: {spec}"), err
    if field:
        assert f": {field}" in err, err
    assert words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) + len(BAD_INPUTS) >= 25


# -- bad inputs to ingest and refresh --------------------------------------------------------------
BAD_INPUTS: list[tuple[str, list[str], str]] = [
    ("missing-file", ["ingest", "{d}/none.npy", "{d}/o.zarr"], "no such file"),
    ("unknown-format", ["ingest", "{d}/data.txt", "{d}/o.zarr"], "cannot tell the format"),
    ("strings-npy", ["ingest", "{d}/strings.npy", "{d}/o.zarr"], "must hold real numbers"),
    ("1d-npy", ["ingest", "{d}/vector.npy", "{d}/o.zarr"], "a matrix is 2-D"),
    ("csv-missing-label", ["ingest", "{d}/t.csv", "{d}/o.zarr", "--label", "nope"],
     "no label column 'nope'"),
    ("csv-text-column", ["ingest", "{d}/t.csv", "{d}/o.zarr", "--columns", "a,name"],
     "not numeric"),
    ("csv-nulls", ["ingest", "{d}/nulls.csv", "{d}/o.zarr"], "missing values"),
    ("bad-chunk-rows", ["ingest", "{d}/t.csv", "{d}/o.zarr", "--chunk-rows", "0"],
     "must be positive"),
    ("dest-exists", ["ingest", "{d}/t.csv", "{d}/X.zarr"], "already exists"),
]


@pytest.fixture
def bad_files(tmp_path: Path, matrix: Any) -> Path:
    (tmp_path / "data.txt").write_text("1 2 3\n")
    np.save(tmp_path / "strings.npy", np.array([["a", "b"]]))
    np.save(tmp_path / "vector.npy", np.arange(5.0))
    (tmp_path / "t.csv").write_text("a,b,name\n1,2,x\n3,4,y\n")
    (tmp_path / "nulls.csv").write_text("a,b\n1,2\n,4\n")
    return tmp_path


@pytest.mark.parametrize(("case", "args", "words"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_fails_clearly(bad_files: Path, case: str, args: list[str], words: str) -> None:
    argv = [a.format(d=bad_files) for a in args]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert len(res.stderr.strip().splitlines()) == 1
    assert words in res.stderr, res.stderr
    assert not (bad_files / "o.zarr").exists()
