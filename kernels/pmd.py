"""Splitting a huge PMD into a PTE table (v5 ``mm/huge_memory.c:__split_huge_pmd_locked()``)."""
from numba import njit

from kernels.constants import (
    HPAGE_PMD_NR, PTE_PFN_MASK, PTE_PFN_SHIFT, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW,
    _PAGE_VMS_MIGRATION, C_PTE_WRITE, C_TLB_FLUSH, EV_THP_SPLIT_PMD,
)


@njit(cache=True)
def _split_huge_pmd_locked(pmd, pte_table, ptes, row, _count, _mapcount, compound_mapcount, b,
                           freeze, costs, events):
    """Mirror of v5 ``__split_huge_pmd_locked(vma, pmd, haddr, freeze)`` for PMD entry ``pmd[row]``.

    ``pte_table[row]`` must already name a table in ``ptes`` (the kernel withdraws the deposited one).
    ``_count``/``_mapcount`` are the THP's 512-entry rows, ``compound_mapcount[b]`` its raw count.
    """
    entry = pmd[row]
    pfn = (entry & PTE_PFN_MASK) >> PTE_PFN_SHIFT
    write = entry & _PAGE_RW
    young = entry & _PAGE_ACCESSED
    t = pte_table[row]
    for i in range(HPAGE_PMD_NR):
        e = (pfn + i) << PTE_PFN_SHIFT
        if freeze:
            # make_migration_entry(page + i, write)
            e |= _PAGE_VMS_MIGRATION | write
        else:
            # mk_pte + maybe_mkwrite, pte_wrprotect unless write, pte_mkold unless young; v5 makes
            # every PTE dirty and does not carry soft-dirty.
            e |= _PAGE_PRESENT | _PAGE_DIRTY | write | young
        ptes[t, i] = e
    compound_mapcount[b] -= 1
    if compound_mapcount[b] >= 0:  # !atomic_add_negative(-1, compound_mapcount_ptr(page))
        # Additional reference on subpages: the other PMD mappings keep the offset.
        for i in range(HPAGE_PMD_NR):
            _mapcount[i] += 1
    # else the last compound mapping is gone: the offset becomes every subpage's PTE mapping.
    _count[0] += HPAGE_PMD_NR - 1
    pmd[row] = _PAGE_PRESENT  # pmd_populate(): now points at the table
    events[EV_THP_SPLIT_PMD] += 1
    costs[C_TLB_FLUSH] += 1
    costs[C_PTE_WRITE] += HPAGE_PMD_NR
