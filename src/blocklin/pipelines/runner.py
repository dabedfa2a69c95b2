"""Running a pipeline: check the spec, open inputs, build the plan, compute, record.

Everything that can be wrong with a spec or its inputs is found before the output
directory is touched: structure (pydantic), meaning (operators, parameters,
references), inputs (exist, readable, compatible shapes: operators raise while
building their lazy plans) and memory (the finalized plan against
``max_task_memory``). Only then is the output directory locked and written.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from blocklin.errors import BlocklinError, PlanMemoryError
from blocklin.executors.api import ProgressHook
from blocklin.executors.options import ComputeOptions
from blocklin.pipelines.registry import BuildContext, Operator, Params, registry
from blocklin.pipelines.spec import (
    PipelineSpec,
    SpecError,
    StepSpec,
    cluster_settings,
    format_loc,
    load_spec,
)

if TYPE_CHECKING:
    from blocklin.pipelines.outdir import OutputDir

__all__ = [
    "BoundStep",
    "Pipeline",
    "RunOptions",
    "check_locations",
    "check_spec",
    "explain_pipeline",
    "load_pipeline",
    "open_inputs",
    "register_storage",
    "run_pipeline",
]


@dataclass(frozen=True)
class BoundStep:
    """A step checked against its operator, with validated parameters."""

    index: int
    spec: StepSpec
    op: Operator
    params: Params

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def loc(self) -> str:
        return f"steps[{self.index}]"


@dataclass(frozen=True)
class Pipeline:
    """A spec that passed both validation phases, with paths resolved."""

    spec: PipelineSpec
    source: str
    base: Path
    steps: tuple[BoundStep, ...]

    def resolve(self, path: str) -> str:
        """Paths in a spec are relative to the spec file; URLs are kept as they are."""
        if "://" in path:
            return path
        p = Path(path).expanduser()
        return os.path.normpath(p if p.is_absolute() else (self.base / p).absolute())

    @property
    def output_dir(self) -> str:
        """The output directory: an absolute local path or a URL."""
        return self.resolve(self.spec.output_dir)

    def output_store(self) -> OutputDir:
        """The output directory to read and write (register its storage options first:
        :func:`register_storage`)."""
        from blocklin.pipelines.outdir import output_dir_for

        return output_dir_for(self.output_dir)

    def step(self, name: str) -> BoundStep:
        return next(s for s in self.steps if s.name == name)

    def error(self, loc: str, message: str) -> SpecError:
        return SpecError(self.source, loc, message)


@dataclass(frozen=True)
class RunOptions:
    """Overrides from the command line (None: keep the spec's setting)."""

    executor: str | None = None
    address: str | None = None
    work_dir: str | None = None
    num_workers: int | None = None
    max_task_memory: int | str | None = None
    resume: bool = False
    #: Keep the work directory's intermediates after a successful run (see pipelines.gc).
    keep_intermediates: bool = False
    command: str = "blocklin run"
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: ``--storage-option`` values: fsspec options for every URL location of the run
    #: (inputs, work dir, output dir), over the spec's own. Never shown (``repr`` hides them).
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)


def register_storage(pipe: Pipeline, opts: RunOptions) -> None:
    """Give each input, the output dir and the work dir its storage options, for this
    process and (through the compute's tasks) every worker.

    The spec's per-location options come first, the command line's on top of them;
    local paths take none.
    """
    from blocklin.storage.stores import register_storage_options

    cli = dict(opts.storage_options)
    places = [(pipe.resolve(inp.path), inp.storage_options)
              for inp in pipe.spec.inputs.values()]
    out, out_own = pipe.output_dir, pipe.spec.output_dir_storage_options
    places.append((out, out_own))
    work = run_work_dir(pipe, opts)
    work_own = pipe.spec.executor.work_dir_storage_options
    # A work dir inside the output dir (the default, ``.work``) without options of its
    # own takes the output dir's: registered alone, the CLI's would shadow them.
    inside = work.startswith(out.rstrip("/") + "/")
    places.append((work, work_own or (out_own if inside else {})))
    for url, own in places:
        if "://" in url and (own or cli):
            register_storage_options(url, {**own, **cli})


