"""``split_huge_page_to_list()`` of the seed and the debugfs-style driver that runs it over many THPs.

Array arguments: ``blocks``, ``pmds``, ``tables``: the structured arrays of ``vmstate.dtypes``; the
rmap index arrays of :mod:`kernels.freeze`; ``costs``/``events``: counter vectors indexed by
``C_*``/``EV_*``; ``bug``: four ``i64`` (head pfn, BUG_* kind, two values tested) filled on BUG().
"""
from numba import njit

from kernels.constants import (
    BUG_COMPOUND_MAPCOUNT, BUG_RECHECK_MAPCOUNT, BUG_TAIL_COUNT, C_ANON_VMA_LOCK, C_LRU_LOCK, EBUSY,
    EV_THP_SPLIT_PAGE, EV_THP_SPLIT_PAGE_FAILED, HPAGE_PMD_NR, PG_dirty, PG_head, PG_hwpoison,
    PG_locked, PG_lru, SPLIT_BUG, SPLIT_FAIL_ANON_VMA, SPLIT_FAIL_PRECHECK, SPLIT_FAIL_RECHECK,
    SPLIT_OK, TAIL_COPY_FLAGS,
)
from kernels.freeze import freeze_page, unfreeze_page
from kernels.mapcount import page_mapcount, total_mapcount
from kernels.refcount import get_page, put_page

_LOCKED = 1 << PG_locked
# Masks as positive u32 values: ``~bit`` is a negative Python int, which NUMBA_DISABLE_JIT=1 runs
# would refuse to combine with the uint32 flags.
_NOT_LOCKED = 0xFFFFFFFF ^ _LOCKED
_NOT_HEAD = 0xFFFFFFFF ^ (1 << PG_head)


@njit(cache=True)
def _split_huge_page_tail(page, b, tail, bug):
    """Mirror of the seed's ``__split_huge_page_tail(head, tail, lruvec, list)`` with ``list == NULL``
    on block record ``page``. Returns the tail's mapcount, or -1 after filling ``bug``."""
    mapcount = page_mapcount(page["_mapcount"], tail, page["compound_mapcount"])
    if page["_count"][tail] != 0:  # BUG_ON(atomic_read(&page_tail->_count) != 0)
        bug[0] = b * HPAGE_PMD_NR
        bug[1] = BUG_TAIL_COUNT
        bug[2] = tail
        bug[3] = page["_count"][tail]
        return -1
    page["_count"][tail] += mapcount + 1
    # flags &= ~PAGE_FLAGS_CHECK_AT_PREP | __PG_HWPOISON (clears PG_tail), head's copied, dirty set;
    # lru_add_page_tail(): SetPageLRU when list == NULL. mapping/index: vmstate derives them from the
    # block once PG_tail is clear (mapping = head's, index = head.index + tail).
    flags = page["flags"]
    flags[tail] = ((flags[tail] & (1 << PG_hwpoison)) | (flags[0] & TAIL_COPY_FLAGS)
                   | (1 << PG_dirty) | (1 << PG_lru))
    return mapcount


@njit(cache=True)
def _split_huge_page(b, blocks, costs, bug):
    """Mirror of the seed's ``__split_huge_page()`` up to ``ClearPageCompound(head)`` (the caller
    then unfreezes and puts). Returns 0, or -1 on BUG."""
    page = blocks[b]
    costs[C_LRU_LOCK] += 1  # spin_lock_irq(&zone->lru_lock)
    tail_mapcount = 0
    for i in range(HPAGE_PMD_NR - 1, 0, -1):
        m = _split_huge_page_tail(page, b, i, bug)
        if m < 0:
            return -1
        tail_mapcount += m
    page["_count"][0] -= tail_mapcount
    page["flags"][0] &= _NOT_HEAD  # ClearPageCompound(head)
    page["compound_mapcount"] = -1    # page[1].mapping now holds the head's mapping
    page["deferred"] = 0              # v5 26/28: a split THP leaves the deferred split queue
    return 0


