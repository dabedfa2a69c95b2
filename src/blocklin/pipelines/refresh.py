"""Scheduled refresh: append a row batch to an input and update the outputs incrementally.

The steps of ``blocklin refresh SPEC --append BATCH``, each safe to repeat:

1. lock the output directory (a concurrent refresh or run of this pipeline refuses);
2. stream the batch into ``.refresh/<fingerprint>.zarr`` with the input's row
   blocks; its fingerprint (a hash of layout and chunk checksums) identifies it.
   A batch holding NaN or infinity is refused here (``NonFiniteError``, exit 2:
   nothing appended, nothing recorded) unless the input was ingested with
   ``allow_nonfinite``.
   A table batch's columns are read by the names ingest recorded on the input, in
   the input's order; missing, extra, renamed or changed-kind columns are refused
   (:mod:`~blocklin.pipelines.columns`);
3. holding the append locks of the inputs it extends (pipelines may share them),
   and unless the input already holds the batch (appended by this pipeline or
   another), append its rows to the input (:mod:`~blocklin.pipelines.append`: new
   chunks first, then, if the metadata is still the version read under the lock,
   the input's ``zarr.json`` with the new shape and the batch record, so readers
   see the old matrix or the new one, never half of it);
4. for every batch the input records but the outputs do not include yet (the
   manifest says which; batches appended by another pipeline sharing the input
   are read from the input's recorded rows), update each output: results additive
   over rows (Gram matrix, AᵀB, column statistics) merge the batch's result into
   the previous state, reading only the new rows; other outputs are recomputed
   from the whole input;
5. store outputs and write the manifest (the commit point).

A batch already in both input and outputs is skipped, so a retried cron job does
nothing. A refresh interrupted anywhere is finished by running it again: step 3 is
skipped when already committed, and step 4 merges into the previous committed state
(kept in ``.refresh/state/<output>-<digest>.npz``, immutable), so the result is the
same as an uninterrupted refresh.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from blocklin.errors import InputValueError
from blocklin.executors.api import ProgressHook
from blocklin.executors.options import ComputeOptions
from blocklin.pipelines.append import (
    append_batch,
    append_rows,
    batch_records,
    copy_rows,
    find_batch,
    locked_arrays,
)
from blocklin.pipelines.columns import batch_columns
from blocklin.pipelines.execute import (
    check_reachable,
    compute_steps,
    finish_run,
    persist_dir,
    persist_states,
    refresh_state,
    state_path,
)
from blocklin.pipelines.gc import run_lifecycle
from blocklin.pipelines.ingest import ingest
from blocklin.pipelines.lock import OutputLock
from blocklin.pipelines.manifest import load_manifest, load_small, utc_now
from blocklin.pipelines.outdir import OutputDir
from blocklin.pipelines.registry import Arrays, BuildContext, UpdateContext
from blocklin.pipelines.runlog import RunLog
from blocklin.pipelines.runner import (
    BoundStep,
    Pipeline,
    RunOptions,
    check_locations,
    compute_options,
    explain_pipeline,
    open_inputs,
    register_storage,
)
from blocklin.storage import BlockMatrix, open_matrix

__all__ = ["FAULT_ENV", "append_batch", "refresh_pipeline"]

#: Test hook: the named point of a refresh raises (``after_append``, ``after_outputs``).
FAULT_ENV = "BLOCKLIN_REFRESH_FAULT"

#: Where batches are staged, relative to the output directory.
BATCHES = ".refresh/batches"


def _fault(point: str) -> None:
    if os.environ.get(FAULT_ENV) == point:
        raise RuntimeError(f"injected fault at {point} ({FAULT_ENV})")


@dataclass(frozen=True)
class StagedBatch:
    """A batch stored under ``.refresh/batches/<fingerprint>/`` (rows and labels)."""

    fingerprint: str
    x: BlockMatrix
    y: BlockMatrix | None


def _stage_batch(src: str, pipe: Pipeline, inputs: Mapping[str, BlockMatrix]) -> StagedBatch:
    """Stream the batch into ``.refresh/batches/<fingerprint>`` with the inputs' layouts."""
    r = pipe.spec.refresh
    assert r is not None  # checked by the caller
    target = inputs[r.input]
    out = pipe.output_store()
    incoming = f"{BATCHES}/incoming-{os.getpid()}"
    out.delete(incoming)
    out.makedirs(incoming)
    # NaN/inf are refused (nothing appended) unless the input was ingested with
    # allow_nonfinite.
    nonfinite = target.provenance.get("allow_nonfinite") is True
    try:
        if target.provenance.get("source_layout") == "coo":
            # An input ingested from (row, col, value) records takes its batches alike,
            # with the input's columns.
            res = ingest(src, out.url(f"{incoming}/x.zarr"), sparse=True,
                         ncols=target.shape[1], chunk_rows=target.chunks[0],
                         dtype=str(target.dtype), allow_nonfinite=nonfinite)
        else:
            res = ingest(src, out.url(f"{incoming}/x.zarr"), label=r.label_column,
                         columns=batch_columns(src, target, r.label_column),
                         label_dest=out.url(f"{incoming}/y.zarr") if r.label_column else None,
                         chunk_rows=target.chunks[0], dtype=str(target.dtype), codec="none",
                         allow_nonfinite=nonfinite)
        if res.matrix.shape[1] != target.shape[1]:
            raise InputValueError(f"batch {src} has {res.matrix.shape[1]} columns; the input "
                                  f"{target.url} has {target.shape[1]}")
        fps = [res.matrix.fingerprint] + ([res.label.fingerprint] if res.label else [])
        fp = hashlib.sha256(";".join(fps).encode()).hexdigest()[:32]
        final = f"{BATCHES}/{fp}"
        if not _staged(pipe, out, final):
            out.publish(incoming, final)
    finally:
        out.delete(incoming)
    y = open_matrix(out.url(f"{final}/y.zarr")) if r.label_column else None
    return StagedBatch(fp, open_matrix(out.url(f"{final}/x.zarr")), y)


