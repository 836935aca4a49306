"""``split_huge_page_to_list()`` of the seed and the debugfs-style driver that runs it over many THPs.

Array arguments: ``blocks``, ``pmds``, ``tables``: the structured arrays of ``vmstate.engine.dtypes``; the
rmap index arrays of :mod:`vmstate.kernels.freeze`; ``costs``/``events``: counter vectors indexed by
``C_*``/``EV_*``; ``bug``: four ``i64`` (head pfn, BUG_* kind, two values tested) filled on BUG().
"""
from numba import get_thread_id, njit, prange

from vmstate.kernels.constants import (
    BUG_COMPOUND_MAPCOUNT, BUG_RECHECK_MAPCOUNT, BUG_TAIL_COUNT, C_ANON_VMA_LOCK, C_LRU_LOCK,
    C_PAGES_FREED, EBUSY,
    EV_THP_SPLIT_PAGE, EV_THP_SPLIT_PAGE_FAILED, HPAGE_PMD_NR, PG_dirty, PG_head, PG_hwpoison,
    PG_locked, PG_lru, RACE_AFTER_FREEZE, RACE_AFTER_PRECHECK, RACE_AFTER_SPLIT, RACE_NONE,
    SPLIT_BUG, SPLIT_FAIL_ANON_VMA, SPLIT_FAIL_PRECHECK, SPLIT_FAIL_RECHECK,
    SPLIT_OK, TAIL_COPY_FLAGS, V4_5, V5,
)
from vmstate.kernels.freeze import freeze_page, unfreeze_page
from vmstate.kernels.mapcount import mapcount_offset, page_mapcount, total_mapcount
from vmstate.kernels.refcount import get_page, put_page

_LOCKED = 1 << PG_locked
# Masks as positive u32 values: ``~bit`` is a negative Python int, which NUMBA_DISABLE_JIT=1 runs
# would refuse to combine with the uint32 flags.
_NOT_LOCKED = 0xFFFFFFFF ^ _LOCKED
_NOT_HEAD = 0xFFFFFFFF ^ (1 << PG_head)


@njit(cache=True, inline="always")
def _split_huge_page_tail(flags, _count, _mapcount, compound_mapcount_raw, offset, head_flags, tail,
                          variant):
    """Mirror of ``__split_huge_page_tail(head, tail, lruvec, list)`` with ``list == NULL``, over one
    THP's 512-entry fields; the caller has checked ``BUG_ON(page_tail->_count != 0)`` and passes
    ``head->flags`` read once (so the loop over tails vectorizes). Returns the mapcount moved.
    ``_count += mapcount + 1`` in both; 4.5's mapcount is ``raw + 1``, 0 after its freeze dropped
    every mapping (they come back with unfreeze)."""
    if variant == V4_5:
        mapcount = _mapcount[tail] + 1  # 0: the freeze dropped every mapping
        _count[tail] += mapcount + 1
        # 4.5 copies PG_dirty from the head (PG_dirty is per THP)
        flags[tail] = ((flags[tail] & (1 << PG_hwpoison))
                       | (head_flags & (TAIL_COPY_FLAGS | (1 << PG_dirty))) | (1 << PG_lru))
        return mapcount
    mapcount = page_mapcount(_mapcount, tail, compound_mapcount_raw, offset)
    _count[tail] += mapcount + 1
    # flags &= ~PAGE_FLAGS_CHECK_AT_PREP | __PG_HWPOISON (clears PG_tail), head's copied, dirty set;
    # lru_add_page_tail(): SetPageLRU when list == NULL. mapping/index: vmstate derives them from the
    # block once PG_tail is clear (mapping = head's, index = head.index + tail).
    flags[tail] = ((flags[tail] & (1 << PG_hwpoison)) | (head_flags & TAIL_COPY_FLAGS)
                   | (1 << PG_dirty) | (1 << PG_lru))
    return mapcount


@njit(cache=True)
def _split_huge_page(b, blocks, costs, bug, variant):
    """Mirror of the seed's ``__split_huge_page()`` up to ``ClearPageCompound(head)`` (the caller
    then unfreezes and puts). Returns 0, or -1 on BUG."""
    page = blocks[b]
    flags, _count, _mapcount = page["flags"], page["_count"], page["_mapcount"]
    cmc = page["compound_mapcount"]
    costs[C_LRU_LOCK] += 1  # spin_lock_irq(&zone->lru_lock)
    for i in range(HPAGE_PMD_NR - 1, 0, -1):
        # BUG_ON(tail _count != 0), checked for all tails first so the loop below has no exit
        if _count[i] != 0:
            bug[0] = b * HPAGE_PMD_NR
            bug[1] = BUG_TAIL_COUNT
            bug[2] = i
            bug[3] = _count[i]
            return -1
    head_flags = flags[0]
    offset = mapcount_offset(page, variant)
    tail_mapcount = 0
    for i in range(HPAGE_PMD_NR - 1, 0, -1):
        tail_mapcount += _split_huge_page_tail(flags, _count, _mapcount, cmc, offset, head_flags, i,
                                               variant)
    _count[0] -= tail_mapcount
    flags[0] &= _NOT_HEAD             # ClearPageCompound(head)
    page["compound_mapcount"] = -1    # page[1].mapping now holds the head's mapping
    page["deferred"] = 0              # v5 26/28: a split THP leaves the deferred split queue
    return 0


