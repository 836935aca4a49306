"""Walking a process's page tables over a range (the debugfs ``split_huge_pages`` pid walk)."""
from numba import njit

from vmstate.kernels.constants import HPAGE_PMD_NR, PG_head, PTE_PFN_MASK, PTE_PFN_SHIFT, _PAGE_PRESENT, _PAGE_PSE


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
