"""A run report: ``report/report.md``, PNG plots, and ``figures.json`` with their numbers.

Plots are chosen from what the outputs hold, so the report works whatever
operators have run:

- wall-clock seconds of each step (the lazy steps' shared plan, each iterative
  step with all of its computes, and the driver's remainder), never task seconds
  summed over parallel tasks;
- singular values, and the explained variance ratio where it is known over the
  total variance of the data (``‖A‖_F²``, or the centered one for PCA: from column
  statistics computed in the same pass, or all eigenvalues of a Gram matrix). A
  ratio over the top k only would reach 1 by construction, so none is drawn
  without the total;
- residuals against fitted values and their histogram, titled with R² and RMSE,
  and coefficients by column name, for regressions;
- per-column mean ± standard deviation for column statistics, by column name.

Column names are the ones ``blocklin ingest`` recorded in the input (manifest
``inputs.NAME.columns``), followed through views such as ``standardize``;
``c0, c1, …`` where none were recorded. Every figure's numbers are written to
``figures.json`` beside the plots, so they can be checked without reading pixels.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from blocklin.pipelines.manifest import load_small
from blocklin.pipelines.outdir import OutputDir

__all__ = ["column_names", "regression_metrics", "write_report"]

_SPECTRUM_KEYS = ("singular_values", "s", "S")
_HISTORY_KEYS = ("objective_history", "loss_history", "history")
#: Most columns drawn with their names (beyond, ticks thin out so labels stay legible).
_NAMED_TICKS = 40
#: Most points drawn in a residual scatter (a fixed subsample beyond: the plot is the
#: same, the PNG stays small).
_SCATTER_POINTS = 20_000


def _pyplot() -> Any:
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
    buf = io.BytesIO()
    # Constrained layout plus a tight bounding box: no tick label or title is clipped.
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    path.write(buf.getvalue())
    return path.name


def _ticks(ax: Any, axis: str, names: Sequence[str]) -> None:
    """Name the columns along ``axis``, every one up to :data:`_NAMED_TICKS`, else a
    regular subset of them."""
    step = max(1, -(-len(names) // _NAMED_TICKS))
    pos = list(range(0, len(names), step))
    labels = [names[i][:24] for i in pos]
    if axis == "x":
        ax.set_xticks(pos, labels, rotation=60 if len(names) > 8 else 0, ha="right"
                      if len(names) > 8 else "center", fontsize=8)
    else:
        ax.set_yticks(pos, labels, fontsize=8)


# -- timing -------------------------------------------------------------------------------
def _time_rows(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """(label, wall seconds, note) of each part of the run, the driver's rest last."""
    rows = []
    for rec in manifest.get("step_runs", []):
        label = "plan (" + rec["op"] + ")" if rec["kind"] == "plan" else \
            f"{rec['name']} ({rec['op']})"
        passes = sum(rec["passes"].values())
        rows.append({"label": label, "seconds": rec["seconds"],
                     "note": f"{rec['tasks_run']} tasks, {_n(rec['computes'], 'compute')}, "
                             f"{_n(passes, 'pass', 'passes')}"})
    rest = manifest["seconds"] - sum(r["seconds"] for r in rows)
    if rows and rest > 0:
        rows.append({"label": "driver (open, store outputs)", "seconds": rest, "note": ""})
    return rows


def _n(count: float, one: str, many: str = "") -> str:
    return f"{count:g} {one if count == 1 else (many or one + 's')}"


def _plot_time(plt: Any, rows: list[dict[str, Any]], total: float, path: _File) -> str | None:
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.6), layout="constrained")
    y = np.arange(len(rows))[::-1]
    secs = [r["seconds"] for r in rows]
    ax.barh(y, secs, color="tab:blue")
    ax.set_yticks(y, [r["label"][:48] for r in rows], fontsize=8)
    for yi, r in zip(y, rows, strict=True):
        ax.text(r["seconds"], yi, f"  {r['seconds']:.2f} s  {r['note']}", va="center",
                fontsize=7)
    ax.set_xlim(0, max(secs) * 1.9 if max(secs) > 0 else 1)
    ax.set_xlabel("wall-clock seconds")
    ax.set_title(f"wall time per step (run {total:.2f} s)")
    return _save(plt, fig, path)


