"""Mapcount arithmetic of the v5 THP refcounting (``mm/huge_memory.c``, ``include/linux/mm.h``).

Mapcounts are stored biased (raw -1 = unmapped). While a THP is PMD-mapped every subpage's raw
``_mapcount`` carries +1 (the v5 offset, MODEL.md), which both functions below remove again.
"""
from numba import njit

from kernels.constants import HPAGE_PMD_NR


@njit(cache=True, inline="always")
def compound_mapcount(compound_mapcount_raw):
    """Mirror of v5 ``compound_mapcount()``: PMD mappings of the THP (raw + 1, kept in ``page[1]``)."""
    return compound_mapcount_raw + 1


@njit(cache=True, inline="always")
def page_mapcount(_mapcount, i, compound_mapcount_raw):
    """Mirror of v5 ``page_mapcount()`` for subpage ``i`` of one 512-entry ``_mapcount`` row.

    ``raw + 1 + (compound_mapcount - 1 if compound_mapcount else 0)``: the offset is one of the PMD
    mappings already.
    """
    ret = _mapcount[i] + 1
    cmc = compound_mapcount_raw + 1
    if cmc:
        ret += cmc - 1
    return ret


@njit(cache=True)
def total_mapcount(_mapcount, compound_mapcount_raw):
    """Mirror of the seed's ``mm/huge_memory.c:total_mapcount()`` over one THP's ``_mapcount`` row.

    ret = compound_mapcount + sum(raw + 1) - (HPAGE_PMD_NR if compound_mapcount else 0)
    """
    cmc = compound_mapcount_raw + 1
    ret = cmc + HPAGE_PMD_NR  # the "+ 1" of every subpage, hoisted out of the loop
    for i in range(HPAGE_PMD_NR):
        ret += _mapcount[i]
    # Positive compound_mapcount() offsets ->_mapcount in every subpage by one.
    if cmc:
        ret -= HPAGE_PMD_NR
    return ret
