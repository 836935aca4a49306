"""Write faults (``mm/memory.c``: ``handle_mm_fault()`` → ``do_anonymous_page()``, ``do_wp_page()``
→ ``wp_page_reuse()`` / ``wp_page_copy()``; ``mm/huge_memory.c``: ``do_huge_pmd_anonymous_page()``,
``do_huge_pmd_wp_page()``): the ``write`` op, one user write per page of a range in address order.
Whether a write-protected entry is reused or copied is the variant's
(:mod:`vmstate.kernels.per_variant`: ``huge_pmd_wp_can_reuse``, ``pte_wp_can_reuse``,
``HUGE_PMD_WP_COPIES_THP``).

A range of one process arrives as segments built by the wrapper: per (VMA, 2 MiB slot) part of the
range in address order, the PMD row (``rows[r]``: created by the wrapper; a none PMD outside a
THP-capable slot already has its table), the PTE indices ``[lo[r], hi[r])``, the page index the
slot's PTE 0 has in that VMA (``index[r]``, ``linear_page_index()``), whether the VMA may have a
THP there (``thp[r]``) and its anon_vma (``mapping[r]``).

New frames come from a pool of zeroed blocks the wrapper appended (``pool[0]``: the first,
``pool[1]``: how many): a THP takes a block, and a run of consecutive pages of one segment that each
need a new small page shares one (the reference's ``_write_block()``). When the pool runs dry the
kernel returns early with its position in ``cursor`` (``C_*`` below); the wrapper appends blocks
(``pool[1]`` grows) and calls again. Every fault finishes before the kernel returns, so a call
resumes where the last one stopped.
"""
from numba import njit

from vmstate.kernels.constants import (
    C_MMU_NOTIFIER, C_PAGES_FREED, C_PTE_WRITE, C_TLB_FLUSH, ANON_FAULT_FLAGS, HPAGE_PMD_NR,
    PTE_PFN_MASK, PTE_PFN_SHIFT, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW,
    _PAGE_SPECIAL,
)
from vmstate.kernels.per_variant import (
    HUGE_PMD_WP_COPIES_THP, NEW_ANON_PAGE_FLAGS, count_thp_faults, huge_pmd_wp_can_reuse,
    mapcount_offset, page_remove_anon_compound_rmap, page_remove_rmap_ptes, per_variant,
    pte_wp_can_reuse,
)
from vmstate.kernels.pmd import FAULT_ENTRY, fault_thp, mm_id_of, pmd_block, split_huge_pmd
from vmstate.kernels.refcount import get_page, put_page, put_page_counted, set_page_data

_YOUNG_DIRTY = _PAGE_ACCESSED | _PAGE_DIRTY
_REUSE = _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_RW  # pte_mkyoung(), pte_mkdirty(), maybe_mkwrite()
# the cursor: where to resume (segment, page), blocks used, and the last new small page (its block,
# segment and page: the run a next page's frame may join)
C_SEG, C_PAGE, C_USED, C_RUN, C_RUN_SEG, C_RUN_PAGE = range(6)


@njit(cache=True, inline="always")
def init_block(page, mapping, index, start, end):
    """A pool block handed out: the fields ``MemoryState.alloc_blocks()`` sets (the rest is zero)."""
    for i in range(HPAGE_PMD_NR):
        page["_mapcount"][i] = -1
    page["compound_mapcount"] = -1
    page["_large_mapcount"] = -1
    page["_mm_id_mapcount"][0] = -1
    page["_mm_id_mapcount"][1] = -1
    page["mapping"] = mapping
    page["index"] = index
    page["alloc_start"] = start
    page["alloc_end"] = end


@njit(cache=True, inline="always")
def _take_block(blocks, pool, cursor, mapping, index, start, end):
    """The pool's next block, initialised with frames ``[start, end)``; -1 when the pool is dry."""
    if cursor[C_USED] == pool[1]:
        return -1
    b = pool[0] + cursor[C_USED]
    cursor[C_USED] += 1
    init_block(blocks[b], mapping, index, start, end)
    return b


@per_variant(inline="always")
def _new_small_page(page, b, j):
    """``do_anonymous_page()`` / ``wp_page_copy()``'s new page ``j`` of block ``b``: the fault's
    flags, one reference, ``page_add_new_anon_rmap(page, false)`` (``_mapcount`` 0); its entry."""
    page["flags"][j] = ANON_FAULT_FLAGS | NEW_ANON_PAGE_FLAGS
    page["_count"][j] = 1
    page["_mapcount"][j] = 0
    return ((b * HPAGE_PMD_NR + j) << PTE_PFN_SHIFT) | FAULT_ENTRY


