"""Mainline Linux 6.18 as configured on this machine (CONFIG_PAGE_MAPCOUNT=y, THP madvise,
``shrink_underused`` 1, ``max_ptes_none`` 511, no swap): what the common kernels declare in
:mod:`vmstate.kernels.per_variant`, as 6.18 does it (``docs/variant-6.18.md``).

Folio fields instead of an offset: a PMD mapping is counted in ``_entire_mapcount`` (vmstate's
``compound_mapcount``), never in a page's ``_mapcount``; ``_large_mapcount`` counts every mapping,
with the two MM slots of v6.15's MM-owner tracking (``_mm_id``, ``_mm_id_mapcount``,
``FOLIO_MM_IDS_SHARED_BIT``) behind ``folio_maybe_mapped_shared()``; ``_nr_pages_mapped`` counts the
PTE-mapped pages plus ``ENTIRELY_MAPPED`` while a PMD maps the folio, and decides when a folio
becomes partially mapped (``deferred_split_folio(folio, true)``, counted once). The split is
``__folio_split()`` to order 0: migration entries hold neither mapping nor reference (as in 4.5),
``folio_ref_freeze(folio, 1)`` is the recheck, an extra reference is -EAGAIN, and ``remap_page()``
maps the pages without data to the shared zero page on success.
"""
import numpy as np
from numba import njit

from vmstate.kernels.constants import (
    C_PTE_LOCK, C_PTE_WRITE, EAGAIN, ENTIRELY_MAPPED, EV_MTHP_ANON_FAULT_ALLOC,
    EV_MTHP_SPLIT, EV_MTHP_SPLIT_DEFERRED, EV_MTHP_SPLIT_FAILED, EV_THP_DEFERRED_SPLIT_PAGE,
    EV_THP_FAULT_ALLOC, EV_THP_SPLIT_PAGE, EV_THP_SPLIT_PAGE_FAILED, FOLIO_PAGES_MAPPED, HPAGE_PMD_NR,
    KHUGEPAGED_MAX_PTES_NONE, MM_ID_DUMMY, PG_anon_exclusive, PG_dirty, PG_head, PG_hwpoison,
    PG_lru, PTE_PFN_MASK, PTE_PFN_SHIFT, TAIL_COPY_FLAGS, ZERO_PFN, _PAGE_ACCESSED, _PAGE_DIRTY,
    _PAGE_PRESENT, _PAGE_RW, _PAGE_SOFT_DIRTY, _PAGE_SPECIAL, _PAGE_VMS_EXCLUSIVE,
    _PAGE_VMS_MIGRATION,
)
from vmstate.kernels.pagewalk import WALK_SHIFT, walk_table_row
from vmstate.kernels.refcount import page_has_data

NAME = "6.18"
_AE = 1 << PG_anon_exclusive
_NOT_AE = 0xFFFFFFFF ^ _AE
_HEAD = 1 << PG_head
# try_to_map_unused_to_zeropage(): pte_mkspecial(pfn_pte(my_zero_pfn(addr), vma->vm_page_prot)),
# PAGE_COPY of a private anonymous VMA being present and accessed
ZERO_PTE = (ZERO_PFN << PTE_PFN_SHIFT) | _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_SPECIAL
_MIGRATION_KEEPS = PTE_PFN_MASK | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_SOFT_DIRTY


# ---- mapcounts (include/linux/mm.h, include/linux/rmap.h) ---------------------------------------

@njit(cache=True, inline="always")
def mapcount_offset(page):
    """No offset: a page's ``_mapcount`` holds only its PTE mappings (CONFIG_PAGE_MAPCOUNT)."""
    return 0


@njit(cache=True, inline="always")
def mapcount_offset_for(page, pmd_maps, pte_maps):
    """No offset, whatever maps the folio."""
    return 0


