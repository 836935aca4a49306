"""``split_huge_page_to_list()`` of the seed, and the driver that runs it over many THPs the way
debugfs ``split_huge_pages`` does. The recheck and the tail split are the variant's
(:mod:`vmstate.kernels.per_variant`).

Array arguments: ``blocks``, ``pmds``, ``tables``: the structured arrays of ``vmstate.engine.dtypes``;
the rmap index arrays of :mod:`vmstate.kernels.freeze`; ``costs``/``events``: counter vectors
indexed by ``C_*``/``EV_*``; ``bug``: four ``i64`` (head pfn, BUG_* kind, two values tested) filled
on BUG().
"""
import numpy as np
from numba import njit, prange

from vmstate.kernels.constants import (
    BUG_COMPOUND_MAPCOUNT, BUG_RECHECK_MAPCOUNT, BUG_TAIL_COUNT, C_ANON_VMA_LOCK, C_LRU_LOCK,
    C_PAGES_FREED, EBUSY, HPAGE_PMD_NR, PG_head,
    PG_hwpoison, PG_locked, RACE_AFTER_FREEZE, RACE_AFTER_PRECHECK, RACE_AFTER_SPLIT, RACE_NONE,
    SPLIT_BUG, SPLIT_FAIL_ANON_VMA, SPLIT_FAIL_PRECHECK, SPLIT_FAIL_RECHECK, SPLIT_NOT_TRIED, SPLIT_OK,
    EV_THP_UNDERUSED_SPLIT_PAGE,
)
from vmstate.kernels.freeze import freeze_page
from vmstate.kernels.per_variant import (
    SPLIT_PINNED, _split_huge_page_tail, count_split, debugfs_split_skips,
    deferred_split_requeue, deferred_split_should_split, folio_mapcount, mapcount_offset,
    per_variant, split_recheck_bug, split_recheck_ok, unfreeze_page,
)
from vmstate.kernels.refcount import get_page, put_page, reset_folio_fields

_LOCKED = 1 << PG_locked
# Masks as positive u32 values: ``~bit`` is a negative Python int, which NUMBA_DISABLE_JIT=1 runs
# would refuse to combine with the uint32 flags.
_NOT_LOCKED = 0xFFFFFFFF ^ _LOCKED
_NOT_HEAD = 0xFFFFFFFF ^ (1 << PG_head)
_HWPOISON = 1 << PG_hwpoison


@per_variant()
def _split_huge_page(b, blocks, costs, bug):
    """Mirror of the seed's ``__split_huge_page()`` up to ``ClearPageCompound(head)`` (the caller
    then unfreezes and puts). Returns 0, or -1 on BUG."""
    page = blocks[b]
    flags, _count, _mapcount = page["flags"], page["_count"], page["_mapcount"]
    cmc = page["compound_mapcount"]
    costs[C_LRU_LOCK] += 1  # spin_lock_irq(&zone->lru_lock)
    # BUG_ON(tail _count != 0), checked for all tails first so the loop below has no exit: an OR
    # over the tails (vectorized), then the first offender (the C's order: from the last tail down)
    # only when there is one.
    any_count = 0
    for i in range(1, HPAGE_PMD_NR):
        any_count |= _count[i]
    if any_count != 0:
        for i in range(HPAGE_PMD_NR - 1, 0, -1):
            if _count[i] != 0:
                bug[0] = b * HPAGE_PMD_NR
                bug[1] = BUG_TAIL_COUNT
                bug[2] = i
                bug[3] = _count[i]
                return -1
    head_flags = flags[0]
    offset = mapcount_offset(page)
    tail_mapcount = 0
    # The C goes from the last tail down; every tail is its own, so ascending order (which
    # vectorizes) gives the same state.
    for i in range(1, HPAGE_PMD_NR):
        tail_mapcount += _split_huge_page_tail(flags, _count, _mapcount, cmc, offset, head_flags, i)
    _count[0] -= tail_mapcount
    flags[0] &= _NOT_HEAD             # ClearPageCompound(head)
    # page[1].mapping now holds the head's mapping (compound_mapcount -1); v5 26/28: a split THP
    # leaves the deferred split queue (6.18: the large folio's fields go with it)
    reset_folio_fields(page)
    return 0