@njit(cache=True)
def split_huge_page_to_list(b, v0, v1, vma_pmd_row, vma_lo, vma_hi, vma_write, blocks, pmds, tables,
                            costs, events, bug):
    """Mirror of the seed's ``split_huge_page_to_list(page, NULL)`` for the THP in block ``b``, passed
    by its head page, which the caller has referenced and locked. Returns (ret, reason)."""
    page = blocks[b]
    head_pfn = b * HPAGE_PMD_NR
    # page_get_anon_vma(): NULL when !page_mapped(page)
    if total_mapcount(page["_mapcount"], page["compound_mapcount"]) == 0:
        events[EV_THP_SPLIT_PAGE_FAILED] += 1
        return -EBUSY, SPLIT_FAIL_ANON_VMA
    costs[C_ANON_VMA_LOCK] += 1
    # Racy check if we can split the page, before freeze_page() will split PMDs
    if total_mapcount(page["_mapcount"], page["compound_mapcount"]) != page["_count"][0] - 1:
        events[EV_THP_SPLIT_PAGE_FAILED] += 1
        return -EBUSY, SPLIT_FAIL_PRECHECK
    freeze_page(b, v0, v1, vma_pmd_row, pmds, tables, blocks, costs, events)
    if page["compound_mapcount"] != -1:  # VM_BUG_ON_PAGE(compound_mapcount(head), head)
        bug[0] = head_pfn
        bug[1] = BUG_COMPOUND_MAPCOUNT
        bug[2] = page["compound_mapcount"] + 1
        return -EBUSY, SPLIT_BUG
    # Both values are read once and reported as tested (the review's point).
    mapcount = total_mapcount(page["_mapcount"], page["compound_mapcount"])
    count = page["_count"][0]
    if mapcount == count - 1:
        if _split_huge_page(b, blocks, costs, bug):
            return -EBUSY, SPLIT_BUG
        unfreeze_page(b, v0, v1, vma_pmd_row, vma_lo, vma_hi, vma_write, pmds, tables, blocks, costs)
        for i in range(1, HPAGE_PMD_NR):  # every subpage but @page (the head) is unlocked and put
            page["flags"][i] &= _NOT_LOCKED
            put_page(blocks, b, i, costs)
        events[EV_THP_SPLIT_PAGE] += 1
        return 0, SPLIT_OK
    if mapcount > count - 1:
        bug[0] = head_pfn
        bug[1] = BUG_RECHECK_MAPCOUNT
        bug[2] = mapcount
        bug[3] = count
        return -EBUSY, SPLIT_BUG
    unfreeze_page(b, v0, v1, vma_pmd_row, vma_lo, vma_hi, vma_write, pmds, tables, blocks, costs)
    events[EV_THP_SPLIT_PAGE_FAILED] += 1
    return -EBUSY, SPLIT_FAIL_RECHECK


@njit(cache=True)
def split_huge_pages_pid(thps, vma_ptr, vma_pmd_row, vma_lo, vma_hi, vma_write, blocks, pmds, tables,
                         ret, reason, costs, events, bug):
    """Mirror of debugfs ``split_huge_pages`` for a pid range (``mm/huge_memory.c``, v5.x): per THP
    get_page, lock_page, split_huge_page, unlock_page, put_page. THP ``k`` is block ``thps[k]``, its
    VMAs ``vma_ptr[k] <= v < vma_ptr[k + 1]``. Stops at the first BUG; returns how many THPs ran."""
    for k in range(thps.shape[0]):
        b = thps[k]
        get_page(blocks, b, 0)
        blocks[b]["flags"][0] |= _LOCKED
        r, why = split_huge_page_to_list(b, vma_ptr[k], vma_ptr[k + 1], vma_pmd_row, vma_lo, vma_hi,
                                         vma_write, blocks, pmds, tables, costs, events, bug)
        ret[k] = r
        reason[k] = why
        if why == SPLIT_BUG:
            return k + 1
        blocks[b]["flags"][0] &= _NOT_LOCKED
        put_page(blocks, b, 0, costs)
    return thps.shape[0]
