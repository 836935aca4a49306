"""Freezing a THP's mappings into migration entries and back (``freeze_page()``/``unfreeze_page()``).

A THP's rmap walk arrives as index arrays built by the wrapper from the anon_vma interval query: the
VMAs ``v0 <= v < v1`` of the THP, each with the row of its process's PMD entry at the THP's ``haddr``
(``-1``: no page table there), the subpage range ``[vma_lo[v], vma_hi[v])`` the VMA covers and
whether it has ``VM_WRITE``. ``variant``: v5 (the seed, patch 25/28) or mainline 4.5, whose
freeze drops each mapping's count and reference and whose unfreeze takes them back, per VMA.
"""
from numba import njit

from vmstate.kernels.constants import (
    HPAGE_PMD_NR, PG_dirty, PG_head, PTE_PFN_MASK, PTE_PFN_SHIFT, V4_5, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE,
    _PAGE_RW, _PAGE_SOFT_DIRTY, _PAGE_VMS_MIGRATION, C_MMU_NOTIFIER, C_PMD_LOCK, C_PTE_LOCK,
    C_PTE_WRITE, C_TLB_FLUSH,
)
from vmstate.kernels.mapcount import mapcount_offset, page_mapcount
from vmstate.kernels.pmd import _split_huge_pmd_locked
from vmstate.kernels.refcount import page_remove_rmap_pte


