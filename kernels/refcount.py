"""get_page()/put_page(), page freeing and the PTE rmap (``include/linux/mm.h``, ``mm/swap.c``,
``mm/rmap.c``), the same in every variant.

Frame ``pfn`` is entry ``i = pfn % 512`` of block record ``blocks[pfn // 512]``.
"""
import numpy as np
from numba import njit

from vmstate.kernels.constants import (
    C_PAGES_FREED, EV_THP_DEFERRED_SPLIT_PAGE, HPAGE_PMD_NR, MM_ID_DUMMY, PG_head, PG_hwpoison,
    PG_tail, ZERO_PFN,
)

_HEAD = 1 << PG_head
_TAIL = 1 << PG_tail
_KEEP_ON_FREE = 1 << PG_hwpoison  # free_pages_prepare(): flags &= ~PAGE_FLAGS_CHECK_AT_PREP


@njit(cache=True, inline="always")
def compound_head_index(page, i):
    """Mirror of ``compound_head()``: the entry of block record ``page`` holding ``i``'s count."""
    if page["flags"][i] & _TAIL:
        return 0
    return i


@njit(cache=True)
def get_page(blocks, b, i):
    """Mirror of ``get_page()``: every reference to a THP subpage goes to the head."""
    page = blocks[b]
    page["_count"][compound_head_index(page, i)] += 1


@njit(cache=True)
def get_pages(blocks, pfns, nr):
    """``get_page()`` ``nr`` times on every pfn (``get_user_pages()`` of a range, ``nr`` pins). A run
    of pfns in one THP all go to its head: added at once. The shared zero page (6.18, after a
    split) is pinned too, but its count is not modelled: skipped."""
    k = 0
    while k < pfns.shape[0]:
        if pfns[k] == ZERO_PFN:
            k += 1
            continue
        b = pfns[k] // HPAGE_PMD_NR
        page = blocks[b]
        m = _thp_run_end(blocks, pfns, k, b)
        if m > k + 1:
            page["_count"][0] += nr * (m - k)
        else:
            page["_count"][compound_head_index(page, pfns[k] % HPAGE_PMD_NR)] += nr
        k = m


@njit(cache=True, inline="always")
def _thp_run_end(blocks, pfns, k, b):
    """The end of the run of ``pfns[k:]`` in block ``b`` when it holds a THP (compound: every
    subpage's reference is its head's), else ``k + 1``."""
    if not blocks[b]["flags"][0] & _HEAD:
        return k + 1
    m = k + 1
    while m < pfns.shape[0] and pfns[m] // HPAGE_PMD_NR == b:
        m += 1
    return m


_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(cache=True, inline="always")
def page_has_data(page, i):
    """Whether subpage ``i`` of block record ``page`` holds non-zero bytes (its content bit)."""
    return (page["data"][i >> 6] >> np.uint64(i & 63)) & np.uint64(1)


@njit(cache=True, inline="always")
def set_page_data(page, lo, hi, data):
    """Pages ``[lo, hi)`` of the block were written with data (``data`` true) or with zeros."""
    for i in range(lo, hi):
        bit = np.uint64(1) << np.uint64(i & 63)
        if data:
            page["data"][i >> 6] |= bit
        else:
            page["data"][i >> 6] &= _ALL ^ bit


@njit(cache=True, inline="always")
def reset_folio_fields(page):
    """The large-folio fields of the block back to their initial values (a THP freed or split)."""
    page["compound_mapcount"] = -1
    page["_large_mapcount"] = -1
    page["_nr_pages_mapped"] = 0
    for k in range(2):
        page["_mm_id"][k] = MM_ID_DUMMY
        page["_mm_id_mapcount"][k] = -1
    page["_mm_ids_shared"] = 0
    page["partially_mapped"] = 0
    page["deferred"] = 0


@njit(cache=True, inline="always")
def put_page_counted(page, i):
    """Mirror of ``put_page()`` on entry ``i`` of block record ``page``: drop one reference; the last
    one frees the page (a THP whole). Returns the frames freed (0, 1 or 512) for the caller's
    ``pages_freed``."""
    h = compound_head_index(page, i)
    c = page["_count"][h] - 1
    page["_count"][h] = c
    if c != 0:
        return 0
    if page["flags"][h] & _HEAD:
        # free_compound_page(): all 512 frames go back; the THP leaves the deferred split queue
        # (free_transhuge_page() in v5 26/28; 6.18 folio_unqueue_deferred_split() also clears
        # PG_partially_mapped). Its content goes with it.
        for j in range(HPAGE_PMD_NR):
            page["flags"][j] &= _KEEP_ON_FREE
            page["_mapcount"][j] = -1
        reset_folio_fields(page)
        for w in range(HPAGE_PMD_NR // 64):
            page["data"][w] = 0
        return HPAGE_PMD_NR
    page["flags"][h] &= _KEEP_ON_FREE
    page["_mapcount"][h] = -1
    set_page_data(page, h, h + 1, False)
    return 1


@njit(cache=True)
def put_page(blocks, b, i, costs):
    """``put_page()`` counting what it frees in ``costs``; returns 1 when the page was freed."""
    freed = put_page_counted(blocks[b], i)
    costs[C_PAGES_FREED] += freed
    return 1 if freed else 0


@njit(cache=True)
def put_pages(blocks, pfns, costs):
    """``put_page()`` on every pfn in order (a zap's TLB-gather batch, or an unpin). A run of pfns in
    one THP drops that many references from its head at once (the head's count cannot reach 0
    before the run's last reference: each pfn holds one), then ``put_page()`` the last."""
    k = 0
    while k < pfns.shape[0]:
        if pfns[k] == ZERO_PFN:  # not counted (get_pages())
            k += 1
            continue
        b = pfns[k] // HPAGE_PMD_NR
        m = _thp_run_end(blocks, pfns, k, b)
        blocks[b]["_count"][0] -= m - k - 1
        put_page(blocks, b, pfns[m - 1] % HPAGE_PMD_NR, costs)
        k = m


@njit(cache=True, inline="always")
def deferred_split_huge_page(page, events):
    """Mirror of ``deferred_split_huge_page()``: queue the THP; counted once per THP (MODEL.md)."""
    if not page["deferred"]:
        page["deferred"] = 1
        events[EV_THP_DEFERRED_SPLIT_PAGE] += 1


@njit(cache=True, inline="always")
def page_remove_rmap_pte(page, i, events):
    """Mirror of ``page_remove_rmap(page + i, false)``: a subpage of a THP (``PageTransCompound``)
    reaching -1 queues the THP for deferred split; a small page only loses its mapping."""
    page["_mapcount"][i] -= 1
    if page["_mapcount"][i] == -1 and page["flags"][0] & _HEAD:
        deferred_split_huge_page(page, events)


@njit(cache=True, inline="always")
def drop_mapcount_offset(page, events):
    """The last compound mapping of a THP went: the +1 every subpage's raw ``_mapcount`` carried for
    it goes too, and a subpage left at -1 (no PTE maps it) queues the THP for deferred split."""
    mc = page["_mapcount"]
    queue = False
    for i in range(HPAGE_PMD_NR):
        mc[i] -= 1
        if mc[i] == -1:
            queue = True
    if queue:
        deferred_split_huge_page(page, events)


@njit(cache=True, inline="always")
def page_dup_rmap_pte(page, i):
    """Mirror of ``page_dup_rmap(page + i, false)``: one more PTE mapping of the page."""
    page["_mapcount"][i] += 1
