"""The write side of a run: lock, compute, store outputs, write manifest and report.

The output directory is reached through :class:`~blocklin.pipelines.outdir.OutputDir`
only; where a run stages its outputs and how they become the committed ones is that
class's business (``.staging`` then renames locally, ``runs/<id>/`` on object stores).
"""

from __future__ import annotations

import inspect
import posixpath
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blocklin.executors.api import ProgressHook
from blocklin.executors.base import RunStats
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


def execute(pipe: Pipeline, opts: RunOptions, progress: ProgressHook | None) -> dict[str, Any]:
    """Run every step, store the outputs and write the manifest and report."""
    plan_info = explain_pipeline(pipe, opts)  # all checks, nothing written yet
    out_dir = pipe.output_store()
    comp = compute_options(pipe, opts)
    check_reachable(comp)
    with OutputLock(out_dir, opts.command):
        area = out_dir.start_run(opts.resume, load_manifest(out_dir))
        inputs = open_inputs(pipe)
        started, t0 = utc_now(), time.perf_counter()
        values, stats = compute_steps(pipe, inputs, out_dir.url(area), comp, opts.resume,
                                      progress)
        results = {name: values[out.step] for name, out in pipe.spec.outputs.items()}
        persist_states(pipe, results)
        manifest = finish_run(pipe, inputs, results, stats, comp, plan_info, started, t0,
                              mode="run", extra=refresh_state(pipe, inputs), area=area)
    return manifest


def check_reachable(comp: Mapping[str, Any], timeout: float = 5.0) -> None:
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

    address = comp.get("address")
    if comp.get("executor") != "dask" or not address:
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
                  comp: Mapping[str, Any], resume: bool,
                  progress: ProgressHook | None) -> tuple[dict[str, Any], RunStats]:
    """One shared compute for every lazy step, then the eager steps in order; matrix
    outputs are written under ``staging`` (a path or URL)."""
    from blocklin.executors.api import compute

    values = build_steps(pipe, inputs, output_paths(pipe, staging), comp)
    steps = lazy_steps(pipe)
    stats = RunStats()
    if steps:
        computed = compute(*(values[s.name] for s in steps), resume=resume, stats=stats,
                           progress=progress, **comp)
        for s, v in zip(steps, computed, strict=True):
            values[s.name] = v
    for step in pipe.steps:
        if step.op.kind == "eager":
            # Iterative steps run their own computes; their wall time is recorded per step.
            t0 = time.perf_counter()
            values[step.name] = run_eager(pipe, step.name, values, comp)
            label = f"{step.name} ({step.op.name}, iterative)"
            stats.stage_seconds[label] = time.perf_counter() - t0
    return values, stats


def run_eager(pipe: Pipeline, name: str, values: Mapping[str, Any],
              comp: Mapping[str, Any]) -> Any:
    step = pipe.step(name)
    args = {arg: values[ref] for arg, ref in step.spec.inputs.items()}
    return step.op.build(args, step.params, BuildContext(compute=comp))


def _store_outputs(pipe: Pipeline, results: Mapping[str, Any], out_dir: OutputDir,
                   area: str) -> dict[str, dict[str, Any]]:
    """Write small outputs into the run's ``area``, then publish every output."""
    from blocklin.storage import BlockMatrix

    record: dict[str, dict[str, Any]] = {}
    moves: list[tuple[str, str]] = []
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
    for src, dst in moves:
        out_dir.publish(src, dst)
    return record


def finish_run(pipe: Pipeline, inputs: Mapping[str, Any], results: Mapping[str, Any],
               stats: RunStats, comp: Mapping[str, Any], plan_info: Mapping[str, Any],
               started: str, t0: float, mode: str, extra: Mapping[str, Any],
               area: str) -> dict[str, Any]:
    """Store outputs, then write the manifest (the commit point) and the report."""
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
        "executor": {k: comp.get(k) for k in ("executor", "address", "work_dir", "num_workers",
                                              "device")},
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
    return {"url": m.url, "shape": list(m.shape), "chunks": list(m.chunks),
            "dtype": str(m.dtype), "fingerprint": m.fingerprint,
            "batches": [b.get("fingerprint") for b in prov.get("batches", [])]}


def accepts(func: Any, name: str) -> bool:
    """Whether ``func`` takes a keyword ``name`` (for operators landing with other signatures)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
