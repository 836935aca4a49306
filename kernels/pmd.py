"""Splitting a huge PMD into a PTE table (v5 ``mm/huge_memory.c:__split_huge_pmd_locked()``).

Kernels take the structured arrays themselves (``vmstate.dtypes``) and index one record at a time:
numba types a record's 512-entry field as a contiguous array, which the SIMD loops need (a 2-D
field view of the same memory is strided and ran ~7x slower, ``benchmarks/layout_bench.py``).
"""
from numba import njit, prange

from kernels.constants import (
    HPAGE_PMD_NR, PTE_PFN_MASK, PTE_PFN_SHIFT, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW,
    _PAGE_VMS_MIGRATION, C_PTE_WRITE, C_TLB_FLUSH, EV_THP_SPLIT_PMD,
)


@njit(cache=True)
def _split_huge_pmd_locked(pmds, tables, row, blocks, b, freeze, costs, events):
    """Mirror of v5 ``__split_huge_pmd_locked(vma, pmd, haddr, freeze)`` for PMD entry ``pmds[row]``
    mapping the THP in block ``b``; its ``pte_table`` must name a table (the deposited one)."""
    entry = pmds[row]["pmd"]
    pfn = (entry & PTE_PFN_MASK) >> PTE_PFN_SHIFT
    write = entry & _PAGE_RW
    young = entry & _PAGE_ACCESSED
    pte = tables[pmds[row]["pte_table"]]["pte"]
    for i in range(HPAGE_PMD_NR):
        e = (pfn + i) << PTE_PFN_SHIFT
        if freeze:
            e |= _PAGE_VMS_MIGRATION | write  # make_migration_entry(page + i, write)
        else:
            # mk_pte + maybe_mkwrite, pte_wrprotect unless write, pte_mkold unless young; v5 makes
            # every PTE dirty and does not carry soft-dirty.
            e |= _PAGE_PRESENT | _PAGE_DIRTY | write | young
        pte[i] = e
    page = blocks[b]
    page["compound_mapcount"] -= 1
    if page["compound_mapcount"] >= 0:  # !atomic_add_negative(-1, compound_mapcount_ptr(page))
        # Additional reference on subpages: the other PMD mappings keep the offset.
        mc = page["_mapcount"]
        for i in range(HPAGE_PMD_NR):
            mc[i] += 1
    # else the last compound mapping is gone: the offset becomes every subpage's PTE mapping.
    page["_count"][0] += HPAGE_PMD_NR - 1
    pmds[row]["pmd"] = _PAGE_PRESENT  # pmd_populate(): now points at the table
    events[EV_THP_SPLIT_PMD] += 1
    costs[C_TLB_FLUSH] += 1
    costs[C_PTE_WRITE] += HPAGE_PMD_NR


@njit(cache=True, parallel=True)
def populate_pte_tables(tables, t0, heads, bits, split, zap_lo, zap_hi):
    """The PTE tables of generated PMD mappings (``vmstate.population``): row ``r`` gets table
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