@njit(cache=True, inline="always")
def folio_mapcount(page):
    """Mirror of ``folio_mapcount()`` of a large folio: ``folio_large_mapcount()``."""
    return page["_large_mapcount"] + 1


@njit(cache=True, inline="always")
def _folio_add_large_mapcount(page, diff, mm_id):
    """Mirror of ``folio_add_return_large_mapcount(folio, diff, vma)`` (v6.15+, 64-bit): the MM's
    slot gains ``diff``; a new MM takes a free slot and marks the folio maybe shared when others
    map it already (a third MM gets no slot: the bit is set since the second came)."""
    new = page["_large_mapcount"] + diff
    page["_large_mapcount"] = new
    ids, mc = page["_mm_id"], page["_mm_id_mapcount"]
    if ids[0] == mm_id:
        mc[0] += diff
    elif ids[1] == mm_id:
        mc[1] += diff
    elif ids[0] == MM_ID_DUMMY:
        ids[0] = mm_id
        mc[0] = diff - 1
        if new != diff - 1:  # "We might have other mappings already."
            page["_mm_ids_shared"] = 1
    elif ids[1] == MM_ID_DUMMY:
        ids[1] = mm_id
        mc[1] = diff - 1
        page["_mm_ids_shared"] = 1  # "Slot 0 certainly has mappings as well."


@njit(cache=True, inline="always")
def _folio_sub_large_mapcount(page, diff, mm_id):
    """Mirror of ``folio_sub_return_large_mapcount(folio, diff, vma)``: a slot that goes negative is
    freed; when one slot owns every mapping left, the folio is mapped exclusively again."""
    new = page["_large_mapcount"] - diff
    page["_large_mapcount"] = new
    ids, mc = page["_mm_id"], page["_mm_id_mapcount"]
    if ids[0] == mm_id:
        mc[0] -= diff
        if mc[0] >= 0:
            return
        mc[0] = -1
        ids[0] = MM_ID_DUMMY
    elif ids[1] == mm_id:
        mc[1] -= diff
        if mc[1] >= 0:
            return
        mc[1] = -1
        ids[1] = MM_ID_DUMMY
    if mc[0] == new or mc[1] == new:
        page["_mm_ids_shared"] = 0


@njit(cache=True, inline="always")
def folio_maybe_mapped_shared(page):
    """Mirror of ``folio_maybe_mapped_shared()`` of a large folio (CONFIG_MM_ID): "A single mapping
    implies 'mapped exclusively'", else the shared bit."""
    if folio_mapcount(page) <= 1:
        return False
    return page["_mm_ids_shared"] != 0


@njit(cache=True, inline="always")
def _deferred_split_folio(page, partially_mapped, events):
    """Mirror of ``deferred_split_folio(folio, partially_mapped)``: the first partial mapping sets
    PG_partially_mapped and counts ``thp_deferred_split_page`` and mthp ``split_deferred``
    (``nr_anon_partially_mapped`` is read from the flag); the folio goes on the queue."""
    if partially_mapped and not page["partially_mapped"]:
        page["partially_mapped"] = 1
        events[EV_THP_DEFERRED_SPLIT_PAGE] += 1
        events[EV_MTHP_SPLIT_DEFERRED] += 1
    page["deferred"] = 1  # list_add_tail() when list_empty(&folio->_deferred_list)


# ---- rmap (mm/rmap.c) --------------------------------------------------------------------------

@njit(cache=True, inline="always")
def page_add_new_anon_rmap(page, mm_id):
    """Mirror of ``folio_add_new_anon_rmap(folio, vma, haddr, RMAP_EXCLUSIVE)`` of a PMD-mapped THP
    (``_entire_mapcount`` 0, ``_nr_pages_mapped`` ENTIRELY_MAPPED, ``folio_set_large_mapcount(folio,
    1, vma)``, SetPageAnonExclusive on the head), then ``__do_huge_pmd_anonymous_page()``'s
    ``deferred_split_folio(folio, false)`` (shrink_underused: every new THP is queued)."""
    page["compound_mapcount"] = 0
    page["_nr_pages_mapped"] = ENTIRELY_MAPPED
    page["_large_mapcount"] = 0
    page["_mm_id_mapcount"][0] = 0
    page["_mm_id"][0] = mm_id
    page["flags"][0] |= _AE
    page["deferred"] = 1


