"""A state dataset loaded into the engine: :func:`from_capture`.

From a dataset directory (``vmstate capture``, ``kernel-run`` or a simulator snapshot) it rebuilds,
in this order: the pagemap rows it can model (:func:`_rows`), processes, VMAs (:func:`_vmas`),
anon_vmas (:func:`_anon_vmas`), frames with the v5 counters the mappings imply (:func:`_frames`),
page tables (:func:`_page_tables`); then it checks a simulator snapshot for consistency
(:func:`_check_consistent`), validates, and leaves a report of what the dataset could not tell in
``state.capture_report`` (:func:`_report`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from vmstate.kernels.constants import (
    HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SHIFT, PG_head, PG_locked, PG_tail,
    PTE_PFN_SHIFT,
    VM_ANON_DEFAULT, VM_HUGEPAGE, VM_WRITE, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE,
    _PAGE_RW,
)
from vmstate.bridge import procfs
from vmstate.io.dataset import PAGEMAP, PAGES, Dataset, read_dataset
from vmstate.engine.state import MemoryState, Mm, Vma
from vmstate.errors import BadInput, CorruptState
from vmstate.io.export import PG_TO_KPF, KPF_ANON

__all__ = ["from_capture"]

N = HPAGE_PMD_NR
_KPF_TO_PG = [(pg, kp) for pg, kp in PG_TO_KPF if pg not in (PG_head, PG_tail, PG_locked)]
_ENTRY = _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_DIRTY


def from_capture(path, *, names: dict | None = None, variant: str = "v5") -> MemoryState:
    """A state rebuilt from a state dataset directory (``vmstate capture``, ``kernel-run`` or a
    simulator snapshot), validated; ``state.capture_report`` says what the dataset could not tell
    (pins). ``names`` renames processes (``{"1234": "parent"}``)."""
    state = MemoryState(variant)
    load = _Load(state, read_dataset(path), names or {})
    rows = _rows(load)
    mms = _processes(load, rows)
    vmas = _vmas(load, rows, mms)
    anon_vma_of_row = _anon_vmas(load, rows, vmas)
    frames = _frames(load, rows, anon_vma_of_row)
    _page_tables(load, rows, mms, frames)
    _report(load, rows, frames)
    state.validate()
    return state


@dataclass
class _Load:
    """What every step of one load shares: the state being built, the dataset, the renames, and
    the notes for the report."""
    state: MemoryState
    ds: Dataset
    names: dict
    notes: list[str] = field(default_factory=list)

    @property
    def pm_file(self) -> Path:
        return self.ds.path / PAGEMAP

    @property
    def pages_file(self) -> Path:
        return self.ds.path / PAGES

    def bad(self, file, column, msg):
        raise BadInput(f"{file}: column '{column}': {msg}", field=column)


@dataclass
class _Frames:
    """What :func:`_frames` built: each row's engine pfn, and the mapping counts per block."""
    row_pfn: np.ndarray       # engine pfn of every row
    captured: pl.DataFrame    # engine pfn -> captured pfn, per mapped page
    ptemaps: np.ndarray       # [block, subpage]: PTE mappings
    pmdmaps: np.ndarray       # [block]: PMD mappings
    compound: np.ndarray      # [block]: a THP


def _pg_flags(kpf: np.ndarray) -> np.ndarray:
    """PG_* bits of each page from its kpageflags (the inverse of export.py's table), without
    PG_locked (nobody holds the lock in the loaded state) and the compound bits."""
    out = np.zeros(len(kpf), np.uint32)
    for pg, kp in _KPF_TO_PG:
        out |= (((kpf >> np.uint64(kp)) & np.uint64(1)).astype(np.uint32) << np.uint32(pg))
    return out


# ---- rows -----------------------------------------------------------------------------------
def _rows(load: _Load) -> pl.DataFrame:
    """The pagemap rows joined with their pages, those vmstate can model (anonymous, mapped),
    with the THP columns ``sub``, ``haddr``, ``voff``."""
    j, pages = _joined(load)
    j = _modelled(load, j)
    return _thp_columns(load, j, pages)


