"""Freezing a THP's mappings into migration entries (``freeze_page()``); what the freeze does to the
counts and how ``unfreeze_page()`` restores the PTEs are the variant's
(:mod:`vmstate.kernels.per_variant`).

A THP's rmap walk arrives as index arrays built by the wrapper from the anon_vma interval query: the
VMAs ``v0 <= v < v1`` of the THP, each with where it maps the THP (``vma_walk[v]``, see
:mod:`vmstate.kernels.pagewalk`: the PMD rows of the two slots its pages may sit in after mremap,
and the PTE position of the head), the subpage range ``[vma_lo[v], vma_hi[v])`` the VMA covers and
whether it has ``VM_WRITE``.
"""
from vmstate.kernels.constants import (
    C_MMU_NOTIFIER, C_PMD_LOCK, C_PTE_LOCK, C_PTE_WRITE, C_TLB_FLUSH, HPAGE_PMD_NR, PTE_PFN_MASK,
    PTE_PFN_SHIFT, _PAGE_PRESENT, _PAGE_PSE,
)
from vmstate.kernels.pagewalk import WALK_SHIFT, walk_table_row
from vmstate.kernels.per_variant import (
    FREEZE_AT_VMA_ADDRESS, FREEZE_FROM_VM_START, FREEZE_STOPS_UNMAPPED, FREEZE_TO_VM_END,
    RMAP_WALK_STEPS_OVER_HOLES, folio_mapcount, freeze_pte, per_variant,
)
from vmstate.kernels.pmd import _split_huge_pmd_locked, mm_id_of


@per_variant()
def freeze_page_vma(w, b, lo, hi, pmds, tables, blocks, costs, events):
    """Mirror of ``freeze_page_vma(vma, page, address)``; ``w`` is the VMA's rmap walk entry. The
    seed walks all 512 PTEs of the table at ``__vma_address() & HPAGE_PMD_MASK`` as if the THP were
    mapped PMD aligned (``FREEZE_AT_VMA_ADDRESS`` off: after mremap it misses pages); 4.5 from the
    VMA's first subpage ``lo`` on (``FREEZE_FROM_VM_START``) at the real address, into the next
    table at the boundary ("thp: fix split_huge_page() after mremap() of THP"), returning where a
    table is missing; 6.18's page_vma_mapped_walk() stays inside the VMA and steps over missing
    tables (``RMAP_WALK_STEPS_OVER_HOLES``)."""
    # pgd/pud are present for every VMA of the tree (fork's copy_pmd_range allocates the child's
    # PMD page), and pmd_lock() is taken before the pmd_present() test: counted for a none PMD too.
    costs[C_PMD_LOCK] += 1
    s = w[WALK_SHIFT] if FREEZE_AT_VMA_ADDRESS else 0
    i = lo if FREEZE_FROM_VM_START else 0
    end = hi if FREEZE_TO_VM_END else HPAGE_PMD_NR
    head_pfn = b * HPAGE_PMD_NR
    row = w[(s + i) >> 9]
    if row >= 0 and pmds[row]["pmd"] & _PAGE_PSE:  # a PMD maps it: only at an aligned address
        if (pmds[row]["pmd"] & PTE_PFN_MASK) >> PTE_PFN_SHIFT == head_pfn:
            _split_huge_pmd_locked(pmds, tables, row, blocks, b, True, costs, events)
        return
    page = blocks[b]
    first = True
    while i < end:
        half = (s + i) >> 9
        stop = min(end, ((half + 1) << 9) - s)  # this table's last subpage + 1
        row = w[half]
        if not walk_table_row(pmds, row):
            if not RMAP_WALK_STEPS_OVER_HOLES:
                return  # 4.5: !pmd_present() / mm_find_pmd() == NULL
            i, first = stop, False
            continue
        costs[C_PTE_LOCK] += 1
        if first and s + i == HPAGE_PMD_NR and not RMAP_WALK_STEPS_OVER_HOLES:
            costs[C_PTE_LOCK] += 1  # 4.5 starts on the boundary: its crossing test relocks
        pte = tables[pmds[row]["pte_table"]]["pte"]
        mm_id = mm_id_of(pmds, row)
        for k in range(i, stop):
            j = (s + k) & (HPAGE_PMD_NR - 1)
            e = pte[j]
            if not e & _PAGE_PRESENT:
                continue
            if (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT != head_pfn + k:
                continue
            costs[C_TLB_FLUSH] += 1  # ptep_clear_flush()
            pte[j] = freeze_pte(page, k, e, mm_id, events)  # the migration entry
            costs[C_PTE_WRITE] += 1
        i, first = stop, False


@per_variant()
def freeze_page(b, v0, v1, vma_walk, vma_lo, vma_hi, pmds, tables, blocks, costs, events):
    """Mirror of ``freeze_page(anon_vma, page)``: one mmu-notifier range per VMA."""
    for v in range(v0, v1):
        costs[C_MMU_NOTIFIER] += 1
        freeze_page_vma(vma_walk[v], b, vma_lo[v], vma_hi[v], pmds, tables, blocks, costs, events)
        if FREEZE_STOPS_UNMAPPED and folio_mapcount(blocks[b]) == 0:
            break