@njit(cache=True, inline="always")
def _put_split_subpages(page, costs):
    """The seed's final loop: unlock_page + put_page on every subpage but @page (the head). They
    are single pages now, so put_page() frees at 0 (``vmstate.kernels.refcount.put_page``, inlined)."""
    flags, _count, _mapcount = page["flags"], page["_count"], page["_mapcount"]
    freed = 0
    for i in range(1, HPAGE_PMD_NR):
        # unlock_page(); put_page(): if (--_count == 0) { flags &= PG_hwpoison; _mapcount = -1 }
        # written without a branch, so the loop vectorizes
        c = _count[i] - 1
        _count[i] = c
        gone = c == 0
        flags[i] = (flags[i] & _NOT_LOCKED) & (_HWPOISON if gone else 0xFFFFFFFF)
        _mapcount[i] = -1 if gone else _mapcount[i]
        freed += gone
    costs[C_PAGES_FREED] += freed
    if freed:  # a freed frame's content goes with it
        data = page["data"]
        for w in range(HPAGE_PMD_NR // 64):
            keep = np.uint64(0)
            for j in range(64):
                keep |= np.uint64(_count[w * 64 + j] != 0 or w * 64 + j == 0) << np.uint64(j)
            data[w] &= keep


@njit(cache=True, inline="always")
def _race(point, pin_at, unpin_at, blocks, b, costs):
    """A GUP reference on the head taken (``get_page``) or dropped (``put_page``) by another CPU at
    ``point`` of the split: vmstate's model of the race the precheck is racy about."""
    if pin_at == point:
        get_page(blocks, b, 0)
    if unpin_at == point:
        put_page(blocks, b, 0, costs)


@per_variant()
def split_huge_page_to_list(b, v0, v1, vma_walk, vma_lo, vma_hi, vma_write, blocks, pmds, tables,
                            costs, events, bug, pin_at=RACE_NONE, unpin_at=RACE_NONE):
    """Mirror of the seed's ``split_huge_page_to_list(page, NULL)`` for the THP in block ``b``, passed
    by its head page, which the caller has referenced and locked. Returns (ret, reason).
    ``pin_at``/``unpin_at``: where a racing pin lands and leaves (``RACE_*``, see ``_race``)."""
    page = blocks[b]
    head_pfn = b * HPAGE_PMD_NR
    # page_get_anon_vma(): NULL when !page_mapped(page), which is total_mapcount() == 0 here; the
    # precheck below reads the same total (nothing changes in between), so it is read once.
    # (6.18 __folio_split(): folio_get_anon_vma(), then can_split_folio(folio, 1, &extra_pins).)
    mapcount = folio_mapcount(page)
    if mapcount == 0:
        count_split(False, events)
        return -EBUSY, SPLIT_FAIL_ANON_VMA
    costs[C_ANON_VMA_LOCK] += 1
    # Racy check if we can split the page, before freeze_page() will split PMDs
    if mapcount != page["_count"][0] - 1:
        count_split(False, events)
        return SPLIT_PINNED, SPLIT_FAIL_PRECHECK
    _race(RACE_AFTER_PRECHECK, pin_at, unpin_at, blocks, b, costs)
    freeze_page(b, v0, v1, vma_walk, vma_lo, vma_hi, pmds, tables, blocks, costs, events)
    _race(RACE_AFTER_FREEZE, pin_at, unpin_at, blocks, b, costs)
    if page["compound_mapcount"] != -1:  # VM_BUG_ON_PAGE(compound_mapcount(head), head)
        bug[0] = head_pfn
        bug[1] = BUG_COMPOUND_MAPCOUNT
        bug[2] = page["compound_mapcount"] + 1
        return -EBUSY, SPLIT_BUG
    # Both values are read once and reported as tested (the review's point).
    mapcount = folio_mapcount(page)
    count = page["_count"][0]
    if split_recheck_ok(mapcount, count):
        if _split_huge_page(b, blocks, costs, bug):
            return -EBUSY, SPLIT_BUG
        unfreeze_page(b, v0, v1, vma_walk, vma_lo, vma_hi, vma_write, pmds, tables, blocks, costs)
        _put_split_subpages(page, costs)
        count_split(True, events)
        return 0, SPLIT_OK
    if split_recheck_bug(mapcount, count):
        bug[0] = head_pfn
        bug[1] = BUG_RECHECK_MAPCOUNT
        bug[2] = mapcount
        bug[3] = count
        return -EBUSY, SPLIT_BUG
    unfreeze_page(b, v0, v1, vma_walk, vma_lo, vma_hi, vma_write, pmds, tables, blocks, costs)
    count_split(False, events)
    return SPLIT_PINNED, SPLIT_FAIL_RECHECK


@njit(cache=True, inline="always")
def _raced(reason):
    """Whether a split got past the precheck, where the racing pin lands."""
    return reason != SPLIT_FAIL_ANON_VMA and reason != SPLIT_FAIL_PRECHECK


@per_variant(parallel=True)
def split_huge_pages(thps, vma_ptr, vma_walk, vma_lo, vma_hi, vma_write, blocks, pmds, tables,
                     ret, reason, costs, events, bugs, race_pin, race_unpin, debugfs):
    """Mirror of debugfs ``split_huge_pages`` for a pid range (``mm/huge_memory.c``, v5.x): per THP
    get_page, lock_page, split_huge_page, unlock_page, put_page — with ``debugfs`` false, the same
    sequence as another caller's ``split_folio()`` (6.18 MADV_COLD/PAGEOUT); with it, a THP the
    variant's debugfs passes over (``debugfs_split_skips()``) is reported as a precheck failure
    without a try. THP ``k`` is block ``thps[k]``, its
    VMAs ``vma_ptr[k] <= v < vma_ptr[k + 1]``. THPs share no block, PMD entry or PTE table, so each
    runs on its own prange iteration, in one pass over its memory; its counters go to its own row
    of ``costs``/``events`` (``[thp, counter]``; the caller sums them). A THP that hits BUG() keeps
    its state and ``bugs[k] = (head pfn, kind, value, value)``; the others go on."""
    for k in prange(thps.shape[0]):
        b = thps[k]
        if debugfs and debugfs_split_skips(blocks[b]):
            ret[k] = SPLIT_PINNED
            reason[k] = SPLIT_FAIL_PRECHECK
            continue
        get_page(blocks, b, 0)
        blocks[b]["flags"][0] |= _LOCKED
        r, why = split_huge_page_to_list(b, vma_ptr[k], vma_ptr[k + 1], vma_walk, vma_lo, vma_hi,
                                         vma_write, blocks, pmds, tables, costs[k], events[k],
                                         bugs[k], race_pin[k], race_unpin[k])
        ret[k] = r
        reason[k] = why
        if why != SPLIT_BUG:
            if race_unpin[k] == RACE_AFTER_SPLIT and _raced(why):
                put_page(blocks, b, 0, costs[k])
            blocks[b]["flags"][0] &= _NOT_LOCKED
            put_page(blocks, b, 0, costs[k])


@per_variant(parallel=True)
def deferred_split_filter(blocks, queued, out):
    """The first look of ``deferred_split_scan()`` at every queued THP (block ``queued[k]``): ``out[k]``
    = what ``deferred_split_should_split()`` says (0: taken off the queue here, not tried)."""
    for k in prange(queued.shape[0]):
        page = blocks[queued[k]]
        out[k] = deferred_split_should_split(page, out[k:k])
        if out[k] == 0:
            page["deferred"] = 0  # list_del_init(): not partially mapped, not underused


@per_variant(parallel=True)
def can_split_folios(blocks, thps, caller_pins, out):
    """Mirror of ``can_split_folio(folio, caller_pins, NULL)`` of anonymous THPs not in the swap
    cache: ``out[k]`` = every reference to the THP in block ``thps[k]`` but ``caller_pins`` is a
    mapping."""
    for k in prange(thps.shape[0]):
        page = blocks[thps[k]]
        out[k] = folio_mapcount(page) == page["_count"][0] - caller_pins


@per_variant(parallel=True)
def deferred_split_scan(thps, vma_ptr, vma_walk, vma_lo, vma_hi, vma_write, blocks, pmds, tables,
                        ret, reason, costs, events, bugs):
    """Mirror of the variant's ``deferred_split_scan()`` over every queued THP (``thps``, rmap arrays
    and result rows as :func:`split_huge_pages`), one pass: the variant decides which to try
    (``deferred_split_should_split()``; one it leaves is off the queue, ``reason`` SPLIT_NOT_TRIED),
    each tried one is referenced, locked, ``split_huge_page()``d, unlocked and put, and a failed one
    stays queued where ``deferred_split_requeue()`` says so. 6.18 counts
    ``thp_underused_split_page`` for an underused THP it split."""
    for k in prange(thps.shape[0]):
        b = thps[k]
        page = blocks[b]
        what = deferred_split_should_split(page, events[k])
        if what == 0:
            page["deferred"] = 0  # list_del_init(): not partially mapped, not underused
            ret[k] = 0
            reason[k] = SPLIT_NOT_TRIED
            continue
        get_page(blocks, b, 0)
        page["flags"][0] |= _LOCKED
        r, why = split_huge_page_to_list(b, vma_ptr[k], vma_ptr[k + 1], vma_walk, vma_lo, vma_hi,
                                         vma_write, blocks, pmds, tables, costs[k], events[k],
                                         bugs[k])
        ret[k] = r
        reason[k] = why
        if why == SPLIT_BUG:
            continue
        if why == SPLIT_OK:
            if what == 2:
                events[k][EV_THP_UNDERUSED_SPLIT_PAGE] += 1
        elif not deferred_split_requeue(page, False):
            page["deferred"] = 0
        page["flags"][0] &= _NOT_LOCKED
        put_page(blocks, b, 0, costs[k])
