"""Scheduled refresh: append a row batch to an input and update the outputs incrementally.

The steps of ``blocklin refresh SPEC --append BATCH``, each safe to repeat:

1. lock the output directory (a concurrent refresh or run refuses);
2. stream the batch into ``.refresh/<fingerprint>.zarr`` with the input's row
   blocks; its fingerprint (a hash of layout and chunk checksums) identifies it;
3. unless the input already records that fingerprint, append its rows to the input
   (:class:`~blocklin.pipelines.ingest.BlockWriter`: new chunks first, the input's
   ``zarr.json`` with the new shape and the batch record last, so readers see the
   old matrix or the new one, never half of it);
4. for every batch the input records but the outputs do not include yet (the
   manifest says which), update each output: results additive over rows (Gram
   matrix, AᵀB, column statistics) merge the batch's result into the previous
   state, reading only the new rows; other outputs are recomputed from the whole
   input;
5. store outputs and write the manifest (the commit point).

A batch already in both input and outputs is skipped, so a retried cron job does
nothing. A refresh interrupted anywhere is finished by running it again: step 3 is
skipped when already committed, and step 4 merges into the previous committed state
(kept in ``.refresh/state/<output>-<digest>.npz``, immutable), so the result is the
same as an uninterrupted refresh.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blocklin.errors import InputValueError
from blocklin.executors.api import ProgressHook
from blocklin.executors.base import RunStats
from blocklin.pipelines.execute import (
    check_reachable,
    compute_steps,
    finish_run,
    refresh_state,
    state_path,
)
from blocklin.pipelines.ingest import BlockWriter, ingest
from blocklin.pipelines.lock import OutputLock
from blocklin.pipelines.manifest import load_manifest, load_small, utc_now
from blocklin.pipelines.registry import BuildContext, to_arrays
from blocklin.pipelines.runner import (
    BoundStep,
    Pipeline,
    RunOptions,
    compute_options,
    explain_pipeline,
    open_inputs,
)
from blocklin.storage import BlockMatrix, open_matrix
from blocklin.storage.meta import ATTRS_NAMESPACE

__all__ = ["FAULT_ENV", "append_batch", "refresh_pipeline"]

#: Test hook: the named point of a refresh raises (``after_append``, ``after_outputs``).
FAULT_ENV = "BLOCKLIN_REFRESH_FAULT"


def _fault(point: str) -> None:
    if os.environ.get(FAULT_ENV) == point:
        raise RuntimeError(f"injected fault at {point} ({FAULT_ENV})")


def _stage_batch(src: str, target: BlockMatrix, folder: Path) -> BlockMatrix:
    """Stream the batch into ``folder/<fingerprint>.zarr`` with the target's layout."""
    folder.mkdir(parents=True, exist_ok=True)
    incoming = folder / f"incoming-{os.getpid()}.zarr"
    res = ingest(src, str(incoming), chunk_rows=target.chunks[0], dtype=str(target.dtype),
                 codec="none", overwrite=True)
    batch = res.matrix
    if batch.shape[1] != target.shape[1]:
        open_matrix(str(incoming)).store.delete_prefix("")
        raise InputValueError(f"batch {src} has {batch.shape[1]} columns; the input {target.url} "
                              f"has {target.shape[1]}")
    final = folder / f"{batch.fingerprint}.zarr"
    if final.exists():
        batch.store.delete_prefix("")
    else:
        os.replace(incoming, final)
    return open_matrix(str(final))


def append_batch(target: BlockMatrix, batch: BlockMatrix, source: str) -> BlockMatrix:
    """Append ``batch``'s rows to ``target`` unless it is recorded already; return the input.

    Notes
    -----
    One pass over the batch; the target's last partial block is read and rewritten.
    """
    prov = target.provenance
    batches = list(prov.get("batches", []))
    if any(b.get("fingerprint") == batch.fingerprint for b in batches):
        return target
    writer = BlockWriter(target.store, target.shape[1], target.dtype, target.chunks[0],
                         target.meta.codec, base=target)
    for _, block in batch.blocks():
        writer.append(block)
    start = target.shape[0]
    record = {"fingerprint": batch.fingerprint, "rows": [start, start + batch.shape[0]],
              "source": source, "applied": utc_now()}
    doc = {**prov, "batches": [*batches, record]}
    return writer.close({**target.meta.attrs, ATTRS_NAMESPACE: doc})


def _incremental(pipe: Pipeline, step: BoundStep) -> bool:
    """A step absorbs appended rows if its operator merges them and it reads only the input."""
    target = pipe.spec.refresh.input if pipe.spec.refresh else None
    return step.op.merge_rows is not None and set(step.spec.inputs.values()) == {target}


