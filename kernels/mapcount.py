"""Mapcount arithmetic of the THP refcounting (``mm/huge_memory.c``, ``include/linux/mm.h``).

Mapcounts are stored biased (raw -1 = unmapped). A THP's subpages' raw ``_mapcount`` may carry +1
that is not a PTE mapping — the *offset* — which both functions below remove again:

- v5 (the patch series, MODEL.md): permanently while the THP is PMD-mapped (compound_mapcount > 0);
- mainline 4.5: only while ``PG_double_map`` is set (mapped by PMDs and PTEs at once).
"""
from numba import njit

from vmstate.kernels.constants import HPAGE_PMD_NR, PG_double_map, V4_5


@njit(cache=True, inline="always")
def compound_mapcount(compound_mapcount_raw):
    """Mirror of ``compound_mapcount()``: PMD mappings of the THP (raw + 1, kept in ``page[1]``)."""
    return compound_mapcount_raw + 1


@njit(cache=True, inline="always")
def mapcount_offset(page, variant):
    """1 when every subpage's raw ``_mapcount`` of the THP in block record ``page`` carries the
    offset: v5 while ``compound_mapcount() > 0``, 4.5 while ``PageDoubleMap()`` (on ``page[1]``)."""
    if variant == V4_5:
        return 1 if page["flags"][1] & (1 << PG_double_map) else 0
    return 1 if page["compound_mapcount"] >= 0 else 0


@njit(cache=True, inline="always")
def page_mapcount(_mapcount, i, compound_mapcount_raw, offset):
    """Mirror of ``page_mapcount()`` for subpage ``i`` of one 512-entry ``_mapcount`` row of a THP:
    ``raw + 1 + compound_mapcount - offset``. (v5 writes it ``raw + 1 + (cmc - 1 if cmc else 0)``,
    4.5 ``raw + 1 + cmc - PageDoubleMap``: the same with ``offset`` = ``mapcount_offset()``.)"""
    return _mapcount[i] + 1 + compound_mapcount_raw + 1 - offset


@njit(cache=True)
def total_mapcount(_mapcount, compound_mapcount_raw, offset):
    """Mirror of ``total_mapcount()`` over one THP's ``_mapcount`` row.

    ret = compound_mapcount + sum(raw + 1) - (HPAGE_PMD_NR if offset else 0)
    (v5: "Positive compound_mapcount() offsets ->_mapcount in every subpage by one"; 4.5:
    ``if (PageDoubleMap(page)) ret -= HPAGE_PMD_NR``)
    """
    ret = compound_mapcount_raw + 1 + HPAGE_PMD_NR  # the "+ 1" of every subpage, hoisted
    for i in range(HPAGE_PMD_NR):
        ret += _mapcount[i]
    if offset:
        ret -= HPAGE_PMD_NR
    return ret
