"""The pipeline spec: a YAML document validated into frozen pydantic models.

A spec is data. It names stored inputs, steps that call operators from the
registry (:mod:`blocklin.pipelines.registry`) with parameters, the outputs to keep,
executor settings and resource hints. Nothing in it is evaluated as code.

Validation happens in two phases, both before anything runs:

1. structure (:func:`parse_spec`): types, required fields, unknown keys;
2. meaning (:func:`check_spec`): operators exist, parameters fit each operator,
   step inputs name an input or an earlier step, outputs name a step.

Every failure is a :class:`SpecError` naming the file, the field path
(``steps[1].params.k``) and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_serializer,
    field_validator,
)

from blocklin.config import parse_memory
from blocklin.errors import ConfigError
from blocklin.types import Device, ExecutorName

__all__ = [
    "ExecutorSpec",
    "InputSpec",
    "OutputSpec",
    "PipelineSpec",
    "RefreshSpec",
    "ResourceSpec",
    "SpecError",
    "StepSpec",
    "cluster_settings",
    "format_loc",
    "json_schema",
    "load_spec",
    "parse_spec",
]

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"

#: Largest spec file read, in bytes: specs are a few kilobytes; anything near this is
#: not a pipeline description.
MAX_SPEC_BYTES = 1 << 20
#: Most YAML nodes a spec may hold once its aliases are expanded. Aliases share one
#: Python object when loaded, but validation and JSON records walk every copy, so a
#: few hundred bytes of nested aliases (an "alias bomb") would cost gigabytes.
MAX_SPEC_NODES = 100_000


class SpecError(ConfigError):
    """A pipeline spec is invalid: names the file, the field and what was expected."""

    def __init__(self, source: str, loc: str, message: str) -> None:
        self.source = source
        self.loc = loc
        self.message = message
        where = f"{source}: {loc}: " if loc else f"{source}: "
        super().__init__(where + message)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: What a storage option's value becomes wherever a spec is written out (manifest,
#: ``--dry-run --json``): the values are credentials as often as not.
REDACTED = "<redacted>"
_STORAGE_OPTIONS_HELP = ("fsspec options for this location (key, secret, endpoint_url, "
                         "client_kwargs...); never written out (manifests show the keys only)")


def _redact(options: dict[str, JsonValue]) -> dict[str, str]:
    return dict.fromkeys(options, REDACTED)


class InputSpec(_Model):
    """A stored matrix: a zarr path (relative to the spec file) or an fsspec URL."""

    path: str = Field(min_length=1, description="zarr array path or URL (s3://..., memory://...)")
    description: str = ""
    storage_options: dict[str, JsonValue] = Field(default_factory=dict, repr=False,
                                                  description=_STORAGE_OPTIONS_HELP)

    @field_serializer("storage_options")
    def _hide(self, v: dict[str, JsonValue]) -> dict[str, str]:
        return _redact(v)


class StepSpec(_Model):
    """One operator call."""

    name: str = Field(pattern=NAME_PATTERN, description="name other steps and outputs refer to")
    op: str = Field(min_length=1, description="a registered operator (see `blocklin ops`)")
    inputs: dict[str, str] = Field(default_factory=dict,
                                   description="operator argument -> input or earlier step name")
    params: dict[str, JsonValue] = Field(default_factory=dict,
                                         description="operator parameters (checked per operator)")


class OutputSpec(_Model):
    """A step result to keep in the output directory."""

    step: str = Field(pattern=NAME_PATTERN)


class ExecutorSpec(_Model):
    """Where the plan runs; the CLI's ``--executor``/``--address`` override these."""

    executor: ExecutorName = "dask"
    address: str | None = Field(default=None, description="dask scheduler or Spark master URL")
    work_dir: str | None = Field(default=None, description="intermediates (shared by workers)")
    work_dir_storage_options: dict[str, JsonValue] = Field(default_factory=dict, repr=False,
                                                           description=_STORAGE_OPTIONS_HELP)
    num_workers: int | None = Field(default=None, ge=1, description="local scheduler threads")
    keep_intermediates: bool = Field(default=False, description="keep the work directory's "
                                     "intermediate arrays after a successful run (a failed "
                                     "run always keeps them for --resume)")
    connect_timeout: float | None = Field(default=None, gt=0,
                                          description="seconds to wait for the dask scheduler")
    worker_timeout: float | None = Field(default=None, gt=0, description="seconds to wait for "
                                         "a first worker on a dask cluster with none")
    tls_ca_file: str | None = Field(default=None, min_length=1, description="CA certificate "
                                    "of a tls:// dask cluster (path relative to the spec)")
    tls_cert: str | None = Field(default=None, min_length=1,
                                 description="client certificate for a tls:// dask cluster")
    tls_key: str | None = Field(default=None, min_length=1,
                                description="client private key for a tls:// dask cluster")

    @field_serializer("work_dir_storage_options")
    def _hide(self, v: dict[str, JsonValue]) -> dict[str, str]:
        return _redact(v)