# -- spectra -----------------------------------------------------------------------------
def _spectrum(arrays: Mapping[str, np.ndarray], op: str
              ) -> tuple[np.ndarray, np.ndarray | None, str] | None:
    """Singular values, the explained variance ratio over the total (None when the
    total is unknown) and what the total is."""
    s = _first(arrays, _SPECTRUM_KEYS)
    value = arrays.get("value")
    if s is None and op == "gram" and value is not None and value.ndim == 2:
        # All eigenvalues of AᵀA: the squared singular values of A, summing to ‖A‖_F².
        w = np.clip(np.linalg.eigvalsh(value), 0, None)[::-1]
        total = float(w.sum())
        return np.sqrt(w), (w / total if total > 0 else None), "‖A‖_F² (trace of AᵀA)"
    if s is None:
        return None
    s = np.sort(np.abs(s.ravel()))[::-1]
    evr = arrays.get("explained_variance_ratio")
    if evr is not None and evr.size == s.size:
        what = "total variance" if "total_variance" in arrays else "total column variance"
        if "total_variance" in arrays and "mean" not in arrays:
            what = "‖A‖_F²"
        return s, np.asarray(evr, dtype=np.float64).ravel(), what
    return s, None, ""


def _plot_spectrum(plt: Any, name: str, s: np.ndarray, ratio: np.ndarray | None, what: str,
                   path: _File) -> str:
    k = np.arange(1, s.size + 1)
    if ratio is None:
        fig, a1 = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
    else:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    from matplotlib.ticker import MaxNLocator

    a1.plot(k, s, "o-", ms=3)
    if s[-1] <= 0 or s[0] / s[-1] > 100:  # spans decades: a log axis shows the decay
        a1.set_yscale("log")
        a1.set_ylim(bottom=max(float(s[-1]), s[0] * 1e-17) / 2)
    else:
        a1.set_ylim(bottom=0)
    a1.xaxis.set_major_locator(MaxNLocator(integer=True))
    a1.set_xlabel("component")
    a1.set_ylabel("singular value")
    a1.set_title(f"{name}: singular values")
    if ratio is not None:
        cum = np.cumsum(ratio)
        a2.bar(k, ratio, color="tab:blue", alpha=0.6, label="per component")
        a2.plot(k, cum, "o-", ms=3, color="tab:orange", label="cumulative")
        a2.set_ylim(0, 1.02)
        a2.xaxis.set_major_locator(MaxNLocator(integer=True))
        a2.set_xlabel("component")
        a2.set_ylabel(f"share of {what}")
        a2.set_title(f"{name}: explained variance ratio ({cum[-1]:.1%} in {s.size})")
        a2.legend(fontsize=8, loc="upper left")  # the curve rises from the lower left
    return _save(plt, fig, path)


# -- regression ----------------------------------------------------------------------------
def regression_metrics(residuals: np.ndarray, fitted: np.ndarray) -> dict[str, float]:
    """R² and RMSE of a fit from its residuals and fitted values (``y = fitted + r``).

    Returns
    -------
    dict
        ``r2`` (``1 − Σr²/Σ(y − ȳ)²``, scikit-learn's ``r2_score``; 1.0 for a
        constant y fitted exactly, as scikit-learn), ``rmse`` (``√mean r²``) and ``n``.
    """
    r = np.asarray(residuals, dtype=np.float64).ravel()
    y = np.asarray(fitted, dtype=np.float64).ravel() + r
    ss_res = float(r @ r)
    dev = y - y.mean()
    ss_tot = float(dev @ dev)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return {"r2": r2, "rmse": float(np.sqrt(ss_res / r.size)), "n": int(r.size)}


