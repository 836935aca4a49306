"""Walking a process's page tables over a range (the debugfs ``split_huge_pages`` pid walk), and
where an rmap walk finds a THP's PTEs in one VMA.

An rmap walk entry (``vma_walk[v]``, built by :func:`vmstate.engine.huge_memory.rmap_arrays`) says
where VMA ``v`` maps the THP: ``__vma_address(head, vma)`` need not be PMD aligned after mremap, so
subpage ``i`` sits at PTE position ``p = vma_walk[v, WALK_SHIFT] + i`` (0..1023) counted from the
PMD slot of that address: in the table of PMD entry ``vma_walk[v, p >> 9]`` (row ``WALK_ROW0`` for
that slot, ``WALK_ROW1`` for the next; -1: the process has none there), at index ``p & 511``.
"""
from numba import njit

from vmstate.kernels.constants import HPAGE_PMD_NR, PG_head, PTE_PFN_MASK, PTE_PFN_SHIFT, _PAGE_PRESENT, _PAGE_PSE

WALK_ROW0, WALK_ROW1, WALK_SHIFT = 0, 1, 2


@njit(cache=True, inline="always")
def walk_table_row(pmds, row):
    """Whether PMD entry ``row`` points at a PTE table (present, not huge): ``mm_find_pmd()``."""
    return row >= 0 and pmds[row]["pmd"] & _PAGE_PRESENT and not pmds[row]["pmd"] & _PAGE_PSE


@njit(cache=True)
def follow_thps(rows, lo, hi, pmds, tables, blocks, seen, out):
    """The THPs mapped through PMD entries ``rows`` (address order), PTE slots ``[lo[r], hi[r])`` of
    each: like ``follow_page()`` on every address of the range, keeping each THP's block once, by
    its lowest mapping address. Returns how many were written to ``out``."""
    n = 0
    for r in range(rows.shape[0]):
        entry = pmds[rows[r]]["pmd"]
        if not entry & _PAGE_PRESENT:
            continue
        if entry & _PAGE_PSE:
            b = ((entry & PTE_PFN_MASK) >> PTE_PFN_SHIFT) // HPAGE_PMD_NR
            if not seen[b]:
                seen[b] = 1
                out[n] = b
                n += 1
            continue
        pte = tables[pmds[rows[r]]["pte_table"]]["pte"]
        for i in range(lo[r], hi[r]):
            e = pte[i]
            if not e & _PAGE_PRESENT:
                continue
            b = ((e & PTE_PFN_MASK) >> PTE_PFN_SHIFT) // HPAGE_PMD_NR
            if blocks[b]["flags"][0] & (1 << PG_head) and not seen[b]:
                seen[b] = 1
                out[n] = b
                n += 1
    return n