@njit(cache=True, inline="always")
def population_folio(page, pmd_maps, pte_maps, mappers, partial, split):
    """6.18 fields of a generated THP, as its program leaves them: queued at fault; the parent
    (mm_id 1) in slot 0, the first child in slot 1 (fork marked it maybe shared; further children
    have no slot), each MM's mappings 1 (PMD) or 512 (PTEs), the parent's 512 less the zapped pages
    after a partial zap (which split its PMD); PageAnonExclusive on the head of an exclusive THP,
    and on every page once it was split; the partial zap of an exclusive THP made it partially
    mapped (the one counted)."""
    mc = page["_mapcount"]
    full = mappers - 1 if split else 0  # raw _mapcount of a page the parent did not zap
    mapped = zapped = 0
    for i in range(HPAGE_PMD_NR):
        mapped += mc[i] >= 0
        zapped += mc[i] < full
    page["compound_mapcount"] = pmd_maps - 1
    page["_nr_pages_mapped"] = mapped + (ENTIRELY_MAPPED if pmd_maps > 0 else 0)
    per_mm = HPAGE_PMD_NR if split else 1
    parent = HPAGE_PMD_NR - zapped if partial else per_mm
    page["_large_mapcount"] = parent + (mappers - 1) * per_mm - 1
    page["_mm_id"][0] = 1
    page["_mm_id_mapcount"][0] = parent - 1
    page["_mm_id"][1] = 2 if mappers > 1 else MM_ID_DUMMY
    page["_mm_id_mapcount"][1] = per_mm - 1 if mappers > 1 else -1
    page["_mm_ids_shared"] = 1 if mappers > 1 else 0
    q = 1 if partial and mappers == 1 else 0
    page["partially_mapped"] = q
    page["deferred"] = 1
    if mappers == 1:
        flags = page["flags"]
        flags[0] |= _AE
        if split or partial:
            for i in range(HPAGE_PMD_NR):
                flags[i] |= _AE
    return q


@njit(cache=True, inline="always")
def count_deferred_split(events, n):
    """``count_vm_event(THP_DEFERRED_SPLIT_PAGE)`` and mthp ``split_deferred`` per THP."""
    events[EV_THP_DEFERRED_SPLIT_PAGE] += n
    events[EV_MTHP_SPLIT_DEFERRED] += n


@njit(cache=True, inline="always")
def count_thp_faults(events, n):
    """``count_vm_event(THP_FAULT_ALLOC)`` and ``count_mthp_stat(HPAGE_PMD_ORDER,
    MTHP_STAT_ANON_FAULT_ALLOC)`` per THP (``nr_anon`` is read from the state)."""
    events[EV_THP_FAULT_ALLOC] += n
    events[EV_MTHP_ANON_FAULT_ALLOC] += n


MADV_COLD_PAGEOUT = True
LARGE_FOLIO_FIELDS = True
VMA_MERGE = True  # mprotect_fixup() -> vma_modify_flags() merges with compatible neighbours
NEW_ANON_PAGE_FLAGS = _AE  # do_anonymous_page(): folio_add_new_anon_rmap(RMAP_EXCLUSIVE)
# change_pte_range(MM_CP_TRY_CHANGE_WRITABLE): can_change_pte_writable() of a private anonymous page
MPROTECT_WRITABLE_EXCLUSIVE = True