class ResourceSpec(_Model):
    """Resource hints: device and per-task memory limit (a plan over it is refused)."""

    device: Device = "cpu"
    max_task_memory: int | str | None = Field(default=None, description="e.g. '2GiB'")

    @field_validator("max_task_memory")
    @classmethod
    def _memory(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            parse_memory(v)  # raises InputValueError, reported as a ValueError here
        return v


class RefreshSpec(_Model):
    """How ``blocklin refresh`` appends row batches."""

    input: str = Field(pattern=NAME_PATTERN, description="the input that new row batches extend")
    label_input: str | None = Field(default=None, pattern=NAME_PATTERN,
                                    description="input extended by the batch's label column")
    label_column: str | None = Field(default=None, min_length=1,
                                     description="label column of table batches")
    schedule: str | None = Field(default=None, description="informational cron expression")


class PipelineSpec(_Model):
    """A pipeline: inputs, steps, outputs, executor settings and resources."""

    version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    inputs: dict[str, InputSpec] = Field(min_length=1)
    steps: list[StepSpec] = Field(min_length=1)
    outputs: dict[str, OutputSpec] = Field(min_length=1)
    output_dir: str = Field(min_length=1, description="where outputs, manifest and report go "
                            "(a folder relative to the spec, or a URL such as s3://bucket/out)")
    output_dir_storage_options: dict[str, JsonValue] = Field(
        default_factory=dict, repr=False, description=_STORAGE_OPTIONS_HELP)
    executor: ExecutorSpec = ExecutorSpec()
    resources: ResourceSpec = ResourceSpec()
    refresh: RefreshSpec | None = None
    report: bool = True

    @field_serializer("output_dir_storage_options")
    def _hide(self, v: dict[str, JsonValue]) -> dict[str, str]:
        return _redact(v)

    @field_validator("inputs", "outputs")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        import re

        for key in v:
            if not re.match(NAME_PATTERN, key):
                raise ValueError(f"name {key!r} must match {NAME_PATTERN}")
        return v


def cluster_settings(executor: ExecutorSpec, overrides: Mapping[str, Any],
                     resolve: Callable[[str], str]) -> dict[str, Any]:
    """``compute`` keywords for a dask cluster: timeouts and TLS security (those set).

    Parameters
    ----------
    executor : ExecutorSpec
        The spec's executor section.
    overrides : mapping
        Command-line values (``connect_timeout``, ``worker_timeout``, ``tls_ca_file``,
        ``tls_cert``, ``tls_key``); None keeps the spec's.
    resolve : callable
        Makes the spec's certificate paths absolute (relative to the spec file).

    Raises
    ------
    ConfigError
        For TLS files given in part or missing.
    """
    from blocklin.executors.dask import cluster_security

    def pick(name: str) -> Any:
        value = overrides.get(name)
        return value if value is not None else getattr(executor, name)

    files = {}
    for name in ("tls_ca_file", "tls_cert", "tls_key"):
        cli, spec = overrides.get(name), getattr(executor, name)
        files[name] = cli if cli is not None else (resolve(spec) if spec else None)
    settings = {"connect_timeout": pick("connect_timeout"),
                "worker_timeout": pick("worker_timeout"), "security": cluster_security(**files)}
    return {k: v for k, v in settings.items() if v is not None}


def format_loc(loc: tuple[int | str, ...]) -> str:
    """``("steps", 1, "params", "k")`` -> ``steps[1].params.k``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _first_error(exc: ValidationError, source: str) -> SpecError:
    err = exc.errors(include_url=False)[0]
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field (check its spelling; see `blocklin schema`)"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif any("storage_options" in str(part) for part in err["loc"]):
        pass  # the value may be a credential: never echoed
    elif "input" in err and err["type"] not in ("model_type", "dict_type"):
        got = json.dumps(err["input"], default=str)
        msg += f" (got {got[:80]})"
    return SpecError(source, format_loc(tuple(err["loc"])), msg)


def parse_spec(doc: Any, source: str = "<spec>") -> PipelineSpec:
    """Validate a parsed YAML/JSON document into a :class:`PipelineSpec`.

    Raises
    ------
    SpecError
        For the first structural problem found.
    """
    if not isinstance(doc, dict):
        raise SpecError(source, "", f"a pipeline spec is a mapping; got {type(doc).__name__}")
    try:
        return PipelineSpec.model_validate(doc)
    except ValidationError as exc:
        raise _first_error(exc, source) from None


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and structurally validate a YAML spec file.

    Raises
    ------
    SpecError
        If the file is missing, is not valid YAML, or does not fit the schema.
    """
    p = Path(path)
    source = str(path)
    if not p.is_file():
        raise SpecError(source, "", "spec file not found")
    size = p.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(source, "", f"spec file is {size} bytes, over the limit of "
                                    f"{MAX_SPEC_BYTES}; a pipeline spec is a few kilobytes")
    try:
        text = p.read_text()
        # Count the document's nodes with aliases expanded before building it.
        _check_expanded_size(yaml.compose(text, Loader=yaml.SafeLoader), source)
        # safe_load builds plain data only: no tags, no objects, nothing executed.
        doc = yaml.safe_load(text)
    except RecursionError:
        raise SpecError(source, "", "YAML nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(source, where, f"invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise SpecError(source, "", "not a text file") from None
    return parse_spec(doc, source)


def _check_expanded_size(root: yaml.Node | None, source: str) -> None:
    """Refuse a YAML document with more than :data:`MAX_SPEC_NODES` nodes once expanded.

    An alias is the same node object as its anchor, so node sizes are memoized by
    identity: the cost is one visit per distinct node, whatever the expansion.
    """
    if root is None:
        return
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise SpecError(source, "", "YAML alias refers to a node containing itself "
                                        "(a recursive anchor); specs hold plain data only")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if total > MAX_SPEC_NODES:
            line = node.start_mark.line + 1
            raise SpecError(source, f"line {line}",
                            f"YAML expands to more than {MAX_SPEC_NODES} values through "
                            "its aliases (&anchor/*alias); write the values out or use fewer "
                            "aliases")
        sizes[key] = total
        return total

    size(root)


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of pipeline specs (``blocklin schema``)."""
    schema = PipelineSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "blocklin pipeline"
    return schema
