"""Mainline Linux 4.5's refcounting (where the series landed, reworked): what the common kernels
declare in :mod:`vmstate.kernels.per_variant`, as 4.5 does it.

No permanent offset: ``PG_double_map`` on ``page[1]`` adds +1 to every subpage's raw ``_mapcount``
only while PMDs and PTEs map the THP at once. ``freeze_page()`` drops each mapping's count and
reference (migration entries hold neither) and ``unfreeze_page()`` takes them back, one PTE lock per
VMA; the recheck is ``!total_mapcount && page_count == 1``.
"""
from numba import njit

from vmstate.kernels.constants import (
    C_MMU_NOTIFIER, C_PTE_LOCK, C_PTE_WRITE, EBUSY,
    HPAGE_PMD_NR, PG_dirty, PG_double_map, PG_head, PG_hwpoison, PG_lru,
    PTE_PFN_MASK, PTE_PFN_SHIFT, TAIL_COPY_FLAGS, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT,
    _PAGE_RW, _PAGE_SOFT_DIRTY, _PAGE_VMS_MIGRATION,
)
from vmstate.kernels.mapcount import total_mapcount
from vmstate.kernels.pagewalk import WALK_SHIFT, walk_table_row
from vmstate.kernels.refcount import deferred_split_huge_page, drop_mapcount_offset, page_remove_rmap_pte
from vmstate.kernels.v2015 import (  # noqa: F401 (what v5 and 4.5 share: their declared names)
    HUGE_PMD_WP_COPIES_THP, LARGE_FOLIO_FIELDS, MADV_COLD_PAGEOUT, MOVE_NORMAL_PMD, PT_RECLAIM,
    MPROTECT_WRITABLE_EXCLUSIVE, NEW_ANON_PAGE_FLAGS,
    VMA_MERGE, count_deferred_split, count_split, count_thp_faults, debugfs_split_skips,
    deferred_split_requeue, deferred_split_should_split, page_dup_anon_rmap_pte,
    huge_pmd_wp_can_reuse, page_remove_rmap_ptes, population_folio, pte_wp_can_reuse,
)

NAME = "v4.5"
_DOUBLE_MAP = 1 << PG_double_map
_NOT_DOUBLE_MAP = 0xFFFFFFFF ^ _DOUBLE_MAP


@njit(cache=True, inline="always")
def mapcount_offset(page):
    """1 while ``PageDoubleMap()`` (``PG_double_map`` on ``page[1]``)."""
    return 1 if page["flags"][1] & _DOUBLE_MAP else 0


@njit(cache=True, inline="always")
def mapcount_offset_for(page, pmd_maps, pte_maps):
    """The offset is there while PMDs and PTEs map the THP at once, with ``PG_double_map`` set."""
    if pmd_maps > 0 and pte_maps > 0:
        page["flags"][1] |= _DOUBLE_MAP
        return 1
    return 0


@njit(cache=True, inline="always")
def folio_mapcount(page):
    """4.5 ``total_mapcount()``."""
    return total_mapcount(page["_mapcount"], page["compound_mapcount"], mapcount_offset(page))


@njit(cache=True, inline="always")
def page_add_new_anon_rmap(page, mm_id):
    """4.5 ``page_add_new_anon_rmap(page, vma, address, true)``: ``atomic_set(compound_mapcount_ptr
    (page), 0)``; the subpages' ``_mapcount`` stay -1."""
    page["compound_mapcount"] = 0


@njit(cache=True, inline="always")
def page_dup_anon_rmap_pmd(page, mm_id):
    """4.5 ``page_dup_rmap(page, true)``: ``atomic_inc(compound_mapcount_ptr(page))``."""
    page["compound_mapcount"] += 1


@njit(cache=True, inline="always")
def page_remove_anon_compound_rmap(page, mm_id, events):
    """Mirror of 4.5 ``page_remove_anon_compound_rmap()``: the last compound mapping clears
    PG_double_map (dropping its +1: queued if a subpage reaches -1), or, with no PTE mapping
    possible, queues the THP for deferred split whole (nr = HPAGE_PMD_NR)."""
    page["compound_mapcount"] -= 1
    if page["compound_mapcount"] >= 0:
        return
    flags = page["flags"]
    if not flags[1] & _DOUBLE_MAP:
        deferred_split_huge_page(page, events)
        return
    flags[1] &= _NOT_DOUBLE_MAP  # TestClearPageDoubleMap
    drop_mapcount_offset(page, events)