HUGE_PMD_WP_COPIES_THP = False  # 5.8+ "thp: change CoW semantics for anon-THP": split, copy 4 KiB
MOVE_NORMAL_PMD = True  # CONFIG_HAVE_MOVE_PMD=y (/proc/config.gz)
PT_RECLAIM = True  # CONFIG_PT_RECLAIM=y (/proc/config.gz); measured: docs/kernel-bridge.md


@njit(cache=True, inline="always")
def huge_pmd_wp_can_reuse(page, offset):
    """``do_huge_pmd_wp_page()``: reuse when PageAnonExclusive, or when the PMD holds the only
    reference (``folio_ref_count() == 1``: ``SetPageAnonExclusive()``)."""
    if page["flags"][0] & _AE:
        return True
    if page["_count"][0] != 1:
        return False
    page["flags"][0] |= _AE
    return True


@njit(cache=True, inline="always")
def pte_wp_can_reuse(page, i):
    """``do_wp_page()``: reuse when PageAnonExclusive or ``wp_can_reuse_anon_folio()`` — a small
    folio whose only reference is the mapping's; a large one (``__wp_can_reuse_large_anon_folio()``,
    6.16+) with more than one page mapped, no other MM mapping it and every reference a mapping's —
    then ``SetPageAnonExclusive()``."""
    if not page["flags"][i] & _AE:
        if page["flags"][0] & _HEAD:
            if (folio_mapcount(page) <= 1 or page["_mm_ids_shared"] != 0
                    or folio_mapcount(page) != page["_count"][0]):
                return False
        elif page["_count"][i] != 1:
            return False
        page["flags"][i] |= _AE
    return True


@njit(cache=True, inline="always")
def page_dup_anon_rmap_pmd(page, mm_id):
    """Mirror of ``folio_try_dup_anon_rmap_pmd()``: ClearPageAnonExclusive (a FOLL_GET pin does not
    make the folio maybe DMA-pinned, so it never fails here), ``_entire_mapcount`` +1, large +1 for
    the child."""
    page["flags"][0] &= _NOT_AE
    page["compound_mapcount"] += 1
    _folio_add_large_mapcount(page, 1, mm_id)


@njit(cache=True, inline="always")
def page_dup_anon_rmap_pte(page, i, mm_id):
    """Mirror of ``folio_try_dup_anon_rmap_pte()``: ClearPageAnonExclusive, ``_mapcount`` +1, and for
    a large folio large +1 for the child (a batch's ``folio_add_large_mapcount(nr)`` comes to the
    same slots and bit: the MM is the same for every page of it)."""
    page["flags"][i] &= _NOT_AE
    page["_mapcount"][i] += 1
    if page["flags"][0] & _HEAD:
        _folio_add_large_mapcount(page, 1, mm_id)


@njit(cache=True, inline="always")
def page_remove_anon_compound_rmap(page, mm_id, events):
    """Mirror of ``folio_remove_rmap_pmd()`` (``__folio_remove_rmap(RMAP_LEVEL_PMD)``): large -1;
    the last entire mapping takes ENTIRELY_MAPPED off ``_nr_pages_mapped``, and the pages no PTE
    maps are ``nr``; partially mapped when 0 < nr < 512."""
    _folio_sub_large_mapcount(page, 1, mm_id)
    page["compound_mapcount"] -= 1
    if page["compound_mapcount"] >= 0:  # !atomic_add_negative(-1, &folio->_entire_mapcount)
        return
    page["_nr_pages_mapped"] -= ENTIRELY_MAPPED
    mapped = page["_nr_pages_mapped"]
    nr = 0
    if mapped < ENTIRELY_MAPPED:
        nr = max(HPAGE_PMD_NR - (mapped & FOLIO_PAGES_MAPPED), 0)
    if 0 < nr < HPAGE_PMD_NR:
        _deferred_split_folio(page, True, events)