def refresh_pipeline(pipe: Pipeline, batch_src: str, opts: RunOptions | None = None,
                     progress: ProgressHook | None = None) -> dict[str, Any]:
    """Append ``batch_src`` to the refresh input and update the outputs (see module docs).

    Returns
    -------
    dict
        The new manifest, or ``{"skipped": True, ...}`` when the batch was applied before.

    Raises
    ------
    SpecError
        The spec has no ``refresh`` section, or the pipeline has not run yet.
    LockError
        Another run holds the outputs.
    """
    opts = opts or RunOptions(command="blocklin refresh")
    if pipe.spec.refresh is None:
        raise pipe.error("refresh", "the spec has no refresh section naming the input that "
                         "batches extend")
    if load_manifest(pipe.output_dir) is None:
        raise pipe.error("output_dir", f"no manifest in {pipe.output_dir}: run the pipeline "
                         "(`blocklin run`) before refreshing it")
    name = pipe.spec.refresh.input
    if not os.path.exists(batch_src) and "://" not in batch_src:
        raise FileNotFoundError(f"no such batch file: {batch_src}")
    open_inputs(pipe)
    check_reachable(compute_options(pipe, opts))
    with OutputLock(pipe.output_dir, opts.command):
        inputs = open_inputs(pipe)
        batch = _stage_batch(batch_src, inputs[name], pipe.output_dir / ".refresh")
        inputs[name] = append_batch(inputs[name], batch, os.path.abspath(batch_src))
        _fault("after_append")
        manifest = load_manifest(pipe.output_dir) or {}
        done = manifest.get("refresh", {}).get("batches", [])
        pending = [b for b in inputs[name].provenance.get("batches", [])
                   if b["fingerprint"] not in done]
        if not pending:
            return {"ok": True, "skipped": True, "batch": batch.fingerprint,
                    "message": f"batch {batch.fingerprint} already applied; nothing to do"}
        return _update(pipe, inputs, manifest, pending, opts, progress)


def _update(pipe: Pipeline, inputs: dict[str, Any], manifest: Mapping[str, Any],
            pending: list[dict[str, Any]], opts: RunOptions,
            progress: ProgressHook | None) -> dict[str, Any]:
    from blocklin.executors.api import compute

    comp = compute_options(pipe, opts)
    plan_info = explain_pipeline(pipe, opts)
    started, t0 = utc_now(), time.perf_counter()
    stats = RunStats()
    results: dict[str, Any] = {}
    modes: dict[str, str] = {}
    outs = pipe.spec.outputs
    inc = [n for n, o in outs.items() if _incremental(pipe, pipe.step(o.step))
           and n in manifest.get("outputs", {})]
    batches = [open_matrix(str(pipe.output_dir / ".refresh" / f"{b['fingerprint']}.zarr"))
               for b in pending]
    lazies = [pipe.step(outs[n].step).op.build({a: bm for a in pipe.step(outs[n].step).spec.inputs},
                                               pipe.step(outs[n].step).params,
                                               BuildContext(compute=comp))
              for bm in batches for n in inc]
    values = compute(*lazies, stats=stats, progress=progress, **comp) if lazies else ()
    for i, n in enumerate(inc):
        step = pipe.step(outs[n].step)
        prev = load_small(state_path(pipe.output_dir, n, manifest["outputs"][n]["digest"]))
        for b in range(len(batches)):
            prev = step.op.merge_rows(prev, to_arrays(values[b * len(inc) + i], step.op.fields))  # type: ignore[misc]
        results[n], modes[n] = prev, "incremental"
    rest = [n for n in outs if n not in results]
    if rest:
        staging = pipe.output_dir / ".staging"
        full, more = compute_steps(pipe, inputs, staging, comp, False, progress)
        _add_stats(stats, more)
        for n in rest:
            results[n], modes[n] = full[outs[n].step], "recomputed"
    extra = refresh_state(pipe, inputs)
    extra["refresh"].update(applied=[b["fingerprint"] for b in pending], outputs=modes)
    out = finish_run(pipe, inputs, results, stats, comp, plan_info, started, t0, "refresh", extra)
    _fault("after_outputs")
    return out


def _add_stats(into: RunStats, more: RunStats) -> None:
    into.tasks_run += more.tasks_run
    into.tasks_skipped += more.tasks_skipped
    into.blocks_read += more.blocks_read
    into.bytes_read += more.bytes_read
    into.seconds += more.seconds
    for k, v in more.stage_seconds.items():
        into.stage_seconds[k] = into.stage_seconds.get(k, 0.0) + v
    for k, c in more.stage_tasks.items():
        into.stage_tasks[k] = into.stage_tasks.get(k, 0) + c
    for k, p in more.passes.items():
        into.passes[k] = into.passes.get(k, 0.0) + p
