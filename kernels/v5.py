"""The v5 refcounting (the 2015 patch series, 25/28's ``split_huge_page()``; MODEL.md): what the
common kernels declare in :mod:`vmstate.kernels.per_variant`, as v5 does it.

The offset is permanent while a PMD maps the THP: every subpage's raw ``_mapcount`` carries +1 while
``compound_mapcount() > 0``; the freeze changes no counter (migration entries keep their mapping
and reference), so the recheck compares ``total_mapcount()`` with ``page_count() - 1``.
"""
import numpy as np
from numba import njit

from vmstate.kernels.constants import (
    C_MMU_NOTIFIER, C_PTE_LOCK, C_PTE_WRITE, EBUSY,
    HPAGE_PMD_NR, PG_dirty, PG_hwpoison, PG_lru, PTE_PFN_MASK,
    PTE_PFN_SHIFT, TAIL_COPY_FLAGS, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW,
    _PAGE_SOFT_DIRTY, _PAGE_VMS_MIGRATION,
)
from vmstate.kernels.mapcount import page_mapcount, total_mapcount
from vmstate.kernels.pagewalk import WALK_SHIFT, walk_table_row
from vmstate.kernels.v2015 import (  # noqa: F401 (what v5 and 4.5 share: their declared names)
    HUGE_PMD_WP_COPIES_THP, LARGE_FOLIO_FIELDS, MADV_COLD_PAGEOUT, MOVE_NORMAL_PMD, PT_RECLAIM,
    MPROTECT_WRITABLE_EXCLUSIVE, NEW_ANON_PAGE_FLAGS,
    VMA_MERGE, count_deferred_split, count_split, count_thp_faults, debugfs_split_skips,
    deferred_split_requeue, deferred_split_should_split, page_dup_anon_rmap_pte,
    huge_pmd_wp_can_reuse, page_remove_rmap_ptes, population_folio, pte_wp_can_reuse,
)
from vmstate.kernels.refcount import drop_mapcount_offset

NAME = "v5"


@njit(cache=True, inline="always")
def mapcount_offset(page):
    """1 while ``compound_mapcount() > 0`` (raw ``compound_mapcount`` >= 0)."""
    return 1 if page["compound_mapcount"] >= 0 else 0


@njit(cache=True, inline="always")
def mapcount_offset_for(page, pmd_maps, pte_maps):
    """The offset is there whenever a PMD maps the THP."""
    return 1 if pmd_maps > 0 else 0


@njit(cache=True, inline="always")
def folio_mapcount(page):
    """v5 ``total_mapcount()``."""
    return total_mapcount(page["_mapcount"], page["compound_mapcount"], mapcount_offset(page))


@njit(cache=True, inline="always")
def page_add_new_anon_rmap(page, mm_id):
    """v5 ``page_add_new_anon_rmap(page, vma, address, true)``: compound_mapcount 1 (raw 0) and the
    offset on every subpage (``atomic_set(&page[i]._mapcount, 0)``)."""
    page["compound_mapcount"] = 0
    mc = page["_mapcount"]
    for i in range(HPAGE_PMD_NR):
        mc[i] = 0


@njit(cache=True, inline="always")
def page_dup_anon_rmap_pmd(page, mm_id):
    """v5 ``page_dup_rmap(page, true)``: one more compound mapping."""
    page["compound_mapcount"] += 1


@njit(cache=True, inline="always")
def page_remove_anon_compound_rmap(page, mm_id, events):
    """v5 ``page_remove_rmap(page, true)``: the last compound mapping drops the offset from every
    subpage, and a subpage reaching -1 (no PTE maps it) queues the THP for deferred split."""
    page["compound_mapcount"] -= 1
    if page["compound_mapcount"] >= 0:
        return
    drop_mapcount_offset(page, events)


@njit(cache=True, inline="always")
def split_huge_pmd_counts(page, freeze, mm_id, events):
    """v5: the PMD's reference becomes 512 PTE references; its compound mapping goes, and every
    subpage gains a PTE mapping unless this was the last PMD (whose offset becomes it). A freeze
    changes nothing more: migration entries keep mapping and reference."""
    page["compound_mapcount"] -= 1
    if page["compound_mapcount"] >= 0:  # !atomic_add_negative(-1, compound_mapcount_ptr(page))
        # Additional reference on subpages: the other PMD mappings keep the offset.
        mc = page["_mapcount"]
        for i in range(HPAGE_PMD_NR):
            mc[i] += 1
    # else the last compound mapping is gone: the offset becomes every subpage's PTE mapping.
    page["_count"][0] += HPAGE_PMD_NR - 1


@njit(cache=True, inline="always")
def split_pmd_pte_bits(page, entry, freeze):
    """v5 ``__split_huge_pmd_locked()``: ``make_migration_entry(page + i, write)`` with ``freeze``;
    else mk_pte + maybe_mkwrite, pte_wrprotect unless write, pte_mkold unless young, and every PTE
    dirty (soft-dirty is not carried)."""
    write = entry & _PAGE_RW
    if freeze:
        return _PAGE_VMS_MIGRATION | write
    return _PAGE_PRESENT | _PAGE_DIRTY | write | (entry & _PAGE_ACCESSED)


SPLIT_PMD_SETS_PAGE_DIRTY = False
FREEZE_FROM_VM_START = False       # the seed walks all 512 PTEs of the table
FREEZE_TO_VM_END = False
FREEZE_STOPS_UNMAPPED = False      # migration entries keep the mapcount: it never reaches 0
FREEZE_AT_VMA_ADDRESS = False      # freeze_page(): haddr = __vma_address(page, vma) & HPAGE_PMD_MASK
RMAP_WALK_STEPS_OVER_HOLES = False
SPLIT_PINNED = -EBUSY