def _staged(pipe: Pipeline, out: OutputDir, folder: str) -> bool:
    """Whether a batch is completely staged in ``folder`` (its arrays' metadata, written
    last by :meth:`~blocklin.pipelines.outdir.OutputDir.publish`, are there)."""
    r = pipe.spec.refresh
    labels = r is not None and r.label_input is not None
    return out.exists(f"{folder}/x.zarr/zarr.json") \
        and (not labels or out.exists(f"{folder}/y.zarr/zarr.json"))


def _appended(pipe: Pipeline) -> dict[str, str]:
    """Input name -> which part of a batch extends it (``x`` rows, ``y`` labels)."""
    r = pipe.spec.refresh
    if r is None:
        return {}
    return {r.input: "x", **({r.label_input: "y"} if r.label_input else {})}


def _incremental(pipe: Pipeline, step: BoundStep) -> bool:
    """A step absorbs appended rows if its operator can, and it reads only appended inputs."""
    refs = set(step.spec.inputs.values())
    return step.op.can_update(step.params) and refs <= set(_appended(pipe)) \
        and pipe.spec.refresh is not None and pipe.spec.refresh.input in refs


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
    register_storage(pipe, opts)
    out = pipe.output_store()
    if load_manifest(out) is None:
        raise pipe.error("output_dir", f"no manifest in {pipe.output_dir}: run the pipeline "
                         "(`blocklin run`) before refreshing it")
    name = pipe.spec.refresh.input
    if not os.path.exists(batch_src) and "://" not in batch_src:
        raise FileNotFoundError(f"no such batch file: {batch_src}")
    check_locations(pipe, opts)
    open_inputs(pipe)
    check_reachable(compute_options(pipe, opts))
    with OutputLock(out, opts.command):
        inputs = open_inputs(pipe)
        batch = _stage_batch(batch_src, pipe, inputs)
        inputs.update(_append_all(pipe, inputs, batch, os.path.abspath(batch_src),
                                  opts.command))
        _fault("after_append")
        manifest = load_manifest(out) or {}
        done = manifest.get("refresh", {}).get("batches", [])
        pending = [b for b in batch_records(inputs[name]) if b.get("fingerprint") not in done]
        if not pending:
            return {"ok": True, "skipped": True, "batch": batch.fingerprint,
                    "message": f"batch {batch.fingerprint} already applied; nothing to do"}
        _check_labels_caught_up(pipe, inputs)
        with run_lifecycle(pipe, opts):  # a successful refresh removes what it left
            return _update(pipe, inputs, manifest, pending, opts, progress)