@njit(cache=True, inline="always")
def _put_split_subpages(page, costs):
    """The seed's final loop: unlock_page + put_page on every subpage but @page (the head). They
    are single pages now, so put_page() frees at 0 (``vmstate.kernels.refcount.put_page``, inlined)."""
    flags, _count, _mapcount = page["flags"], page["_count"], page["_mapcount"]
    freed = 0
    for i in range(1, HPAGE_PMD_NR):
        flags[i] &= _NOT_LOCKED
        _count[i] -= 1
        if _count[i] == 0:
            flags[i] &= 1 << PG_hwpoison
            _mapcount[i] = -1
            freed += 1
    costs[C_PAGES_FREED] += freed


@njit(cache=True, inline="always")
def _race(point, pin_at, unpin_at, blocks, b, costs):
    """A GUP reference on the head taken (``get_page``) or dropped (``put_page``) by another CPU at
    ``point`` of the split: vmstate's model of the race the precheck is racy about."""
    if pin_at == point:
        get_page(blocks, b, 0)
    if unpin_at == point:
        put_page(blocks, b, 0, costs)


@njit(cache=True)
def split_huge_page_to_list(b, v0, v1, vma_pmd_row, vma_lo, vma_hi, vma_write, blocks, pmds, tables,
                            costs, events, bug, pin_at=RACE_NONE, unpin_at=RACE_NONE, variant=V5):
    """Mirror of the seed's ``split_huge_page_to_list(page, NULL)`` for the THP in block ``b``, passed
    by its head page, which the caller has referenced and locked. Returns (ret, reason).
    ``pin_at``/``unpin_at``: where a racing pin lands and leaves (``RACE_*``, see ``_race``)."""
    page = blocks[b]
    head_pfn = b * HPAGE_PMD_NR
    # page_get_anon_vma(): NULL when !page_mapped(page)
    if total_mapcount(page["_mapcount"], page["compound_mapcount"],
                      mapcount_offset(page, variant)) == 0:
        events[EV_THP_SPLIT_PAGE_FAILED] += 1
        return -EBUSY, SPLIT_FAIL_ANON_VMA
    costs[C_ANON_VMA_LOCK] += 1
    # Racy check if we can split the page, before freeze_page() will split PMDs
    if total_mapcount(page["_mapcount"], page["compound_mapcount"],
                      mapcount_offset(page, variant)) != page["_count"][0] - 1:
        events[EV_THP_SPLIT_PAGE_FAILED] += 1
        return -EBUSY, SPLIT_FAIL_PRECHECK
    _race(RACE_AFTER_PRECHECK, pin_at, unpin_at, blocks, b, costs)
    freeze_page(b, v0, v1, vma_pmd_row, vma_lo, vma_hi, pmds, tables, blocks, costs, events,
                variant)
    _race(RACE_AFTER_FREEZE, pin_at, unpin_at, blocks, b, costs)
    if page["compound_mapcount"] != -1:  # VM_BUG_ON_PAGE(compound_mapcount(head), head)
        bug[0] = head_pfn
        bug[1] = BUG_COMPOUND_MAPCOUNT
        bug[2] = page["compound_mapcount"] + 1
        return -EBUSY, SPLIT_BUG
    # Both values are read once and reported as tested (the review's point).
    mapcount = total_mapcount(page["_mapcount"], page["compound_mapcount"],
                              mapcount_offset(page, variant))
    count = page["_count"][0]
    if _recheck_ok(mapcount, count, variant):
        if _split_huge_page(b, blocks, costs, bug, variant):
            return -EBUSY, SPLIT_BUG
        unfreeze_page(b, v0, v1, vma_pmd_row, vma_lo, vma_hi, vma_write, pmds, tables, blocks, costs,
                      variant)
        _put_split_subpages(page, costs)
        events[EV_THP_SPLIT_PAGE] += 1
        return 0, SPLIT_OK
    if _recheck_bug(mapcount, count, variant):
        bug[0] = head_pfn
        bug[1] = BUG_RECHECK_MAPCOUNT
        bug[2] = mapcount
        bug[3] = count
        return -EBUSY, SPLIT_BUG
    unfreeze_page(b, v0, v1, vma_pmd_row, vma_lo, vma_hi, vma_write, pmds, tables, blocks, costs,
                  variant)
    events[EV_THP_SPLIT_PAGE_FAILED] += 1
    return -EBUSY, SPLIT_FAIL_RECHECK


