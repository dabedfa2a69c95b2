"""The write side of a run: lock, compute, store outputs, write manifest and report.

The output directory is reached through :class:`~blocklin.pipelines.outdir.OutputDir`
only; where a run stages its outputs and how they become the committed ones is that
class's business (``.staging`` then renames locally, ``runs/<id>/`` on object stores).
"""

from __future__ import annotations

import inspect
import json
import logging
import posixpath
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from blocklin.executors.api import ProgressHook
from blocklin.executors.base import RunStats
from blocklin.executors.options import ComputeOptions
from blocklin.executors.progress import progress_to
from blocklin.executors.progress import step as progress_step
from blocklin.pipelines.lock import OutputLock
from blocklin.pipelines.manifest import (
    MANIFEST_NAME,
    arrays_digest,
    load_manifest,
    peak_rss_bytes,
    save_small,
    utc_now,
    versions,
    write_json_atomic,
)
from blocklin.pipelines.outdir import OutputDir
from blocklin.pipelines.registry import BuildContext
from blocklin.pipelines.runlog import RunLog
from blocklin.pipelines.runner import (
    Pipeline,
    RunOptions,
    build_steps,
    compute_options,
    explain_pipeline,
    lazy_steps,
    open_inputs,
    output_paths,
    spec_digest,
)

__all__ = ["execute", "finish_run", "run_eager"]

logger = logging.getLogger(__name__)


def execute(pipe: Pipeline, opts: RunOptions, progress: ProgressHook | None) -> dict[str, Any]:
    """Run every step, store the outputs and write the manifest and report."""
    plan_info = explain_pipeline(pipe, opts)  # all checks, nothing written yet
    out_dir = pipe.output_store()
    comp = compute_options(pipe, opts)
    check_reachable(comp)
    _log_start(pipe, comp)
    # Every pass of the run reports to the hook, the eager steps' own computes included.
    with progress_to(progress), OutputLock(out_dir, opts.command):
        area = out_dir.start_run(opts.resume, load_manifest(out_dir))
        inputs = open_inputs(pipe)
        started, t0 = utc_now(), time.perf_counter()
        log = RunLog()
        values, _ = compute_steps(pipe, inputs, out_dir.url(area), comp, opts.resume,
                                  progress, log)
        results = {name: values[out.step] for name, out in pipe.spec.outputs.items()}
        if pipe.spec.refresh is not None:
            with log.step("refresh state", "persist", "persist"):  # U of an SVD: one pass
                persist_states(pipe, results)
        manifest = finish_run(pipe, inputs, results, log.total(), comp, plan_info, started,
                              t0, mode="run", extra=refresh_state(pipe, inputs), area=area,
                              log=log)
    return manifest


def check_reachable(comp: ComputeOptions, timeout: float = 5.0) -> None:
    """Fail fast, before locking anything, when a dask scheduler address does not answer.

    Raises
    ------
    ConfigError
        For a malformed address (a port out of 1..65535 included), naming it.
    ExecutorError
        When nothing answers at a ``tcp://`` address.
    """
    import socket
    from urllib.parse import urlparse

    from blocklin.errors import ExecutorError
    from blocklin.executors.dask import parse_address

    address = comp.address
    if comp.executor != "dask" or not address:
        return
    address = parse_address(str(address))  # urlparse's port raises a bare ValueError
    if not address.startswith("tcp://"):
        return
    url = urlparse(address)
    try:
        with socket.create_connection((url.hostname or "", url.port or 8786), timeout=timeout):
            pass
    except OSError as exc:
        raise ExecutorError(f"cannot reach the dask scheduler at {address}: {exc}") from None


def compute_steps(pipe: Pipeline, inputs: Mapping[str, Any], staging: str,
                  comp: ComputeOptions, resume: bool, progress: ProgressHook | None,
                  log: RunLog | None = None) -> tuple[dict[str, Any], RunStats]:
    """One shared compute for every lazy step, then the eager steps in order; matrix
    outputs are written under ``staging`` (a path or URL).

    Returns the values and the counters of every compute that ran, the eager steps'
    own included; ``log`` (when given) gets a :class:`StepRun` per part.
    """
    from blocklin.executors.api import compute

    log = log if log is not None else RunLog()
    first = len(log.steps)
    values = build_steps(pipe, inputs, output_paths(pipe, staging), comp)
    steps = lazy_steps(pipe)
    if steps:
        with log.step("plan", ", ".join(sorted({s.op.name for s in steps})), "plan"):
            computed = compute(*(values[s.name] for s in steps), compute_options=comp,
                               resume=resume, progress=progress)
        for s, v in zip(steps, computed, strict=True):
            values[s.name] = v
    for step in pipe.steps:
        if step.op.kind == "eager":
            # Iterative steps run their own computes: each one is counted in the log.
            with log.step(step.name, step.op.name, "eager"):
                values[step.name] = run_eager(pipe, step.name, values, comp)
    return values, RunLog(log.steps[first:]).total()