# -- phase 2: meaning ----------------------------------------------------------------------
def load_pipeline(path: str | Path) -> Pipeline:
    """Load a spec file and check it fully (structure and meaning).

    Raises
    ------
    SpecError
        Naming the file, the field and what was expected.
    """
    spec = load_spec(path)
    return check_spec(spec, str(path), Path(path).absolute().parent)


def check_spec(spec: PipelineSpec, source: str, base: Path) -> Pipeline:
    """Check operators, parameters and references of a structurally valid spec."""
    ops = registry()
    kinds: dict[str, str] = {name: "matrix" for name in spec.inputs}
    bound: list[BoundStep] = []
    for i, step in enumerate(spec.steps):
        loc = f"steps[{i}]"
        if step.name in kinds:
            what = "an input" if step.name in spec.inputs else "an earlier step"
            raise SpecError(source, f"{loc}.name", f"{step.name!r} is already the name of {what}")
        op = ops.get(step.op)
        if op is None:
            near = difflib.get_close_matches(step.op, list(ops), n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise SpecError(source, f"{loc}.op", f"unknown operator {step.op!r}; {hint}"
                            f"registered: {', '.join(sorted(ops))}")
        _check_step_inputs(source, loc, step, op, kinds, spec)
        bound.append(BoundStep(i, step, op, _check_params(source, loc, step, op)))
        kinds[step.name] = op.kind
    _check_outputs(source, spec, kinds)
    _check_refresh(source, spec)
    return Pipeline(spec, source, base, tuple(bound))


def _check_refresh(source: str, spec: PipelineSpec) -> None:
    r = spec.refresh
    if r is None:
        return
    for field_name in ("input", "label_input"):
        ref = getattr(r, field_name)
        if ref is not None and ref not in spec.inputs:
            raise SpecError(source, f"refresh.{field_name}", f"{ref!r} is not an input "
                            f"(inputs: {', '.join(spec.inputs)})")
    if (r.label_input is None) != (r.label_column is None):
        raise SpecError(source, "refresh", "label_input and label_column go together: the "
                        "batch's label_column is appended to label_input")
    if r.label_input == r.input:
        raise SpecError(source, "refresh.label_input", "must differ from refresh.input")


def _check_step_inputs(source: str, loc: str, step: StepSpec, op: Operator,
                       kinds: Mapping[str, str], spec: PipelineSpec) -> None:
    for arg in op.inputs:
        if arg not in step.inputs:
            raise SpecError(source, f"{loc}.inputs", f"operator {op.name} needs argument {arg!r} "
                            f"(takes {', '.join(op.inputs)})")
    later = {s.name for s in spec.steps}
    for arg, ref in step.inputs.items():
        where = f"{loc}.inputs.{arg}"
        if arg not in op.inputs:
            raise SpecError(source, where, f"operator {op.name} takes no argument {arg!r} "
                            f"(takes {', '.join(op.inputs)})")
        if ref not in kinds:
            why = ("is a later step (or this one); a step may only use inputs and earlier steps"
                   if ref in later else "is neither an input nor an earlier step")
            raise SpecError(source, where, f"{ref!r} {why} (available: "
                            f"{', '.join(kinds) or 'none'})")
        if kinds[ref] not in ("matrix", "view"):
            raise SpecError(source, where, f"step {ref!r} gives a {kinds[ref]} result, not a "
                            "matrix; only inputs, matrix and view steps can be read")


def _check_params(source: str, loc: str, step: StepSpec, op: Operator) -> Params:
    try:
        return op.params.model_validate(step.params)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        sub = format_loc(tuple(err["loc"]))
        where = f"{loc}.params" + (f".{sub}" if sub else "")
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(op.params.model_fields) or "none"
            msg = f"operator {op.name} has no parameter {sub!r} (parameters: {allowed})"
        else:
            msg = f"{err['msg']} (got {err.get('input')!r})"
        raise SpecError(source, where, msg) from None


def _check_outputs(source: str, spec: PipelineSpec, kinds: Mapping[str, str]) -> None:
    steps = {s.name for s in spec.steps}
    for name, out in spec.outputs.items():
        where = f"outputs.{name}.step"
        if out.step not in steps:
            raise SpecError(source, where, f"{out.step!r} is not a step (steps: "
                            f"{', '.join(s.name for s in spec.steps)})")
        if kinds[out.step] == "view":
            raise SpecError(source, where, f"step {out.step!r} is a lazy view and stores "
                            "nothing; output a step that reads it")


# -- phase 3: inputs and plans ---------------------------------------------------------------
def open_inputs(pipe: Pipeline) -> dict[str, Any]:
    """Open every input as a BlockMatrix; a missing or unreadable one is a SpecError."""
    from blocklin.storage import open_matrix

    out = {}
    for name, inp in pipe.spec.inputs.items():
        url = pipe.resolve(inp.path)
        try:
            out[name] = open_matrix(url)
        except FileNotFoundError:
            raise pipe.error(f"inputs.{name}.path", f"no zarr array at {url} (create it with "
                             "`blocklin ingest`)") from None
        except (BlocklinError, OSError, ValueError) as exc:
            raise pipe.error(f"inputs.{name}.path", f"cannot open {url}: {exc}") from None
        except Exception as exc:
            if not is_credentials_error(exc):
                raise
            raise pipe.error(f"inputs.{name}.storage_options", f"cannot open {url}: "
                             f"{type(exc).__name__}: {exc}; give the credentials in "
                             f"inputs.{name}.storage_options or with --storage-option") from None
    return out


def is_credentials_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a storage client's "no (or partial) credentials" error (botocore
    raises those outside the OSError family; their messages name no secret)."""
    return type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError",
                                  "CredentialRetrievalError")


def output_paths(pipe: Pipeline, root: str) -> dict[str, str]:
    """Step name -> where its matrix result is stored (matrix steps kept as outputs)."""
    paths = {}
    for name, out in pipe.spec.outputs.items():
        if pipe.step(out.step).op.kind == "matrix":
            paths[out.step] = _join(root, f"{name}.zarr")
    return paths


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def build_steps(pipe: Pipeline, inputs: Mapping[str, Any], matrix_out: Mapping[str, str],
                compute: ComputeOptions) -> dict[str, Any]:
    """Call each step's builder in order: lazy results, views, or deferred eager steps."""
    values: dict[str, Any] = dict(inputs)
    for step in pipe.steps:
        if step.op.kind == "eager":
            values[step.name] = None  # runs after the shared compute
            continue
        args = {arg: values[ref] for arg, ref in step.spec.inputs.items()}
        ctx = BuildContext(out=matrix_out.get(step.name), compute=compute)
        try:
            values[step.name] = step.op.build(args, step.params, ctx)
        except (BlocklinError, ValueError, TypeError) as exc:
            raise pipe.error(step.loc, f"{step.op.name}: {exc}") from None
    return values


