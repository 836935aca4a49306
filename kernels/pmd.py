"""Splitting a huge PMD into a PTE table (v5 ``mm/huge_memory.c:__split_huge_pmd_locked()``).

Kernels take the structured arrays themselves (``vmstate.engine.dtypes``) and index one record at a time:
numba types a record's 512-entry field as a contiguous array, which the SIMD loops need (a 2-D
field view of the same memory is strided and ran ~7x slower, ``benchmarks/layout_bench.py``).
"""
from numba import njit, prange

from vmstate.kernels.constants import (
    HPAGE_PMD_NR, PG_dirty, PG_double_map, PTE_PFN_MASK, PTE_PFN_SHIFT, V4_5, V5, _PAGE_ACCESSED, _PAGE_DIRTY,
    _PAGE_PRESENT, _PAGE_RW, _PAGE_VMS_MIGRATION, C_PTE_WRITE, C_TLB_FLUSH, EV_THP_SPLIT_PMD,
)
from vmstate.kernels.refcount import page_remove_rmap_pte

_DOUBLE_MAP = 1 << PG_double_map
_NOT_DOUBLE_MAP = 0xFFFFFFFF ^ _DOUBLE_MAP


@njit(cache=True)
def _split_huge_pmd_locked(pmds, tables, row, blocks, b, freeze, costs, events, variant=V5):
    """Mirror of ``__split_huge_pmd_locked(vma, pmd, haddr, freeze)`` for PMD entry ``pmds[row]``
    mapping the THP in block ``b``; ``pte_table`` must name a table (the deposited one).
    v5 (patch 25/28's series) or mainline 4.5 arithmetic by ``variant``."""
    entry = pmds[row]["pmd"]
    pfn = (entry & PTE_PFN_MASK) >> PTE_PFN_SHIFT
    write = entry & _PAGE_RW
    young = entry & _PAGE_ACCESSED
    pte = tables[pmds[row]["pte_table"]]["pte"]
    # v5 makes every PTE dirty; 4.5 leaves them clean and marks the page dirty (PG_dirty is per
    # THP, on the head) when the PMD was ("mm: don't split THP page when MADV_FREE ...").
    dirty = _PAGE_DIRTY if variant != V4_5 else 0
    for i in range(HPAGE_PMD_NR):
        e = (pfn + i) << PTE_PFN_SHIFT
        if freeze:
            e |= _PAGE_VMS_MIGRATION | write  # make_migration_entry(page + i, write)
        else:
            # mk_pte + maybe_mkwrite, pte_wrprotect unless write, pte_mkold unless young; soft-dirty
            # is not carried.
            e |= _PAGE_PRESENT | dirty | write | young
        pte[i] = e
    page = blocks[b]
    if variant == V4_5 and entry & _PAGE_DIRTY:
        page["flags"][0] |= 1 << PG_dirty  # SetPageDirty(page + i)
    if variant == V4_5:
        _split_pmd_counts_v4_5(page, freeze, events)
    else:
        _split_pmd_counts_v5(page)
    pmds[row]["pmd"] = _PAGE_PRESENT  # pmd_populate(): now points at the table
    events[EV_THP_SPLIT_PMD] += 1
    costs[C_TLB_FLUSH] += 1
    costs[C_PTE_WRITE] += HPAGE_PMD_NR


@njit(cache=True, inline="always")
def _split_pmd_counts_v5(page):
    """v5: the PMD's reference becomes 512 PTE references; its compound mapping goes, and every
    subpage gains a PTE mapping unless this was the last PMD (whose offset becomes it)."""
    page["compound_mapcount"] -= 1
    if page["compound_mapcount"] >= 0:  # !atomic_add_negative(-1, compound_mapcount_ptr(page))
        # Additional reference on subpages: the other PMD mappings keep the offset.
        mc = page["_mapcount"]
        for i in range(HPAGE_PMD_NR):
            mc[i] += 1
    # else the last compound mapping is gone: the offset becomes every subpage's PTE mapping.
    page["_count"][0] += HPAGE_PMD_NR - 1


@njit(cache=True, inline="always")
def _split_pmd_counts_v4_5(page, freeze, events):
    """Mainline 4.5: page_ref_add(page, 511) and atomic_inc(&page[i]._mapcount) per PTE; set
    PG_double_map (one more +1 each) while other PMDs still map the THP; the last compound mapping
    clears it again. A freeze then drops each new PTE's mapping and reference (migration entries
    hold neither): page_remove_rmap(page + i, false) + put_page(page + i)."""
    mc = page["_mapcount"]
    flags = page["flags"]
    page["_count"][0] += HPAGE_PMD_NR - 1
    for i in range(HPAGE_PMD_NR):
        mc[i] += 1
    if page["compound_mapcount"] + 1 > 1 and not flags[1] & _DOUBLE_MAP:  # !TestSetPageDoubleMap
        flags[1] |= _DOUBLE_MAP
        for i in range(HPAGE_PMD_NR):
            mc[i] += 1
    page["compound_mapcount"] -= 1
    if page["compound_mapcount"] < 0 and flags[1] & _DOUBLE_MAP:  # last one; TestClearPageDoubleMap
        flags[1] &= _NOT_DOUBLE_MAP
        for i in range(HPAGE_PMD_NR):
            mc[i] -= 1
    if freeze:
        for i in range(HPAGE_PMD_NR):
            page_remove_rmap_pte(page, i, events)
        page["_count"][0] -= HPAGE_PMD_NR  # put_page(page + i), each to the head


@njit(cache=True, parallel=True)
def populate_pte_tables(tables, t0, heads, bits, split, zap_lo, zap_hi):
    """The PTE tables of generated PMD mappings (``vmstate.engine.population``): row ``r`` gets table
    ``t0 + r``, zeroed (``pte_alloc_one()``: the table deposited under a huge PMD) or, where
    ``split[r]``, the 512 entries ``__split_huge_pmd_locked()`` writes for the THP at pfn
    ``heads[r]`` (``bits[r]``: present, dirty, and the PMD's write and young), with PTEs
    ``[zap_lo[r], zap_hi[r])`` zapped again."""
    for r in prange(heads.shape[0]):
        pte = tables[t0 + r]["pte"]
        if split[r]:
            for i in range(HPAGE_PMD_NR):
                pte[i] = ((heads[r] + i) << PTE_PFN_SHIFT) | bits[r]
            for i in range(zap_lo[r], zap_hi[r]):
                pte[i] = 0
        else:
            for i in range(HPAGE_PMD_NR):
                pte[i] = 0