def _append_all(pipe: Pipeline, inputs: Mapping[str, BlockMatrix], batch: StagedBatch,
                source: str, command: str) -> dict[str, BlockMatrix]:
    """Append the batch to the inputs it extends, holding all their append locks.

    The inputs are read afresh under the locks: a batch another pipeline appended
    meanwhile is seen, and one the input holds already is not appended again.
    Features are matched by batch id, or by the content of their rows when the
    pipeline appends no labels; labels only by the id of the rows they go with.
    """
    r = pipe.spec.refresh
    assert r is not None
    urls = {ref: inputs[ref].url for ref in _appended(pipe)}
    with locked_arrays(list(urls.values()), command):
        x = open_matrix(urls[r.input])
        content = None if r.label_input else batch.x.fingerprint
        rec = find_batch(x, batch.fingerprint, content)
        if r.label_input is not None:
            _check_aligned(r.input, x, r.label_input, open_matrix(urls[r.label_input]), rec)
        if rec is None:
            x = append_rows(x.url, batch.x, source, batch.fingerprint)
            rec = batch_records(x)[-1]
        out = {r.input: x}
        _fault("after_append_x")
        if r.label_input is not None:
            assert batch.y is not None
            out[r.label_input] = append_rows(urls[r.label_input], batch.y, source,
                                             str(rec["fingerprint"]), match_content=False)
            _fault("after_append_y")
    return out


def _check_aligned(xname: str, x: BlockMatrix, yname: str, y: BlockMatrix,
                   rec: dict[str, Any] | None) -> None:
    """Labels must go to the rows they label: ``y`` holds exactly the batches before ``rec``."""
    if rec is None:
        start = x.shape[0]
    else:
        held = find_batch(y, str(rec["fingerprint"]))
        if held is not None:
            if held.get("rows") != rec.get("rows"):
                raise InputValueError(f"batch {rec['fingerprint']} is at rows {rec.get('rows')} "
                                      f"of {xname!r} but at rows {held.get('rows')} of "
                                      f"{yname!r}: the labels are misaligned; re-ingest both")
            return
        start = int(rec["rows"][0])
    if y.shape[0] != start:
        have = {b.get("fingerprint") for b in batch_records(y)}
        lacking = [f"{b.get('fingerprint')} ({b.get('source')})" for b in batch_records(x)
                   if b.get("fingerprint") not in have]
        raise InputValueError(
            f"input {yname!r} has {y.shape[0]} rows but the batch's labels belong at row "
            f"{start} of {xname!r}; batches of {xname!r} without labels: "
            f"{', '.join(lacking) or 'none recorded'}. Finish the refresh that appended them "
            "(rerun it with the same batch), then retry; nothing was appended")


def _check_labels_caught_up(pipe: Pipeline, inputs: Mapping[str, BlockMatrix]) -> None:
    r = pipe.spec.refresh
    if r is not None and r.label_input is not None \
            and inputs[r.label_input].shape[0] != inputs[r.input].shape[0]:
        raise InputValueError(f"input {r.label_input!r} has {inputs[r.label_input].shape[0]} "
                                  f"rows but {r.input!r} has {inputs[r.input].shape[0]}")


def _batch_args(pipe: Pipeline, step: BoundStep, b: StagedBatch) -> dict[str, Any]:
    parts = _appended(pipe)
    return {arg: (b.x if parts[ref] == "x" else b.y) for arg, ref in step.spec.inputs.items()}


def _update(pipe: Pipeline, inputs: dict[str, Any], manifest: Mapping[str, Any],
            pending: list[dict[str, Any]], opts: RunOptions,
            progress: ProgressHook | None) -> dict[str, Any]:
    comp = compute_options(pipe, opts)
    plan_info = explain_pipeline(pipe, opts)
    started, t0 = utc_now(), time.perf_counter()
    log = RunLog()  # every compute of every part, for the manifest and report
    outs = pipe.spec.outputs
    inc = [n for n, o in outs.items() if _incremental(pipe, pipe.step(o.step))
           and n in manifest.get("outputs", {})]
    out = pipe.output_store()
    batches = [_open_staged(pipe, inputs, out, b) for b in pending]
    prev = {n: load_small(out, state_path(n, manifest["outputs"][n]["digest"])) for n in inc}
    # A refresh recomputes what it does not merge (no resume), and keeps what a killed
    # run left for ``blocklin run --resume``.
    area = out.start_run(True, manifest)
    results: dict[str, Any] = {}
    for b, rec in zip(batches, pending, strict=True):
        prev = _apply_batch(pipe, inc, prev, b, tuple(rec["rows"]), comp, log, progress,
                            inputs)
    modes = dict.fromkeys(inc, "incremental")
    results.update(prev)
    rest = [n for n in outs if n not in results]
    if rest:
        full, _ = compute_steps(pipe, inputs, out.url(area), comp, False, progress, log)
        for n in rest:
            results[n], modes[n] = full[outs[n].step], "recomputed"
        with log.step("refresh state", "persist", "persist"):
            persist_states(pipe, {n: results[n] for n in rest})
    extra = refresh_state(pipe, inputs)
    extra["refresh"].update(applied=[b["fingerprint"] for b in pending], outputs=modes)
    done = finish_run(pipe, inputs, results, log.total(), comp, plan_info, started, t0,
                      "refresh", extra, area=area, log=log)
    _fault("after_outputs")
    return done


