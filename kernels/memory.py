"""PTE-level page tables (``mm/memory.c``): ``zap_pte_range()`` and the ``zap_pmd_range()`` walk
over it, and fork's ``copy_pte_range()``.

A range of one process arrives as index arrays built by the wrapper: per 2 MiB slot ``r`` in address
order, the row of the process's PMD entry there (``rows[r]``, -1: none) and the PTE indices
``[lo[r], hi[r])`` of the slot inside the range.
"""
from numba import njit

from numba import get_thread_id, prange

from vmstate.kernels.constants import (
    C_PAGES_FREED, ANON_FAULT_FLAGS, HPAGE_PMD_NR, PG_anon_exclusive, PG_head, PTE_PFN_MASK,
    PTE_PFN_SHIFT,
    _PAGE_ACCESSED, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_SPECIAL,
)
from vmstate.kernels.per_variant import (
    MPROTECT_WRITABLE_EXCLUSIVE, NEW_ANON_PAGE_FLAGS, page_dup_anon_rmap_pte, page_remove_rmap_ptes,
    per_variant,
)
from vmstate.kernels.pmd import FAULT_ENTRY, copy_huge_pmd, mm_id_of, split_huge_pmd, zap_huge_pmd
from vmstate.kernels.refcount import get_page, put_page_counted, set_page_data

_NOT_RW = 0xFFFFFFFFFFFFFFFF ^ _PAGE_RW
_NOT_ACCESSED = 0xFFFFFFFFFFFFFFFF ^ _PAGE_ACCESSED