def run_eager(pipe: Pipeline, name: str, values: Mapping[str, Any],
              comp: ComputeOptions) -> Any:
    step = pipe.step(name)
    args = {arg: values[ref] for arg, ref in step.spec.inputs.items()}
    logger.info("step %s (%s): iterative, runs its own passes", name, step.op.name)
    t0 = time.perf_counter()
    with progress_step(f"step {name}"):
        value = step.op.build(args, step.params, BuildContext(compute=comp))
    logger.info("step %s done in %.2f s", name, time.perf_counter() - t0)
    return value


def _log_start(pipe: Pipeline, comp: ComputeOptions) -> None:
    """INFO: where the run goes and what it runs."""
    if not logger.isEnabledFor(logging.INFO):
        return
    where = str(comp.executor)
    if comp.address:
        where += f" at {comp.address}"
    lazy = [s.name for s in lazy_steps(pipe)]
    eager = [s.name for s in pipe.steps if s.op.kind == "eager"]
    logger.info("pipeline %s on %s, work dir %s: %d steps in one plan%s", pipe.spec.name,
                where, comp.work_dir, len(lazy),
                f", then iterative steps {', '.join(eager)}" if eager else "")


def _store_outputs(pipe: Pipeline, results: Mapping[str, Any], out_dir: OutputDir,
                   area: str) -> dict[str, dict[str, Any]]:
    """Write small outputs into the run's ``area``, then publish every output."""
    from blocklin.storage import BlockMatrix

    record: dict[str, dict[str, Any]] = {}
    moves: list[tuple[str, str]] = []
    matrices: dict[str, Any] = {}  # the matrix outputs' zarr.json, for xarray's group
    for name, value in results.items():
        step = pipe.step(pipe.spec.outputs[name].step)
        if isinstance(value, BlockMatrix):
            src = f"{area}/{name}.zarr"
            if posixpath.dirname(value.url.rstrip("/")) != out_dir.url(area):
                # a matrix result not stored by us: copy it
                from blocklin.storage import from_array

                value = from_array(value, out_dir.url(src), chunks=value.chunks,
                                   overwrite=True)
            dst = out_dir.final_path(area, f"{name}.zarr")
            record[name] = {"step": step.name, "op": step.op.name, "kind": "matrix",
                            "path": dst, "shape": list(value.shape),
                            "chunks": list(value.chunks), "dtype": str(value.dtype),
                            "fingerprint": value.fingerprint}
            moves.append((src, dst))
            matrices[f"{name}.zarr"] = json.loads(value.store.get("zarr.json") or b"{}")
            continue
        # A refresh hands over merged arrays; a run hands over operator results.
        arrays = dict(value) if isinstance(value, dict) else step.op.arrays(value)
        src = f"{area}/{name}.npz"
        save_small(out_dir, src, arrays)
        dst = out_dir.final_path(area, f"{name}.npz")
        record[name] = {"step": step.name, "op": step.op.name, "kind": "small",
                        "path": dst, "digest": arrays_digest(arrays),
                        "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)}
                                   for k, a in arrays.items()}}
        moves.append((src, dst))
        if pipe.spec.refresh is not None:
            # An immutable copy named by content: the state a later refresh merges into,
            # safe from a refresh interrupted while moving outputs into place.
            state = state_path(name, record[name]["digest"])
            out_dir.makedirs(posixpath.dirname(state))
            save_small(out_dir, state, arrays)
        model = _model_of(step, value)
        model_dst = out_dir.final_path(area, f"{name}{MODEL_SUFFIX}")
        if model is not None:
            # The estimator itself, for blocklin.ml.load (the .npz keeps the arrays the
            # report and a refresh read).
            model_src = f"{area}/{name}{MODEL_SUFFIX}"
            model.save(out_dir.url(model_src), overwrite=True)
            record[name].update(model=model_dst,
                                estimator=f"blocklin.ml.{type(model).__name__}")
            moves.append((model_src, model_dst))
        elif out_dir.exists(model_dst):
            out_dir.delete(model_dst)  # an earlier run's model, not this output's
    group = out_dir.final_path(area, "zarr.json")
    ours = _outputs_group(out_dir, group)
    if ours:
        out_dir.delete(group)  # never naming outputs while they are being replaced
    for src, dst in moves:
        out_dir.publish(src, dst)
    if matrices and ours is not False:
        out_dir.write_bytes(group, json.dumps(_group_doc(pipe.spec.name, matrices),
                                              sort_keys=True).encode())
    return record


