"""``vmstate plot DIR``: PNG charts of a sweep's ``runs.parquet`` (matplotlib, no display needed).

One figure per swept key ``x``: a row per metric (default: the split failure rate and the wall-clock
µs per THP split), ``x`` on the horizontal axis, one line per value of the next swept key, one column
of panels per combination of the remaining keys. Each point is the mean over the seeds; the bar
spans their min and max. Runs drawn by ``[sample]`` (not on a grid) are drawn as a scatter,
``sample-<x>.png``, coloured by the next swept key.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import polars as pl

from vmstate.errors import BadInput, OutputError
from vmstate.io.atomic import atomic_write, makedirs_synced

__all__ = ["plot_sweep", "DEFAULT_METRICS", "LABELS"]

DEFAULT_METRICS = ("failure_rate", "us_per_thp_split")
LABELS = {
    "failure_rate": "split failure rate\n(failed / attempted THPs)",
    "us_per_thp_split": "µs per THP split\n(wall clock, whole split op)",
    "pinned": "pinned (fraction of THPs with a GUP pin)",
    "shared": "shared (fraction of THPs mapped after fork)",
    "mappers": "mappers (processes mapping a shared THP)",
    "pte_mapped": "pte_mapped (fraction of THPs PTE-mapped)",
    "partially_unmapped": "partially_unmapped (fraction of THPs)",
    "thps": "THPs in the population",
}
PERCENT = {"failure_rate", "shared", "pinned", "pte_mapped", "partially_unmapped"}
MAX_FACETS = 12
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_sweep(directory, *, out=None, metrics=DEFAULT_METRICS) -> list[Path]:
    """Write the charts of the sweep in ``directory`` to ``out`` (default ``directory/plots``);
    return the paths written."""
    directory = Path(directory)
    runs_path = directory / "runs.parquet"
    if not runs_path.exists():
        raise BadInput(f"{directory}: no runs.parquet (not a sweep directory, or no run finished)",
                       field="DIR")
    runs = pl.read_parquet(runs_path)
    if runs.is_empty():
        raise BadInput(f"{runs_path}: no finished run to plot", field="DIR")
    for m in metrics:
        if m not in runs.columns:
            raise BadInput(f"--y {m}: not a runs.parquet column (expected one of "
                           f"{', '.join(c for c in runs.columns if runs[c].dtype.is_numeric())})",
                           field="y")
    spec_path = directory / "sweep.json"
    spec = json.loads(spec_path.read_text()) if spec_path.exists() else {}
    name = spec.get("name", directory.name)
    grid = runs.filter(pl.col("origin") == "grid")
    sample = runs.filter(pl.col("origin") == "sample")
    grid_keys = list(spec["grid"]) if "grid" in spec else _varied(grid)
    sample_keys = list(spec.get("sample", {}).get("ranges", {})) if "sample" in spec \
        else _varied(sample)
    out = Path(out) if out is not None else directory / "plots"
    try:
        makedirs_synced(out)
    except OSError as e:  # exit 4, as a PNG that cannot be written (atomic_write)
        raise OutputError(e.filename or out, e.errno, e.strerror) from e
    written = []
    if not grid.is_empty():
        for x in grid_keys or ["seed"]:
            fig = _grid_figure(grid, x, [k for k in grid_keys if k != x], metrics, name)
            written.append(_save(fig, out / f"{x}.png"))
    if not sample.is_empty():
        for x in sample_keys:
            fig = _sample_figure(sample, x, [k for k in sample_keys if k != x], metrics, name)
            written.append(_save(fig, out / f"sample-{x}.png"))
    return written


def _varied(runs):
    keys = ("variant", "thps", "shared", "mappers", "pte_mapped", "partially_unmapped",
            "unmapped_subpages", "pinned", "pins")
    return [k for k in keys if k in runs.columns and runs[k].n_unique() > 1]


def _figure(nrows, ncols, title, side=0.0):
    """``side``: inches kept for a legend or colour bar right of the panels."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(max(5.5, 1.2 + 4.0 * ncols) + side, 0.6 + 3.0 * nrows),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey="row")
    fig.suptitle(title)
    return fig, axes