@njit(cache=True, inline="always")
def split_huge_pmd_counts(page, freeze, mm_id, events):
    """Mainline 4.5: page_ref_add(page, 511) and atomic_inc(&page[i]._mapcount) per PTE; set
    PG_double_map (one more +1 each) while other PMDs still map the THP; the last compound mapping
    clears it again. A freeze then drops each new PTE's mapping and reference (migration entries
    hold neither): page_remove_rmap(page + i, false) + put_page(page + i)."""
    mc = page["_mapcount"]
    flags = page["flags"]
    page["_count"][0] += HPAGE_PMD_NR - 1
    for i in range(HPAGE_PMD_NR):
        mc[i] += 1
    if page["compound_mapcount"] + 1 > 1 and not flags[1] & _DOUBLE_MAP:  # !TestSetPageDoubleMap
        flags[1] |= _DOUBLE_MAP
        for i in range(HPAGE_PMD_NR):
            mc[i] += 1
    page["compound_mapcount"] -= 1
    if page["compound_mapcount"] < 0 and flags[1] & _DOUBLE_MAP:  # last one; TestClearPageDoubleMap
        flags[1] &= _NOT_DOUBLE_MAP
        for i in range(HPAGE_PMD_NR):
            mc[i] -= 1
    if freeze:
        for i in range(HPAGE_PMD_NR):
            page_remove_rmap_pte(page, i, events)
        page["_count"][0] -= HPAGE_PMD_NR  # put_page(page + i), each to the head


@njit(cache=True, inline="always")
def split_pmd_pte_bits(page, entry, freeze):
    """4.5 ``__split_huge_pmd_locked()``: ``make_migration_entry(page + i, write)`` with ``freeze``;
    else mk_pte + maybe_mkwrite, pte_wrprotect unless write, pte_mkold unless young — and clean: 4.5
    marks the page dirty instead when the PMD was ("mm: don't split THP page when MADV_FREE ...")."""
    write = entry & _PAGE_RW
    if freeze:
        return _PAGE_VMS_MIGRATION | write
    return _PAGE_PRESENT | write | (entry & _PAGE_ACCESSED)


SPLIT_PMD_SETS_PAGE_DIRTY = True
FREEZE_FROM_VM_START = True  # ``if (address < vma->vm_start)`` skips to vm_start; no stop at vm_end
FREEZE_TO_VM_END = False
FREEZE_STOPS_UNMAPPED = False  # freeze_page() walks every VMA of the anon_vma query
FREEZE_AT_VMA_ADDRESS = True   # "thp: fix split_huge_page() after mremap() of THP": the real address
RMAP_WALK_STEPS_OVER_HOLES = False  # mm_find_pmd() == NULL at the boundary: return
SPLIT_PINNED = -EBUSY


@njit(cache=True, inline="always")
def freeze_pte(page, i, pte, mm_id, events):
    """4.5 ``freeze_page_vma()``: a dirty PTE dirties the page (``SetPageDirty``: PF_HEAD, the head's
    flag), then ``page_remove_rmap(page, false)`` and ``put_page(page)`` (to the head); the entry is
    ``make_migration_entry(page, pte_write(entry))`` with the soft-dirty bit carried."""
    if pte & _PAGE_DIRTY:
        page["flags"][0] |= 1 << PG_dirty
    page_remove_rmap_pte(page, i, events)
    page["_count"][0] -= 1
    return (pte & (PTE_PFN_MASK | _PAGE_RW | _PAGE_SOFT_DIRTY)) | _PAGE_VMS_MIGRATION