@njit(cache=True, inline="always")
def _pte_pfn(e):
    return (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT


@per_variant()
def zap_pte_range(pte, lo, hi, mm_id, blocks, costs, events):
    """Mirror of ``zap_pte_range()`` over PTEs ``[lo, hi)`` of one table of process ``mm_id``: clear
    each present entry and remove its page's rmap, one batch per run of consecutive PTEs mapping
    consecutive pages of one THP (``zap_present_ptes()`` → ``folio_pte_batch()``, which ignores the
    write, young and dirty bits; a small page is its own batch); the TLB gather then
    ``put_page()``s them in the same order. A special PTE (the shared zero page) is only cleared
    (``vm_normal_page()`` is NULL)."""
    i = lo
    while i < hi:
        e = pte[i]
        if not e & _PAGE_PRESENT or e & _PAGE_SPECIAL:
            i += 1
            continue
        pfn = int(_pte_pfn(e))  # a Python/intp int: NUMBA_DISABLE_JIT runs mix it with ints
        b, j = pfn // HPAGE_PMD_NR, pfn % HPAGE_PMD_NR
        page = blocks[b]
        k = i + 1
        if page["flags"][0] & (1 << PG_head):
            while (k < hi and j + k - i < HPAGE_PMD_NR and pte[k] & _PAGE_PRESENT
                   and _pte_pfn(pte[k]) == pfn + k - i):
                k += 1
        page_remove_rmap_ptes(page, j, j + k - i, mm_id, events)
        i = k
    # The pages of one table are mostly one block's: its record is looked up once per run.
    page, last = blocks[0], -1
    freed = 0
    for i in range(lo, hi):  # tlb_flush_mmu() -> free_pages_and_swap_cache()
        e = pte[i]
        if e & _PAGE_PRESENT:
            pte[i] = 0
            if e & _PAGE_SPECIAL:
                continue
            pfn = (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT
            if pfn // HPAGE_PMD_NR != last:
                last = pfn // HPAGE_PMD_NR
                page = blocks[last]
            freed += put_page_counted(page, pfn % HPAGE_PMD_NR)
    costs[C_PAGES_FREED] += freed


@per_variant(parallel=True)
def zap_pmd_range(rows, lo, hi, pmds, tables, blocks, costs, events):
    """Mirror of ``zap_pmd_range()``: a huge PMD wholly inside the range goes whole
    (``zap_huge_pmd()``); one the range covers in part is split first (``split_huge_pmd()``), then
    its PTEs in the range are zapped. The slots of a process that never mremap'ed map pages of their
    own blocks, so they run on a prange (``zap_pmd_range_serial`` otherwise); ``costs``/``events``
    are ``[thread, counter]`` slabs the caller sums."""
    for r in prange(rows.shape[0]):
        row = rows[r]
        if row < 0:
            continue
        t = get_thread_id()
        if pmds[row]["pmd"] & _PAGE_PSE:
            if lo[r] == 0 and hi[r] == HPAGE_PMD_NR:
                zap_huge_pmd(pmds, row, blocks, costs[t], events[t])
                continue
            split_huge_pmd(pmds, tables, row, blocks, costs[t], events[t])
        if not pmds[row]["pmd"] & _PAGE_PRESENT:
            continue
        zap_pte_range(tables[pmds[row]["pte_table"]]["pte"], lo[r], hi[r], mm_id_of(pmds, row),
                      blocks, costs[t], events[t])


# The same walk one slot after another, for a process whose slots may share a block: after mremap a
# THP's pages sit in two slots, whose zaps would race on its counts and content words on a prange.
per_variant(name="zap_pmd_range_serial")(zap_pmd_range)


@per_variant()
def copy_pte_range(src, dst, lo, hi, mm_id, blocks):
    """Mirror of ``copy_pte_range()`` → ``copy_one_pte()`` for PTEs ``[lo, hi)`` of a private
    writable mapping into the child with ``mm_id``: the parent's entry write-protected
    (``ptep_set_wrprotect``), the child's a copy made old (``pte_mkold``); ``get_page()`` +
    ``page_dup_rmap()``. A special PTE (the zero page) is copied as it is (no page behind it)."""
    for i in range(lo, hi):
        e = src[i]
        if not e & _PAGE_PRESENT:
            continue
        if e & _PAGE_SPECIAL:  # no page behind it: only the child's copy made old
            dst[i] = e & _NOT_ACCESSED
            continue
        e &= _NOT_RW
        src[i] = e
        dst[i] = e & _NOT_ACCESSED
        pfn = (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT
        b, j = pfn // HPAGE_PMD_NR, pfn % HPAGE_PMD_NR
        get_page(blocks, b, j)
        page_dup_anon_rmap_pte(blocks[b], j, mm_id)


@per_variant()
def copy_pmd_range(src_rows, dst_rows, lo, hi, pmds, tables, blocks):
    """Mirror of ``copy_pmd_range()`` for one VMA of a fork: per slot, ``copy_huge_pmd()`` from the
    parent's huge PMD entry ``src_rows[r]`` to the child's ``dst_rows[r]``, or ``copy_pte_range()``
    of PTEs ``[lo[r], hi[r])`` between their tables (the child's allocated by the caller)."""
    for r in range(src_rows.shape[0]):
        if pmds[src_rows[r]]["pmd"] & _PAGE_PSE:
            copy_huge_pmd(pmds, src_rows[r], dst_rows[r], blocks)
        else:
            copy_pte_range(tables[pmds[src_rows[r]]["pte_table"]]["pte"],
                           tables[pmds[dst_rows[r]]["pte_table"]]["pte"], lo[r], hi[r],
                           mm_id_of(pmds, dst_rows[r]), blocks)


@per_variant(parallel=True)
def do_anonymous_pages(blocks, bs, lo, hi, pmds, rows, tables, data):
    """``do_anonymous_page()`` for PTEs ``[lo[k], hi[k])`` of slot ``k``: one small page each from
    block ``bs[k]`` (the fault's flags, one reference, ``page_add_new_anon_rmap``: ``_mapcount``
    0), its PTE written into the table of PMD entry ``rows[k]``; then written with data
    (``data``) or zeros."""
    for k in prange(bs.shape[0]):
        page = blocks[bs[k]]
        pte = tables[pmds[rows[k]]["pte_table"]]["pte"]
        set_page_data(page, lo[k], hi[k], data)
        for i in range(lo[k], hi[k]):
            page["flags"][i] = ANON_FAULT_FLAGS | NEW_ANON_PAGE_FLAGS
            page["_count"][i] = 1
            page["_mapcount"][i] = 0
            pte[i] = ((bs[k] * HPAGE_PMD_NR + i) << PTE_PFN_SHIFT) | FAULT_ENTRY


@njit(cache=True)
def follow_page_range(rows, lo, hi, pmds, tables, out, hole):
    """Mirror of ``follow_page()`` on every page of a range (``get_user_pages()``'s walk): the pfn
    of each into ``out``, in address order. Returns how many; -1 at the first page without a
    present mapping, with its slot and PTE index in ``hole``."""
    n = 0
    for r in range(rows.shape[0]):
        row = rows[r]
        if row < 0:
            hole[0], hole[1] = r, lo[r]
            return -1
        entry = pmds[row]["pmd"]
        if entry & _PAGE_PSE:
            head = (entry & PTE_PFN_MASK) >> PTE_PFN_SHIFT
            for i in range(lo[r], hi[r]):
                out[n] = head + i
                n += 1
            continue
        if not entry & _PAGE_PRESENT:
            hole[0], hole[1] = r, lo[r]
            return -1
        pte = tables[pmds[row]["pte_table"]]["pte"]
        for i in range(lo[r], hi[r]):
            if not pte[i] & _PAGE_PRESENT:
                hole[0], hole[1] = r, i
                return -1
            out[n] = (pte[i] & PTE_PFN_MASK) >> PTE_PFN_SHIFT
            n += 1
    return n


@njit(cache=True, inline="always")
def _anon_exclusive(blocks, e):
    """``PageAnonExclusive()`` of the page entry ``e`` maps (never for the zero page)."""
    if e & _PAGE_SPECIAL:
        return False
    pfn = (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT
    return (blocks[pfn // HPAGE_PMD_NR]["flags"][pfn % HPAGE_PMD_NR] & (1 << PG_anon_exclusive)) != 0


@per_variant()
def change_pmd_range(rows, lo, hi, pmds, tables, blocks, writable):
    """Mirror of ``change_pmd_range()`` on a range whose VMA became read-only or (``writable``)
    writable again: ``change_huge_pmd()`` on a huge PMD, ``change_pte_range()`` on every present
    PTE of a table (young, dirty and soft-dirty kept: ``pmd_modify()``/``pte_modify()`` change only
    ``_PAGE_RW``); none PMDs are skipped. Private anonymous entries are write-protected, except
    that with ``writable`` a variant with ``MM_CP_TRY_CHANGE_WRITABLE`` makes the entries of
    PageAnonExclusive pages writable at once (6.18 ``can_change_pte_writable()``)."""
    upgrade = writable and MPROTECT_WRITABLE_EXCLUSIVE
    for r in range(rows.shape[0]):
        row = rows[r]
        if row < 0:
            continue
        entry = pmds[row]["pmd"]
        if entry & _PAGE_PSE:
            up = upgrade and _anon_exclusive(blocks, entry)
            pmds[row]["pmd"] = (entry | _PAGE_RW) if up else (entry & _NOT_RW)
        elif entry & _PAGE_PRESENT:
            pte = tables[pmds[row]["pte_table"]]["pte"]
            for i in range(lo[r], hi[r]):
                e = pte[i]
                if e & _PAGE_PRESENT:
                    up = upgrade and _anon_exclusive(blocks, e)
                    pte[i] = (e | _PAGE_RW) if up else (e & _NOT_RW)
