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


# ---- vmstate plot DIR --map: the address space as 2 MiB slots ------------------------------

MAP_COLORS = ("#1f77b4", "#9ecae1", "#ff7f0e", "#d62728", "#2ca02c", "#bcbd22", "#f0f0f0")
MAX_MAP_COLUMNS = 4096  # beyond this, each cell aggregates several slots (the most common state)
MAP_GAP = 8             # unmapped runs longer than this many slots are drawn as one gap column


def plot_map(directory, *, out=None, snapshot=None) -> Path:
    """Draw each process's address space in ``directory`` (a run, kernel-run or capture) as a strip
    of 2 MiB slots coloured by state (:data:`vmstate.io.views.SLOT_STATES`), one row per process,
    one panel per snapshot (only ``snapshot`` when given); write ``out`` (default
    ``directory/map.png``) and return its path. Slots are in address order, shared by all rows;
    an unmapped run of more than :data:`MAP_GAP` slots is drawn as one hatched gap column, and past
    :data:`MAX_MAP_COLUMNS` columns each cell stands for several slots (its most common state)."""
    from matplotlib.patches import Patch

    from vmstate.io.views import SLOT_STATES, open_source, slot_states
    directory = Path(directory)
    first = open_source(directory, snapshot)
    labels = [first.label] if snapshot is not None or first.label is None else first.labels
    panels = []
    for label in labels:
        src = first if label == first.label else open_source(directory, label)
        panels.append((label, slot_states(src.dataset), src))
    name = (first.summary or {}).get("scenario") or directory.name
    mms = []
    for _, states, src in panels:
        for mm in src.dataset.pagemap["mm"].unique(maintain_order=True).to_list():
            if mm not in mms:
                mms.append(mm)
    slots = np.unique(np.concatenate([s["slot"].to_numpy() for _, s, _ in panels] or [[]]))
    columns, ticks, gap_cols = _map_columns(slots.astype(np.int64))
    ncols = int(columns.max()) + 1 if len(columns) else 1
    bin_ = max(1, -(-ncols // MAX_MAP_COLUMNS))
    width = -(-ncols // bin_)
    rows = [(label, mm) for label, _, _ in panels for mm in mms]
    unmapped = SLOT_STATES.index("unmapped")
    grid = np.full((len(rows), width), unmapped, np.int64)
    gaps = gap_cols // bin_
    col_of = dict(zip(slots.tolist(), (columns // bin_).tolist()))
    for r, (label, mm) in enumerate(rows):
        states = next(s for lab, s, _ in panels if lab == label).filter(pl.col("mm") == mm)
        cols = np.array([col_of[s] for s in states["slot"].to_list()], np.int64)
        vals = states["state"].to_numpy().astype(np.int64)
        if bin_ == 1:
            grid[r, cols] = vals
        else:  # the most common state of each cell's slots
            counts = np.zeros((width, len(SLOT_STATES)), np.int64)
            np.add.at(counts, (cols, vals), 1)
            has = counts.sum(axis=1) > 0
            grid[r, has] = counts[has].argmax(axis=1)
    fig, axes = _figure(1, 1, f"{name}: address space by 2 MiB slot"
                        + (f" ({bin_} slots per cell)" if bin_ > 1 else ""))
    fig.set_size_inches(min(16, 5 + width * 0.12), 2.4 + 0.32 * len(rows))
    ax = axes[0][0]
    from matplotlib.colors import ListedColormap
    ax.imshow(grid, cmap=ListedColormap(MAP_COLORS), vmin=0, vmax=len(SLOT_STATES) - 1,
              aspect="auto", interpolation="nearest")
    for g in np.unique(gaps):
        ax.axvspan(g - 0.5, g + 0.5, facecolor="white", hatch="///", edgecolor="#999999", lw=0)
    for r in range(1, len(rows)):
        ax.axhline(r - 0.5, color="white" if rows[r][0] == rows[r - 1][0] else "black",
                   lw=0.6 if rows[r][0] == rows[r - 1][0] else 1.5)
    ax.set_yticks(range(len(rows)),
                  [f"{label}: {mm}" if label is not None else mm for label, mm in rows], fontsize=8)
    tick_cols, tick_labels = _map_ticks(columns // bin_, slots, ticks, width)
    ax.set_xticks(tick_cols, tick_labels, fontsize=7, rotation=20, ha="right")
    ax.set_xlabel("virtual address (2 MiB slots; hatched: a long unmapped gap)")
    fig.legend(handles=[Patch(facecolor=MAP_COLORS[i], edgecolor="#666666", label=s)
                        for i, s in enumerate(SLOT_STATES)],
               loc="outside lower center", ncol=4, fontsize=7, frameon=False)
    path = Path(out) if out is not None else directory / "map.png"
    if path.suffix != ".png":
        raise BadInput(f"--out {path}: expected a .png file for --map", field="out")
    makedirs_synced(path.parent)
    return _save(fig, path)


def _map_ticks(cols, slots, starts, width, most=8):
    """Tick columns and addresses: the start of each mapped run first (``starts``: indexes into
    ``slots``), then evenly spaced slots, none closer than ``width / most`` columns to another."""
    sep = max(1, width // most)
    chosen: list[tuple[int, int]] = []
    for i in list(starts) + list(range(0, len(cols), max(1, len(cols) // most))):
        c = int(cols[i])
        if all(abs(c - d) >= sep for d, _ in chosen):
            chosen.append((c, int(slots[i]) << 21))
    chosen.sort()
    return [c for c, _ in chosen], [f"{a:#x}" for _, a in chosen]


def _map_columns(slots: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
    """Each slot's column (gaps longer than MAP_GAP slots shrink to one column), the index of the
    first slot of each mapped run, and the gap columns."""
    if not len(slots):
        return np.zeros(0, np.int64), [], np.zeros(0, np.int64)
    step = np.diff(slots, prepend=slots[0])
    gap = step > MAP_GAP + 1
    advance = np.where(gap, 2, np.minimum(step, MAP_GAP + 1))
    advance[0] = 0
    columns = np.cumsum(advance)
    starts = np.concatenate([[0], np.flatnonzero(gap)])
    return columns, starts.tolist(), columns[gap] - 1