@njit(cache=True)
def freeze_page_vma(row, b, lo, pmds, tables, blocks, costs, events, variant):
    """Mirror of ``freeze_page_vma(vma, page, haddr)``; ``row`` is the PMD entry at haddr. The seed
    walks all 512 PTEs of the table; 4.5 from the VMA's first subpage ``lo`` on."""
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
            _split_huge_pmd_locked(pmds, tables, row, blocks, b, True, costs, events, variant)
        return
    costs[C_PTE_LOCK] += 1
    pte = tables[pmds[row]["pte_table"]]["pte"]
    page = blocks[b]
    # the seed walks all 512 PTEs; 4.5 skips to vm_start (``if (address < vma->vm_start)``) and
    # does not stop at vm_end
    start = lo if variant == V4_5 else 0
    for i in range(start, HPAGE_PMD_NR):
        e = pte[i]
        if not e & _PAGE_PRESENT:
            continue
        if (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT != head_pfn + i:
            continue
        costs[C_TLB_FLUSH] += 1  # ptep_clear_flush()
        # make_migration_entry(page, pte_write(entry)), soft-dirty carried to the swap pte
        pte[i] = (e & (PTE_PFN_MASK | _PAGE_RW | _PAGE_SOFT_DIRTY)) | _PAGE_VMS_MIGRATION
        costs[C_PTE_WRITE] += 1
        if variant == V4_5:
            if e & _PAGE_DIRTY:
                page["flags"][0] |= 1 << PG_dirty  # SetPageDirty(page): PF_HEAD, the head's flag
            page_remove_rmap_pte(page, i, events)  # page_remove_rmap(page, false)
            page["_count"][0] -= 1                 # put_page(page): to the head


@njit(cache=True)
def freeze_page(b, v0, v1, vma_pmd_row, vma_lo, vma_hi, pmds, tables, blocks, costs, events,
                variant):
    """Mirror of ``freeze_page(anon_vma, page)``: one mmu-notifier range per VMA."""
    for v in range(v0, v1):
        costs[C_MMU_NOTIFIER] += 1
        freeze_page_vma(vma_pmd_row[v], b, vma_lo[v], pmds, tables, blocks, costs, events, variant)


@njit(cache=True, inline="always")
def unfreeze_page_vma(pte, writable, pfn, i, costs):
    """Mirror of the seed's ``unfreeze_page_vma(vma, page, address)`` for subpage ``i``, given the
    PTE table the process has at the THP's slot (the caller did ``mm_find_pmd()``)."""
    costs[C_PTE_LOCK] += 1
    e = pte[i]
    if not e & _PAGE_VMS_MIGRATION:  # !is_swap_pte || !is_migration_entry
        return
    if (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT != pfn:
        return
    # pte_mkold(mk_pte(page, vma->vm_page_prot)); maybe_mkwrite() for a write migration entry
    new = (pfn << PTE_PFN_SHIFT) | _PAGE_PRESENT
    if e & _PAGE_RW and writable:
        new |= _PAGE_RW
    pte[i] = new
    costs[C_PTE_WRITE] += 1


@njit(cache=True)
def unfreeze_page(b, v0, v1, vma_pmd_row, vma_lo, vma_hi, vma_write, pmds, tables, blocks, costs,
                  variant):
    """Mirror of ``unfreeze_page(anon_vma, page)``.

    The seed: per mapped subpage, per VMA mapping it, one mmu-notifier range and one PTE lock (the
    review asks why this is not batched). The C loops subpage-major (``for i:
    anon_vma_interval_tree_foreach(pgoff + i)``); this loops VMA-major so the PMD lookup
    (``mm_find_pmd``) is done once per VMA: every (subpage, VMA) pair touches its own PTE, so the
    order changes nothing but speed. 4.5 batches: one range and one lock per VMA.
    """
    if variant == V4_5:
        for v in range(v0, v1):
            costs[C_MMU_NOTIFIER] += 1
            unfreeze_page_vma_v4_5(vma_pmd_row[v], b, vma_lo[v], vma_write[v], pmds, tables, blocks,
                                   costs)
        return
    page = blocks[b]
    _mapcount = page["_mapcount"]
    cmc = page["compound_mapcount"]
    offset = mapcount_offset(page, variant)
    for v in range(v0, v1):
        row = vma_pmd_row[v]
        if row >= 0 and pmds[row]["pmd"] & _PAGE_PRESENT and not pmds[row]["pmd"] & _PAGE_PSE:
            pte = tables[pmds[row]["pte_table"]]["pte"]  # mm_find_pmd() found a PTE table
            for i in range(vma_lo[v], vma_hi[v]):
                if page_mapcount(_mapcount, i, cmc, offset):
                    costs[C_MMU_NOTIFIER] += 1
                    unfreeze_page_vma(pte, vma_write[v], b * HPAGE_PMD_NR + i, i, costs)
        else:
            for i in range(vma_lo[v], vma_hi[v]):
                if page_mapcount(_mapcount, i, cmc, offset):
                    costs[C_MMU_NOTIFIER] += 1


@njit(cache=True)
def unfreeze_page_vma_v4_5(row, b, lo, writable, pmds, tables, blocks, costs):
    """Mirror of 4.5's ``unfreeze_page_vma(vma, page, address)``: from the VMA's first subpage ``lo``
    to the THP's end (no stop at vm_end) under one PTE lock; each migration entry of the page gets
    its reference and mapping back (``get_page`` + ``page_add_anon_rmap``) and a PTE, dirty if the
    page is (``PageDirty``: the head's flag while compound), writable if the entry and this VMA are."""
    if row < 0:
        return
    entry = pmds[row]["pmd"]
    if not entry & _PAGE_PRESENT or entry & _PAGE_PSE:  # mm_find_pmd() == NULL
        return
    costs[C_PTE_LOCK] += 1
    pte = tables[pmds[row]["pte_table"]]["pte"]
    page = blocks[b]
    compound = page["flags"][0] & (1 << PG_head)  # a failed split: the THP is still compound
    for i in range(lo, HPAGE_PMD_NR):
        e = pte[i]
        if not e & _PAGE_VMS_MIGRATION:
            continue
        pfn = b * HPAGE_PMD_NR + i
        if (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT != pfn:
            continue
        h = 0 if compound else i
        page["_count"][h] += 1     # get_page(page)
        page["_mapcount"][i] += 1  # page_add_anon_rmap(page, vma, address, false)
        new = (pfn << PTE_PFN_SHIFT) | _PAGE_PRESENT  # pte_mkold(mk_pte(page, vm_page_prot))
        if page["flags"][h] & (1 << PG_dirty):
            new |= _PAGE_DIRTY
        if e & _PAGE_RW and writable:
            new |= _PAGE_RW
        pte[i] = new
        costs[C_PTE_WRITE] += 1
