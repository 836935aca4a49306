"""``mm/mremap.c``'s ``move_page_tables()``: the page tables of a range moved to a new address.

The wrapper cuts the move into extents (to the next PMD boundary of either side, as
``get_extent()``) and passes per extent ``e``: the old PMD row (-1: none), the new one (created),
the PTE index of its first page on each side, its length in pages, and what it does with a present
old PMD (``how[e]``: ``MOVE_PMD`` moves the entry itself — a huge PMD via ``move_huge_pmd()``, a
table via 6.18's ``move_normal_pmd()`` — where the extent is the aligned 2 MiB on both sides and the
new PMD is none; ``MOVE_PTES`` moves PTEs into the new table, which the wrapper has allocated, a
huge PMD split first). No rmap changes: the pages keep their index, the VMA its vm_pgoff.
"""
from vmstate.kernels.constants import (
    C_MMU_NOTIFIER, C_PMD_LOCK, C_PTE_LOCK, C_PTE_WRITE, C_TLB_FLUSH, _PAGE_PSE,
)
from vmstate.kernels.per_variant import per_variant
from vmstate.kernels.pmd import split_huge_pmd

MOVE_PTES, MOVE_PMD = 0, 1


@per_variant()
def move_page_tables(old_rows, new_rows, old_lo, new_lo, n, how, pmds, tables, blocks, costs,
                     events):
    """Mirror of ``move_page_tables()``: one mmu-notifier range, per extent ``move_huge_pmd()`` /
    ``move_normal_pmd()`` or ``split_huge_pmd()`` then ``move_ptes()`` (each present entry as it
    was: CONFIG_MEM_SOFT_DIRTY is off in every variant here), one TLB flush if anything moved."""
    costs[C_MMU_NOTIFIER] += 1
    moved = 0
    for e in range(old_rows.shape[0]):
        o, w = old_rows[e], new_rows[e]
        if o < 0 or pmds[o]["pmd"] == 0:  # get_old_pmd(): pmd_none()
            continue
        if how[e] == MOVE_PMD:  # the deposited table moves with a huge PMD; a table moves itself
            pmds[w]["pmd"] = pmds[o]["pmd"]
            pmds[w]["pte_table"] = pmds[o]["pte_table"]
            pmds[o]["pmd"] = 0
            pmds[o]["pte_table"] = -1
            costs[C_PMD_LOCK] += 1
            costs[C_PTE_WRITE] += 1
            moved = 1
            continue
        if pmds[o]["pmd"] & _PAGE_PSE:
            split_huge_pmd(pmds, tables, o, blocks, costs, events)
        src = tables[pmds[o]["pte_table"]]["pte"]
        dst = tables[pmds[w]["pte_table"]]["pte"]
        costs[C_PTE_LOCK] += 1
        for k in range(n[e]):  # move_ptes()
            x = src[old_lo[e] + k]
            if x:
                dst[new_lo[e] + k] = x
                src[old_lo[e] + k] = 0
                costs[C_PTE_WRITE] += 1
                moved = 1
    if moved:
        costs[C_TLB_FLUSH] += 1  # flush_tlb_range()