@njit(cache=True, inline="always")
def page_remove_rmap_ptes(page, lo, hi, mm_id, events):
    """Mirror of ``folio_remove_rmap_ptes(folio, page + lo, hi - lo, vma)``: large -nr, each page's
    ``_mapcount`` -1; the pages reaching -1 (``last``) come off ``_nr_pages_mapped``; partially
    mapped when no PMD maps the folio, ``last`` > 0 and pages stay mapped. A small page only loses
    its mapping."""
    mc = page["_mapcount"]
    if not page["flags"][0] & _HEAD:
        for i in range(lo, hi):
            mc[i] -= 1
        return
    _folio_sub_large_mapcount(page, hi - lo, mm_id)
    last = 0
    for i in range(lo, hi):
        mc[i] -= 1
        last += mc[i] == -1
    nr = 0
    if last:
        page["_nr_pages_mapped"] -= last
        if page["_nr_pages_mapped"] < ENTIRELY_MAPPED:
            nr = last
    if nr and page["_nr_pages_mapped"]:
        _deferred_split_folio(page, True, events)


# ---- __split_huge_pmd_locked() (mm/huge_memory.c) ----------------------------------------------

@njit(cache=True, inline="always")
def split_pmd_pte_bits(page, entry, freeze):
    """6.18 ``__split_huge_pmd_locked()``: write, young, dirty and soft-dirty of the PMD go into
    every entry; with ``freeze``, ``folio_try_share_anon_rmap_pmd()`` moves PageAnonExclusive from
    the head into the migration entries (writable, readable-exclusive or readable)."""
    bits = entry & (_PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_SOFT_DIRTY)
    if freeze:
        if page["flags"][0] & _AE:
            page["flags"][0] &= _NOT_AE
            bits |= _PAGE_VMS_EXCLUSIVE
        return _PAGE_VMS_MIGRATION | bits
    return _PAGE_PRESENT | bits


@njit(cache=True, inline="always")
def split_huge_pmd_counts(page, freeze, mm_id, events):
    """6.18: without ``freeze``, ``folio_ref_add(folio, 511)`` and ``folio_add_anon_rmap_ptes(folio,
    page, 512, vma, haddr, RMAP_EXCLUSIVE if the head was)``: each page's ``_mapcount`` +1 (the
    first ones counted into ``_nr_pages_mapped``), large +512, PageAnonExclusive on every page.
    Then ``folio_remove_rmap_pmd()`` and, with ``freeze``, ``put_page()``: the migration entries
    hold neither mapping nor reference."""
    if not freeze:
        page["_count"][0] += HPAGE_PMD_NR - 1
        mc = page["_mapcount"]
        first = 0
        for i in range(HPAGE_PMD_NR):
            mc[i] += 1
            first += mc[i] == 0
        page["_nr_pages_mapped"] += first
        _folio_add_large_mapcount(page, HPAGE_PMD_NR, mm_id)
        if page["flags"][0] & _AE:
            flags = page["flags"]
            for i in range(HPAGE_PMD_NR):
                flags[i] |= _AE
    page_remove_anon_compound_rmap(page, mm_id, events)
    if freeze:
        page["_count"][0] -= 1


SPLIT_PMD_SETS_PAGE_DIRTY = True  # if (pmd_dirty(old_pmd)) folio_set_dirty(folio)
FREEZE_FROM_VM_START = True       # page_vma_mapped_walk() stays inside the VMA: from vma_address()
FREEZE_TO_VM_END = True           # to vma_address_end()
FREEZE_STOPS_UNMAPPED = True      # try_to_migrate(): rwc.done = folio_not_mapped
FREEZE_AT_VMA_ADDRESS = True      # page_vma_mapped_walk() from vma_address(), across page tables
RMAP_WALK_STEPS_OVER_HOLES = True  # page_vma_mapped_walk(): a none PMD is stepped over


# ---- __folio_split() (mm/huge_memory.c) --------------------------------------------------------