def _plot_residuals(plt: Any, name: str, r: np.ndarray, fitted: np.ndarray,
                    metrics: Mapping[str, float], path: _File) -> str:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    idx = np.arange(r.size)
    if r.size > _SCATTER_POINTS:  # an even subsample: every point would be one blot
        idx = np.linspace(0, r.size - 1, _SCATTER_POINTS).astype(np.int64)
    a1.scatter(fitted[idx], r[idx], s=6, alpha=0.5)
    a1.axhline(0.0, color="k", lw=0.8)
    a1.set_xlabel("fitted value")
    a1.set_ylabel("residual (y − fitted)")
    a1.set_title("residuals vs fitted")
    a2.hist(r, bins=40)
    a2.set_xlabel("residual")
    a2.set_ylabel("rows")
    a2.set_title("residual distribution")
    fig.suptitle(f"{name}: R² = {metrics['r2']:.4f}, RMSE = {metrics['rmse']:.4g} "
                 f"(n = {metrics['n']:,})")
    return _save(plt, fig, path)


def _plot_coefficients(plt: Any, name: str, coef: np.ndarray, se: np.ndarray | None,
                       names: Sequence[str], path: _File) -> str:
    p = coef.size
    fig, ax = plt.subplots(figsize=(7, 0.28 * min(p, _NAMED_TICKS) + 1.8),
                           layout="constrained")
    y = np.arange(p)[::-1]
    err = 1.96 * se[:p] if se is not None and se.size >= p else None
    ax.barh(y, coef, xerr=err, color="tab:blue", ecolor="0.3", capsize=2)
    ax.axvline(0.0, color="k", lw=0.8)
    _ticks(ax, "y", list(names)[::-1])  # bar i is drawn at height p − 1 − i
    ax.set_xlabel("coefficient" + (" (± 1.96 standard errors)" if err is not None else ""))
    ax.set_title(f"{name}: coefficients")
    return _save(plt, fig, path)


def _plot_history(plt: Any, name: str, h: np.ndarray, path: _File) -> str:
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax.plot(np.arange(h.size), h.ravel(), "o-", ms=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if h.min() > 0 and h.max() > 100 * h.min():
        ax.set_yscale("log")  # a fast early drop would flatten the rest of the curve
    else:
        ax.ticklabel_format(axis="y", useOffset=False)  # the values, not offsets from one
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective")
    ax.set_title(f"{name}: objective history")
    return _save(plt, fig, path)


def _plot_columns(plt: Any, name: str, mean: np.ndarray, std: np.ndarray,
                  names: Sequence[str], path: _File) -> str:
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * min(mean.size, _NAMED_TICKS) + 2), 3.8),
                           layout="constrained")
    ax.errorbar(np.arange(mean.size), mean, yerr=std, fmt="o", ms=3, capsize=2)
    _ticks(ax, "x", names)
    ax.set_ylabel("mean ± std")
    ax.set_title(f"{name}: columns")
    return _save(plt, fig, path)


