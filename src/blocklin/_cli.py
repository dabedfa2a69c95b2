"""The ``blocklin`` command line: a thin typer layer over public functions.

Exit codes (also in ``blocklin --help``):

====  ==========================================================================
0     success
1     unexpected internal error (a bug: rerun with ``--debug`` and report it)
2     bad usage, spec or input (nothing was run or written)
3     the outputs are locked by another run (see ``blocklin unlock``)
4     corrupt or missing data found (``verify``), or a corrupt chunk while running
5     the executor failed (cluster unreachable, task failed after retries)
6     storage refused a write (disk full, quota, file size limit, read-only, denied);
      the message names the path
====  ==========================================================================

Errors print as one line on stderr (``error: ...``); ``--debug`` adds the
traceback. With ``--json`` every command prints one JSON document on stdout, an
error included (``{"ok": false, "error": ..., "exit_code": ...}``).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["EXIT_CODES", "app", "main"]

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_LOCKED, EXIT_CORRUPT, EXIT_EXECUTOR = 0, 1, 2, 3, 4, 5
EXIT_STORAGE = 6
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "unexpected internal error (rerun with --debug and report it)",
    EXIT_USAGE: "bad usage, spec or input; nothing was run or written",
    EXIT_LOCKED: "outputs locked by another run (see `blocklin unlock`)",
    EXIT_CORRUPT: "corrupt or missing data",
    EXIT_EXECUTOR: "executor failure (cluster unreachable, task failed after retries)",
    EXIT_STORAGE: "storage full or not writable (the message names the path)",
}
_EPILOG = "Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items())

# Plain click help: typer's rich panels print a "<bool>" type beside every flag.
app = typer.Typer(name="blocklin", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, epilog=_EPILOG, rich_markup_mode=None,
                  help="Block-partitioned linear algebra over zarr chunks: run pipelines, "
                       "refresh them with new rows, ingest, inspect and verify arrays.")

_STATE = {"debug": os.environ.get("BLOCKLIN_DEBUG", "") not in ("", "0"), "quiet": False}

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]
SpecArg = Annotated[Path, typer.Argument(help="pipeline YAML file")]
ExecutorOpt = Annotated[str | None, typer.Option("--executor", help="dask or spark")]
AddressOpt = Annotated[str | None, typer.Option("--address",
                                                help="dask scheduler or Spark master URL")]
WorkDirOpt = Annotated[str | None, typer.Option(
    "--work-dir", help="intermediate arrays (reachable from every worker)")]
MemoryOpt = Annotated[str | None, typer.Option("--max-task-memory",
                                               help="per-task limit, e.g. 2GiB")]
ConnectOpt = Annotated[float | None, typer.Option(
    "--connect-timeout", min=0.001, help="seconds to wait for the dask scheduler (default 10)")]
WorkerWaitOpt = Annotated[float | None, typer.Option(
    "--worker-timeout", min=0.001,
    help="seconds to wait for a first worker on a dask cluster with none (default 60)")]
TlsCaOpt = Annotated[str | None, typer.Option(
    "--tls-ca-file", help="CA certificate of a tls:// dask cluster")]
TlsCertOpt = Annotated[str | None, typer.Option(
    "--tls-cert", help="client certificate for a tls:// dask cluster")]
TlsKeyOpt = Annotated[str | None, typer.Option(
    "--tls-key", help="client private key for a tls:// dask cluster")]
KeepOpt = Annotated[bool, typer.Option(
    "--keep-intermediates", help="keep the work dir's intermediate arrays after a successful "
    "run (a failed run keeps them for --resume; `blocklin gc` frees them)")]
StorageOpt = Annotated[list[str] | None, typer.Option(
    "--storage-option", metavar="KEY=VALUE",
    help="fsspec option for the run's URL inputs, output dir and work dir (repeatable; "
         "VALUE is JSON "
         "when it parses, else a string: endpoint_url=http://host:9000, "
         "client_kwargs='{\"region_name\": \"eu-west-1\"}'); never printed or recorded")]


def _storage_options(pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` arguments as a dict; values are never echoed (they may be secrets)."""
    from blocklin.errors import ConfigError

    out: dict[str, Any] = {}
    for i, pair in enumerate(pairs or [], 1):
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--storage-option number {i} is not KEY=VALUE (its value is not "
                              "shown, it may be a secret); e.g. --storage-option "
                              "endpoint_url=http://localhost:9000")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _print_version(value: bool) -> None:
    if value:
        import blocklin

        sys.stdout.write(f"blocklin {blocklin.__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")]
          = False,
          version: Annotated[bool, typer.Option(
              "--version", is_eager=True, callback=_print_version,
              help="print blocklin's version and exit")] = False,
          verbose: Annotated[int, typer.Option(
              "--verbose", "-v", count=True,
              help="log more: -v INFO (executor, cluster, resume, steps), -vv DEBUG (plan "
                   "sizes, stage timings); default WARNING or BLOCKLIN_LOG_LEVEL")] = 0,
          quiet: Annotated[bool, typer.Option(
              "--quiet", "-q", help="errors only: no progress, no warnings")] = False) -> None:
    if debug:
        _STATE["debug"] = True
    _STATE["quiet"] = quiet
    with _guard(False):
        _setup_logging(verbose, quiet)