@njit(cache=True, inline="always")
def freeze_pte(page, i, pte, mm_id, events):
    """Mirror of ``try_to_migrate_one()`` on one PTE of the folio: the PTE's dirty bit dirties the
    folio, ``folio_try_share_anon_rmap_pte()`` moves PageAnonExclusive into the entry, the entry
    keeps write, young, dirty and soft-dirty; ``folio_remove_rmap_pte()`` (one page at a time: the
    first one counts the folio partially mapped) and ``folio_put()``."""
    if pte & _PAGE_DIRTY:
        page["flags"][0] |= 1 << PG_dirty  # folio_mark_dirty()
    entry = (pte & _MIGRATION_KEEPS) | _PAGE_VMS_MIGRATION
    if page["flags"][i] & _AE:
        page["flags"][i] &= _NOT_AE
        entry |= _PAGE_VMS_EXCLUSIVE
    page_remove_rmap_ptes(page, i, i + 1, mm_id, events)
    page["_count"][0] -= 1
    return entry


@njit(cache=True)
def unfreeze_page(b, v0, v1, vma_walk, vma_lo, vma_hi, vma_write, pmds, tables, blocks, costs):
    """Mirror of ``remap_page(folio, 512, RMP_USE_SHARED_ZEROPAGE on success)`` →
    ``remove_migration_pte()`` for every migration entry of the THP in each VMA's part of it: after
    a split, a page without data gets the zero page's PTE and nothing else
    (``try_to_map_unused_to_zeropage()``); every other entry becomes ``mk_pte()`` (old unless the
    entry was young, dirty if it and the folio were, writable if it was) with ``folio_get()`` and
    ``folio_add_anon_rmap_pte(RMAP_EXCLUSIVE if the entry was exclusive)`` — on the small page after
    a split, on the large folio after a failed one. page_vma_mapped_walk() finds a mremap'ed THP's
    entries in either of its two tables (``vma_walk``, :mod:`vmstate.kernels.pagewalk`)."""
    page = blocks[b]
    flags, _count, _mapcount = page["flags"], page["_count"], page["_mapcount"]
    compound = flags[0] & _HEAD
    pfn0 = b * HPAGE_PMD_NR
    for v in range(v0, v1):
        s = vma_walk[v, WALK_SHIFT]
        for half in range(2):  # the subpages in the table of each PMD slot
            lo = max(vma_lo[v], (half << 9) - s)
            hi = min(vma_hi[v], ((half + 1) << 9) - s)
            row = vma_walk[v, half]
            if lo >= hi or not walk_table_row(pmds, row):  # page_vma_mapped_walk(): no table
                continue
            pte = tables[pmds[row]["pte_table"]]["pte"]
            mm_id = pmds[row]["mm"] + 1
            # remove_migration_ptes() per new folio, each its own rmap walk and PTE lock in every
            # VMA covering it; one walk of the large folio after a failed split
            costs[C_PTE_LOCK] += 1 if compound else hi - lo
            for i in range(lo, hi):
                j = (s + i) & (HPAGE_PMD_NR - 1)
                e = pte[j]
                if not e & _PAGE_VMS_MIGRATION or (e & PTE_PFN_MASK) >> PTE_PFN_SHIFT != pfn0 + i:
                    continue
                costs[C_PTE_WRITE] += 1
                if not compound and not page_has_data(page, i):
                    pte[j] = ZERO_PTE
                    continue
                h = 0 if compound else i
                new = np.uint64(((pfn0 + i) << PTE_PFN_SHIFT) | _PAGE_PRESENT) | (
                    e & np.uint64(_PAGE_ACCESSED | _PAGE_RW | _PAGE_SOFT_DIRTY))
                if flags[h] & (1 << PG_dirty) and e & _PAGE_DIRTY:
                    new |= _PAGE_DIRTY
                pte[j] = new
                _count[h] += 1
                _mapcount[i] += 1
                if compound:
                    if _mapcount[i] == 0:
                        page["_nr_pages_mapped"] += 1
                    _folio_add_large_mapcount(page, 1, mm_id)
                if e & _PAGE_VMS_EXCLUSIVE:
                    flags[i] |= _AE