def run_work_dir(pipe: Pipeline, opts: RunOptions) -> str:
    """The run's work directory: the command line's, the spec's, else ``<output>/.work``."""
    work = opts.work_dir or pipe.spec.executor.work_dir
    return pipe.resolve(work) if work else _join(pipe.output_dir, ".work")


def compute_options(pipe: Pipeline, opts: RunOptions) -> ComputeOptions:
    """The run's compute options, built once from the spec and the command line (which
    wins); every step's passes run with them."""
    spec = pipe.spec
    return ComputeOptions(
        executor=opts.executor or spec.executor.executor,
        address=opts.address if opts.address is not None else spec.executor.address,
        work_dir=run_work_dir(pipe, opts),
        max_task_memory=opts.max_task_memory or spec.resources.max_task_memory,
        num_workers=opts.num_workers or spec.executor.num_workers,
        device=spec.resources.device,
        # dask cluster timeouts and TLS (CLI flags in opts.extra override the spec)
        **cluster_settings(spec.executor, opts.extra, pipe.resolve),
    )


def written_paths(pipe: Pipeline) -> list[tuple[str, str]]:
    """Everything a run or refresh writes in the output directory, labelled for messages."""
    out = pipe.output_dir
    paths = []
    for name, spec in pipe.spec.outputs.items():
        suffix = "zarr" if pipe.step(spec.step).op.kind == "matrix" else "npz"
        paths.append((f"output {name!r}", _join(out, f"{name}.{suffix}")))
    from blocklin.pipelines.lock import LOCK_NAME
    from blocklin.pipelines.manifest import MANIFEST_NAME

    runs = pipe.output_store().run_folders()
    for what in (MANIFEST_NAME, "report", *runs, ".refresh", LOCK_NAME):
        paths.append((f"the run's {what}", _join(out, what)))
    return paths