@per_variant()
def _huge_pmd_copy(pmds, row, blocks, nb, costs, events):
    """2015–5.7 ``do_huge_pmd_wp_page()`` past its reuse test: the THP in block ``nb`` (initialised)
    replaces the one the PMD maps, a copy of its content (``copy_user_huge_page()``; THP allocation
    always succeeds here), with ``thp_fault_alloc``; the old THP's PMD rmap and reference go.
    get_user_huge_page()/put_user_huge_page() hold one more reference around the copy."""
    ob = pmd_block(pmds[row]["pmd"])
    old, new = blocks[ob], blocks[nb]
    mm_id = mm_id_of(pmds, row)
    get_page(blocks, ob, 0)
    fault_thp(new, mm_id)
    for w in range(HPAGE_PMD_NR // 64):
        new["data"][w] = old["data"][w]
    count_thp_faults(events, 1)
    put_page(blocks, ob, 0, costs)
    costs[C_MMU_NOTIFIER] += 1
    costs[C_TLB_FLUSH] += 1  # pmdp_huge_clear_flush_notify()
    costs[C_PTE_WRITE] += 1
    pmds[row]["pmd"] = ((nb * HPAGE_PMD_NR) << PTE_PFN_SHIFT) | FAULT_ENTRY | _PAGE_PSE
    page_remove_anon_compound_rmap(old, mm_id, events)
    put_page(blocks, ob, 0, costs)


@per_variant()
def handle_mm_faults(rows, lo, hi, index, thp, mapping, pmds, tables, blocks, pool, cursor, costs,
                     events):
    """The user's write to every page of the segments, from ``cursor`` on; each written page then
    holds data. Returns 1 when done, 0 when the pool ran dry (``cursor`` says where to resume)."""
    r = cursor[C_SEG]
    while r < rows.shape[0]:
        row = rows[r]
        mm_id = mm_id_of(pmds, row)
        i = max(lo[r], cursor[C_PAGE])
        while i < hi[r]:
            entry = pmds[row]["pmd"]
            if entry == 0:  # pmd_none() in a slot the VMA allows a THP: create_huge_pmd()
                b = _take_block(blocks, pool, cursor, mapping[r], index[r], 0, HPAGE_PMD_NR)
                if b < 0:
                    cursor[C_SEG], cursor[C_PAGE] = r, i
                    return 0
                fault_thp(blocks[b], mm_id)  # zero-filled: clear_huge_page()
                count_thp_faults(events, 1)
                pmds[row]["pmd"] = ((b * HPAGE_PMD_NR) << PTE_PFN_SHIFT) | FAULT_ENTRY | _PAGE_PSE
                entry = pmds[row]["pmd"]
            if entry & _PAGE_PSE:
                b = pmd_block(entry)
                if entry & _PAGE_RW:  # no fault: the MMU sets young and dirty
                    pmds[row]["pmd"] = entry | _YOUNG_DIRTY
                elif huge_pmd_wp_can_reuse(blocks[b], mapcount_offset(blocks[b])):
                    pmds[row]["pmd"] = entry | _REUSE  # do_huge_pmd_wp_page(): reuse
                    costs[C_PTE_WRITE] += 1
                elif HUGE_PMD_WP_COPIES_THP:
                    nb = _take_block(blocks, pool, cursor, mapping[r], index[r], 0, HPAGE_PMD_NR)
                    if nb < 0:
                        cursor[C_SEG], cursor[C_PAGE] = r, i
                        return 0
                    _huge_pmd_copy(pmds, row, blocks, nb, costs, events)
                else:  # __split_huge_pmd() and VM_FAULT_FALLBACK: the PTE fault below
                    split_huge_pmd(pmds, tables, row, blocks, costs, events)
                entry = pmds[row]["pmd"]
                if entry & _PAGE_PSE:  # writable now: the segment's other pages do not fault
                    pmds[row]["pmd"] = entry | _YOUNG_DIRTY
                    set_page_data(blocks[pmd_block(entry)], i, hi[r], True)  # the write's data
                    i = hi[r]
                    continue
            pte = tables[pmds[row]["pte_table"]]["pte"]
            e = pte[i]
            pfn = (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT
            if e & _PAGE_PRESENT and e & _PAGE_RW:  # no fault
                pte[i] = e | _YOUNG_DIRTY
                set_page_data(blocks[pfn // HPAGE_PMD_NR], pfn % HPAGE_PMD_NR,
                              pfn % HPAGE_PMD_NR + 1, True)  # the write's data
                i += 1
                continue
            if e & _PAGE_PRESENT and not e & _PAGE_SPECIAL and pte_wp_can_reuse(
                    blocks[pfn // HPAGE_PMD_NR], pfn % HPAGE_PMD_NR):
                pte[i] = e | _REUSE  # do_wp_page() -> wp_page_reuse()
                costs[C_PTE_WRITE] += 1
            else:  # pte_none(): do_anonymous_page(); else do_wp_page() -> wp_page_copy()
                if cursor[C_RUN_SEG] == r and cursor[C_RUN_PAGE] == i - 1:
                    nb = cursor[C_RUN]  # the previous page of this segment took a new frame too
                    blocks[nb]["alloc_end"] = i + 1
                else:
                    nb = _take_block(blocks, pool, cursor, mapping[r], index[r], i, i + 1)
                    if nb < 0:
                        cursor[C_SEG], cursor[C_PAGE] = r, i
                        return 0
                pte[i] = _new_small_page(blocks[nb], nb, i)
                if e & _PAGE_PRESENT:  # the copied entry's page: its rmap and reference go
                    costs[C_MMU_NOTIFIER] += 1
                    costs[C_TLB_FLUSH] += 1  # ptep_clear_flush_notify()
                    costs[C_PTE_WRITE] += 1
                    if not e & _PAGE_SPECIAL:
                        old = blocks[pfn // HPAGE_PMD_NR]
                        j = pfn % HPAGE_PMD_NR
                        page_remove_rmap_ptes(old, j, j + 1, mm_id, events)
                        costs[C_PAGES_FREED] += put_page_counted(old, j)
                cursor[C_RUN], cursor[C_RUN_SEG], cursor[C_RUN_PAGE] = nb, r, i
            pfn = (pte[i] & PTE_PFN_MASK) >> PTE_PFN_SHIFT
            set_page_data(blocks[pfn // HPAGE_PMD_NR], pfn % HPAGE_PMD_NR, pfn % HPAGE_PMD_NR + 1,
                          True)  # the write's data
            i += 1
        r += 1
        cursor[C_PAGE] = 0
    cursor[C_SEG] = r
    return 1
