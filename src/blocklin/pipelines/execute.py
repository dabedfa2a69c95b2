"""The write side of a run: lock, compute, store outputs, write manifest and report."""

from __future__ import annotations

import inspect
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
    move_into_place,
    peak_rss_bytes,
    save_small,
    utc_now,
    versions,
    write_json_atomic,
)
from blocklin.pipelines.registry import BuildContext
from blocklin.pipelines.runner import (
    Pipeline,
    RunOptions,
    build_steps,
    clean_dir,
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
    out_dir = pipe.output_dir
    staging = out_dir / ".staging"
    comp = compute_options(pipe, opts)
    check_reachable(comp)
    with OutputLock(out_dir, opts.command):
        if not opts.resume:
            clean_dir(staging)
        staging.mkdir(parents=True, exist_ok=True)
        inputs = open_inputs(pipe)
        started, t0 = utc_now(), time.perf_counter()
        values, stats = compute_steps(pipe, inputs, staging, comp, opts.resume, progress)
        results = {name: values[out.step] for name, out in pipe.spec.outputs.items()}
        persist_states(pipe, results)
        manifest = finish_run(pipe, inputs, results, stats, comp, plan_info, started, t0,
                              mode="run", extra=refresh_state(pipe, inputs))
    return manifest


def check_reachable(comp: Mapping[str, Any], timeout: float = 5.0) -> None:
    """Fail fast, before locking anything, when a dask scheduler address does not answer."""
    import socket
    from urllib.parse import urlparse

    from blocklin.errors import ExecutorError

    address = comp.get("address")
    if comp.get("executor") != "dask" or not address or not str(address).startswith("tcp://"):
        return
    url = urlparse(str(address))
    try:
        with socket.create_connection((url.hostname or "", url.port or 8786), timeout=timeout):
            pass
    except OSError as exc:
        raise ExecutorError(f"cannot reach the dask scheduler at {address}: {exc}") from None


def compute_steps(pipe: Pipeline, inputs: Mapping[str, Any], staging: Path,
                  comp: Mapping[str, Any], resume: bool,
                  progress: ProgressHook | None) -> tuple[dict[str, Any], RunStats]:
    """One shared compute for every lazy step, then the eager steps in order."""
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


def _store_outputs(pipe: Pipeline, results: Mapping[str, Any],
                   staging: Path) -> dict[str, dict[str, Any]]:
    """Write small outputs into staging, then move every output into place."""
    from blocklin.storage import BlockMatrix

    out_dir = pipe.output_dir
    record: dict[str, dict[str, Any]] = {}
    moves: list[tuple[Path, Path]] = []
    for name, value in results.items():
        step = pipe.step(pipe.spec.outputs[name].step)
        if isinstance(value, BlockMatrix):
            src = Path(value.url)
            dst = out_dir / f"{name}.zarr"
            if src.parent != staging:  # a matrix result not stored by us: copy it
                from blocklin.storage import from_array

                value = from_array(value, staging / f"{name}.zarr", chunks=value.chunks,
                                   overwrite=True)
                src = staging / f"{name}.zarr"
            record[name] = {"step": step.name, "op": step.op.name, "kind": "matrix",
                            "path": dst.name, "shape": list(value.shape),
                            "chunks": list(value.chunks), "dtype": str(value.dtype),
                            "fingerprint": value.fingerprint}
            moves.append((src, dst))
            continue
        # A refresh hands over merged arrays; a run hands over operator results.
        arrays = dict(value) if isinstance(value, dict) else step.op.arrays(value)
        src = staging / f"{name}.npz"
        save_small(src, arrays)
        record[name] = {"step": step.name, "op": step.op.name, "kind": "small",
                        "path": f"{name}.npz", "digest": arrays_digest(arrays),
                        "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)}
                                   for k, a in arrays.items()}}
        moves.append((src, out_dir / f"{name}.npz"))
        if pipe.spec.refresh is not None:
            # An immutable copy named by content: the state a later refresh merges into,
            # safe from a refresh interrupted while moving outputs into place.
            state = state_path(out_dir, name, record[name]["digest"])
            state.parent.mkdir(parents=True, exist_ok=True)
            save_small(state, arrays)
    for src, dst in moves:
        move_into_place(src, dst)
    return record


def finish_run(pipe: Pipeline, inputs: Mapping[str, Any], results: Mapping[str, Any],
               stats: RunStats, comp: Mapping[str, Any], plan_info: Mapping[str, Any],
               started: str, t0: float, mode: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Store outputs, then write the manifest (the commit point) and the report."""
    out_dir = pipe.output_dir
    outputs = _store_outputs(pipe, results, out_dir / ".staging")
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
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    _drop_old_states(out_dir, outputs)
    if pipe.spec.report:
        from blocklin.pipelines.report import write_report

        manifest["report"] = write_report(out_dir, manifest)
        write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    return manifest


def persist_dir(out_dir: Path, name: str) -> Path:
    return out_dir / ".refresh" / "persist" / name


def persist_states(pipe: Pipeline, results: Mapping[str, Any]) -> None:
    """Keep what incremental updates need beyond the outputs (e.g. an SVD's U segments)."""
    if pipe.spec.refresh is None:
        return
    for name, value in results.items():
        op = pipe.step(pipe.spec.outputs[name].step).op
        if op.persist is not None:
            folder = persist_dir(pipe.output_dir, name)
            folder.parent.mkdir(parents=True, exist_ok=True)
            op.persist(value, str(folder))


def state_path(out_dir: Path, name: str, digest: str) -> Path:
    return out_dir / ".refresh" / "state" / f"{name}-{digest}.npz"


def _drop_old_states(out_dir: Path, outputs: Mapping[str, Mapping[str, Any]]) -> None:
    folder = out_dir / ".refresh" / "state"
    if not folder.is_dir():
        return
    keep = {state_path(out_dir, n, r["digest"]).name for n, r in outputs.items() if "digest" in r}
    for p in folder.iterdir():
        if p.name not in keep:
            p.unlink(missing_ok=True)


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