def _joined(load: _Load) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Each pagemap row (renamed) joined with its page's row, and the pages; refused: unaligned or
    repeated addresses, repeated pfns, a pfn without a page."""
    ds = load.ds
    pm = ds.pagemap
    if load.names:
        pm = pm.with_columns(pl.col("mm").replace(load.names))
    bad = pm.filter(pl.col("vaddr") % 4096 != 0)
    if bad.height:
        load.bad(load.pm_file, "vaddr", f"0x{bad['vaddr'][0]:x} is not 4096-aligned")
    dup = pm.group_by("mm", "vaddr").len().filter(pl.col("len") > 1)
    if dup.height:
        load.bad(load.pm_file, "vaddr", f"{dup['mm'][0]!r} 0x{dup['vaddr'][0]:x} appears "
                                        f"{dup['len'][0]} times")
    pages = ds.pages.unique("pfn", keep="first")
    if pages.height != ds.pages.height:
        load.bad(load.pages_file, "pfn", "a pfn appears more than once")
    j = pm.join(pages.rename({"mapcount": "kpagecount"}), on="pfn", how="left",
                maintain_order="left")
    missing = j.filter(pl.col("flags").is_null())
    if missing.height:
        r = missing.row(0, named=True)
        load.bad(load.pm_file, "pfn", f"pfn 0x{r['pfn']:x} ({r['mm']!r} 0x{r['vaddr']:x}) has "
                                      f"no row in {PAGES}")
    return j, pages


def _modelled(load: _Load, j: pl.DataFrame) -> pl.DataFrame:
    """Only anonymous pages that are mapped (present or a migration entry); the rest noted."""
    kpf = j["flags"].to_numpy()
    zero = (kpf >> np.uint64(procfs.KPF_ZERO_PAGE)) & np.uint64(1) == 1
    anon = (kpf >> np.uint64(KPF_ANON)) & np.uint64(1) == 1
    swapped = ~j["present"].to_numpy() & ~j["migration"].to_numpy()
    keep = ~zero & anon & ~swapped
    for what, mask in (("the shared zero page", zero), ("non-anonymous pages", ~anon & ~zero),
                       ("non-present, non-migration entries", swapped & anon & ~zero)):
        if mask.sum():
            load.notes.append(f"{int(mask.sum())} pagemap rows mapping {what} left out")
    if (j["migration"].to_numpy() & keep).any():
        load.notes.append(f"{int((j['migration'].to_numpy() & keep).sum())} migration entries "
                          f"(a split or migration in flight) loaded as present PTEs")
    return j.filter(pl.Series(keep))


def _thp_columns(load: _Load, j: pl.DataFrame, pages: pl.DataFrame) -> pl.DataFrame:
    """THP membership (a head_pfn whose folio has all 512 frames in pages.parquet), and subpage i
    of a THP mapped at offset i of its 2 MiB slot, else refused."""
    sizes = pages.filter(pl.col("head_pfn").is_not_null()).group_by("head_pfn").len()
    small_folios = sizes.filter(pl.col("len") != N)["head_pfn"]
    if len(small_folios):
        load.notes.append(f"{len(small_folios)} large folios that are not 512 pages (mTHP, or "
                          f"a THP not listed whole) loaded as small pages")
    j = j.with_columns(
        pl.when(pl.col("head_pfn").is_in(small_folios.to_list())).then(None)
        .otherwise(pl.col("head_pfn")).alias("head_pfn"))
    j = j.with_columns((pl.col("pfn").cast(pl.Int64) - pl.col("head_pfn").cast(pl.Int64))
                       .alias("sub"),
                       (pl.col("vaddr") // HPAGE_PMD_SIZE * HPAGE_PMD_SIZE).alias("haddr"),
                       ((pl.col("vaddr") // 4096) % N).cast(pl.Int64).alias("voff"))
    odd = j.filter(pl.col("head_pfn").is_not_null() & (
        (pl.col("sub") != pl.col("voff")) | (pl.col("head_pfn") % N != 0)))
    if odd.height:
        r = odd.row(0, named=True)
        load.bad(load.pm_file, "vaddr", f"{r['mm']!r} 0x{r['vaddr']:x} maps subpage {r['sub']} "
                 f"of the THP at pfn 0x{r['head_pfn']:x} at offset {r['voff']} of its 2 MiB slot "
                 f"(an mremap'd THP): vmstate maps subpage i at offset i")
    return j


# ---- processes, VMAs and anon_vmas ------------------------------------------------------------
def _processes(load: _Load, rows) -> dict:
    """One mm per process: those the rows map, then those only the VMA metadata names."""
    state = load.state
    order = rows["mm"].unique(maintain_order=True).to_list()
    declared = load.ds.meta_json("vmstate.vmas", {}) or {}
    for name in declared:
        name = load.names.get(name, name)
        if name not in order:
            order.append(name)
    mms = {}
    for i, name in enumerate(order):
        mms[name] = state.mms[name] = Mm(name, i)
    return mms


def _vmas(load: _Load, rows, mms) -> list:
    """VMAs from the capture's ``vmstate.vmas`` metadata (anonymous private ones), else one
    read-write VMA per run of contiguous mapped pages."""
    declared = load.ds.meta_json("vmstate.vmas")
    thp_slots = set(zip(*rows.filter(pl.col("head_pfn").is_not_null())
                        .select("mm", "haddr").unique().get_columns())) if rows.height else set()
    out = []
    for name, mm in mms.items():
        mine = rows.filter(pl.col("mm") == name)["vaddr"].sort().to_numpy().astype(np.int64)
        spans = _declared_spans(load, declared, name, mine) if declared is not None \
            else _contiguous_spans(mine)
        for s, e, w in spans:
            flags = VM_ANON_DEFAULT & ~(0 if w else VM_WRITE)
            if any(n == name and s < h + HPAGE_PMD_SIZE and h < e for n, h in thp_slots):
                flags |= VM_HUGEPAGE
            v = Vma(mm, s, e, s >> PAGE_SHIFT, flags, -1)
            mm.vmas.append(v)
            out.append(v)
        mm.vmas.sort(key=lambda v: v.vm_start)
    if declared is None:
        load.notes.append("no VMA metadata (a simulator snapshot?): one read-write VMA per run "
                          "of contiguous mapped pages")
    return out


def _declared_spans(load: _Load, declared: dict, name: str, mine: np.ndarray) -> list:
    """``(start, end, writable)`` of the process's private VMAs in the metadata that map a row;
    a row outside them all is refused."""
    orig = next((k for k, v in load.names.items() if v == name), name)
    spans = [(s, e, "w" in perms) for s, e, perms, p in declared.get(orig, [])
             if perms.endswith("p")]
    covered = np.zeros(len(mine), bool)
    for s, e, _ in spans:
        covered |= (mine >= s) & (mine < e)
    if not covered.all():
        load.bad(load.pm_file, "vaddr", f"{name!r} 0x{int(mine[~covered][0]):x} lies in "
                 f"no VMA of the metadata vmstate.vmas")
    return [sp for sp in spans if ((mine >= sp[0]) & (mine < sp[1])).any()]


def _contiguous_spans(mine: np.ndarray) -> list:
    """One writable ``(start, end, True)`` per run of contiguous mapped pages (sorted addresses)."""
    breaks = np.flatnonzero(np.diff(mine) != 4096) + 1
    return [(int(r[0]), int(r[-1]) + 4096, True) for r in np.split(mine, breaks) if len(r)]


def _anon_vmas(load: _Load, rows, vmas) -> np.ndarray:
    """VMAs that map a common page share an anon_vma (the one fork's anon_vma chain gives the
    rmap walk); every other VMA gets its own. A page mapped at two addresses is refused. Returns
    the anon_vma of each row."""
    vma_of = _vma_of_rows(rows, vmas)
    root = _shared_folio_roots(rows, vmas, vma_of)
    idx = {}
    for k, v in enumerate(vmas):
        if root[k] not in idx:
            idx[root[k]] = len(load.state.anon_vmas)
            load.state.anon_vmas.append([])
        v.anon_vma = idx[root[k]]
        load.state.anon_vmas[v.anon_vma].append(v)
    # page->index is one per page: every mapping of a page must be at the same address
    moved = (pl.DataFrame({"pfn": rows["pfn"], "vaddr": rows["vaddr"]}).group_by("pfn")
             .agg(pl.col("vaddr").n_unique().alias("n"), pl.col("vaddr").min().alias("v"))
             .filter(pl.col("n") > 1))
    if moved.height:
        load.bad(load.pm_file, "vaddr", f"pfn 0x{moved['pfn'][0]:x} is mapped at "
                 f"{moved['n'][0]} addresses (mremap): vmstate keeps one page->index per page")
    return np.array([vmas[k].anon_vma for k in vma_of.tolist()], np.int64)


def _vma_of_rows(rows, vmas) -> np.ndarray:
    """The index in ``vmas`` of the VMA each row lies in."""
    by_mm = {}
    for k, v in enumerate(vmas):
        by_mm.setdefault(v.mm.name, []).append((v.vm_start, v.vm_end, k))
    vma_of = np.full(rows.height, -1, np.int64)
    mm_col, va = rows["mm"].to_list(), rows["vaddr"].to_numpy().astype(np.int64)
    for name, spans in by_mm.items():
        sel = np.flatnonzero(np.array([m == name for m in mm_col], bool))
        starts = np.array([s for s, _, _ in spans], np.int64)
        ks = np.array([k for _, _, k in spans], np.int64)
        order = np.argsort(starts)
        pos = np.searchsorted(starts[order], va[sel], side="right") - 1
        vma_of[sel] = ks[order][pos]
    return vma_of


def _shared_folio_roots(rows, vmas, vma_of) -> list[int]:
    """Union-find over the VMAs, joined where they map a common folio: each VMA's root."""
    parent = list(range(len(vmas)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    folio = np.where(rows["head_pfn"].is_not_null().to_numpy(),
                     rows["head_pfn"].fill_null(0).to_numpy().astype(np.int64),
                     rows["pfn"].to_numpy().astype(np.int64))
    pairs = pl.DataFrame({"folio": folio, "vma": vma_of}).unique()
    multi = pairs.group_by("folio").agg(pl.col("vma")).filter(pl.col("vma").list.len() > 1)
    for group in multi["vma"].to_list():
        for other in group[1:]:
            a, b = find(group[0]), find(other)
            if a != b:
                parent[b] = a
    return [find(k) for k in range(len(vmas))]


# ---- frames -----------------------------------------------------------------------------------
def _frames(load: _Load, rows, anon_vma_of_row) -> _Frames:
    """One block per THP, one per run of small pages in a 2 MiB slot, allocated in order of the
    first mapping (process, address); the v5 counters the mappings imply."""
    row_pfn = _alloc_blocks(load.state, rows, anon_vma_of_row)
    captured = pl.DataFrame({"pfn": row_pfn.astype(np.uint64),
                             "captured_pfn": rows["pfn"]}).unique("pfn").sort("pfn")
    ptemaps, pmdmaps, compound = _set_counters(load.state, rows, row_pfn)
    return _Frames(row_pfn, captured, ptemaps, pmdmaps, compound)


def _alloc_blocks(st: MemoryState, rows, anon_vma_of_row) -> np.ndarray:
    """Allocate the blocks with their page flags; return the engine pfn of every row."""
    ids = {n: m.id for n, m in st.mms.items()}
    r = rows.with_columns(pl.Series("av", anon_vma_of_row),
                          pl.col("mm").replace_strict(ids, return_dtype=pl.Int64).alias("mm_id"),
                          pl.int_range(pl.len()).alias("row"))
    first = r.sort("mm_id", "vaddr")
    thp = (first.filter(pl.col("head_pfn").is_not_null())
           .group_by("head_pfn", maintain_order=True)
           .agg(pl.col("mm_id", "vaddr", "haddr", "av", "flags").first()))
    small = (first.filter(pl.col("head_pfn").is_null())
             .group_by("pfn", maintain_order=True)
             .agg(pl.col("mm_id", "vaddr", "haddr", "voff", "av", "flags").first())
             .sort("av", "haddr", "voff"))
    new_run = ((pl.col("av") != pl.col("av").shift()) | (pl.col("haddr") != pl.col("haddr").shift())
               | (pl.col("voff") != pl.col("voff").shift() + 1)).fill_null(True)
    runs = (small.with_columns(new_run.cum_sum().alias("run"))
            .group_by("run").agg(pl.col("mm_id", "vaddr").sort_by("mm_id", "vaddr").first(),
                                 pl.col("haddr", "av").first(), pl.col("voff").min().alias("lo"),
                                 pl.col("voff").max().alias("hi"), pl.col("pfn"),
                                 pl.col("flags")))
    specs = [((g["mm_id"], g["vaddr"]), 0, g) for g in thp.iter_rows(named=True)]
    specs += [((g["mm_id"], g["vaddr"]), 1, g) for g in runs.iter_rows(named=True)]
    specs.sort(key=lambda s: (s[0], s[1]))
    heads, head_blocks, spfns, sblocks = [], [], [], []
    for _, kind, g in specs:
        if kind == 0:
            b = st.alloc_block(int(g["av"]), int(g["haddr"]) >> PAGE_SHIFT)
            rec = st.blocks.a[b]
            rec["flags"][0] = (1 << PG_head) | int(_pg_flags(np.array([g["flags"]], np.uint64))[0])
            rec["flags"][1:] = 1 << PG_tail
            heads.append(g["head_pfn"])
            head_blocks.append(b)
        else:
            lo, hi = int(g["lo"]), int(g["hi"]) + 1
            b = st.alloc_block(int(g["av"]), int(g["haddr"]) >> PAGE_SHIFT, lo, hi)
            st.blocks.a[b]["flags"][lo:hi] = _pg_flags(np.array(g["flags"], np.uint64))
            spfns += g["pfn"]
            sblocks += [b] * len(g["pfn"])
    # engine pfn of every row: block * 512 + its offset (subpage i of a THP, or the page's
    # offset in its 2 MiB virtual slot)
    blk = pl.concat([pl.DataFrame({"key": pl.Series(heads, dtype=pl.UInt64),
                                   "blk": pl.Series(head_blocks, dtype=pl.Int64)}),
                     pl.DataFrame({"key": pl.Series(spfns, dtype=pl.UInt64),
                                   "blk": pl.Series(sblocks, dtype=pl.Int64)})])
    keyed = r.with_columns(pl.coalesce("head_pfn", "pfn").alias("key")).join(
        blk, on="key", how="left", maintain_order="left")
    return (keyed["blk"] * N + keyed["voff"]).to_numpy().astype(np.int64)


def _set_counters(st: MemoryState, rows, row_pfn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_mapcount``, ``compound_mapcount``, ``_count`` and the deferred queue as the mappings
    imply them; return ``(ptemaps, pmdmaps, compound)``."""
    a = st.blocks.a
    b, i = row_pfn // N, row_pfn % N
    pmd = rows["pmd"].to_numpy()
    nb = st.blocks.n
    ptemaps = np.bincount(row_pfn[~pmd], minlength=nb * N)[:nb * N].reshape(nb, N)
    pmdmaps = np.bincount(b[pmd & (i == 0)], minlength=nb)[:nb]
    compound = (a["flags"][:, 0] & (1 << PG_head)) != 0
    a["compound_mapcount"] = np.where(compound, pmdmaps - 1, -1)
    allocated = np.zeros((nb, N), bool)
    allocated[b, i] = True
    allocated[compound] = True
    # the offset on every subpage's raw _mapcount, as the variant has it (v5 while PMD-mapped; 4.5
    # while mapped by PMDs and PTEs at once, with PG_double_map on page[1])
    offset = np.empty(nb, np.int64)
    st.k.set_mapcount_offsets(a, 0, np.where(compound, pmdmaps, 0).astype(np.int64),
                              (ptemaps > 0).any(axis=1).astype(np.int64), offset)
    raw = ptemaps - 1 + offset[:, None]
    a["_mapcount"] = np.where(allocated, raw, -1)
    total = pmdmaps + ptemaps.sum(axis=1)
    a["_count"] = np.where(compound[:, None], 0, np.where(allocated, ptemaps, 0))
    a["_count"][compound, 0] = total[compound]
    # v5 queues a THP whenever a subpage's _mapcount drops to -1 (26/28): one partly unmapped
    a["deferred"] = compound & (pmdmaps == 0) & (ptemaps == 0).any(axis=1)
    return ptemaps, pmdmaps, compound


# ---- page tables ------------------------------------------------------------------------------
def _page_tables(load: _Load, rows, mms, fr: _Frames):
    """A huge PMD for each slot whose rows are PMD-mapped (the 512 pages of one THP, else
    refused), PTEs for the rest."""
    st = load.state
    pmd = rows["pmd"].to_numpy()
    write = rows["writable"].to_numpy()
    va = rows["vaddr"].to_numpy().astype(np.int64)
    haddr = va & ~(HPAGE_PMD_SIZE - 1)
    mm_col = rows["mm"].to_numpy()
    for name, mm in mms.items():
        sel = mm_col == name
        h, p, w, v, sp = haddr[sel], pmd[sel], write[sel], va[sel], fr.row_pfn[sel]
        for slot in np.unique(h).tolist():
            at = h == slot
            if p[at].any():
                if not (p[at].all() and at.sum() == N and (sp[at] % N == (v[at] - slot) >> 12).all()
                        and len(np.unique(sp[at] // N)) == 1 and fr.compound[sp[at][0] // N]):
                    load.bad(load.pm_file, "pmd", f"{name!r} 0x{slot:x}: pmd is set on "
                             f"{int(p[at].sum())} rows, expected the 512 pages of one THP")
                head = int(sp[at].min())
                st.set_huge_pmd(mm, slot, (head << PTE_PFN_SHIFT) | _ENTRY | _PAGE_PSE | (
                    _PAGE_RW if w[at].all() else 0))
            else:
                t = st.table_of(st.pmd_row(mm, slot, create=True))
                k = (v[at] - slot) >> PAGE_SHIFT
                st.ptes[t, k] = (sp[at].astype(np.uint64) << np.uint64(PTE_PFN_SHIFT)) | \
                    np.uint64(_ENTRY) | np.where(w[at], np.uint64(_PAGE_RW), np.uint64(0))


# ---- what the capture could not say -----------------------------------------------------------
def _check_consistent(load: _Load, rows, kpc, implied):
    """A simulator snapshot lists every process, so its mapcounts must be exactly the mappings
    its pagemap holds, and no refcount may be below the mapcount: otherwise the dataset is
    corrupt (exit 3), reported with the values tested. (A capture of live processes may see
    mappings of processes it did not capture: reported, not refused.)"""
    pfn = rows["pfn"].to_numpy()
    if load.ds.meta.get("vmstate.source", "simulator") == "simulator":
        for j in np.flatnonzero(kpc != implied)[:1]:
            raise CorruptState(
                f"{load.pages_file}: pfn 0x{int(pfn[j]):x}: mapcount={int(kpc[j])}, but "
                f"{int(implied[j])} entries of the pagemap map it [mapcount = PTE mappings + "
                f"PMD mappings of its THP]", pfn=int(pfn[j]), rule="mapcount = mappings")
    refc = rows["refcount"].to_numpy(allow_copy=True) if "refcount" in rows.columns else None
    if refc is not None and rows["refcount"].null_count() == 0:
        for j in np.flatnonzero(refc < kpc)[:1]:
            raise CorruptState(
                f"{load.pages_file}: pfn 0x{int(pfn[j]):x}: refcount={int(refc[j])} below "
                f"mapcount={int(kpc[j])} [page_count = total_mapcount + pins]",
                pfn=int(pfn[j]), rule="page_count >= mapcount")


def _report(load: _Load, rows, fr: _Frames):
    """``state.capture_report`` (and ``state.capture_pfn``), after the consistency check."""
    st = load.state
    b, i = fr.row_pfn // N, fr.row_pfn % N
    implied = fr.ptemaps[b, i] + fr.pmdmaps[b]
    kpc = rows["kpagecount"].to_numpy()
    _check_consistent(load, rows, kpc, implied)
    more = kpc > implied
    if more.any():
        load.notes.append(f"{int(more.sum())} mapped pages have a mapcount above the captured "
                          f"mappings (mapped by processes outside the capture): only the "
                          f"captured mappings are modelled")
    if (kpc < implied).any():
        load.notes.append(f"{int((kpc < implied).sum())} mapped pages have a mapcount below the "
                          f"captured mappings (the state changed during the capture)")
    refc = rows["refcount"]
    pins = "pins are invisible in /proc: refcounts are what the mappings imply; add them with " \
           "pin ops (op = \"pin\") before splitting"
    if refc.null_count() < rows.height:
        head_count = st._count[b, np.where(fr.compound[b], 0, i)]
        extra = refc.fill_null(0).to_numpy() > head_count
        pins = (f"the dataset's refcount exceeds what the mappings imply on {int(extra.sum())} "
                f"mapped pages (pins or transient references): not reconstructed; add pin ops")
    thps = int(fr.compound.sum())
    small = np.unique(fr.row_pfn[~fr.compound[b]]) if rows.height else []
    st.capture_report = {
        "path": str(load.ds.path), "source": load.ds.meta.get("vmstate.source", "simulator"),
        "processes": {n: len(m.vmas) for n, m in st.mms.items()},
        "thps": thps, "pmd_mapped": int(rows["pmd"].sum()) // N,
        "small_pages": len(small),
        "pins": pins, "notes": load.notes + load.ds.meta_json("vmstate.notes", []),
    }
    st.capture_pfn = fr.captured  # engine pfn -> captured pfn, per mapped page