def check_locations(pipe: Pipeline, opts: RunOptions | None = None) -> None:
    """Refuse a spec whose outputs would overwrite an input or the work directory.

    Every path a run writes (outputs, manifest, report, staging, refresh state, lock)
    is compared with every input and the work directory: equal, inside or containing
    is refused (:func:`blocklin.storage.locations.check_no_alias`).

    Raises
    ------
    OutputAliasError
        Naming the output and the input; nothing has been written.
    """
    from blocklin.errors import OutputAliasError
    from blocklin.storage.locations import check_no_alias

    inputs = [(f"input {name!r}", pipe.resolve(inp.path)) for name, inp in pipe.spec.inputs.items()]
    work = run_work_dir(pipe, opts or RunOptions())
    try:
        check_no_alias(written_paths(pipe), inputs, work)
    except OutputAliasError as exc:
        raise OutputAliasError(f"{pipe.source}: output_dir: {exc}") from None


def lazy_steps(pipe: Pipeline) -> list[BoundStep]:
    return [s for s in pipe.steps if s.op.kind in ("small", "matrix")]


def explain_pipeline(pipe: Pipeline, opts: RunOptions | None = None) -> dict[str, Any]:
    """What ``--dry-run`` shows: stages, tasks, passes per input, projected memory.

    Raises
    ------
    SpecError, PlanMemoryError, OutputAliasError
        For bad inputs, a plan over ``max_task_memory``, or outputs that would
        overwrite an input or the work directory.
    """
    from blocklin.config import default_max_task_memory, parse_memory
    from blocklin.plan.finalize import finalize
    from blocklin.plan.graph import Plan

    opts = opts or RunOptions()
    register_storage(pipe, opts)
    check_locations(pipe, opts)
    inputs = open_inputs(pipe)
    comp = compute_options(pipe, opts)
    from blocklin.pipelines.outdir import STAGING

    values = build_steps(pipe, inputs, output_paths(pipe, _join(pipe.output_dir, STAGING)), comp)
    lazies = [values[s.name] for s in lazy_steps(pipe)]
    limit = comp.max_task_memory
    limit = parse_memory(limit) if limit else default_max_task_memory()
    try:
        report = finalize(Plan().merge(*(v.plan for v in lazies)), limit).report()
    except PlanMemoryError as exc:
        raise pipe.error("resources.max_task_memory", str(exc)) from None
    _check_label_column(pipe, inputs)
    eager = eager_projection(pipe, values, comp, limit)
    keep = opts.keep_intermediates or spec_keeps(pipe)
    stages: list[dict[str, Any]] = [{"step": "plan", "stage": r[0], "tasks": r[1], "memory_per_task": r[2],
               "bytes_read": r[3], "bytes_written": r[4]} for r in report.rows]
    stages += [row for e in eager for row in e["stages"]]
    return {
        "pipeline": pipe.spec.name,
        "executor": {k: getattr(comp, k) for k in ("executor", "address", "work_dir")},
        "stages": stages,
        "passes": report.source_passes(),
        "max_task_memory": report.max_task_memory,
        "projected_task_memory": max((r["memory_per_task"] for r in stages), default=0),
        "eager_steps": [s.name for s in pipe.steps if s.op.kind == "eager"],
        "eager": eager,
        # What the run leaves in the work dir: the plan's intermediates (the iterative
        # steps' own come and go pass by pass), removed once it succeeds unless kept.
        "intermediates": {"arrays": report.intermediates, "bytes": report.intermediate_bytes,
                          "removed_at_end": not keep},
        "text": (str(report) if lazies else "no planned steps") + _eager_text(eager),
    }