#: The folder beside ``<output>.npz`` holding an estimator output's model.
MODEL_SUFFIX = ".model"
#: How a refresh's merged arrays (an estimator step updated in place) map back onto
#: the estimator's fitted attributes, so that its saved model follows the refresh:
#: op -> (estimator, {array: (attribute, conversion)}, fixed attributes).
_REFRESHED_MODELS: dict[str, tuple[str, dict[str, tuple[str, Any]], dict[str, Any]]] = {
    # The refresh's partial_fit added the new rows' Gram and recomputed B.
    "ease": ("blocklin.ml.EASE", {
        "coef": ("coef_", np.asarray), "gram": ("gram_", np.asarray),
        "n_samples_seen": ("n_samples_seen_", int),
        "n_features_in": ("n_features_in_", int)}, {}),
    # The refresh's fit of the whole input, warm-started from the stored factors.
    "als": ("blocklin.ml.ALS", {
        "user_factors": ("user_factors_", np.asarray),
        "item_factors": ("item_factors_", np.asarray),
        "user_counts": ("user_counts_", np.asarray), "item_counts": ("item_counts_", np.asarray),
        "n_features_in": ("n_features_in_", int),
        "objective_history": ("objective_history_", np.asarray), "n_iter": ("n_iter_", int),
        "warm_started": ("warm_started_", bool)}, {}),
    # The refresh's partial_fit solves the merged normal equations.
    "linear_regression": ("blocklin.ml.LinearRegression", {
        "coef": ("coef_", np.asarray), "intercept": ("intercept_", float),
        "n_iter": ("n_iter_", int), "n_features_in": ("n_features_in_", int),
        "objective_history": ("objective_history_", lambda a: [float(v) for v in a]),
        "sufficient_stats": ("sufficient_stats_", np.asarray)}, {"solver_": "normal"}),
    "truncated_svd": ("blocklin.ml.TruncatedSVD", {
        "components": ("components_", np.asarray),
        "singular_values": ("singular_values_", np.asarray),
        "explained_variance": ("explained_variance_", np.asarray),
        "explained_variance_ratio": ("explained_variance_ratio_", np.asarray),
        "n_samples_seen": ("n_samples_seen_", int), "n_features_in": ("n_features_in_", int),
        "column_mean": ("_mean", np.asarray), "column_m2": ("_m2", np.asarray)}, {}),
}


def _model_of(step: Any, value: Any) -> Any:
    """The estimator an output holds: a run's fitted one, or one rebuilt from a
    refresh's merged arrays; None for other outputs."""
    if type(value).__module__.startswith("blocklin.ml."):
        from blocklin.ml.persist import estimator_classes

        return value if type(value) in estimator_classes().values() else None
    rebuilt = _REFRESHED_MODELS.get(step.op.name)
    if rebuilt is None or not isinstance(value, dict):
        return None
    from blocklin.ml.persist import restore

    cls, fields, fixed = rebuilt
    fitted = {attr: convert(value[key]) for key, (attr, convert) in fields.items()
              if key in value}
    return restore(cls, step.params.model_dump(), {**fitted, **fixed})


#: ``blocklin.kind`` of the group metadata a run writes over its matrix outputs.
_OUTPUTS_GROUP = "pipeline outputs"


def _outputs_group(out_dir: OutputDir, rel: str) -> bool | None:
    """Whether ``rel`` is the outputs' group metadata a run wrote (None: there is none;
    False: a ``zarr.json`` blocklin did not write there, left alone)."""
    raw = out_dir.read_bytes(rel)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        return bool(doc["attributes"]["blocklin"]["kind"] == _OUTPUTS_GROUP)
    except (ValueError, KeyError, TypeError):
        return False


def _group_doc(pipeline: str, matrices: Mapping[str, Any]) -> dict[str, Any]:
    """zarr group metadata over the matrix outputs, their metadata consolidated in it.

    xarray (``xr.open_zarr(out_dir)``) then reads the outputs from this one document
    and never lists the folder, whose other entries (manifest, report, ``.npz``) are
    not zarr. The outputs do not change once published (a refresh publishes new ones
    and rewrites this), so the consolidated copy cannot go stale.
    """
    return {"zarr_format": 3, "node_type": "group",
            "attributes": {"blocklin": {"kind": _OUTPUTS_GROUP, "pipeline": pipeline}},
            "consolidated_metadata": {"kind": "inline", "must_understand": False,
                                      "metadata": dict(matrices)}}


