"""Reading and writing state dataset directories (``pages.parquet`` + ``pagemap.parquet``, the schema
of ``../shared/spec/SCENARIOS.md``), simulated or captured.

:func:`read_dataset` checks what it reads and raises :class:`~vmstate.errors.BadInput` naming the
file and the column. :func:`parquet_writer` makes a frame a ``write(f)`` for the crash-safe writers
of :mod:`vmstate.io.atomic` (``vmstate run --out`` writes with :func:`~vmstate.io.atomic.write_tree`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from vmstate.errors import BadInput
from vmstate.io.export import KPF_ANON, PAGEMAP_SCHEMA, PAGES_SCHEMA

PAGES, PAGEMAP, SUMMARY = "pages.parquet", "pagemap.parquet", "summary.json"
NOT_NULL = {PAGES: ("pfn", "flags", "mapcount"),
            PAGEMAP: ("mm", "vaddr", "pfn", "present", "migration", "writable", "pmd")}
META_PREFIX = "vmstate."


@dataclass
class Dataset:
    """One state dataset. ``meta``: the Parquet key-value metadata whose keys start with
    ``vmstate.`` (both files'; a capture writes what it could not know there)."""
    path: Path
    pages: pl.DataFrame
    pagemap: pl.DataFrame
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def captured(self) -> bool:
        """Read from a running kernel (no page_count() in it) rather than simulated."""
        return self.meta.get("vmstate.source") == "capture" or (
            self.pages.height > 0 and self.pages["refcount"].null_count() == self.pages.height)

    def meta_json(self, key, default=None):
        text = self.meta.get(key)
        return default if text is None else json.loads(text)


def read_dataset(path) -> Dataset:
    """Read ``path/pages.parquet`` and ``path/pagemap.parquet``; BadInput names the file and column
    of anything that is not the contract's schema (a missing, truncated or foreign file, a missing
    column, another dtype, nulls where the schema has none)."""
    path = Path(path)
    if not path.is_dir():
        raise BadInput(f"{path}: not a directory (expected a state dataset: {PAGES} and {PAGEMAP})",
                       field="dataset")
    frames, meta = {}, {}
    for name, schema in ((PAGES, PAGES_SCHEMA), (PAGEMAP, PAGEMAP_SCHEMA)):
        frames[name], more = _read_checked(path / name, schema, NOT_NULL[name])
        meta.update(more)
    return Dataset(path, frames[PAGES], frames[PAGEMAP], meta)


def _read_checked(file: Path, schema: dict, not_null) -> tuple[pl.DataFrame, dict]:
    if not file.is_file():
        raise BadInput(f"{file}: missing (a state dataset has {PAGES} and {PAGEMAP})",
                       field="dataset")
    try:
        meta = pl.read_parquet_metadata(file)
        frame = pl.read_parquet(file)
    except Exception as e:  # polars raises ComputeError/OSError/… for a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"{file}: not a readable Parquet file ({first})", field="dataset") from None
    for col, dtype in schema.items():
        if col not in frame.columns:
            raise BadInput(f"{file}: column '{col}': missing (expected {dtype})", field=col)
        if frame.schema[col] != dtype:
            raise BadInput(f"{file}: column '{col}': expected {dtype}, got {frame.schema[col]}",
                           field=col)
    extra = [c for c in frame.columns if c not in schema]
    if extra:
        raise BadInput(f"{file}: column '{extra[0]}': not in the state dataset schema (expected "
                       f"{', '.join(schema)})", field=extra[0])
    for col in not_null:
        nulls = frame[col].null_count()
        if nulls:
            raise BadInput(f"{file}: column '{col}': {nulls} null value(s), expected none", field=col)
    return frame.select(list(schema)), {k: v for k, v in meta.items() if k.startswith(META_PREFIX)}


def freed_frames(pages: pl.DataFrame, pagemap: pl.DataFrame) -> np.ndarray:
    """Which rows of a pages frame are free frames. Where the dataset has refcounts (the simulator):
    refcount 0. Where it has none (a capture): frames that no captured process maps, in no THP that
    one maps, and not an unmapped anonymous page (a page still pinned keeps PageAnon until it is
    freed; a freed frame that another process took since is free as far as the run goes)."""
    ref = pages["refcount"]
    if ref.null_count() < pages.height:
        return (ref.fill_null(1) == 0).to_numpy()
    mapped = pages["pfn"].is_in(pagemap["pfn"].implode()).to_numpy()
    heads = pages.filter(pl.Series(mapped))["head_pfn"].drop_nulls()
    in_mapped_thp = pages["head_pfn"].is_in(heads.implode()).fill_null(False).to_numpy()
    anon = ((pages["flags"] & (1 << KPF_ANON)) != 0).to_numpy()
    held = (pages["mapcount"] == 0).to_numpy() & anon  # unmapped but not freed: a pin holds it
    return ~(mapped | in_mapped_thp | held)


def snapshot_totals(pages: pl.DataFrame, pagemap: pl.DataFrame) -> dict:
    """The summary's per-snapshot object: THPs (still compound) and frames in use."""
    freed = freed_frames(pages, pagemap)
    in_use = pages.filter(~pl.Series(freed))
    return {"thps": int(in_use["head_pfn"].drop_nulls().n_unique()),
            "pages_in_use": int(in_use.height)}


def parquet_writer(frame: pl.DataFrame, meta: dict[str, str] | None = None):
    """A ``write(f)`` for :mod:`vmstate.io.atomic`: the frame as Parquet with key-value metadata."""
    return lambda f: frame.write_parquet(f, metadata=dict(meta) if meta else None)