def eager_projection(pipe: Pipeline, values: Mapping[str, Any], comp: ComputeOptions,
                     limit: int) -> list[dict[str, Any]]:
    """Check each eager step without its data's values and project its passes.

    Each step's checker (:mod:`blocklin.pipelines.checks`) checks shapes and
    parameter combinations and plans one pass of each kind the step makes; those
    are finalized against ``limit`` like the shared plan.

    Raises
    ------
    SpecError
        Naming the step (and the parameter, where one is at fault).
    """
    from blocklin.plan.finalize import finalize
    from blocklin.plan.graph import Plan

    out = []
    for step in pipe.steps:
        if step.op.kind != "eager" or step.op.check is None:
            continue
        args = {arg: values[ref] for arg, ref in step.spec.inputs.items()}
        try:
            sp = step.op.check(args, step.params, BuildContext(compute=comp))
        except (BlocklinError, ValueError, TypeError) as exc:
            param = getattr(exc, "param", None)
            raise pipe.error(f"{step.loc}.params.{param}" if param else step.loc,
                             f"{step.op.name}: {exc}") from None
        rows: list[dict[str, Any]] = []
        reads: set[str] = set()
        for what, plan in sp.plans:
            try:
                rep = finalize(Plan().merge(plan), limit).report()
            except PlanMemoryError as exc:
                raise pipe.error("resources.max_task_memory",
                                 f"step {step.name!r} ({what}): {exc}") from None
            reads.update(rep.source_passes())
            rows += [{"step": step.name, "pass": what, "stage": r[0], "tasks": r[1],
                      "memory_per_task": r[2], "bytes_read": r[3], "bytes_written": r[4]}
                     for r in rep.rows]
        out.append({"step": step.name, "op": step.op.name, "passes": list(sp.passes),
                    "open_ended": sp.open_ended, "passes_text": sp.passes_text,
                    "inputs": sorted(reads), "stages": rows, "note": sp.note})
    return out


def _eager_text(eager: list[dict[str, Any]]) -> str:
    from blocklin.errors import format_bytes

    if not eager:
        return ""
    lines = ["", "iterative steps (run after the plan, one compute per pass; each kind of "
             "pass projected from shapes):"]
    for e in eager:
        lines.append(f"  {e['step']} ({e['op']}): {e['passes_text']} passes over "
                     + ", ".join(e["inputs"]) + ("; one per function evaluation, more when "
                                                 "line searches backtrack" if e["open_ended"]
                                                 else ""))
        if e.get("note"):
            lines.append(f"    {e['note']}")
        for r in e["stages"]:
            lines.append(f"    {r['pass'][:26]:<26}  {r['stage'][:40]:<40}  {r['tasks']:>6}  "
                         f"{format_bytes(r['memory_per_task']):>10}/task")
    return "\n".join(lines)


def _check_label_column(pipe: Pipeline, inputs: Mapping[str, Any]) -> None:
    """A refresh's ``label_column`` must be the column ingest stored in ``label_input``
    (where ingest recorded its name): batches are read by that name."""
    r = pipe.spec.refresh
    if r is None or r.label_input is None or r.label_column is None:
        return
    params = inputs[r.label_input].provenance.get("params")
    recorded = params.get("column") if isinstance(params, dict) else None
    if isinstance(recorded, str) and recorded != r.label_column:
        raise pipe.error("refresh.label_column", f"{r.label_column!r} is not the label "
                         f"column of input {r.label_input!r}: ingest stored {recorded!r} "
                         "there")


def run_pipeline(pipe: Pipeline, opts: RunOptions | None = None,
                 progress: ProgressHook | None = None) -> dict[str, Any]:
    """Run a checked pipeline; return its manifest (also written to the output directory).

    Raises
    ------
    SpecError, PlanMemoryError, OutputAliasError
        Before anything is written.
    LockError
        If another run holds the output directory.
    """
    from blocklin.pipelines.execute import execute
    from blocklin.pipelines.gc import run_lifecycle

    opts = opts or RunOptions()
    with run_lifecycle(pipe, opts):  # a successful run removes what its computes left
        return execute(pipe, opts, progress)


def spec_keeps(pipe: Pipeline) -> bool:
    """Whether the spec asks to keep intermediates (``executor.keep_intermediates``)."""
    return bool(pipe.spec.executor.keep_intermediates)


def spec_digest(source: str) -> str:
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:32]
