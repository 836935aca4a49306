"""Mapcount arithmetic of the THP refcounting (``mm/huge_memory.c``, ``include/linux/mm.h``).

Mapcounts are stored biased (raw -1 = unmapped). A THP's subpages' raw ``_mapcount`` may carry +1
that is not a PTE mapping — the *offset* — which the readers below remove again. When a variant
sets it is the variant's ``mapcount_offset()`` (:mod:`vmstate.kernels.v5`: permanently while the
THP is PMD-mapped; :mod:`vmstate.kernels.v4_5`: only while ``PG_double_map`` is set).
"""
from numba import njit, prange

from vmstate.kernels.constants import HPAGE_PMD_NR, PG_head
from vmstate.kernels.per_variant import (
    mapcount_offset, mapcount_offset_for, per_variant, population_folio,
)


@njit(cache=True, inline="always")
def compound_mapcount(compound_mapcount_raw):
    """Mirror of ``compound_mapcount()``: PMD mappings of the THP (raw + 1, kept in ``page[1]``)."""
    return compound_mapcount_raw + 1


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


@per_variant(parallel=True)
def mapcount_offsets(blocks, out):
    """``out[b]`` = the variant's ``mapcount_offset()`` of every THP (0 for other blocks): what the
    validators and the dataset export subtract."""
    for b in prange(blocks.shape[0]):
        page = blocks[b]
        out[b] = mapcount_offset(page) if page["flags"][0] & (1 << PG_head) else 0


@per_variant(parallel=True)
def set_population_folios(blocks, b0, pmd_maps, pte_maps, mappers, partial, split, out):
    """A generated population: the variant's ``population_folio()`` for THP ``k`` in block
    ``b0 + k``; ``out[k]`` = 1 where its program counted ``thp_deferred_split_page``."""
    for k in prange(pmd_maps.shape[0]):
        out[k] = population_folio(blocks[b0 + k], pmd_maps[k], pte_maps[k], mappers[k], partial[k],
                                  split[k])


@per_variant(parallel=True)
def set_mapcount_offsets(blocks, b0, pmd_maps, pte_maps, out):
    """A generated population (``vmstate.engine.population``): per THP ``k`` in block ``b0 + k``,
    ``out[k]`` = the offset it carries when ``pmd_maps[k]`` PMDs and ``pte_maps[k]`` PTE mappings
    per subpage map it (the variant's ``mapcount_offset_for()``, which sets its flag)."""
    for k in prange(pmd_maps.shape[0]):
        out[k] = mapcount_offset_for(blocks[b0 + k], pmd_maps[k], pte_maps[k])