def _setup_logging(verbose: int, quiet: bool) -> None:
    """The ``blocklin`` logger's handler on stderr at the level the options ask for.

    Raises
    ------
    ConfigError
        For ``-v`` with ``--quiet``, or a BLOCKLIN_LOG_LEVEL naming no level.
    """
    import logging

    from blocklin._logging import install_handler
    from blocklin.config import default_log_level
    from blocklin.errors import ConfigError

    if quiet and verbose:
        raise ConfigError("give -v/--verbose or --quiet, not both")
    env = default_log_level()  # refuses a bad BLOCKLIN_LOG_LEVEL even when -v overrides it
    if quiet:
        level = logging.ERROR
    elif verbose:
        level = logging.INFO if verbose == 1 else logging.DEBUG
    else:
        level = env if env is not None else logging.WARNING
    install_handler(level)


def _exit_code(exc: BaseException) -> int:
    from blocklin.errors import (
        STORAGE_ERRNOS,
        CorruptChunkError,
        ExecutorError,
        IncompleteArrayError,
        InputChangedError,
        LockError,
        StorageError,
        TaskFailedError,
    )

    if isinstance(exc, LockError):
        return EXIT_LOCKED
    if isinstance(exc, StorageError):
        return EXIT_STORAGE
    # A write outside the stores (manifest, report) on a full or read-only disk; a bare
    # PermissionError may be a read, so it stays a usage error below.
    if (isinstance(exc, OSError) and not isinstance(exc, PermissionError)
            and exc.errno in STORAGE_ERRNOS):
        return EXIT_STORAGE
    if isinstance(exc, CorruptChunkError | IncompleteArrayError | InputChangedError):
        return EXIT_CORRUPT
    if isinstance(exc, ExecutorError | TaskFailedError):
        return EXIT_EXECUTOR
    if isinstance(exc, ValueError | TypeError | FileNotFoundError | NotADirectoryError
                  | IsADirectoryError | PermissionError):
        return EXIT_USAGE
    if _credentials_missing(exc):  # e.g. an s3:// output dir given no credentials
        return EXIT_USAGE
    return EXIT_INTERNAL


def _credentials_missing(exc: BaseException) -> bool:
    from blocklin.pipelines.runner import is_credentials_error

    return is_credentials_error(exc)


