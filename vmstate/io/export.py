"""The state dataset of ``../shared/spec/SCENARIOS.md``: ``pages`` and ``pagemap`` as polars frames.

``flags`` uses the ``/proc/kpageflags`` bit layout (``include/uapi/linux/kernel-page-flags.h``),
translated from the PG_* bits; ``mapcount`` is what ``/proc/kpagecount`` reports.

The shared zero page (pfn ``ZERO_PFN``, 6.18's zero-page remap of a split) is written as the running
kernel shows it (measured on Linux 6.18.44, ``vmstate capture``): each PTE mapping it is a pagemap row
with ``present`` true, ``writable`` false (pagemap bit 56, "mapped exclusively", is clear), ``pmd``
false; and while any PTE maps it, ``pages`` has one row for it with ``flags`` KPF_ZERO_PAGE |
KPF_RESERVED, ``mapcount`` 0 (kpagecount of the zero page), ``refcount`` null (not refcounted in the
model; /proc has none) and no ``head_pfn``.
"""
import numpy as np
import polars as pl


from vmstate.kernels.constants import (
    HPAGE_PMD_NR, PG_active, PG_dirty, PG_error, PG_head, PG_hwpoison, PG_locked, PG_lru,
    PG_mlocked, PG_reclaim, PG_referenced, PG_slab, PG_swapbacked, PG_swapcache, PG_tail,
    PG_unevictable, PG_uptodate, PG_writeback, PTE_PFN_MASK, PTE_PFN_SHIFT, ZERO_PFN,
    _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_VMS_MIGRATION,
)

N = HPAGE_PMD_NR

KPF_LOCKED, KPF_ERROR, KPF_REFERENCED, KPF_UPTODATE, KPF_DIRTY, KPF_LRU, KPF_ACTIVE, KPF_SLAB = range(8)
KPF_WRITEBACK, KPF_RECLAIM, KPF_BUDDY, KPF_MMAP, KPF_ANON, KPF_SWAPCACHE, KPF_SWAPBACKED = range(8, 15)
KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_HUGE, KPF_UNEVICTABLE, KPF_HWPOISON = range(15, 20)
KPF_NOPAGE, KPF_KSM, KPF_THP = 20, 21, 22
KPF_ZERO_PAGE, KPF_RESERVED = 24, 32
KPF_MLOCKED = 33
# /proc/kpageflags of the shared zero page (fs/proc/page.c: is_zero_pfn(), PageReserved)
ZERO_PAGE_KPF = (1 << KPF_ZERO_PAGE) | (1 << KPF_RESERVED)

# (PG bit, KPF bit) copied straight from the page's own flags (fs/proc/page.c:stable_page_flags).
PG_TO_KPF = [(PG_locked, KPF_LOCKED), (PG_error, KPF_ERROR), (PG_referenced, KPF_REFERENCED),
           (PG_uptodate, KPF_UPTODATE), (PG_dirty, KPF_DIRTY), (PG_lru, KPF_LRU),
           (PG_active, KPF_ACTIVE), (PG_slab, KPF_SLAB), (PG_writeback, KPF_WRITEBACK),
           (PG_reclaim, KPF_RECLAIM), (PG_swapcache, KPF_SWAPCACHE),
           (PG_swapbacked, KPF_SWAPBACKED), (PG_head, KPF_COMPOUND_HEAD),
           (PG_tail, KPF_COMPOUND_TAIL), (PG_unevictable, KPF_UNEVICTABLE),
           (PG_hwpoison, KPF_HWPOISON), (PG_mlocked, KPF_MLOCKED)]

PAGES_SCHEMA = {"pfn": pl.UInt64, "flags": pl.UInt64, "mapcount": pl.Int64, "refcount": pl.Int64,
                "head_pfn": pl.UInt64}
PAGEMAP_SCHEMA = {"mm": pl.String, "vaddr": pl.UInt64, "pfn": pl.UInt64, "present": pl.Boolean,
                  "migration": pl.Boolean, "writable": pl.Boolean, "pmd": pl.Boolean}


