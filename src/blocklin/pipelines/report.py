"""A run report: ``report/report.md`` with PNG plots where they help.

Plots are chosen from what the outputs hold, so the report works whatever
operators have run:

- per-stage seconds of the run (always, when stages ran);
- singular-value spectrum and explained variance for outputs with singular values
  (``singular_values``/``s``), or eigenvalues of a Gram matrix (their square roots
  are the singular values of the input);
- objective history and residuals for regression outputs that record them;
- per-column mean ± standard deviation for column statistics.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from blocklin.pipelines.manifest import load_small
from blocklin.pipelines.outdir import OutputDir

__all__ = ["write_report"]

_SPECTRUM_KEYS = ("singular_values", "s", "S")
_HISTORY_KEYS = ("objective_history", "loss_history", "history")
_RESIDUAL_KEYS = ("residuals",)


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in cron
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class _File:
    """A file of the report: ``rel`` in the output directory ``out``."""

    out: OutputDir
    rel: str

    def __truediv__(self, name: str) -> _File:
        return _File(self.out, f"{self.rel}/{name}")

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1]

    def write(self, data: bytes) -> None:
        self.out.write_bytes(self.rel, data)


def _save(plt: Any, fig: Any, path: _File) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    path.write(buf.getvalue())
    return path.name


def _plot_stages(plt: Any, seconds: Mapping[str, float], path: _File) -> str | None:
    if not seconds:
        return None
    labels = list(seconds)
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(labels) + 1.5))
    ax.barh(range(len(labels)), [seconds[k] for k in labels])
    ax.set_yticks(range(len(labels)), [lbl[:50] for lbl in labels], fontsize=7)
    ax.set_xlabel("task seconds (summed over tasks)")
    ax.set_title("time per stage")
    return _save(plt, fig, path)


def _plot_spectrum(plt: Any, name: str, s: np.ndarray, path: _File,
                   evr: np.ndarray | None = None) -> str:
    s = np.sort(np.abs(s.ravel()))[::-1]
    energy = s**2
    if evr is not None and evr.size == s.size:
        ratio = np.cumsum(evr.ravel())  # of the total variance, as the estimator reports it
        ylabel = "cumulative explained variance ratio"
    else:  # only the computed components are known: share of their total
        ratio = np.cumsum(energy) / energy.sum() if energy.sum() > 0 else np.zeros_like(energy)
        ylabel = "cumulative share of the top-k s²"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.semilogy(np.arange(1, s.size + 1), np.maximum(s, np.finfo(float).tiny), "o-", ms=3)
    a1.set_xlabel("component")
    a1.set_ylabel("singular value")
    a1.set_title(f"{name}: spectrum")
    a2.plot(np.arange(1, s.size + 1), ratio, "o-", ms=3)
    a2.set_ylim(0, 1.02)
    a2.set_xlabel("components")
    a2.set_ylabel(ylabel)
    a2.set_title(f"{name}: explained variance")
    return _save(plt, fig, path)


def _plot_history(plt: Any, name: str, h: np.ndarray, path: _File) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(h.size), h.ravel(), "o-", ms=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective")
    ax.set_title(f"{name}: objective history")
    return _save(plt, fig, path)


def _plot_residuals(plt: Any, name: str, r: np.ndarray, path: _File) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(r.ravel(), bins=40)
    ax.set_xlabel("residual")
    ax.set_title(f"{name}: residuals")
    return _save(plt, fig, path)


def _plot_columns(plt: Any, name: str, mean: np.ndarray, std: np.ndarray, path: _File) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.errorbar(np.arange(mean.size), mean, yerr=std, fmt="o", ms=3)
    ax.set_xlabel("column")
    ax.set_title(f"{name}: mean ± std")
    return _save(plt, fig, path)


def _first(arrays: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> np.ndarray | None:
    for k in keys:
        a = arrays.get(k)
        if a is not None and a.size > 1 and np.issubdtype(a.dtype, np.number):
            return a
    return None


def _output_plots(plt: Any, name: str, arrays: Mapping[str, np.ndarray], op: str,
                  folder: _File) -> list[tuple[str, str]]:
    """(caption, file) of the plots that fit one output."""
    plots: list[tuple[str, str]] = []
    add: Callable[[str, str], None] = lambda cap, f: plots.append((cap, f))  # noqa: E731
    s = _first(arrays, _SPECTRUM_KEYS)
    value = arrays.get("value")
    if s is None and op == "gram" and value is not None and value.ndim == 2:
        # Eigenvalues of AᵀA are the squared singular values of A.
        s = np.sqrt(np.clip(np.linalg.eigvalsh(value), 0, None))
    if s is not None:
        png = _plot_spectrum(plt, name, s, folder / f"{name}-spectrum.png",
                             arrays.get("explained_variance_ratio"))
        add(f"{name}: singular values", png)
    h = _first(arrays, _HISTORY_KEYS)
    if h is not None:
        add(f"{name}: objective", _plot_history(plt, name, h, folder / f"{name}-objective.png"))
    r = _first(arrays, _RESIDUAL_KEYS)
    if r is not None:
        add(f"{name}: residuals", _plot_residuals(plt, name, r, folder / f"{name}-residuals.png"))
    if {"mean", "variance"} <= set(arrays) and 1 < arrays["mean"].size <= 500:
        add(f"{name}: columns", _plot_columns(plt, name, arrays["mean"],
                                              np.sqrt(arrays["variance"]),
                                              folder / f"{name}-columns.png"))
    return plots


def write_report(out_dir: OutputDir, folder: str,
                 manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``<folder>/report.md`` and its plots in ``out_dir``; return their paths
    relative to ``out_dir``."""
    out_dir.delete(folder)  # no plot of an earlier run may linger
    out_dir.makedirs(folder)
    target = _File(out_dir, folder)
    plt = _figure()
    plots: list[tuple[str, str]] = []
    stages = _plot_stages(plt, manifest["stats"]["stage_seconds"], target / "stages.png")
    if stages:
        plots.append(("time per stage", stages))
    for name, rec in manifest["outputs"].items():
        if rec["kind"] == "small":
            arrays = load_small(out_dir, rec["path"])
            plots.extend(_output_plots(plt, name, arrays, rec["op"], target))
    lines = [f"# {manifest['pipeline']} ({manifest['mode']})", "",
             f"finished {manifest['finished']} in {manifest['seconds']:.2f} s on "
             f"{manifest['executor']['executor']}; {manifest['stats']['tasks_run']} tasks run, "
             f"{manifest['stats']['tasks_skipped']} skipped", "", "## Outputs", ""]
    for name, rec in manifest["outputs"].items():
        shapes = rec.get("shape") or {k: v["shape"] for k, v in rec.get("arrays", {}).items()}
        lines.append(f"- `{name}` ({rec['op']}): `{rec['path']}` {shapes}")
    lines += ["", "## Passes over inputs", ""]
    lines += [f"- {url}: {p:g}" for url, p in manifest["passes"].items()]
    lines += ["", "## Plots", ""]
    lines += [f"![{cap}]({f})" for cap, f in plots]
    (target / "report.md").write(("\n".join(lines) + "\n").encode())
    return {"markdown": f"{folder}/report.md", "plots": [f"{folder}/{f}" for _, f in plots]}
