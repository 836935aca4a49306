"""``MADV_COLD`` and ``MADV_PAGEOUT`` (``mm/madvise.c: madvise_cold_or_pageout_pte_range()``, 6.18):
the walk over one VMA's part of the range, in two kernels around the splits it asks for.

The kernel decides per PMD and per PTE batch, splitting a large folio the range covers only in part
(``split_folio()``) and looking at the same entries again; a split changes nothing but its own
folio. So :func:`madvise_cold_candidates` makes every decision on the state before the walk (which
folios to split, which to hand to reclaim), the wrapper splits them (:mod:`vmstate.kernels.split`),
and :func:`madvise_cold_apply` then walks the entries as the kernel's second look does: folios
still large and covered in part (a split that failed) or possibly shared are passed over; the
others are deactivated (COLD: entries made old, PG_referenced and PG_active cleared) or reclaimed
(PAGEOUT without swap: PG_referenced cleared, the folio activated again). Arguments as in
:mod:`vmstate.kernels.memory`: per 2 MiB slot ``r`` the PMD row (``rows[r]``) and the PTE indices
``[lo[r], hi[r])`` in the range.
"""
from numba import njit

from vmstate.kernels.constants import (
    HPAGE_PMD_NR, PG_active, PG_head, PG_referenced, PTE_PFN_MASK, PTE_PFN_SHIFT, _PAGE_ACCESSED,
    _PAGE_PRESENT, _PAGE_PSE, _PAGE_SPECIAL,
)
from vmstate.kernels.per_variant import folio_mapcount, folio_maybe_mapped_shared, per_variant

_HEAD = 1 << PG_head
_NOT_ACCESSED = 0xFFFFFFFFFFFFFFFF ^ _PAGE_ACCESSED
_NOT_REFERENCED = 0xFFFFFFFF ^ (1 << PG_referenced)
_NOT_ACTIVE = 0xFFFFFFFF ^ (1 << PG_active)


@njit(cache=True, inline="always")
def _pfn(e):
    return (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT


@njit(cache=True, inline="always")
def folio_pte_batch(pte, i, hi, pfn):
    """Mirror of ``madvise_folio_pte_batch()``: the present PTEs from ``i`` (before ``hi``) that map
    the following pages of the same large folio (``folio_pte_batch()`` ignores write, young and
    dirty), at most to the folio's end."""
    j = pfn % HPAGE_PMD_NR
    k = i + 1
    while k < hi and j + k - i < HPAGE_PMD_NR and pte[k] & _PAGE_PRESENT \
            and not pte[k] & _PAGE_SPECIAL and _pfn(pte[k]) == pfn + k - i:
        k += 1
    return k - i


@per_variant()
def madvise_cold_candidates(rows, lo, hi, pmds, tables, blocks, pageout, split, reclaim):
    """The decisions of ``madvise_cold_or_pageout_pte_range()`` over the slots, in address order:
    the blocks of the large folios to ``split_folio()`` (a huge PMD the range covers in part, a PTE
    batch shorter than its folio; not when ``folio_maybe_mapped_shared()``) into ``split``, and with
    ``pageout`` those reclaim gets whole (a huge PMD covered whole and not shared; a full PTE batch
    with ``folio_mapcount() == folio_nr_pages()``) into ``reclaim``. Returns the two counts."""
    ns = nr = 0
    for r in range(rows.shape[0]):
        row = rows[r]
        if row < 0:
            continue
        entry = pmds[row]["pmd"]
        if entry & _PAGE_PSE:
            b = _pfn(entry) // HPAGE_PMD_NR
            if folio_maybe_mapped_shared(blocks[b]):  # "Do not interfere with other mappings"
                continue
            if hi[r] - lo[r] != HPAGE_PMD_NR:
                split[ns] = b
                ns += 1
            elif pageout:
                reclaim[nr] = b
                nr += 1
            continue
        if not entry & _PAGE_PRESENT:
            continue
        pte = tables[pmds[row]["pte_table"]]["pte"]
        i = lo[r]
        while i < hi[r]:
            e = pte[i]
            if not e & _PAGE_PRESENT or e & _PAGE_SPECIAL:  # pte_none, !present, no normal folio
                i += 1
                continue
            pfn = _pfn(e)
            page = blocks[pfn // HPAGE_PMD_NR]
            if not page["flags"][0] & _HEAD:
                i += 1
                continue
            n = folio_pte_batch(pte, i, hi[r], pfn)
            if n < HPAGE_PMD_NR:
                if not folio_maybe_mapped_shared(page):
                    split[ns] = pfn // HPAGE_PMD_NR
                    ns += 1
            elif pageout and folio_mapcount(page) == HPAGE_PMD_NR:
                reclaim[nr] = pfn // HPAGE_PMD_NR
                nr += 1
            i += n
    return ns, nr


@njit(cache=True, inline="always")
def _cold_folio(flags, h, pageout):
    """``folio_clear_referenced()``; then COLD's ``folio_deactivate()`` (PG_active cleared) or, for
    PAGEOUT, reclaim finding no swap (``activate_locked``: PG_active set)."""
    flags[h] &= _NOT_REFERENCED
    if pageout:
        flags[h] |= 1 << PG_active
    else:
        flags[h] &= _NOT_ACTIVE


@per_variant()
def madvise_cold_apply(rows, lo, hi, pmds, tables, blocks, pageout):
    """The walk itself after the splits: a huge PMD covered whole and not maybe shared, a large
    folio's full PTE batch with ``folio_mapcount() == folio_nr_pages()``, or a small page mapped
    once is deactivated (COLD: the entries made old first) or reclaimed (PAGEOUT); everything else
    is passed over."""
    for r in range(rows.shape[0]):
        row = rows[r]
        if row < 0:
            continue
        entry = pmds[row]["pmd"]
        if entry & _PAGE_PSE:
            b = _pfn(entry) // HPAGE_PMD_NR
            if folio_maybe_mapped_shared(blocks[b]) or hi[r] - lo[r] != HPAGE_PMD_NR:
                continue
            if not pageout:
                pmds[row]["pmd"] = entry & _NOT_ACCESSED  # pmd_mkold()
            _cold_folio(blocks[b]["flags"], 0, pageout)
            continue
        if not entry & _PAGE_PRESENT:
            continue
        pte = tables[pmds[row]["pte_table"]]["pte"]
        i = lo[r]
        while i < hi[r]:
            e = pte[i]
            if not e & _PAGE_PRESENT or e & _PAGE_SPECIAL:
                i += 1
                continue
            pfn = _pfn(e)
            page = blocks[pfn // HPAGE_PMD_NR]
            n = 1
            if page["flags"][0] & _HEAD:
                n = folio_pte_batch(pte, i, hi[r], pfn)
                if n < HPAGE_PMD_NR or folio_mapcount(page) != HPAGE_PMD_NR:
                    i += n
                    continue
                h = 0
            else:
                h = pfn % HPAGE_PMD_NR
                if page["_mapcount"][h] + 1 != 1:  # folio_mapcount() != folio_nr_pages()
                    i += 1
                    continue
            if not pageout:
                for k in range(i, i + n):  # clear_young_dirty_ptes(CYDP_CLEAR_YOUNG)
                    pte[k] &= _NOT_ACCESSED
            _cold_folio(page["flags"], h, pageout)
            i += n