def finish_run(pipe: Pipeline, inputs: Mapping[str, Any], results: Mapping[str, Any],
               stats: RunStats, comp: ComputeOptions, plan_info: Mapping[str, Any],
               started: str, t0: float, mode: str, extra: Mapping[str, Any],
               area: str, log: RunLog | None = None) -> dict[str, Any]:
    """Store outputs, then write the manifest (the commit point) and the report.

    ``log`` adds ``step_runs`` to the manifest: each step's wall time, computes,
    tasks and passes (what the report plots).
    """
    out_dir = pipe.output_store()
    previous = load_manifest(out_dir)
    outputs = _store_outputs(pipe, results, out_dir, area)
    manifest = {
        "format": "blocklin-run/1",
        "mode": mode,
        "pipeline": pipe.spec.name,
        "spec_file": str(Path(pipe.source).absolute()),
        "spec_sha256": spec_digest(pipe.source),
        "spec": pipe.spec.model_dump(mode="json"),
        "started": started,
        "finished": utc_now(),
        "seconds": round(time.perf_counter() - t0, 6),
        "executor": {k: getattr(comp, k) for k in ("executor", "address", "work_dir",
                                                   "num_workers", "device")},
        "resources": pipe.spec.resources.model_dump(mode="json"),
        "inputs": {name: _input_record(m) for name, m in inputs.items()},
        "steps": {s.name: {"op": s.op.name, "kind": s.op.kind, "inputs": dict(s.spec.inputs),
                           "params": s.params.model_dump(mode="json")} for s in pipe.steps},
        "parameters": {s.name: s.params.model_dump(mode="json") for s in pipe.steps},
        "outputs": outputs,
        "stats": {"tasks_run": stats.tasks_run, "tasks_skipped": stats.tasks_skipped,
                  "blocks_read": stats.blocks_read, "bytes_read": stats.bytes_read,
                  "compute_seconds": round(stats.seconds, 6),
                  "stage_seconds": {k: round(v, 6) for k, v in stats.stage_seconds.items()},
                  "stage_tasks": dict(stats.stage_tasks)},
        "passes": dict(stats.passes),
        "step_runs": log.records() if log is not None else [],
        "plan": list(plan_info.get("stages", [])),
        "projected_task_memory": plan_info.get("projected_task_memory", 0),
        "peak_memory": {"driver_rss_bytes": peak_rss_bytes()},
        "versions": versions(),
        **extra,
    }
    write_json_atomic(out_dir, MANIFEST_NAME, manifest)
    _drop_old_states(out_dir, outputs)
    if pipe.spec.report:
        from blocklin.pipelines.report import write_report

        manifest["report"] = write_report(out_dir, out_dir.final_path(area, "report"),
                                          manifest)
        write_json_atomic(out_dir, MANIFEST_NAME, manifest)
    out_dir.end_run(area, manifest, previous)
    return manifest


def persist_dir(out_dir: OutputDir, name: str) -> str:
    """Where an output's refresh state lives (a path or URL, for the operator's persister)."""
    return out_dir.url(f".refresh/persist/{name}")


def persist_states(pipe: Pipeline, results: Mapping[str, Any]) -> None:
    """Keep what incremental updates need beyond the outputs (e.g. an SVD's U segments)."""
    if pipe.spec.refresh is None:
        return
    out_dir = pipe.output_store()
    for name, value in results.items():
        op = pipe.step(pipe.spec.outputs[name].step).op
        if op.persist is not None:
            out_dir.makedirs(".refresh/persist")
            op.persist(value, persist_dir(out_dir, name))


def state_path(name: str, digest: str) -> str:
    """The immutable merge state of a small output, relative to the output directory."""
    return f".refresh/state/{name}-{digest}.npz"


def _drop_old_states(out_dir: OutputDir, outputs: Mapping[str, Mapping[str, Any]]) -> None:
    folder = ".refresh/state"
    keep = {posixpath.basename(state_path(n, r["digest"]))
            for n, r in outputs.items() if "digest" in r}
    for name in out_dir.names(folder):
        if name not in keep:
            out_dir.delete(f"{folder}/{name}")


def refresh_state(pipe: Pipeline, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Which appended batches the outputs include (all of the input's, after a full run)."""
    if pipe.spec.refresh is None:
        return {}
    target = pipe.spec.refresh.input
    return {"refresh": {"input": target, "rows": int(inputs[target].shape[0]),
                        "batches": _input_record(inputs[target])["batches"]}}


def _input_record(m: Any) -> dict[str, Any]:
    prov = m.provenance
    # Names ingest recorded (the report labels columns with them); a label array
    # records its one column as a parameter.
    params = prov.get("params")
    label = params.get("column") if isinstance(params, dict) else None
    cols = prov.get("columns") if prov.get("columns") is not None else \
        ([label] if isinstance(label, str) else None)
    return {"url": m.url, "shape": list(m.shape), "chunks": list(m.chunks),
            "dtype": str(m.dtype), "fingerprint": m.fingerprint,
            "batches": [b.get("fingerprint") for b in prov.get("batches", [])],
            "columns": [str(c) for c in cols] if isinstance(cols, list) else None}


def accepts(func: Any, name: str) -> bool:
    """Whether ``func`` takes a keyword ``name`` (for operators landing with other signatures)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
