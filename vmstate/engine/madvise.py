"""``madvise()``, as in ``mm/madvise.c``: MADV_DONTNEED, and 6.18's MADV_COLD and MADV_PAGEOUT."""
from __future__ import annotations

import numpy as np

from vmstate.engine.checks import check_range, live_mm, require_mapped, vmas_in
from vmstate.engine.huge_memory import split_thps
from vmstate.engine.memory import slots, zap_page_range
from vmstate.errors import BadInput
from vmstate.kernels.constants import (
    EV_MTHP_SWPOUT_FALLBACK, EV_THP_SWPOUT_FALLBACK, HPAGE_PMD_NR, SPLIT_OK, _PAGE_PRESENT, _PAGE_PSE,
)

ADVICE = {"madvise_cold": "MADV_COLD", "madvise_pageout": "MADV_PAGEOUT"}


def madvise_dontneed(state, mm, addr, length):
    """``madvise(MADV_DONTNEED)`` → ``zap_page_range()`` per VMA; the VMAs stay."""
    m = live_mm(state, mm)
    end = check_range(addr, length)
    require_mapped(m, addr, end)
    for vma in vmas_in(m, addr, end):
        start, stop = max(addr, vma.vm_start), min(end, vma.vm_end)
        zap_page_range(state, m, start, stop)
        if state.k.PT_RECLAIM:
            reclaim_pt(state, m, start, stop)


def reclaim_pt(state, mm, start, end):
    """``mm/pt_reclaim.c`` as ``zap_pte_range()`` uses it for MADV_DONTNEED (CONFIG_PT_RECLAIM,
    6.18): a PTE table whose whole 2 MiB the zap covered (``reclaim_pt_is_enabled()``) holds only
    none entries now (``try_to_free_pte()``): it is freed and the PMD is none again."""
    haddr, lo, hi = slots(start, end)
    rows = mm.lookup_pmds(haddr[(lo == 0) & (hi == HPAGE_PMD_NR)])
    rows = rows[rows >= 0]
    rows = rows[(state.pmd[rows] & np.uint64(_PAGE_PRESENT | _PAGE_PSE)) == _PAGE_PRESENT]
    state.pmd[rows] = 0
    state.pte_table[rows] = -1


def madvise_cold(state, mm, addr, length):
    """``madvise(MADV_COLD)``: :func:`madvise_cold_or_pageout`."""
    madvise_cold_or_pageout(state, mm, addr, length, pageout=False)


def madvise_pageout(state, mm, addr, length):
    """``madvise(MADV_PAGEOUT)``: :func:`madvise_cold_or_pageout`."""
    madvise_cold_or_pageout(state, mm, addr, length, pageout=True)


def madvise_cold_or_pageout(state, mm, addr, length, *, pageout):
    """``madvise_cold_or_pageout_pte_range()`` over each VMA's part of the range (the variant's
    kernels of :mod:`vmstate.kernels.madvise`): the large folios the range covers in part are
    split unless possibly mapped by another process; with ``pageout``, reclaim without swap splits
    each exclusive large folio it gets whole (``thp_swpout_fallback``) unless an extra reference
    keeps it (``can_split_folio()``), and every page stays mapped."""
    op = "madvise_pageout" if pageout else "madvise_cold"
    if not state.k.MADV_COLD_PAGEOUT:
        raise BadInput(f"op '{op}' does not exist in variant {state.variant!r} ({ADVICE[op]} is "
                       f"Linux 5.4+; use variant '6.18')", field="op")
    m = live_mm(state, mm)
    end = check_range(addr, length)
    require_mapped(m, addr, end)
    for vma in vmas_in(m, addr, end):
        haddr, lo, hi = slots(max(addr, vma.vm_start), min(end, vma.vm_end))
        rows = m.lookup_pmds(haddr)
        cap = len(rows) * HPAGE_PMD_NR
        split, reclaim = np.empty(cap, np.int64), np.empty(cap, np.int64)
        ns, nr = state.k.madvise_cold_candidates(rows, lo, hi, state.pmds.a, state.tables.a,
                                                 state.blocks.a, pageout, split, reclaim)
        if ns:
            # each batch of a large folio covered in part asks for its split_folio(): one that
            # fails (an extra reference: can_split_folio(), before any unmap) fails again, counted
            # again, at the folio's next batch in this VMA
            blocks, again = np.unique(split[:ns], return_counts=True)
            first = _once(split[:ns])
            res = split_thps(state, first)
            again = again[np.searchsorted(blocks, first)] - 1
            failed = (res.reason != SPLIT_OK) & (again > 0)
            if failed.any():
                state.cost_counters += (res.costs[failed] * again[failed, None]).sum(axis=0)
                state.events += (res.events[failed] * again[failed, None]).sum(axis=0)
        if nr:
            shrink_folio_list(state, _once(reclaim[:nr]))
        state.k.madvise_cold_apply(rows, lo, hi, state.pmds.a, state.tables.a, state.blocks.a,
                                   pageout)


def _once(blocks):
    """Each block once, in first-seen order."""
    _, first = np.unique(blocks, return_index=True)
    return blocks[np.sort(first)]


def shrink_folio_list(state, thps):
    """``reclaim_pages()`` → ``shrink_folio_list()`` of large folios with no swap to go to: one that
    ``can_split_folio(folio, 1)`` refuses (a reference besides its mappings and reclaim's own)
    is activated; a partially mapped one is split first (``split_folio_to_list()``); any other
    fails ``folio_alloc_swap()`` and is split, counting ``thp_swpout_fallback`` and mthp
    ``swpout_fallback``. The small folios left are activated, still mapped."""
    ok = np.empty(len(thps), np.bool_)
    # the isolation's reference is reclaim's own (not modelled): no other pin than that
    state.k.can_split_folios(state.blocks.a, thps, 0, ok)
    thps = thps[ok]
    if not len(thps):
        return
    partially = state.blocks.a["partially_mapped"][thps] != 0
    res = split_thps(state, thps)
    fallback = int(((res.reason == SPLIT_OK) & ~partially).sum())
    state.events[EV_THP_SWPOUT_FALLBACK] += fallback
    state.events[EV_MTHP_SWPOUT_FALLBACK] += fallback
