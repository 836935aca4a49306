"""What the two 2015-era variants, v5 (the patch series) and mainline 4.5, do alike: one
implementation each of the declared names they share (:mod:`vmstate.kernels.per_variant`), which
:mod:`vmstate.kernels.v5` and :mod:`vmstate.kernels.v4_5` import. Neither has large-folio fields, MM
slots or a page content check: these are the kernels before 6.x."""
from numba import njit

from vmstate.kernels.constants import (
    EV_THP_DEFERRED_SPLIT_PAGE, EV_THP_FAULT_ALLOC, EV_THP_SPLIT_PAGE, EV_THP_SPLIT_PAGE_FAILED,
)
from vmstate.kernels.constants import PG_head, PG_tail
from vmstate.kernels.mapcount import page_mapcount
from vmstate.kernels.refcount import page_remove_rmap_pte, reset_folio_fields

NEW_ANON_PAGE_FLAGS = 0
MADV_COLD_PAGEOUT = False  # MADV_COLD and MADV_PAGEOUT came with v5.4
LARGE_FOLIO_FIELDS = False
VMA_MERGE = False  # the seed's no-merge rule (docs/semantics.md)
MPROTECT_WRITABLE_EXCLUSIVE = False  # private anonymous entries become writable on a write fault
HUGE_PMD_WP_COPIES_THP = True  # do_huge_pmd_wp_page(): alloc_hugepage_vma() + copy_user_huge_page()
MOVE_NORMAL_PMD = False  # move_normal_pmd() came with 4.20
PT_RECLAIM = False  # CONFIG_PT_RECLAIM came with 6.14


@njit(cache=True, inline="always")
def huge_pmd_wp_can_reuse(page, offset):
    """``do_huge_pmd_wp_page()`` ("mm, thp: adjust conditions when we can reuse the page on WP
    fault"): ``page_mapcount(page) == 1 && page_count(page) == 1``."""
    return (page_mapcount(page["_mapcount"], 0, page["compound_mapcount"], offset) == 1
            and page["_count"][0] == 1)


@njit(cache=True, inline="always")
def pte_wp_can_reuse(page, i):
    """``do_wp_page()`` → ``reuse_swap_page()``: never a THP's subpage ("The page is part of THP and
    cannot be reused"), else ``page_mapcount(page) <= 1`` (no swap cache)."""
    if page["flags"][i] & ((1 << PG_head) | (1 << PG_tail)):
        return False
    return page["_mapcount"][i] + 1 <= 1


@njit(cache=True, inline="always")
def count_deferred_split(events, n):
    """``count_vm_event(THP_DEFERRED_SPLIT_PAGE)`` per THP."""
    events[EV_THP_DEFERRED_SPLIT_PAGE] += n


@njit(cache=True, inline="always")
def count_thp_faults(events, n):
    """``count_vm_event(THP_FAULT_ALLOC)`` per THP."""
    events[EV_THP_FAULT_ALLOC] += n


@njit(cache=True, inline="always")
def page_dup_anon_rmap_pte(page, i, mm_id):
    """``page_dup_rmap(page + i, false)``: one more PTE mapping of the page."""
    page["_mapcount"][i] += 1


@njit(cache=True, inline="always")
def page_remove_rmap_ptes(page, lo, hi, mm_id, events):
    """``page_remove_rmap(page + i, false)`` for each page of the batch, in order."""
    for i in range(lo, hi):
        page_remove_rmap_pte(page, i, events)


@njit(cache=True, inline="always")
def count_split(ok, events):
    """``count_vm_event(!ret ? THP_SPLIT_PAGE : THP_SPLIT_PAGE_FAILED)``."""
    events[EV_THP_SPLIT_PAGE if ok else EV_THP_SPLIT_PAGE_FAILED] += 1


@njit(cache=True, inline="always")
def debugfs_split_skips(page):
    """The seed's debugfs, and 4.5's (``split_huge_pages_set()``), try every THP they find."""
    return False


@njit(cache=True, inline="always")
def deferred_split_should_split(page, events):
    """v5 26/28's (and 4.5's) ``deferred_split_scan()`` splits every THP on the queue."""
    return 1


@njit(cache=True, inline="always")
def deferred_split_requeue(page, did_split):
    """``list_splice_tail()`` puts back every THP the split left on the list (v5 26/28, 4.5)."""
    return True


@njit(cache=True, inline="always")
def population_folio(page, pmd_maps, pte_maps, mappers, partial, split):
    """``population_folio()`` of the variants without large-folio fields: the fields at their
    initial values; the THP is queued (and was counted) when the partial zap left a subpage
    unmapped, which it does only where the parent is its one mapper."""
    reset_folio_fields(page)
    page["compound_mapcount"] = pmd_maps - 1
    q = 1 if partial and mappers == 1 else 0
    page["deferred"] = q
    return q