SPLIT_PINNED = -EAGAIN  # can_split_folio() / folio_ref_freeze() failed: an unexpected reference


@njit(cache=True, inline="always")
def split_recheck_ok(mapcount, count):
    """``folio_ref_freeze(folio, 1 + extra_pins)``: only the caller's reference is left."""
    return count == 1


@njit(cache=True, inline="always")
def split_recheck_bug(mapcount, count):
    """6.18 does not BUG() here: a failed freeze remaps and returns -EAGAIN."""
    return False


@njit(cache=True, inline="always")
def count_split(ok, events):
    """``count_vm_event(!ret ? THP_SPLIT_PAGE : THP_SPLIT_PAGE_FAILED)`` and ``count_mthp_stat(
    order, !ret ? MTHP_STAT_SPLIT : MTHP_STAT_SPLIT_FAILED)``."""
    if ok:
        events[EV_THP_SPLIT_PAGE] += 1
        events[EV_MTHP_SPLIT] += 1
    else:
        events[EV_THP_SPLIT_PAGE_FAILED] += 1
        events[EV_MTHP_SPLIT_FAILED] += 1


@njit(cache=True, inline="always")
def _split_huge_page_tail(flags, _count, _mapcount, compound_mapcount_raw, offset, head_flags, tail):
    """Mirror of 6.18 ``__split_folio_to_order()`` for one new order-0 folio: ``_mapcount`` is -1
    after the unmap, ``folio_ref_unfreeze(new_folio, 1)``; flags as the C copies them (referenced,
    swapbacked, mlocked, uptodate, active, locked, unevictable, dirty), its own PG_hwpoison kept,
    and ``lru_add_split_folio()``'s PG_lru."""
    mapcount = _mapcount[tail] + 1
    _count[tail] += mapcount + 1
    flags[tail] = ((flags[tail] & (1 << PG_hwpoison))
                   | (head_flags & (TAIL_COPY_FLAGS | (1 << PG_dirty))) | (1 << PG_lru))
    return mapcount


DEBUGFS_SPLIT_PER_ADDRESS = True  # for (addr = ...; addr += PAGE_SIZE) { if (!vma) break; ...


@njit(cache=True, inline="always")
def debugfs_split_skips(page):
    """6.18 ``split_huge_pages_pid()``: ``if (!can_split_folio(folio, 0, NULL)) goto next;``."""
    return folio_mapcount(page) != page["_count"][0]


@njit(cache=True, inline="always")
def thp_underused(page):
    """Mirror of ``thp_underused()`` as 6.18.44 runs it: never at ``max_ptes_none`` = 511 (its early
    ``return false`` is still there: measured, docs/variant-6.18.md); else more than
    ``max_ptes_none`` subpages hold only zeros."""
    if KHUGEPAGED_MAX_PTES_NONE == HPAGE_PMD_NR - 1:
        return False
    filled = 0
    data = page["data"]
    for w in range(HPAGE_PMD_NR // 64):
        x = data[w]
        while x:  # popcount
            x &= x - np.uint64(1)
            filled += 1
    return HPAGE_PMD_NR - filled > KHUGEPAGED_MAX_PTES_NONE


@njit(cache=True, inline="always")
def deferred_split_should_split(page, events):
    """6.18 ``deferred_split_scan()``: a partially mapped folio is split; another one only when
    ``thp_underused()`` (2: counted ``thp_underused_split_page`` when it splits)."""
    if page["partially_mapped"]:
        return 1
    if thp_underused(page):
        return 2
    return 0


@njit(cache=True, inline="always")
def deferred_split_requeue(page, did_split):
    """"Only add back to the queue if folio is partially mapped."""
    return page["partially_mapped"] != 0
