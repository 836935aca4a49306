"""PTE-level page tables (``mm/memory.c``): ``zap_pte_range()`` and the ``zap_pmd_range()`` walk
over it, and fork's ``copy_pte_range()``.

A range of one process arrives as index arrays built by the wrapper: per 2 MiB slot ``r`` in address
order, the row of the process's PMD entry there (``rows[r]``, -1: none) and the PTE indices
``[lo[r], hi[r])`` of the slot inside the range.
"""
from numba import njit

from vmstate.kernels.constants import (
    HPAGE_PMD_NR, PTE_PFN_MASK, PTE_PFN_SHIFT, _PAGE_ACCESSED, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW,
)
from vmstate.kernels.per_variant import per_variant
from vmstate.kernels.pmd import split_huge_pmd, zap_huge_pmd
from vmstate.kernels.refcount import get_page, page_dup_rmap_pte, page_remove_rmap_pte, put_page

_NOT_RW = 0xFFFFFFFFFFFFFFFF ^ _PAGE_RW
_NOT_ACCESSED = 0xFFFFFFFFFFFFFFFF ^ _PAGE_ACCESSED


@njit(cache=True)
def zap_pte_range(pte, lo, hi, blocks, costs, events):
    """Mirror of ``zap_pte_range()`` over PTEs ``[lo, hi)`` of one table: clear each present entry and
    ``page_remove_rmap()`` its page; the TLB gather then ``put_page()``s them in the same order."""
    for i in range(lo, hi):
        e = pte[i]
        if e & _PAGE_PRESENT:
            pfn = (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT
            page_remove_rmap_pte(blocks[pfn // HPAGE_PMD_NR], pfn % HPAGE_PMD_NR, events)
    for i in range(lo, hi):  # tlb_flush_mmu() -> free_pages_and_swap_cache()
        e = pte[i]
        if e & _PAGE_PRESENT:
            pte[i] = 0
            pfn = (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT
            put_page(blocks, pfn // HPAGE_PMD_NR, pfn % HPAGE_PMD_NR, costs)


@per_variant()
def zap_pmd_range(rows, lo, hi, pmds, tables, blocks, costs, events):
    """Mirror of ``zap_pmd_range()``: a huge PMD wholly inside the range goes whole
    (``zap_huge_pmd()``); one the range covers in part is split first (``split_huge_pmd()``), then
    its PTEs in the range are zapped."""
    for r in range(rows.shape[0]):
        row = rows[r]
        if row < 0:
            continue
        if pmds[row]["pmd"] & _PAGE_PSE:
            if lo[r] == 0 and hi[r] == HPAGE_PMD_NR:
                zap_huge_pmd(pmds, row, blocks, costs, events)
                continue
            split_huge_pmd(pmds, tables, row, blocks, costs, events)
        if not pmds[row]["pmd"] & _PAGE_PRESENT:
            continue
        zap_pte_range(tables[pmds[row]["pte_table"]]["pte"], lo[r], hi[r], blocks, costs, events)


@njit(cache=True)
def copy_pte_range(src, dst, lo, hi, blocks):
    """Mirror of ``copy_pte_range()`` → ``copy_one_pte()`` for PTEs ``[lo, hi)`` of a private
    writable mapping: the parent's entry write-protected (``ptep_set_wrprotect``), the child's a
    copy made old (``pte_mkold``); ``get_page()`` + ``page_dup_rmap()``."""
    for i in range(lo, hi):
        e = src[i]
        if not e & _PAGE_PRESENT:
            continue
        e &= _NOT_RW
        src[i] = e
        dst[i] = e & _NOT_ACCESSED
        pfn = (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT
        b, j = pfn // HPAGE_PMD_NR, pfn % HPAGE_PMD_NR
        get_page(blocks, b, j)
        page_dup_rmap_pte(blocks[b], j)