def _grid_figure(runs, x, others, metrics, name):
    color = others[0] if others else None
    facets_keys = others[1:]
    facets = list(itertools.product(*(sorted(runs[k].unique().to_list()) for k in facets_keys)))
    if len(facets) > MAX_FACETS:  # too many panels: every combination of the others is a line
        color, facets_keys, facets = None, [], [()]
    lines_by = others if color is None else [color]
    agg = (runs.group_by([x, *others])
           .agg(*(e for m in metrics for e in (pl.col(m).mean().alias(f"{m}:mean"),
                                               pl.col(m).min().alias(f"{m}:min"),
                                               pl.col(m).max().alias(f"{m}:max"))),
                pl.len().alias("seeds"))
           .sort([x, *others]))
    seeds = agg["seeds"].max()
    fig, axes = _figure(len(metrics), len(facets), f"{name}: against {x} "
                        f"(mean of {seeds} seed(s); bars: min–max)", side=1.6 if lines_by else 0)
    keys = sorted(agg.select(lines_by).unique().iter_rows()) if lines_by else [()]
    color_of = dict(zip(keys, _colors(len(keys))))
    # Lines that coincide (a metric the other key does not move) stay visible: each line its own
    # marker, the first drawn the largest.
    style_of = {k: (MARKERS[i % len(MARKERS)], 4 + 5 * (len(keys) - 1 - i) / max(1, len(keys) - 1))
                for i, k in enumerate(keys)}
    for col, facet in enumerate(facets):
        sub = agg.filter(*(pl.col(k) == v for k, v in zip(facets_keys, facet))) if facet else agg
        groups = sub.partition_by(lines_by, maintain_order=True, as_dict=True) if lines_by \
            else {(): sub}
        for row, m in enumerate(metrics):
            ax = axes[row][col]
            for key, g in sorted(groups.items()):
                g = g.sort(x)
                label = ", ".join(_fmt(k, v) if len(lines_by) == 1 else f"{k}={_fmt(k, v)}"
                                  for k, v in zip(lines_by, key)) or m
                mean = g[f"{m}:mean"].to_numpy()
                err = np.clip([mean - g[f"{m}:min"].to_numpy(), g[f"{m}:max"].to_numpy() - mean],
                              0, None)  # the mean may round a hair past min or max
                marker, size = style_of[tuple(key)]
                ax.errorbar(g[x].to_numpy(), mean, yerr=err, marker=marker, ms=size, capsize=3,
                            color=color_of[tuple(key)], label=label, alpha=0.85)
            _axis(ax, x if row == len(metrics) - 1 else None, m if col == 0 else None, x, m)
            if row == 0 and facet:
                ax.set_title(", ".join(f"{k}={_fmt(k, v)}" for k, v in zip(facets_keys, facet)),
                             fontsize=10)
    if lines_by:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", title=", ".join(lines_by),
                   fontsize=9)
    return fig


def _sample_figure(runs, x, others, metrics, name):
    others = [k for k in others if runs[k].dtype.is_numeric()]
    fig, axes = _figure(len(metrics), 1, f"{name}: random sample, against {x}",
                        side=1.2 if others else 0)
    c = runs[others[0]].to_numpy() if others else None
    for row, m in enumerate(metrics):
        ax = axes[row][0]
        sc = ax.scatter(runs[x].to_numpy(), runs[m].to_numpy(), s=18,
                        **({"c": c, "cmap": "viridis"} if c is not None else {}))
        _axis(ax, x if row == len(metrics) - 1 else None, m, x, m)
    if others:
        fig.colorbar(sc, ax=axes[:, 0].tolist(), label=_label(others[0]))
    return fig


def _label(col):
    if col in LABELS:
        return LABELS[col]
    for outcome in ("failed", "succeeded"):
        if col.endswith(f"_per_{outcome}"):
            return f"{col.removesuffix(f'_per_{outcome}')}\nper {outcome} THP split (mean)"
    return col


def _axis(ax, xlabel, ylabel, x, m):
    from matplotlib.ticker import PercentFormatter
    if xlabel:
        ax.set_xlabel(_label(x))
    if ylabel:
        ax.set_ylabel(_label(m))
    if x in PERCENT:
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    if m in PERCENT:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(True, alpha=0.3)


def _fmt(k, v):
    if k in PERCENT and isinstance(v, float):
        return f"{v:.0%}" if abs(v * 100 - round(v * 100)) < 1e-9 else f"{v:.2%}"
    return str(v)


def _colors(n):
    from matplotlib import colormaps
    cmap = colormaps["viridis" if n > 10 else "tab10"]
    return [cmap(i / max(1, n - 1)) if n > 10 else cmap(i) for i in range(n)]


def _save(fig, path: Path) -> Path:
    """The figure as a PNG, crash-safely (:func:`vmstate.io.atomic.atomic_write`): no half-written
    PNG."""
    return atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