@njit(cache=True, inline="always")
def freeze_pte(page, i, pte, mm_id, events):
    """v5 ``freeze_page_vma()``: ``make_migration_entry(page, pte_write(entry))``, soft-dirty carried
    to the swap pte; the entry keeps the mapping and the reference: no count changes."""
    return (pte & (PTE_PFN_MASK | _PAGE_RW | _PAGE_SOFT_DIRTY)) | _PAGE_VMS_MIGRATION


@njit(cache=True)
def unfreeze_page(b, v0, v1, vma_walk, vma_lo, vma_hi, vma_write, pmds, tables, blocks, costs):
    """Mirror of the seed's ``unfreeze_page(anon_vma, page)``: per mapped subpage, per VMA mapping
    it, one mmu-notifier range and ``unfreeze_page_vma()`` under one PTE lock (the review asks why
    this is not batched). The C loops subpage-major (``for i: anon_vma_interval_tree_foreach(pgoff
    + i)``); this loops VMA-major so the PMD lookup (``mm_find_pmd``) is done once per VMA and page
    table: every (subpage, VMA) pair touches its own PTE, so the order changes nothing but speed.
    ``vma_address(page + i, vma)`` is the subpage's real address, so after mremap the walk finds
    it in whichever of the two tables it sits (``vma_walk``, :mod:`vmstate.kernels.pagewalk`).

    ``unfreeze_page_vma(vma, page + i, address)``, per subpage with ``page_mapcount(page + i)``::

        pte_lock += 1
        if (!is_migration_entry(pte) || migration_entry_to_page(pte) != page + i)
            return;
        pte = pte_mkold(mk_pte(page + i, vma->vm_page_prot));   /* soft-dirty not carried */
        if (is_write_migration_entry(entry)) pte = maybe_mkwrite(pte, vma);
        set_pte_at(...);                                         /* pte_write += 1 */

    is written below without a branch (counts summed, the PTE selected), so the loop vectorizes."""
    page = blocks[b]
    _mapcount = page["_mapcount"]
    cmc = page["compound_mapcount"]
    offset = mapcount_offset(page)
    pfn0 = b * HPAGE_PMD_NR
    for v in range(v0, v1):
        s = vma_walk[v, WALK_SHIFT]
        rw = _PAGE_RW if vma_write[v] else 0
        mapped_all = 0
        for half in range(2):  # the subpages in the table of each PMD slot
            lo = max(vma_lo[v], (half << 9) - s)
            hi = min(vma_hi[v], ((half + 1) << 9) - s)
            if lo >= hi:
                continue
            row = vma_walk[v, half]
            mapped = 0
            if walk_table_row(pmds, row):
                pte = tables[pmds[row]["pte_table"]]["pte"]  # mm_find_pmd() found a PTE table
                written = 0
                for i in range(lo, hi):
                    j = (s + i) & (HPAGE_PMD_NR - 1)
                    m = page_mapcount(_mapcount, i, cmc, offset) != 0
                    e = pte[j]
                    hit = m & ((e & _PAGE_VMS_MIGRATION) != 0) & ((e & PTE_PFN_MASK) >> PTE_PFN_SHIFT == pfn0 + i)
                    new = np.uint64(((pfn0 + i) << PTE_PFN_SHIFT) | _PAGE_PRESENT) | (e & np.uint64(rw))
                    pte[j] = new if hit else e
                    mapped += m
                    written += hit
                costs[C_PTE_LOCK] += mapped
                costs[C_PTE_WRITE] += written
            else:
                for i in range(lo, hi):
                    mapped += page_mapcount(_mapcount, i, cmc, offset) != 0
            mapped_all += mapped
        costs[C_MMU_NOTIFIER] += mapped_all


@njit(cache=True, inline="always")
def split_recheck_ok(mapcount, count):
    """The seed: ``total_mapcount(head) == page_count(head) - 1`` (the freeze kept every count)."""
    return mapcount == count - 1


@njit(cache=True, inline="always")
def split_recheck_bug(mapcount, count):
    """The seed's ``BUG()``: ``mapcount > page_count - 1``."""
    return mapcount > count - 1


DEBUGFS_SPLIT_PER_ADDRESS = False


@njit(cache=True, inline="always")
def folio_maybe_mapped_shared(page):
    """Not in v5 (MADV_COLD is v5.4): ``total_mapcount() > 1``, never reached."""
    return folio_mapcount(page) > 1


@njit(cache=True, inline="always")
def _split_huge_page_tail(flags, _count, _mapcount, compound_mapcount_raw, offset, head_flags, tail):
    """Mirror of ``__split_huge_page_tail(head, tail, lruvec, list)`` with ``list == NULL``, over one
    THP's 512-entry fields; the caller has checked ``BUG_ON(page_tail->_count != 0)`` and passes
    ``head->flags`` read once (so the loop over tails vectorizes). Returns the mapcount moved:
    ``_count += mapcount + 1`` with ``mapcount = page_mapcount(tail)``."""
    mapcount = page_mapcount(_mapcount, tail, compound_mapcount_raw, offset)
    _count[tail] += mapcount + 1
    # flags &= ~PAGE_FLAGS_CHECK_AT_PREP | __PG_HWPOISON (clears PG_tail), head's copied, dirty set;
    # lru_add_page_tail(): SetPageLRU when list == NULL. mapping/index: vmstate derives them from the
    # block once PG_tail is clear (mapping = head's, index = head.index + tail).
    flags[tail] = ((flags[tail] & (1 << PG_hwpoison)) | (head_flags & TAIL_COPY_FLAGS)
                   | (1 << PG_dirty) | (1 << PG_lru))
    return mapcount