@njit(cache=True)
def unfreeze_page_vma(w, b, lo, writable, pmds, tables, blocks, costs):
    """Mirror of 4.5's ``unfreeze_page_vma(vma, page, address)``: from the VMA's first subpage ``lo``
    to the THP's end (no stop at vm_end) under one PTE lock per table, into the next table where a
    mremap'ed THP crosses one (``mm_find_pmd()`` == NULL ends it); each migration entry of the page
    gets its reference and mapping back (``get_page`` + ``page_add_anon_rmap``) and a PTE, dirty if
    the page is (``PageDirty``: the head's flag while compound), writable if the entry and this VMA
    are. ``w``: the VMA's rmap walk entry (:mod:`vmstate.kernels.pagewalk`)."""
    s = w[WALK_SHIFT]
    row = w[(s + lo) >> 9]
    if not walk_table_row(pmds, row):  # mm_find_pmd() == NULL
        return
    costs[C_PTE_LOCK] += 1
    pte = tables[pmds[row]["pte_table"]]["pte"]
    page = blocks[b]
    compound = page["flags"][0] & (1 << PG_head)  # a failed split: the THP is still compound
    for i in range(lo, HPAGE_PMD_NR):
        if s + i == HPAGE_PMD_NR:  # "crossed page table boundary": map the next one
            row = w[1]
            if not walk_table_row(pmds, row):
                return
            costs[C_PTE_LOCK] += 1
            pte = tables[pmds[row]["pte_table"]]["pte"]
        j = (s + i) & (HPAGE_PMD_NR - 1)
        e = pte[j]
        if not e & _PAGE_VMS_MIGRATION:
            continue
        pfn = b * HPAGE_PMD_NR + i
        if (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT != pfn:
            continue
        h = 0 if compound else i
        page["_count"][h] += 1     # get_page(page)
        page["_mapcount"][i] += 1  # page_add_anon_rmap(page, vma, address, false)
        new = (pfn << PTE_PFN_SHIFT) | _PAGE_PRESENT  # pte_mkold(mk_pte(page, vm_page_prot))
        if page["flags"][h] & (1 << PG_dirty):
            new |= _PAGE_DIRTY
        if e & _PAGE_RW and writable:
            new |= _PAGE_RW
        pte[j] = new
        costs[C_PTE_WRITE] += 1


@njit(cache=True)
def unfreeze_page(b, v0, v1, vma_walk, vma_lo, vma_hi, vma_write, pmds, tables, blocks, costs):
    """Mirror of 4.5's ``unfreeze_page(anon_vma, page)``: batched, one mmu-notifier range and one PTE
    lock per VMA (and table)."""
    for v in range(v0, v1):
        costs[C_MMU_NOTIFIER] += 1
        unfreeze_page_vma(vma_walk[v], b, vma_lo[v], vma_write[v], pmds, tables, blocks, costs)


@njit(cache=True, inline="always")
def split_recheck_ok(mapcount, count):
    """4.5: the freeze dropped every mapping and reference: ``!mapcount && count == 1`` (the
    caller's reference)."""
    return mapcount == 0 and count == 1


@njit(cache=True, inline="always")
def split_recheck_bug(mapcount, count):
    """4.5's ``BUG()`` branch: a mapping left that the freeze did not find (DEBUG_VM)."""
    return mapcount != 0


DEBUGFS_SPLIT_PER_ADDRESS = False


@njit(cache=True, inline="always")
def folio_maybe_mapped_shared(page):
    """Not in 4.5 (MADV_COLD is v5.4): ``total_mapcount() > 1``, never reached."""
    return folio_mapcount(page) > 1


@njit(cache=True, inline="always")
def _split_huge_page_tail(flags, _count, _mapcount, compound_mapcount_raw, offset, head_flags, tail):
    """Mirror of 4.5's ``__split_huge_page_tail()``: ``_count += mapcount + 1`` with ``mapcount =
    raw + 1`` (0 after the freeze dropped every mapping; they come back with unfreeze); PG_dirty is
    copied from the head (it is per THP) and PG_hwpoison kept."""
    mapcount = _mapcount[tail] + 1
    _count[tail] += mapcount + 1
    flags[tail] = ((flags[tail] & (1 << PG_hwpoison))
                   | (head_flags & (TAIL_COPY_FLAGS | (1 << PG_dirty))) | (1 << PG_lru))
    return mapcount
