"""get_page()/put_page() and page freeing for the v5 design (``include/linux/mm.h``, ``mm/swap.c``).

Page state is field-major per 2 MiB block: ``flags[b, i]``, ``_count[b, i]``, ``_mapcount[b, i]`` for
pfn ``b * 512 + i``; ``compound_mapcount[b]`` and ``deferred[b]`` per THP.
"""
from numba import njit

from kernels.constants import HPAGE_PMD_NR, PG_head, PG_hwpoison, PG_tail, C_PAGES_FREED

_HEAD = 1 << PG_head
_TAIL = 1 << PG_tail
_KEEP_ON_FREE = 1 << PG_hwpoison  # free_pages_prepare(): flags &= ~PAGE_FLAGS_CHECK_AT_PREP


@njit(cache=True, inline="always")
def compound_head_index(flags, b, i):
    """Mirror of ``compound_head()``: index in block ``b`` of the page that holds the count of ``i``."""
    if flags[b, i] & _TAIL:
        return 0
    return i


@njit(cache=True)
def get_page(flags, _count, b, i):
    """Mirror of v5 ``get_page()``: every reference to a THP subpage goes to the head."""
    _count[b, compound_head_index(flags, b, i)] += 1


@njit(cache=True)
def put_page(flags, _count, _mapcount, compound_mapcount, deferred, b, i, costs):
    """Mirror of ``put_page()``: drop one reference; the last one frees the page (a THP whole).

    Returns 1 when the page was freed.
    """
    h = compound_head_index(flags, b, i)
    _count[b, h] -= 1
    if _count[b, h] != 0:
        return 0
    if flags[b, h] & _HEAD:
        # __put_compound_page() -> free_compound_page(): all 512 frames go back; the THP leaves
        # the deferred split queue (free_transhuge_page in v5 26/28).
        for j in range(HPAGE_PMD_NR):
            flags[b, j] &= _KEEP_ON_FREE
            _mapcount[b, j] = -1
        compound_mapcount[b] = -1
        deferred[b] = 0
        costs[C_PAGES_FREED] += HPAGE_PMD_NR
    else:
        flags[b, h] &= _KEEP_ON_FREE
        _mapcount[b, h] = -1
        costs[C_PAGES_FREED] += 1
    return 1


@njit(cache=True)
def put_pages(flags, _count, _mapcount, compound_mapcount, deferred, pfns, costs):
    """``put_page()`` on every pfn in order (a zap's TLB-gather batch, or an unpin)."""
    for k in range(pfns.shape[0]):
        b = pfns[k] // HPAGE_PMD_NR
        put_page(flags, _count, _mapcount, compound_mapcount, deferred, b, pfns[k] % HPAGE_PMD_NR,
                 costs)