@njit(cache=True, inline="always")
def _recheck_ok(mapcount, count, variant):
    """The seed: ``total_mapcount == page_count - 1`` (the freeze kept every count); 4.5: the
    freeze dropped them all, ``!mapcount && count == 1`` (the caller's reference)."""
    if variant == V4_5:
        return mapcount == 0 and count == 1
    return mapcount == count - 1


@njit(cache=True, inline="always")
def _recheck_bug(mapcount, count, variant):
    """The BUG() branch: the seed's ``mapcount > page_count - 1``; 4.5's ``mapcount`` left (a
    mapping the freeze did not find; DEBUG_VM)."""
    if variant == V4_5:
        return mapcount != 0
    return mapcount > count - 1


@njit(cache=True, inline="always")
def _raced(reason):
    """Whether a split got past the precheck, where the racing pin lands."""
    return reason != SPLIT_FAIL_ANON_VMA and reason != SPLIT_FAIL_PRECHECK


@njit(cache=True)
def split_huge_pages_pid(thps, vma_ptr, vma_pmd_row, vma_lo, vma_hi, vma_write, blocks, pmds, tables,
                         ret, reason, costs, events, bug, race_pin, race_unpin, variant):
    """Mirror of debugfs ``split_huge_pages`` for a pid range (``mm/huge_memory.c``, v5.x): per THP
    get_page, lock_page, split_huge_page, unlock_page, put_page. THP ``k`` is block ``thps[k]``, its
    VMAs ``vma_ptr[k] <= v < vma_ptr[k + 1]``. Stops at the first BUG; returns how many THPs ran."""
    for k in range(thps.shape[0]):
        b = thps[k]
        get_page(blocks, b, 0)
        blocks[b]["flags"][0] |= _LOCKED
        r, why = split_huge_page_to_list(b, vma_ptr[k], vma_ptr[k + 1], vma_pmd_row, vma_lo, vma_hi,
                                         vma_write, blocks, pmds, tables, costs, events, bug,
                                         race_pin[k], race_unpin[k], variant)
        ret[k] = r
        reason[k] = why
        if why == SPLIT_BUG:
            return k + 1
        if race_unpin[k] == RACE_AFTER_SPLIT and _raced(why):
            put_page(blocks, b, 0, costs)
        blocks[b]["flags"][0] &= _NOT_LOCKED
        put_page(blocks, b, 0, costs)
    return thps.shape[0]


# ---- The same split, phase by phase over many THPs --------------------------------------------
# THPs never share a block, a PMD entry or a PTE table, so running each phase of
# split_huge_page_to_list() over all of them before the next gives the state the serial driver
# above gives (tests/test_split_phases.py checks it), lets prange share the work, and lets a
# benchmark time each phase. Counters go to per-thread rows of ``costs``/``events`` (reduced by
# the caller); ``reason[k]`` carries each THP from phase to phase (-1: still going).
PENDING = -1


@njit(cache=True, parallel=True)
def phase_precheck(thps, blocks, reason, ret, costs, events, race_pin, race_unpin, variant):
    """get_page + lock_page, page_get_anon_vma and the racy precheck of every THP."""
    for k in prange(thps.shape[0]):
        t = get_thread_id()
        b = thps[k]
        page = blocks[b]
        page["_count"][0] += 1
        page["flags"][0] |= _LOCKED
        mapcount = total_mapcount(page["_mapcount"], page["compound_mapcount"],
                                  mapcount_offset(page, variant))
        if mapcount == 0:
            reason[k] = SPLIT_FAIL_ANON_VMA
            ret[k] = -EBUSY
            events[t, EV_THP_SPLIT_PAGE_FAILED] += 1
            continue
        costs[t, C_ANON_VMA_LOCK] += 1
        if mapcount != page["_count"][0] - 1:
            reason[k] = SPLIT_FAIL_PRECHECK
            ret[k] = -EBUSY
            events[t, EV_THP_SPLIT_PAGE_FAILED] += 1
            continue
        reason[k] = PENDING
        _race(RACE_AFTER_PRECHECK, race_pin[k], race_unpin[k], blocks, b, costs[t])


@njit(cache=True, parallel=True)
def phase_freeze(thps, vma_ptr, vma_pmd_row, vma_lo, vma_hi, blocks, pmds, tables, reason, costs,
                 events, race_pin, race_unpin, variant):
    for k in prange(thps.shape[0]):
        if reason[k] == PENDING:
            t = get_thread_id()
            freeze_page(thps[k], vma_ptr[k], vma_ptr[k + 1], vma_pmd_row, vma_lo, vma_hi, pmds,
                        tables, blocks, costs[t], events[t], variant)
            _race(RACE_AFTER_FREEZE, race_pin[k], race_unpin[k], blocks, thps[k], costs[t])