def _emit(doc: Any, as_json: bool, text: Callable[[], str] | str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write((text() if callable(text) else text).rstrip("\n") + "\n")
    sys.stdout.flush()


@contextmanager
def _guard(as_json: bool) -> Iterator[None]:
    """Turn exceptions into one clear line and a documented exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise typer.Exit(130) from None
    except Exception as exc:
        code = _exit_code(exc)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if code == EXIT_INTERNAL:
            msg = f"{type(exc).__name__}: {msg}"
        if _credentials_missing(exc):
            msg += (" (object storage reached without credentials: give them in the spec's "
                    "inputs.NAME.storage_options, output_dir_storage_options or "
                    "executor.work_dir_storage_options, or with --storage-option KEY=VALUE)")
        if _STATE["debug"]:
            traceback.print_exc()
        sys.stderr.write(f"error: {msg}\n")
        if as_json:
            _emit({"ok": False, "error": msg, "type": type(exc).__name__, "exit_code": code},
                  True, "")
        raise typer.Exit(code) from None


# -- schema, ops --------------------------------------------------------------------------------
@app.command()
def schema() -> None:
    """Print the JSON Schema of pipeline specs."""
    from blocklin.pipelines.spec import json_schema

    with _guard(False):
        _emit(json_schema(), True, "")


@app.command()
def ops(as_json: JsonOpt = False) -> None:
    """List the registered operators a pipeline step can name."""
    from blocklin.pipelines.registry import registry

    with _guard(as_json):
        reg = registry()
        doc = {n: {"inputs": list(o.inputs), "kind": o.kind, "summary": o.summary,
                   "params": list(o.params.model_fields), "incremental": o.incremental}
               for n, o in sorted(reg.items())}
        _emit(doc, as_json, lambda: "\n".join(
            f"{n:<22} {o.kind:<6} ({', '.join(o.inputs)}) {o.summary}\n{'':<29}params: "
            + (", ".join(_param_text(k, f) for k, f in o.params.model_fields.items()) or "none")
            for n, o in sorted(reg.items())))


def _param_text(name: str, field: Any) -> str:
    return f"{name} (required)" if field.is_required() else f"{name}={field.default!r}"


# -- run, refresh, unlock -----------------------------------------------------------------------
def _progress(label: str) -> Any:
    """Every pass of the run (the iterative steps' included) on stderr: a bar on a
    terminal, plain lines otherwise, nothing with --quiet."""
    from blocklin.pipelines.progress import cli_progress

    return cli_progress(label, quiet=bool(_STATE["quiet"]))


def _options(spec: Path, command: str, executor: str | None, address: str | None,
             work_dir: str | None, max_task_memory: str | None, resume: bool = False,
             storage_option: list[str] | None = None,
             cluster: dict[str, Any] | None = None, keep_intermediates: bool = False) -> Any:
    from blocklin.errors import ConfigError
    from blocklin.pipelines.runner import RunOptions
    from blocklin.types import EXECUTORS

    if executor is not None and executor not in EXECUTORS:
        raise ConfigError(f"--executor must be {' or '.join(EXECUTORS)}; got {executor!r}")
    return RunOptions(executor=executor, address=address, work_dir=work_dir, resume=resume,
                      keep_intermediates=keep_intermediates,
                      max_task_memory=max_task_memory, command=f"blocklin {command} {spec}",
                      storage_options=_storage_options(storage_option),
                      extra=cluster or {})


@app.command()
def run(spec: SpecArg, executor: ExecutorOpt = None, address: AddressOpt = None,
        resume: Annotated[bool, typer.Option("--resume", help="skip blocks finished by an "
                                             "earlier interrupted run")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan (stages, tasks, "
                                              "passes, memory per task); run nothing")] = False,
        work_dir: WorkDirOpt = None, max_task_memory: MemoryOpt = None,
        as_json: JsonOpt = False, storage_option: StorageOpt = None,
        connect_timeout: ConnectOpt = None, worker_timeout: WorkerWaitOpt = None,
        tls_ca_file: TlsCaOpt = None, tls_cert: TlsCertOpt = None,
        tls_key: TlsKeyOpt = None, keep_intermediates: KeepOpt = False) -> None:
    """Run a pipeline spec (or show its plan with --dry-run)."""
    from blocklin.pipelines.runner import explain_pipeline, load_pipeline, run_pipeline

    with _guard(as_json):
        opts = _options(spec, "run", executor, address, work_dir, max_task_memory, resume,
                        storage_option, cluster={
                            "connect_timeout": connect_timeout, "worker_timeout": worker_timeout,
                            "tls_ca_file": tls_ca_file, "tls_cert": tls_cert, "tls_key": tls_key},
                        keep_intermediates=keep_intermediates)
        pipe = load_pipeline(spec)
        if dry_run:
            info = explain_pipeline(pipe, opts)
            _emit(info, as_json, lambda: _dry_run_text(info))
            return
        with _progress(f"run {pipe.spec.name}"):
            manifest = run_pipeline(pipe, opts)
        _emit(_summary(manifest), as_json, lambda: _run_text(manifest, pipe.output_dir))


@app.command()
def refresh(spec: SpecArg,
            append: Annotated[Path, typer.Option("--append", help="row batch: .npy, .csv, "
                                                 ".parquet or zarr")],
            executor: ExecutorOpt = None, address: AddressOpt = None,
            work_dir: WorkDirOpt = None, max_task_memory: MemoryOpt = None,
            as_json: JsonOpt = False, storage_option: StorageOpt = None,
            connect_timeout: ConnectOpt = None, worker_timeout: WorkerWaitOpt = None,
            tls_ca_file: TlsCaOpt = None, tls_cert: TlsCertOpt = None,
            tls_key: TlsKeyOpt = None, keep_intermediates: KeepOpt = False) -> None:
    """Append a row batch to the spec's refresh input and update its outputs incrementally."""
    from blocklin.pipelines.refresh import refresh_pipeline
    from blocklin.pipelines.runner import load_pipeline

    with _guard(as_json):
        opts = _options(spec, "refresh", executor, address, work_dir, max_task_memory,
                        storage_option=storage_option, cluster={
                            "connect_timeout": connect_timeout, "worker_timeout": worker_timeout,
                            "tls_ca_file": tls_ca_file, "tls_cert": tls_cert, "tls_key": tls_key},
                        keep_intermediates=keep_intermediates)
        pipe = load_pipeline(spec)
        with _progress(f"refresh {pipe.spec.name}"):
            res = refresh_pipeline(pipe, str(append), opts)
        if res.get("skipped"):
            _emit(res, as_json, res["message"])
            return
        _emit(_summary(res), as_json, lambda: _run_text(res, pipe.output_dir))


def _dry_run_text(info: dict[str, Any]) -> str:
    ex = info["executor"]
    lines = [f"pipeline {info['pipeline']} (dry run: nothing is computed)",
             f"executor: {ex['executor']}" + (f" at {ex['address']}" if ex["address"] else "")
             + f", work_dir {ex['work_dir']}", "", info["text"]]
    if info["eager_steps"] and not info.get("eager"):
        lines.append("iterative steps (run their own passes after the plan): "
                     + ", ".join(info["eager_steps"]))
    kept = info.get("intermediates", {})
    if kept:
        lines.append("intermediates: " + ("removed from the work dir once the run succeeds "
                     "(kept for --resume if it fails)" if kept["removed_at_end"] else
                     "kept in the work dir (--keep-intermediates); `blocklin gc` frees them"))
    return "\n".join(lines)


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "pipeline": m["pipeline"], "mode": m["mode"],
            "outputs": {k: v["path"] for k, v in m["outputs"].items()},
            "stats": m["stats"], "passes": m["passes"], "seconds": m["seconds"],
            **{k: m[k] for k in ("refresh",) if k in m}}


def _run_text(m: dict[str, Any], out_dir: str) -> str:
    s = m["stats"]
    lines = [f"pipeline {m['pipeline']} ({m['mode']}): {s['tasks_run']} tasks run, "
             f"{s['tasks_skipped']} skipped, {m['seconds']:.2f} s on {m['executor']['executor']}"]
    if "refresh" in m and m["mode"] == "refresh":
        r = m["refresh"]
        lines.append(f"  applied batches {', '.join(r['applied'])}; input now {r['rows']} rows; "
                     + ", ".join(f"{k} {v}" for k, v in r["outputs"].items()))
    def at(rel: str) -> str:
        return f"{out_dir.rstrip('/')}/{rel}"

    for name, rec in m["outputs"].items():
        lines.append(f"  {name}: {at(rec['path'])}")
    lines.append(f"  manifest: {at('manifest.json')}")
    if "report" in m:
        lines.append(f"  report: {at(m['report']['markdown'])}")
    return "\n".join(lines)


@app.command()
def unlock(spec: SpecArg,
           force: Annotated[bool, typer.Option("--force", help="remove even a live or remote "
                                               "lock")] = False,
           as_json: JsonOpt = False, storage_option: StorageOpt = None) -> None:
    """Remove a stale lock left by a crashed run on the pipeline's outputs."""
    from blocklin.pipelines.lock import break_lock
    from blocklin.pipelines.runner import load_pipeline, register_storage

    with _guard(as_json):
        opts = _options(spec, "unlock", None, None, None, None, storage_option=storage_option)
        pipe = load_pipeline(spec)
        register_storage(pipe, opts)
        res = break_lock(pipe.output_store(), force=force)
        _emit(res, as_json, lambda: (f"removed lock held by {res['holder']}" if res["removed"]
                                     else "no lock"))


# -- ingest, inspect, verify --------------------------------------------------------------------
@app.command()
def ingest(src: Annotated[str, typer.Argument(help=".npy, .csv, .parquet file or zarr array")],
           dest: Annotated[str, typer.Argument(help="zarr path or URL to create")],
           label: Annotated[str | None, typer.Option("--label", help="label column (tables); "
                                                     "stored at --label-dest")] = None,
           label_dest: Annotated[str | None, typer.Option(
               "--label-dest", help="default: DEST with .label.zarr")] = None,
           columns: Annotated[str | None, typer.Option(
               "--columns", help="comma-separated feature columns (default: all numeric)")] = None,
           exclude: Annotated[list[str] | None, typer.Option(
               "--exclude", metavar="COL", help="leave this column out of the features "
               "(repeatable; e.g. an id or a second label)")] = None,
           chunk_rows: Annotated[int | None, typer.Option(
               "--chunk-rows", help="rows per block (default: about 64 MiB blocks)")] = None,
           dtype: Annotated[str | None, typer.Option("--dtype", help="e.g. float32")] = None,
           codec: Annotated[str, typer.Option("--codec", help="auto, none, lz4 or zstd")] = "auto",
           overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
           allow_nonfinite: Annotated[bool, typer.Option(
               "--allow-nonfinite", help="store NaN and infinity instead of refusing them "
               "(exit 2); refresh batches for the array are then accepted alike")] = False,
           sparse: Annotated[bool, typer.Option(
               "--sparse", help="SRC is a Parquet table of nonzeros (row, col, value): "
               "stored as CSR (.npz files are sparse without it)")] = False,
           ncols: Annotated[int | None, typer.Option(
               "--ncols", help="with --sparse: the column count (default: largest col + 1)")
           ] = None,
           as_json: JsonOpt = False) -> None:
    """Stream a .npy, .npz (scipy.sparse), CSV, Parquet file or zarr array into a BlockMatrix."""
    from blocklin.pipelines.ingest import ingest as do_ingest

    with _guard(as_json):
        cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        res = do_ingest(src, dest, label=label, label_dest=label_dest, columns=cols,
                        chunk_rows=chunk_rows, dtype=dtype, codec=codec, overwrite=overwrite,
                        allow_nonfinite=allow_nonfinite, exclude=exclude or (), sparse=sparse,
                        ncols=ncols)
        m = res.matrix
        doc = {"ok": True, "dest": m.url, "shape": list(m.shape), "chunks": list(m.chunks),
               "dtype": str(m.dtype), "format": res.format, "columns": list(res.columns),
               "fingerprint": m.fingerprint,
               "label": res.label.url if res.label is not None else None,
               "dropped": {name: kind for name, kind in res.dropped}}
        _emit(doc, as_json, lambda: _ingest_text(src, res))


def _ingest_text(src: str, res: Any) -> str:
    m = res.matrix
    lines = [f"ingested {src} ({res.format}) -> {m.url}: shape {m.shape}, blocks of "
             f"{m.chunks[0]} rows, {m.dtype}"
             + (f"; labels -> {res.label.url}" if res.label is not None else "")]
    if res.format in ("csv", "parquet"):
        shown = ", ".join(res.columns[:30]) + (f", ... ({len(res.columns) - 30} more)"
                                               if len(res.columns) > 30 else "")
        lines.append(f"  features ({len(res.columns)}): {shown}")
    if res.dropped:
        lines.append("  dropped (not numeric): "
                     + ", ".join(f"{name} ({kind})" for name, kind in res.dropped)
                     + "; --columns or --exclude choose explicitly")
    return "\n".join(lines)


def _located(path: str, storage_option: list[str] | None) -> Any:
    """Register ``--storage-option`` values for ``path``; the output directory at ``path``
    when it holds a run manifest, else None (an array)."""
    from blocklin.pipelines.manifest import MANIFEST_NAME
    from blocklin.pipelines.outdir import output_dir_for
    from blocklin.storage import register_storage_options

    opts = _storage_options(storage_option)
    if "://" in path and opts:
        register_storage_options(path, opts)
    if "://" not in path and not os.path.isdir(path):
        return None
    out = output_dir_for(path)
    return out if out.read_bytes(MANIFEST_NAME) is not None else None


PathArg = Annotated[str, typer.Argument(
    help="zarr array path or URL, or a pipeline's output directory (its manifest's outputs)")]


@app.command()
def inspect(path: PathArg, as_json: JsonOpt = False,
            storage_option: StorageOpt = None) -> None:
    """Show an array's shape, blocks, codecs, size and provenance (or the outputs an
    output directory's manifest names)."""
    from blocklin.errors import format_bytes
    from blocklin.pipelines.inspect import inspect_array

    with _guard(as_json):
        out = _located(path, storage_option)
        if out is not None:
            doc = _inspect_outputs(out)
            disk = doc["disk"]
            _emit(doc, as_json, lambda: "\n".join(
                [f"{doc['url']}: {doc['pipeline']} ({doc['mode']}, finished {doc['finished']})"]
                + [f"  {k:<16} {v['kind']:<6} {v['url']}" for k, v in doc["outputs"].items()]
                + [f"  disk: {format_bytes(disk['freeable_bytes'])} in {disk['freeable']} "
                   "entries no run uses (work dir leftovers, earlier runs): `blocklin gc "
                   f"{doc['url']}` frees them"]))
            return
        d = inspect_array(path)
        _emit(d, as_json, lambda: "\n".join([
            f"{d['url']}", f"  shape      {tuple(d['shape'])} {d['dtype']}",
            f"  blocks     {tuple(d['blocks'])} of {tuple(d['chunks'])}",
            f"  codecs     {' -> '.join(d['codecs'])}",
            f"  size       {format_bytes(d['nbytes'])} ({format_bytes(d['stored_bytes'])} stored)",
            f"  missing chunks: {d['missing_chunks']}",
            f"  read by    {d['read_path']}",
            "  provenance", _indented_yaml(d["provenance"], "    ")]))


def _indented_yaml(doc: Any, indent: str) -> str:
    """A nested document as block YAML, one field a line (short lists stay inline)."""
    import yaml

    text = yaml.safe_dump(json.loads(json.dumps(doc, default=str)), sort_keys=True,
                          default_flow_style=None, width=88)
    return "\n".join(indent + line for line in text.rstrip("\n").splitlines())


def _inspect_outputs(out: Any) -> dict[str, Any]:
    from blocklin.pipelines.gc import collect_pipeline_garbage
    from blocklin.pipelines.manifest import load_manifest

    m = load_manifest(out) or {}
    outputs = {name: {**rec, "url": out.url(rec["path"])}
               for name, rec in m.get("outputs", {}).items()}
    gc = collect_pipeline_garbage(out.location, dry_run=True)  # reads only
    return {"url": out.location, "pipeline": m.get("pipeline"), "mode": m.get("mode"),
            "finished": m.get("finished"), "outputs": outputs,
            "disk": {"freeable": len(gc.freed), "freeable_bytes": gc.freed_bytes,
                     "in_use_bytes": gc.kept_bytes}}


@app.command()
def verify(path: PathArg,
           max_blocks: Annotated[int, typer.Option(
               "--max-blocks", min=1, help="refuse (exit 2) an array of more blocks than "
               "this, counted from its metadata before reading")] = 10_000_000,
           as_json: JsonOpt = False, storage_option: StorageOpt = None) -> None:
    """Read every chunk and check its checksum; exit 4 if any is corrupt or missing.

    Given an output directory, checks every output its manifest names against the
    identity the manifest records.
    """
    from blocklin.pipelines.inspect import verify_array
    from blocklin.pipelines.manifest import verify_outputs

    with _guard(as_json):
        out = _located(path, storage_option)
        if out is not None:
            doc = verify_outputs(out, max_blocks=max_blocks)
            lines = [f"{doc['url']}: {len(doc['outputs'])} outputs of {doc['manifest']}"]
            for name, r in doc["outputs"].items():
                why = r.get("error") or ("" if r["ok"] else "differs from the manifest's "
                                         "record, or corrupt/missing chunks")
                lines.append(f"  {name}: {'ok' if r['ok'] else 'FAILED'} {r['path']} {why}")
            lines.append("ok" if doc["ok"] else "FAILED")
            _emit(doc, as_json, "\n".join(lines))
            if not doc["ok"]:
                raise typer.Exit(EXIT_CORRUPT)
            return
        d = verify_array(path, max_blocks=max_blocks)
        lines = [f"{d['url']}: {d['checked']} chunks checked, {len(d['corrupt'])} corrupt, "
                 f"{len(d['missing'])} missing"
                 + ("" if d["fingerprint_ok"] is not False else ", fingerprint mismatch")]
        lines += [f"  corrupt {c['chunk']}: {c['reason']}" for c in d["corrupt"]]
        lines += [f"  missing {k}" for k in d["missing"]]
        lines.append("ok" if d["ok"] else "FAILED")
        _emit(d, as_json, "\n".join(lines))
        if not d["ok"]:
            raise typer.Exit(EXIT_CORRUPT)


@app.command()
def gc(path: Annotated[str | None, typer.Argument(
           help="work directory, or a pipeline's output directory (default: "
                "BLOCKLIN_WORK_DIR)")] = None,
       older_than: Annotated[str | None, typer.Option(
           "--older-than", help="only what was last written longer ago, e.g. 7d, 12h, 30m")]
       = None,
       dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be freed; "
                                             "remove nothing")] = False,
       as_json: JsonOpt = False, storage_option: StorageOpt = None) -> None:
    """Free intermediate arrays no running compute uses, and earlier runs' outputs no
    manifest names; never committed outputs or anything a live run holds."""
    from blocklin.config import default_work_dir, parse_duration
    from blocklin.pipelines.gc import collect

    with _guard(as_json):
        age = parse_duration(older_than) if older_than is not None else None
        target = path or default_work_dir()
        _located(target, storage_option)  # registers the --storage-option values
        report = collect(target, older_than=age, dry_run=dry_run)
        _emit(report.as_dict(), as_json, report.text)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