def page_columns(state):
    """Per allocated frame: pfn, kpageflags, kpagecount mapcount, page_count, head pfn (-1: none)."""
    a = state.blocks.a
    pfn = state.allocated_pfns()
    b, i = pfn // N, pfn % N
    flags = a["flags"][b, i].astype(np.uint64)
    head_flags = a["flags"][b, 0]
    thp = ((head_flags & (1 << PG_head)) != 0) & ((i == 0) | ((flags & (1 << PG_tail)) != 0))
    cmc = np.where(thp, a["compound_mapcount"][b] + 1, 0)
    offset = state.mapcount_offsets()
    raw = a["_mapcount"][b, i].astype(np.int64)
    # page_mapcount() = raw + 1 + compound_mapcount - offset (v5's PMD offset or 4.5's double map)
    mapcount = raw + 1 + cmc - np.where(thp, offset[b], 0)
    total = np.zeros(len(pfn), np.int64)
    if thp.any():
        cmc_b = a["compound_mapcount"].astype(np.int64) + 1
        per_thp = a["_mapcount"].astype(np.int64).sum(axis=1) + N + cmc_b - N * offset
        total = np.where(thp, per_thp[b], 0)
    refcount = np.where(thp, a["_count"][b, 0], a["_count"][b, i]).astype(np.int64)
    mapping, _ = state.page_mapping_index()
    anon = np.where(thp, a["mapping"][b] >= 0, mapping[b, i] >= 0) & (refcount > 0)
    kpf = np.zeros(len(pfn), np.uint64)
    for pg, kp in PG_TO_KPF:
        kpf |= ((flags >> np.uint64(pg)) & np.uint64(1)) << np.uint64(kp)
    mapped = np.where(thp, total > 0, mapcount > 0)
    kpf |= mapped.astype(np.uint64) << np.uint64(KPF_MMAP)
    kpf |= anon.astype(np.uint64) << np.uint64(KPF_ANON)
    kpf |= thp.astype(np.uint64) << np.uint64(KPF_THP)
    head = np.where(thp, b * N, -1)
    return pfn, kpf, mapcount, refcount, head


def pages_frame(state) -> pl.DataFrame:
    pfn, kpf, mapcount, refcount, head = page_columns(state)
    frame = pl.DataFrame({
        "pfn": pfn.astype(np.uint64), "flags": kpf, "mapcount": mapcount, "refcount": refcount,
        "head_pfn": pl.Series(head.astype(np.uint64)).set(pl.Series(head < 0), None),
    }, schema=PAGES_SCHEMA)
    if zero_page_mapped(state):
        zero = pl.DataFrame({"pfn": [ZERO_PFN], "flags": [ZERO_PAGE_KPF], "mapcount": [0],
                             "refcount": [None], "head_pfn": [None]}, schema=PAGES_SCHEMA)
        frame = pl.concat([zero, frame]).sort("pfn")
    return frame


def zero_page_mapped(state) -> bool:
    """Whether a PTE of a live process maps the shared zero page (pfn ``ZERO_PFN``)."""
    tables = []
    for mm in state.mms.values():
        if not mm.alive or not len(mm.rows):
            continue
        entries = np.asarray(state.pmd)[np.asarray(mm.rows)].astype(np.uint64)
        table = (entries & np.uint64(_PAGE_PRESENT)) != 0
        table &= (entries & np.uint64(_PAGE_PSE)) == 0
        tables.append(np.asarray(state.pte_table)[np.asarray(mm.rows)[table]])
    if not tables:
        return False
    ids = np.unique(np.concatenate(tables)).astype(np.int64)
    ids = ids[ids >= 0]
    if not len(ids):
        return False
    e = state.ptes[ids]
    return bool((((e & np.uint64(_PAGE_PRESENT)) != 0)
                 & (((e & np.uint64(PTE_PFN_MASK)) >> np.uint64(PTE_PFN_SHIFT)) == ZERO_PFN)).any())


def pagemap_frame(state) -> pl.DataFrame:
    """One row per mapped 4 KiB virtual page of each live process, by process then address."""
    parts = []
    for mm in sorted((m for m in state.mms.values() if m.alive), key=lambda m: m.id):
        for haddr, row in zip(mm.haddrs.tolist(), mm.rows.tolist()):
            entry = int(state.pmd[row])
            if entry & _PAGE_PSE:
                k = np.arange(N, dtype=np.uint64)
                head = (entry & PTE_PFN_MASK) >> PTE_PFN_SHIFT
                parts.append((mm.name, haddr + (k << np.uint64(12)), head + k,
                              np.full(N, entry, np.uint64), True))
            elif entry & _PAGE_PRESENT:
                table = state.ptes[int(state.pte_table[row])]
                k = np.flatnonzero(table).astype(np.uint64)
                if len(k):
                    e = table[k]
                    parts.append((mm.name, haddr + (k << np.uint64(12)),
                                  (e & np.uint64(PTE_PFN_MASK)) >> np.uint64(PTE_PFN_SHIFT), e, False))
    if not parts:
        return pl.DataFrame(schema=PAGEMAP_SCHEMA)
    mm = np.concatenate([np.full(len(p[1]), p[0], object) for p in parts])
    e = np.concatenate([p[3] for p in parts])
    return pl.DataFrame({
        "mm": mm.tolist(),
        "vaddr": np.concatenate([p[1] for p in parts]),
        "pfn": np.concatenate([np.asarray(p[2], np.uint64) for p in parts]),
        "present": (e & np.uint64(_PAGE_PRESENT)) != 0,
        "migration": (e & np.uint64(_PAGE_VMS_MIGRATION)) != 0,
        "writable": (e & np.uint64(_PAGE_RW)) != 0,
        "pmd": np.concatenate([np.full(len(p[1]), p[4]) for p in parts]),
    }, schema=PAGEMAP_SCHEMA)