@njit(cache=True, parallel=True)
def phase_recheck(thps, blocks, reason, ret, bugs, events, variant):
    """The recheck after freeze_page(); a BUG leaves (kind, value, value) in ``bugs[k]``."""
    for k in prange(thps.shape[0]):
        if reason[k] != PENDING:
            continue
        page = blocks[thps[k]]
        if page["compound_mapcount"] != -1:
            reason[k] = SPLIT_BUG
            bugs[k, 0] = BUG_COMPOUND_MAPCOUNT
            bugs[k, 1] = page["compound_mapcount"] + 1
            continue
        mapcount = total_mapcount(page["_mapcount"], page["compound_mapcount"],
                                  mapcount_offset(page, variant))
        count = page["_count"][0]
        if _recheck_ok(mapcount, count, variant):
            continue
        if _recheck_bug(mapcount, count, variant):
            reason[k] = SPLIT_BUG
            bugs[k, 0] = BUG_RECHECK_MAPCOUNT
            bugs[k, 1] = mapcount
            bugs[k, 2] = count
            continue
        reason[k] = SPLIT_FAIL_RECHECK
        ret[k] = -EBUSY
        events[get_thread_id(), EV_THP_SPLIT_PAGE_FAILED] += 1


@njit(cache=True, parallel=True)
def phase_split_tails(thps, blocks, reason, bugs, costs, bug, variant):
    """__split_huge_page() of every THP that passed the recheck; ``bug``: a scratch row per thread."""
    for k in prange(thps.shape[0]):
        if reason[k] == PENDING:
            t = get_thread_id()
            if _split_huge_page(thps[k], blocks, costs[t], bug[t], variant):
                reason[k] = SPLIT_BUG
                bugs[k, 0] = BUG_TAIL_COUNT
                bugs[k, 1] = bug[t, 2]
                bugs[k, 2] = bug[t, 3]


@njit(cache=True, parallel=True)
def phase_unfreeze(thps, vma_ptr, vma_pmd_row, vma_lo, vma_hi, vma_write, blocks, pmds, tables,
                   reason, costs, variant):
    for k in prange(thps.shape[0]):
        if reason[k] == PENDING or reason[k] == SPLIT_FAIL_RECHECK:
            unfreeze_page(thps[k], vma_ptr[k], vma_ptr[k + 1], vma_pmd_row, vma_lo, vma_hi,
                          vma_write, pmds, tables, blocks, costs[get_thread_id()], variant)


@njit(cache=True, parallel=True)
def phase_put(thps, blocks, reason, ret, costs, events, race_unpin):
    """Unlock and put every subpage but the head of a split THP; unlock and put every head."""
    for k in prange(thps.shape[0]):
        t = get_thread_id()
        b = thps[k]
        if reason[k] == PENDING:
            _put_split_subpages(blocks[b], costs[t])
            reason[k] = SPLIT_OK
            ret[k] = 0
            events[t, EV_THP_SPLIT_PAGE] += 1
        if race_unpin[k] == RACE_AFTER_SPLIT and _raced(reason[k]):
            put_page(blocks, b, 0, costs[t])
        blocks[b]["flags"][0] &= _NOT_LOCKED
        put_page(blocks, b, 0, costs[t])


@njit(cache=True, parallel=True)
def split_huge_pages_parallel(thps, vma_ptr, vma_pmd_row, vma_lo, vma_hi, vma_write, blocks, pmds,
                              tables, ret, reason, costs, events, bugs, race_pin, race_unpin,
                              variant):
    """``split_huge_pages_pid`` with every THP on its own iteration of a prange (THPs share no
    block, PMD entry or PTE table): one pass over each THP's memory. Counters go to the THP's own
    row of ``costs``/``events`` (``[thp, counter]``; the caller sums them). A THP that hits BUG()
    keeps its state and ``bugs[k] = (head pfn, kind, value, value)``; the others go on."""
    for k in prange(thps.shape[0]):
        b = thps[k]
        get_page(blocks, b, 0)
        blocks[b]["flags"][0] |= _LOCKED
        r, why = split_huge_page_to_list(b, vma_ptr[k], vma_ptr[k + 1], vma_pmd_row, vma_lo, vma_hi,
                                         vma_write, blocks, pmds, tables, costs[k], events[k],
                                         bugs[k], race_pin[k], race_unpin[k], variant)
        ret[k] = r
        reason[k] = why
        if why != SPLIT_BUG:
            if race_unpin[k] == RACE_AFTER_SPLIT and _raced(why):
                put_page(blocks, b, 0, costs[k])
            blocks[b]["flags"][0] &= _NOT_LOCKED
            put_page(blocks, b, 0, costs[k])