def _first(arrays: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> np.ndarray | None:
    for k in keys:
        a = arrays.get(k)
        if a is not None and a.size > 1 and np.issubdtype(a.dtype, np.number):
            return a
    return None


# -- column names ----------------------------------------------------------------------------
def column_names(manifest: Mapping[str, Any], step: str, width: int) -> list[str]:
    """The names of the columns a step reads (its ``A`` or ``X``), as ingest recorded
    them, followed through views; ``c0, c1, …`` when unknown or of another width."""
    steps, inputs = manifest.get("steps", {}), manifest.get("inputs", {})
    ref = step
    for _ in range(len(steps) + 1):
        args = steps.get(ref, {}).get("inputs", {})
        nxt = args.get("X", args.get("A"))
        if nxt is None:
            break
        ref = nxt
        if ref in inputs:
            cols = inputs[ref].get("columns")
            if isinstance(cols, list) and len(cols) == width:
                return [str(c) for c in cols]
            break
    return [f"c{i}" for i in range(width)]


# -- assembling ------------------------------------------------------------------------------
@dataclass
class _Plots:
    folder: _File
    plt: Any
    made: list[tuple[str, str]]
    figures: dict[str, Any]

    def add(self, caption: str, png: str) -> None:
        self.made.append((caption, png))


def _output_plots(out: _Plots, name: str, arrays: Mapping[str, np.ndarray], op: str,
                  manifest: Mapping[str, Any], step: str) -> None:
    """Draw the plots that fit one output; record their numbers in ``out.figures``."""
    plt, folder, fig = out.plt, out.folder, out.figures.setdefault(name, {})
    spec = _spectrum(arrays, op)
    if spec is not None:
        s, ratio, what = spec
        fig["singular_values"] = s.tolist()
        if ratio is not None:
            fig["explained_variance_ratio"] = ratio.tolist()
            fig["explained_variance_of"] = what
        out.add(f"{name}: singular values",
                _plot_spectrum(plt, name, s, ratio, what, folder / f"{name}-spectrum.png"))
    _regression_plots(out, name, arrays, manifest, step)
    h = _first(arrays, _HISTORY_KEYS)
    if h is not None and h.size >= 3:  # a direct solve's one or two values draw no curve
        fig["objective_history"] = h.ravel().tolist()
        out.add(f"{name}: objective",
                _plot_history(plt, name, h, folder / f"{name}-objective.png"))
    _recall_plot(out, name, arrays)
    if {"mean", "variance"} <= set(arrays) and 1 < arrays["mean"].size <= 500:
        names = column_names(manifest, step, arrays["mean"].size)
        fig["columns"] = names
        out.add(f"{name}: columns", _plot_columns(plt, name, arrays["mean"],
                                                  np.sqrt(arrays["variance"]), names,
                                                  folder / f"{name}-columns.png"))
    if not fig:
        out.figures.pop(name)


def _recall_plot(out: _Plots, name: str, arrays: Mapping[str, np.ndarray]) -> None:
    """recall@k on a recommender step's held-out split (``recall_ks``, ``recall``)."""
    ks, rec = arrays.get("recall_ks"), arrays.get("recall")
    if ks is None or rec is None or ks.size != rec.size or ks.size == 0:
        return
    users = int(arrays.get("recall_users", np.asarray(0)))
    k = int(arrays.get("recall_k", ks[-1]))
    curve = {int(a): float(b) for a, b in zip(ks.ravel(), rec.ravel(), strict=True)}
    out.figures[name].update(recall_at_k=curve, recall_users=users, recall_k=k)
    plt = out.plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
    ax.plot(list(curve), list(curve.values()), "o-", ms=4)
    ax.set_xscale("log")
    ax.set_xticks(list(curve), [str(v) for v in curve])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k (held out)")
    main = f"recall@{k} = {curve[k]:.4f}" if k in curve else ""
    ax.set_title(f"{name}: {main} over {users:,} users")
    out.add(f"{name}: recall@k on the held-out split ({main})",
            _save(plt, fig, out.folder / f"{name}-recall.png"))


def _regression_plots(out: _Plots, name: str, arrays: Mapping[str, np.ndarray],
                      manifest: Mapping[str, Any], step: str) -> None:
    plt, folder, fig = out.plt, out.folder, out.figures[name]
    r, fitted = arrays.get("residuals"), arrays.get("fitted")
    if r is not None and fitted is not None and r.size == fitted.size and r.size > 1:
        metrics = regression_metrics(r, fitted)
        fig.update(metrics)
        out.add(f"{name}: residuals (R² {metrics['r2']:.4f}, RMSE {metrics['rmse']:.4g})",
                _plot_residuals(plt, name, r.ravel(), fitted.ravel(), metrics,
                                folder / f"{name}-residuals.png"))
    elif "summary_r2" in arrays:  # too many rows to keep residuals: the summary's figures
        fig.update(r2=float(arrays["summary_r2"]),
                   rmse=float(arrays["summary_root_mean_squared_error"]))
    coef = arrays.get("coef")
    if coef is not None and coef.ndim == 2 and coef.shape[0] == 1:
        coef = coef[0]  # a binomial model's one row
    if coef is not None and coef.ndim == 1 and 1 <= coef.size <= 500:
        names = column_names(manifest, step, coef.size)
        se = arrays.get("summary_coefficient_standard_errors")
        fig["coefficients"] = dict(zip(names, coef.tolist(), strict=True))
        out.add(f"{name}: coefficients",
                _plot_coefficients(plt, name, coef, se, names,
                                   folder / f"{name}-coefficients.png"))


def _markdown(manifest: Mapping[str, Any], plots: list[tuple[str, str]],
              figures: Mapping[str, Any]) -> str:
    st = manifest["stats"]
    lines = [f"# {manifest['pipeline']} ({manifest['mode']})", "",
             f"finished {manifest['finished']} in {manifest['seconds']:.2f} s (wall) on "
             f"{manifest['executor']['executor']}; {st['tasks_run']} tasks run, "
             f"{st['tasks_skipped']} skipped, {st['bytes_read'] / 2**20:.1f} MiB read", ""]
    runs = manifest.get("step_runs", [])
    if runs:
        lines += ["## Steps", "", "| step | op | wall s | computes | tasks run | skipped | "
                  "passes |", "|---|---|---:|---:|---:|---:|---:|"]
        for rec in runs:
            lines.append(f"| {rec['name']} | {rec['op']} | {rec['seconds']:.2f} | "
                         f"{rec['computes']} | {rec['tasks_run']} | {rec['tasks_skipped']} | "
                         f"{sum(rec['passes'].values()):g} |")
        lines.append("")
    lines += ["## Outputs", ""]
    for name, rec in manifest["outputs"].items():
        shapes = rec.get("shape") or {k: v["shape"] for k, v in rec.get("arrays", {}).items()}
        lines.append(f"- `{name}` ({rec['op']}): `{rec['path']}` {shapes}")
        f = figures.get(name, {})
        if "r2" in f:
            lines.append(f"  - R² {f['r2']:.6g}, RMSE {f['rmse']:.6g}")
        if "explained_variance_ratio" in f:
            lines.append(f"  - explained variance ratio (of {f['explained_variance_of']}): "
                         f"{sum(f['explained_variance_ratio']):.4f} in "
                         f"{len(f['explained_variance_ratio'])} components")
    by_url = {rec["url"]: name for name, rec in manifest["inputs"].items()}
    lines += ["", "## Passes over inputs", ""]
    lines += [f"- {by_url.get(url, 'intermediate')} (`{url}`): {p:g}"
              for url, p in manifest["passes"].items()]
    lines += ["", "## Plots", ""]
    lines += [f"![{cap}]({f})" for cap, f in plots]
    return "\n".join(lines) + "\n"


def write_report(out_dir: OutputDir, folder: str,
                 manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``<folder>/report.md``, its plots and ``figures.json`` in ``out_dir``;
    return their paths relative to ``out_dir``."""
    out_dir.delete(folder)  # no plot of an earlier run may linger
    out_dir.makedirs(folder)
    target = _File(out_dir, folder)
    plots = _Plots(target, _pyplot(), [], {})
    rows = _time_rows(manifest)
    png = _plot_time(plots.plt, rows, manifest["seconds"], target / "time.png")
    if png:
        plots.add("wall time per step", png)
        plots.figures["time"] = {r["label"]: r["seconds"] for r in rows}
    for name, rec in manifest["outputs"].items():
        if rec["kind"] == "small":
            arrays = load_small(out_dir, rec["path"])
            _output_plots(plots, name, arrays, rec["op"], manifest, rec["step"])
    (target / "figures.json").write(json.dumps(plots.figures, indent=1).encode())
    (target / "report.md").write(_markdown(manifest, plots.made, plots.figures).encode())
    return {"markdown": f"{folder}/report.md", "figures": f"{folder}/figures.json",
            "plots": [f"{folder}/{f}" for _, f in plots.made]}
