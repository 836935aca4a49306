"""Freezing a THP's mappings into migration entries (``freeze_page()``); what the freeze does to the
counts and how ``unfreeze_page()`` restores the PTEs are the variant's
(:mod:`vmstate.kernels.per_variant`).

A THP's rmap walk arrives as index arrays built by the wrapper from the anon_vma interval query: the
VMAs ``v0 <= v < v1`` of the THP, each with the row of its process's PMD entry at the THP's ``haddr``
(``-1``: no page table there), the subpage range ``[vma_lo[v], vma_hi[v])`` the VMA covers and
whether it has ``VM_WRITE``.
"""
from vmstate.kernels.constants import (
    C_MMU_NOTIFIER, C_PMD_LOCK, C_PTE_LOCK, C_PTE_WRITE, C_TLB_FLUSH, HPAGE_PMD_NR, PTE_PFN_MASK,
    PTE_PFN_SHIFT, _PAGE_PRESENT, _PAGE_PSE,
)
from vmstate.kernels.per_variant import (
    FREEZE_FROM_VM_START, FREEZE_STOPS_UNMAPPED, FREEZE_TO_VM_END, folio_mapcount, freeze_pte,
    per_variant,
)
from vmstate.kernels.pmd import _split_huge_pmd_locked, mm_id_of


@per_variant()
def freeze_page_vma(row, b, lo, hi, pmds, tables, blocks, costs, events):
    """Mirror of ``freeze_page_vma(vma, page, haddr)``; ``row`` is the PMD entry at haddr. The seed
    walks all 512 PTEs of the table; 4.5 from the VMA's first subpage ``lo`` on
    (``FREEZE_FROM_VM_START``)."""
    # pgd/pud are present for every VMA of the tree (fork's copy_pmd_range allocates the child's
    # PMD page), and pmd_lock() is taken before the pmd_present() test: counted for a none PMD too.
    costs[C_PMD_LOCK] += 1
    if row < 0:
        return
    head_pfn = b * HPAGE_PMD_NR
    entry = pmds[row]["pmd"]
    if not entry & _PAGE_PRESENT:
        return
    if entry & _PAGE_PSE:
        if (entry & PTE_PFN_MASK) >> PTE_PFN_SHIFT == head_pfn:
            _split_huge_pmd_locked(pmds, tables, row, blocks, b, True, costs, events)
        return
    costs[C_PTE_LOCK] += 1
    pte = tables[pmds[row]["pte_table"]]["pte"]
    page = blocks[b]
    mm_id = mm_id_of(pmds, row)
    for i in range(lo if FREEZE_FROM_VM_START else 0, hi if FREEZE_TO_VM_END else HPAGE_PMD_NR):
        e = pte[i]
        if not e & _PAGE_PRESENT:
            continue
        if (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT != head_pfn + i:
            continue
        costs[C_TLB_FLUSH] += 1  # ptep_clear_flush()
        pte[i] = freeze_pte(page, i, e, mm_id, events)  # the migration entry
        costs[C_PTE_WRITE] += 1


@per_variant()
def freeze_page(b, v0, v1, vma_pmd_row, vma_lo, vma_hi, pmds, tables, blocks, costs, events):
    """Mirror of ``freeze_page(anon_vma, page)``: one mmu-notifier range per VMA."""
    for v in range(v0, v1):
        costs[C_MMU_NOTIFIER] += 1
        freeze_page_vma(vma_pmd_row[v], b, vma_lo[v], vma_hi[v], pmds, tables, blocks, costs, events)
        if FREEZE_STOPS_UNMAPPED and folio_mapcount(blocks[b]) == 0:
            break