def _open_staged(pipe: Pipeline, inputs: Mapping[str, BlockMatrix], out: OutputDir,
                 rec: Mapping[str, Any]) -> StagedBatch:
    """A pending batch's rows: staged by this pipeline, else copied from the inputs.

    A batch another pipeline appended to a shared input was never staged here; its
    rows (and labels) are read from the inputs by the ranges their records give.
    """
    fp = str(rec["fingerprint"])
    final = f"{BATCHES}/{fp}"
    if not _staged(pipe, out, final):
        _copy_from_inputs(pipe, inputs, out, rec)
    y_url = out.url(f"{final}/y.zarr")
    y = open_matrix(y_url) if out.exists(f"{final}/y.zarr/zarr.json") else None
    return StagedBatch(fp, open_matrix(out.url(f"{final}/x.zarr")), y)


def _copy_from_inputs(pipe: Pipeline, inputs: Mapping[str, BlockMatrix], out: OutputDir,
                      rec: Mapping[str, Any]) -> None:
    r = pipe.spec.refresh
    assert r is not None
    fp = str(rec["fingerprint"])
    incoming = f"{BATCHES}/incoming-{os.getpid()}"
    out.delete(incoming)
    out.makedirs(incoming)
    try:
        start, stop = (int(v) for v in rec["rows"])
        copy_rows(inputs[r.input], start, stop, out.url(f"{incoming}/x.zarr"))
        if r.label_input is not None:
            yrec = find_batch(inputs[r.label_input], fp)
            if yrec is None:
                raise InputValueError(f"batch {fp} ({rec.get('source')}) extends input "
                                      f"{r.input!r} but {r.label_input!r} holds no labels for "
                                      "it; finish the refresh that appended it, then retry")
            ystart, ystop = (int(v) for v in yrec["rows"])
            copy_rows(inputs[r.label_input], ystart, ystop, out.url(f"{incoming}/y.zarr"))
        if not _staged(pipe, out, f"{BATCHES}/{fp}"):
            out.publish(incoming, f"{BATCHES}/{fp}")
    finally:
        out.delete(incoming)


def _apply_batch(pipe: Pipeline, names: list[str], prev: dict[str, Arrays], b: StagedBatch,
                 rows: tuple[int, ...], comp: ComputeOptions, log: RunLog,
                 progress: ProgressHook | None,
                 inputs: Mapping[str, Any] | None = None) -> dict[str, Arrays]:
    """Merge one batch into each incremental output: one shared compute for the lazy ones."""
    from blocklin.executors.api import compute

    outs = pipe.spec.outputs
    steps = {n: pipe.step(outs[n].step) for n in names}
    lazy = [n for n in names if steps[n].op.merge_rows is not None]
    built = [steps[n].op.build(_batch_args(pipe, steps[n], b), steps[n].params,
                               BuildContext(compute=comp)) for n in lazy]
    values: tuple[Any, ...] = ()
    if built:
        with log.step(f"batch {b.fingerprint[:12]}", "merge rows: " + ", ".join(
                sorted({steps[n].op.name for n in lazy})), "plan"):
            values = compute(*built, compute_options=comp, progress=progress)
    new = dict(prev)
    for n, v in zip(lazy, values, strict=True):
        merge = steps[n].op.merge_rows
        assert merge is not None
        new[n] = merge(prev[n], steps[n].op.arrays(v))
    for n in names:
        update = steps[n].op.update
        if n not in lazy and update is not None:
            whole = {arg: (inputs or {}).get(ref) for arg, ref in steps[n].spec.inputs.items()}
            ctx = UpdateContext(prev[n], _batch_args(pipe, steps[n], b), (rows[0], rows[1]),
                                persist_dir(pipe.output_store(), n), comp, whole)
            with log.step(steps[n].name, f"{steps[n].op.name} update", "update") as run:
                new[n] = update(ctx, steps[n].params)
                run.details.update(ctx.record)
    return new
