"""Mainline Linux 6.18 as configured on this machine (docs/variant-6.18.md): what the reference model
does differently from v5 and 4.5, under the kernel's function names.

Folios: ``_large_mapcount``, ``_nr_pages_mapped`` (+ENTIRELY_MAPPED while PMD-mapped),
``_entire_mapcount`` (kept in ``page[1]._compound_mapcount``), the two MM-owner slots of v6.15 and
PG_anon_exclusive per page; PMD mappings leave the pages' ``_mapcount`` alone (CONFIG_PAGE_MAPCOUNT).
The split is ``__folio_split(folio, 0)``: unmap_folio() turns every mapping into a migration entry
(dropping its mapcount and reference), the refcount is frozen at 1, the folio is cut into 512 order-0
folios and remap_page(RMP_USE_SHARED_ZEROPAGE) maps them back, a zero-filled page as the shared zero
page. Sources: mm/huge_memory.c, mm/rmap.c, include/linux/rmap.h, include/linux/mm.h, mm/memory.c,
mm/madvise.c, mm/vmscan.c, mm/migrate.c of 6.16-6.18 (the function named in each docstring); every
choice is commented with the function it follows. The VARIANT_FUNCTIONS names map to 6.18 functions:
page_add_new_anon_rmap = folio_add_new_anon_rmap, page_remove_rmap = folio_remove_rmap_pte/pmd,
freeze_page = unmap_folio, freeze_page_vma = try_to_migrate_one, unfreeze_page = remap_page,
unfreeze_page_vma = remove_migration_pte, _split_huge_page_tail = the per-tail body of
__split_folio_to_order, page_get_anon_vma = folio_get_anon_vma, split_huge_page_to_list =
__folio_split(folio, 0) (split_folio_to_list), page_dup_rmap = folio_try_dup_anon_rmap_pte/pmd.
"""
from __future__ import annotations

from vmstate.kernels.constants import (
    _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_RW, _PAGE_SOFT_DIRTY, _PAGE_SPECIAL, _PAGE_VMS_EXCLUSIVE,
    _PAGE_VMS_MIGRATION, EAGAIN, EBUSY, ENTIRELY_MAPPED, HPAGE_PMD_MASK, HPAGE_PMD_NR,
    HPAGE_PMD_SIZE, KHUGEPAGED_MAX_PTES_NONE, MM_ID_DUMMY, PAGE_SHIFT, PAGE_SIZE, PTE_PFN_MASK,
    PTE_PFN_SHIFT, VM_WRITE,
    RACE_AFTER_FREEZE, RACE_AFTER_PRECHECK, RACE_AFTER_SPLIT, RACE_NONE, SPLIT_FAIL_ANON_VMA,
    SPLIT_FAIL_PRECHECK, SPLIT_FAIL_RECHECK, SPLIT_OK, TAIL_COPY_FLAGS, ZERO_PFN, PG_active,
    PG_anon_exclusive, PG_dirty, PG_head, PG_hwpoison, PG_locked, PG_lru, PG_referenced,
)
from vmstate.errors import BadInput

from .mm import AnonVma, MmStruct, VmAreaStruct
from .page import (
    Page, PageAnon, PageCompound, PageHead, PageLocked, PageTransCompound, compound_head,
    is_migration_entry, mk_pte, page_count, pmd_addr_end, pmd_trans_huge, pte_mkold, pte_pfn,
    pte_present, pte_soft_dirty, pte_write, pte_wrprotect, pte_young,
)
from .state import ReferenceState

N = HPAGE_PMD_NR


# --------------------------------------------------------------------------------------------------
# page flags and folio readers
# --------------------------------------------------------------------------------------------------

def PageAnonExclusive(page: Page) -> bool:
    return bool(page.flags & (1 << PG_anon_exclusive))


def SetPageAnonExclusive(page: Page) -> None:
    page.flags |= 1 << PG_anon_exclusive


def ClearPageAnonExclusive(page: Page) -> None:
    page.flags &= ~(1 << PG_anon_exclusive)


def folio_test_large(folio: Page) -> bool:
    return PageHead(folio)


def folio_entire_mapcount(folio: Page) -> int:
    """`include/linux/mm.h:folio_entire_mapcount()`: ``_entire_mapcount`` + 1 (page[1])."""
    return folio.block[1]._compound_mapcount + 1


def folio_mapcount(folio: Page) -> int:
    """`include/linux/mm.h:folio_mapcount()`: ``_large_mapcount`` + 1 for a large folio."""
    if not folio_test_large(folio):
        return folio._mapcount + 1
    return folio._large_mapcount + 1


def folio_mapped(folio: Page) -> bool:
    return folio_mapcount(folio) >= 1


def page_mapcount(page: Page) -> int:
    """`include/linux/mm.h:page_mapcount()` with CONFIG_PAGE_MAPCOUNT: the page's PTE maps plus the
    folio's entire (PMD) maps."""
    mapcount = page._mapcount + 1
    if PageCompound(page):
        mapcount += folio_entire_mapcount(compound_head(page))
    return mapcount


def total_mapcount(head: Page) -> int:
    """folio_mapcount() (6.10+: total_mapcount() is gone; _large_mapcount counts every map)."""
    return folio_mapcount(head)


def folio_maybe_mapped_shared(folio: Page) -> bool:
    """`include/linux/mm.h:folio_maybe_mapped_shared()` (v6.15, CONFIG_MM_ID): a small folio is shared
    when mapped more than once; a large one when mapped more than once and the shared bit is set."""
    mapcount = folio_mapcount(folio)
    if not folio_test_large(folio):
        return mapcount > 1
    if mapcount <= 1:  # "A single mapping implies mapped exclusively"
        return False
    return folio._mm_ids_shared


def make_migration_pte(pfn: int, write: bool, exclusive: bool, young: bool, dirty: bool,
                       soft_dirty: bool) -> int:
    """vmstate's encoding of make_{writable,readable_exclusive,readable}_migration_entry() +
    make_migration_entry_young()/_dirty() + pte_swp_mksoft_dirty() (docs/variant-6.18.md)."""
    entry = _PAGE_VMS_MIGRATION | (pfn << PTE_PFN_SHIFT)
    if write:
        entry |= _PAGE_RW
    elif exclusive:
        entry |= _PAGE_VMS_EXCLUSIVE
    if young:
        entry |= _PAGE_ACCESSED
    if dirty:
        entry |= _PAGE_DIRTY
    if soft_dirty:
        entry |= _PAGE_SOFT_DIRTY
    return entry


def zero_pte(soft_dirty: bool) -> int:
    """`pte_mkspecial(pfn_pte(my_zero_pfn(addr), vma->vm_page_prot))` (+ soft-dirty from the entry)."""
    return mk_pte(ZERO_PFN) | _PAGE_SPECIAL | (_PAGE_SOFT_DIRTY if soft_dirty else 0)


class ReferenceStateV6_18(ReferenceState, variant="6.18"):
    """``ReferenceState("6.18")``: the shared machine with mainline 6.18's folio arithmetic."""

    HAS_MADV_COLD = True
    VMA_MERGE = True
    MOVE_NORMAL_PMD = True  # CONFIG_HAVE_MOVE_PMD=y here (/proc/config.gz)
    PT_RECLAIM = True  # CONFIG_PT_RECLAIM=y here; measured: docs/kernel-bridge.md (case f)
    page_mapcount = staticmethod(page_mapcount)
    total_mapcount = staticmethod(total_mapcount)

    # ---- MM-owner tracking (include/linux/rmap.h, v6.15+, CONFIG_MM_ID) --------------------------

    # ``atomics["mapcount_writes"]`` counts every write of a mapcount field: a page's
    # ``_mapcount``, ``_entire_mapcount``, ``_nr_pages_mapped`` and ``_large_mapcount`` (with its MM
    # slots, under the folio's large-mapcount lock) one each per update.

    def folio_set_large_mapcount(self, folio: Page, mapcount: int, vma: VmAreaStruct) -> None:
        """`folio_set_large_mapcount()`: both slots free before; slot 0 takes the MM."""
        assert folio._mm_id == [MM_ID_DUMMY, MM_ID_DUMMY]
        self.atomics["mapcount_writes"] += 1
        folio._large_mapcount = mapcount - 1
        folio._mm_id_mapcount[0] = mapcount - 1
        folio._mm_id[0] = vma.vm_mm.mm_id

    def folio_add_return_large_mapcount(self, folio: Page, diff: int, vma: VmAreaStruct) -> int:
        """`folio_add_return_large_mapcount()` (64-bit: no per-MM overflow branch)."""
        self.atomics["mapcount_writes"] += 1
        mm_id = vma.vm_mm.mm_id
        new_mapcount_val = folio._large_mapcount + diff
        folio._large_mapcount = new_mapcount_val
        if folio._mm_id[0] == mm_id:
            folio._mm_id_mapcount[0] += diff
        elif folio._mm_id[1] == mm_id:
            folio._mm_id_mapcount[1] += diff
        elif folio._mm_id[0] == MM_ID_DUMMY:
            folio._mm_id[0] = mm_id
            folio._mm_id_mapcount[0] = diff - 1
            if new_mapcount_val != diff - 1:  # "We might have other mappings already."
                folio._mm_ids_shared = True
        elif folio._mm_id[1] == MM_ID_DUMMY:
            folio._mm_id[1] = mm_id
            folio._mm_id_mapcount[1] = diff - 1
            folio._mm_ids_shared = True  # "Slot 0 certainly has mappings as well."
        # a third MM with both slots taken: only _large_mapcount (the bit is set already)
        return new_mapcount_val + 1

    def folio_sub_return_large_mapcount(self, folio: Page, diff: int, vma: VmAreaStruct) -> int:
        """`folio_sub_return_large_mapcount()`."""
        self.atomics["mapcount_writes"] += 1
        mm_id = vma.vm_mm.mm_id
        new_mapcount_val = folio._large_mapcount - diff
        folio._large_mapcount = new_mapcount_val
        for slot in (0, 1):
            if folio._mm_id[slot] == mm_id:
                folio._mm_id_mapcount[slot] -= diff
                if folio._mm_id_mapcount[slot] >= 0:
                    return new_mapcount_val + 1  # goto out
                folio._mm_id_mapcount[slot] = -1
                folio._mm_id[slot] = MM_ID_DUMMY
                break
        # "If one MM slot owns all mappings, the folio is mapped exclusively."
        if (folio._mm_id_mapcount[0] == new_mapcount_val
                or folio._mm_id_mapcount[1] == new_mapcount_val):
            folio._mm_ids_shared = False
        return new_mapcount_val + 1

    # ---- rmap (mm/rmap.c) -----------------------------------------------------------------------

    def page_add_new_anon_rmap(self, page: Page, vma: VmAreaStruct, address: int,
                               compound: bool) -> None:
        """`folio_add_new_anon_rmap(folio, vma, address, RMAP_EXCLUSIVE)`; for the THP also the
        counters and the queueing of `__do_huge_pmd_anonymous_page()` (count_mthp_stat(
        ANON_FAULT_ALLOC), deferred_split_folio(folio, false))."""
        if not compound:
            page._mapcount = 0  # atomic_set(&folio->_mapcount, 0)
            SetPageAnonExclusive(page)
            self.atomics["mapcount_writes"] += 1
            return
        folio = page
        assert PageHead(folio)
        folio.block[1]._compound_mapcount = 0  # atomic_set(&folio->_entire_mapcount, 0)
        self.folio_set_large_mapcount(folio, 1, vma)
        folio._nr_pages_mapped = ENTIRELY_MAPPED
        SetPageAnonExclusive(folio)
        self.atomics["mapcount_writes"] += 2
        self.mthp_stats["nr_anon"] += 1  # mod_mthp_stat(folio_order(folio), MTHP_STAT_NR_ANON, 1)
        self.mthp_stats["anon_fault_alloc"] += 1  # __do_huge_pmd_anonymous_page()
        self.deferred_split_folio(folio, False)

    def folio_add_anon_rmap_ptes(self, folio: Page, first: int, nr_pages: int, vma: VmAreaStruct,
                                 exclusive: bool) -> None:
        """`folio_add_anon_rmap_ptes()` -> `__folio_add_anon_rmap(RMAP_LEVEL_PTE)` ->
        `__folio_add_rmap()`: page ``first`` .. ``first + nr_pages - 1`` of ``folio`` (for a small
        folio: the folio itself). RMAP_EXCLUSIVE sets PageAnonExclusive on each page."""
        if not folio_test_large(folio):
            assert first == 0 and nr_pages == 1
            folio._mapcount += 1  # atomic_inc_and_test(&folio->_mapcount)
            self.atomics["mapcount_writes"] += 1
        else:
            nfirst = 0
            for i in range(first, first + nr_pages):
                folio.block[i]._mapcount += 1
                self.atomics["mapcount_writes"] += 1
                nfirst += folio.block[i]._mapcount == 0
            if nfirst:
                folio._nr_pages_mapped += nfirst  # atomic_add_return_relaxed(first, mapped)
                self.atomics["mapcount_writes"] += 1
            self.folio_add_return_large_mapcount(folio, nr_pages, vma)
        if exclusive:
            for page in (folio.block[first:first + nr_pages] if folio_test_large(folio)
                         else [folio]):
                SetPageAnonExclusive(page)

    def folio_remove_rmap_ptes(self, folio: Page, first: int, nr_pages: int,
                               vma: VmAreaStruct) -> None:
        """`folio_remove_rmap_ptes()` -> `__folio_remove_rmap(RMAP_LEVEL_PTE)`: a partially mapped
        large anon folio not yet flagged is queued with deferred_split_folio(folio, true)."""
        if not folio_test_large(folio):
            assert first == 0 and nr_pages == 1
            folio._mapcount -= 1  # atomic_add_negative(-1, &folio->_mapcount)
            self.atomics["mapcount_writes"] += 1
            return
        self.folio_sub_return_large_mapcount(folio, nr_pages, vma)
        last = 0
        for i in range(first, first + nr_pages):
            folio.block[i]._mapcount -= 1
            self.atomics["mapcount_writes"] += 1
            last += folio.block[i]._mapcount < 0
            assert folio.block[i]._mapcount >= -1
        nr = 0
        if last:
            folio._nr_pages_mapped -= last  # atomic_sub_return_relaxed(last, mapped)
            self.atomics["mapcount_writes"] += 1
            if folio._nr_pages_mapped < ENTIRELY_MAPPED:
                nr = last
        partially_mapped = bool(nr) and folio._nr_pages_mapped != 0
        if partially_mapped and PageAnon(folio) and not folio.partially_mapped:
            self.deferred_split_folio(folio, True)

    def folio_remove_rmap_pmd(self, folio: Page, vma: VmAreaStruct) -> None:
        """`folio_remove_rmap_pmd()` -> `__folio_remove_rmap(RMAP_LEVEL_PMD)`."""
        assert PageHead(folio)
        self.folio_sub_return_large_mapcount(folio, 1, vma)  # folio_dec_large_mapcount()
        folio.block[1]._compound_mapcount -= 1
        self.atomics["mapcount_writes"] += 1
        nr = nr_pmdmapped = 0
        if folio.block[1]._compound_mapcount < 0:  # last = atomic_add_negative(-1, ...)
            folio._nr_pages_mapped -= ENTIRELY_MAPPED
            self.atomics["mapcount_writes"] += 1
            if folio._nr_pages_mapped < ENTIRELY_MAPPED:
                nr_pmdmapped = N
                nr = max(N - folio._nr_pages_mapped, 0)
        partially_mapped = bool(nr) and nr < nr_pmdmapped
        if partially_mapped and PageAnon(folio) and not folio.partially_mapped:
            self.deferred_split_folio(folio, True)

    def page_remove_rmap(self, page: Page, compound: bool, vma: VmAreaStruct | None = None) -> None:
        """zap_huge_pmd()'s folio_remove_rmap_pmd() or a PTE's folio_remove_rmap_pte()."""
        assert vma is not None  # the MM slots need the VMA's mm
        if compound:
            self.folio_remove_rmap_pmd(page, vma)
            return
        folio = compound_head(page)
        self.folio_remove_rmap_ptes(folio, page.pfn - folio.pfn, 1, vma)

    def page_dup_rmap(self, page: Page, compound: bool, dst_vma: VmAreaStruct) -> None:
        """`__folio_try_dup_anon_rmap()` (folio_try_dup_anon_rmap_pmd() / _ptes(), one PTE here):
        PageAnonExclusive cleared, the child's MM counted. Never fails: FOLL_GET pins do not make a
        folio maybe-DMA-pinned (no MMF_HAS_PINNED)."""
        if compound:
            ClearPageAnonExclusive(page)
            page.block[1]._compound_mapcount += 1  # atomic_inc(&folio->_entire_mapcount)
            self.folio_add_return_large_mapcount(page, 1, dst_vma)
            self.atomics["mapcount_writes"] += 1
            return
        ClearPageAnonExclusive(page)
        page._mapcount += 1
        self.atomics["mapcount_writes"] += 1
        if PageCompound(page):
            self.folio_add_return_large_mapcount(compound_head(page), 1, dst_vma)

    # ---- the deferred split queue (mm/huge_memory.c) -------------------------------------------

    def deferred_split_folio(self, folio: Page, partially_mapped: bool) -> None:
        """`deferred_split_folio()` (shrink_underused 1, so also unflagged folios are queued)."""
        if partially_mapped:
            if not folio.partially_mapped:
                folio.partially_mapped = True
                self.vm_events["thp_deferred_split_page"] += 1  # folio_test_pmd_mappable()
                self.mthp_stats["split_deferred"] += 1
                self.mthp_stats["nr_anon_partially_mapped"] += 1
        if not folio.deferred:  # list_empty(&folio->_deferred_list): list_add_tail()
            self._queue_tail(folio)

    def _queue_tail(self, folio: Page) -> None:
        folio.deferred = True
        self._queue_seq += 1
        folio._deferred_seq = self._queue_seq

    def _unqueue(self, folio: Page) -> None:
        """The body shared by `__folio_unqueue_deferred_split()` and __folio_split's freeze: off the
        queue, PG_partially_mapped cleared."""
        if folio.deferred:
            folio.deferred = False
            if folio.partially_mapped:
                folio.partially_mapped = False
                self.mthp_stats["nr_anon_partially_mapped"] -= 1

    def _free_compound_page(self, head: Page) -> None:
        """Freeing a THP: `folio_unqueue_deferred_split()` (free_large_folio()) and
        free_pages_prepare()'s `mod_mthp_stat(order, MTHP_STAT_NR_ANON, -1)`; the folio fields are
        back at their initial values (free_tail_page_prepare() checks them)."""
        self._unqueue(head)
        head.partially_mapped = False
        self.mthp_stats["nr_anon"] -= 1
        assert head.folio_tuple() == (-1, 0, 0, 0, -1, -1, 0, 0), head.folio_tuple()
        super()._free_compound_page(head)

    # ---- zap (mm/memory.c zap_present_ptes) ----------------------------------------------------

    def zap_pte_range(self, vma: VmAreaStruct, table: dict, addr: int, end: int) -> None:
        """6.18 `zap_pte_range()` -> `zap_present_ptes()`: a run of consecutive present PTEs mapping
        consecutive pages of one large folio (folio_pte_batch(): write, young, dirty, soft-dirty
        ignored; the batch stops at ``end`` and the folio's end) is one
        folio_remove_rmap_ptes(nr) and nr references; the zero page is cleared alone."""
        vaddr = addr
        while vaddr < end:
            pte = table.get(vaddr)
            if pte is None:
                vaddr += PAGE_SIZE
                continue
            assert pte_present(pte)
            if pte & _PAGE_SPECIAL:
                del table[vaddr]
                vaddr += PAGE_SIZE
                continue
            page = self.pages[pte_pfn(pte)]
            folio = compound_head(page)
            nr = 1
            if folio_test_large(folio):
                nr = self._folio_pte_batch(table, vaddr, end, folio)
            for i in range(nr):
                del table[vaddr + i * PAGE_SIZE]  # ptep_get_and_clear_full()
            if folio_test_large(folio):
                self.folio_remove_rmap_ptes(folio, page.pfn - folio.pfn, nr, vma)
            else:
                self.folio_remove_rmap_ptes(folio, 0, 1, vma)
            assert folio_mapcount(folio) >= 0  # print_bad_pte()
            for _ in range(nr):
                self.put_page(folio)  # __tlb_remove_folio_pages()
            vaddr += nr * PAGE_SIZE

    @staticmethod
    def _folio_pte_batch(table: dict, vaddr: int, end: int, folio: Page) -> int:
        """`folio_pte_batch()`: PTEs from ``vaddr`` mapping the following pfns of ``folio``, the
        other bits equal but for write, young, dirty and soft-dirty."""
        ignore = _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_SOFT_DIRTY
        pte = table[vaddr]
        pfn = pte_pfn(pte)
        max_nr = min((end - vaddr) // PAGE_SIZE, folio.pfn + N - pfn)
        nr = 1
        while nr < max_nr:
            nxt = table.get(vaddr + nr * PAGE_SIZE)
            if (nxt is None or not pte_present(nxt) or pte_pfn(nxt) != pfn + nr
                    or nxt & ~(ignore | PTE_PFN_MASK) != pte & ~(ignore | PTE_PFN_MASK)):
                break
            nr += 1
        return nr

    # ---- split_huge_pmd -------------------------------------------------------------------------

    def _split_huge_pmd_locked(self, vma: VmAreaStruct, haddr: int, freeze: bool) -> None:
        """`mm/huge_memory.c:__split_huge_pmd_locked()` (6.18, anon, present PMD)."""
        mm = vma.vm_mm
        pmd = mm.pmd[haddr]
        assert haddr & ~HPAGE_PMD_MASK == 0
        assert vma.vm_start <= haddr and vma.vm_end >= haddr + HPAGE_PMD_SIZE
        assert pmd_trans_huge(pmd)
        self.vm_events["thp_split_pmd"] += 1  # count_vm_event(THP_SPLIT_PMD)
        self.costs["tlb_flush"] += 1  # pmdp_invalidate()
        page = self.pages[pte_pfn(pmd)]
        folio = page
        dirty = bool(pmd & _PAGE_DIRTY)
        if dirty:
            folio.flags |= 1 << PG_dirty  # folio_set_dirty(folio)
        write, young, soft_dirty = pte_write(pmd), pte_young(pmd), pte_soft_dirty(pmd)
        assert page_count(folio)
        anon_exclusive = PageAnonExclusive(page)
        if freeze and anon_exclusive:
            # folio_try_share_anon_rmap_pmd(): succeeds (not maybe DMA-pinned); the PMD's
            # exclusivity goes into the migration entries
            ClearPageAnonExclusive(page)
        if not freeze:
            self._count_add(folio, N - 1)  # folio_ref_add(folio, HPAGE_PMD_NR - 1)
            self.folio_add_anon_rmap_ptes(folio, 0, N, vma, anon_exclusive)
        table: dict[int, int] = {}  # pgtable_trans_huge_withdraw()
        for i in range(N):
            if freeze:
                entry = make_migration_pte(page.pfn + i, write, anon_exclusive, young, dirty,
                                           soft_dirty)
            else:
                entry = mk_pte(page.pfn + i)  # mk_pte(page, vma->vm_page_prot)
                if write:
                    entry |= _PAGE_RW  # pte_mkwrite()
                if not young:
                    entry = pte_mkold(entry)
                if dirty:
                    entry |= _PAGE_DIRTY
                if soft_dirty:
                    entry |= _PAGE_SOFT_DIRTY
            table[haddr + i * PAGE_SIZE] = entry  # set_pte_at() / set_ptes()
            self.costs["pte_write"] += 1
        mm.pmd[haddr] = table  # pmd_populate()
        self.folio_remove_rmap_pmd(folio, vma)
        if freeze:
            self.put_page(page)

    # ---- write faults (5.8+ "thp: change CoW semantics for anon-THP"; 6.16+ PTE-mapped THP reuse) --

    def do_huge_pmd_wp_page(self, vma: VmAreaStruct, address: int) -> bool:
        """Mirror of 6.18 `mm/huge_memory.c:do_huge_pmd_wp_page()`: reuse the PMD when the folio is
        PageAnonExclusive, or when the PMD holds its only reference (folio_ref_count() == 1:
        SetPageAnonExclusive()); else `__split_huge_pmd()` and VM_FAULT_FALLBACK (returns True): the
        PTE fault copies one 4 KiB page."""
        haddr = address & HPAGE_PMD_MASK
        pmd = vma.vm_mm.pmd[haddr]
        folio = self.pages[pte_pfn(pmd)]
        if not PageAnonExclusive(folio):
            if page_count(folio) != 1:
                self.split_huge_pmd(vma, address)
                return True
            SetPageAnonExclusive(folio)  # folio_move_anon_rmap(); SetPageAnonExclusive(page)
        vma.vm_mm.pmd[haddr] = pmd | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_RW  # reuse:
        self.costs["pte_write"] += 1
        return False

    def wp_can_reuse_anon_folio(self, folio: Page, vma: VmAreaStruct) -> bool:
        """Mirror of 6.18 `mm/memory.c:wp_can_reuse_anon_folio()`: a small folio when its only
        reference is the mapping's; a large one (`__wp_can_reuse_large_anon_folio()`) when more
        than one page is mapped, no other MM maps it and every reference is a mapping's."""
        if folio_test_large(folio):
            if folio_mapcount(folio) <= 1:  # "just free up a large folio if only a single page"
                return False
            if folio._mm_ids_shared:  # folio_test_large_maybe_mapped_shared()
                return False
            return folio_mapcount(folio) == page_count(folio)
        return page_count(folio) == 1

    def do_wp_page(self, vma: VmAreaStruct, address: int) -> None:
        """Mirror of 6.18 `mm/memory.c:do_wp_page()` on a private anonymous PTE: the shared zero
        page is copied; a page is reused when PageAnonExclusive or `wp_can_reuse_anon_folio()`
        (then SetPageAnonExclusive()), else copied (`wp_page_copy()`)."""
        pte = vma.vm_mm.pmd[address & HPAGE_PMD_MASK][address]
        if not pte & _PAGE_SPECIAL:
            page = self.pages[pte_pfn(pte)]
            if PageAnonExclusive(page) or self.wp_can_reuse_anon_folio(compound_head(page), vma):
                SetPageAnonExclusive(page)
                self.wp_page_reuse(vma, address)
                return
        self.wp_page_copy(vma, address)

    # ---- the split: __folio_split(folio, 0) -----------------------------------------------------

    def page_get_anon_vma(self, page: Page) -> AnonVma | None:
        """`mm/rmap.c:folio_get_anon_vma()`: NULL unless anon and folio_mapped()."""
        if not PageAnon(page) or not folio_mapped(page):
            return None
        return self.anon_vmas[page.mapping]

    @staticmethod
    def can_split_folio(folio: Page, caller_pins: int) -> bool:
        """`can_split_folio()`: anon, not in the swap cache: no extra pins."""
        return folio_mapcount(folio) == page_count(folio) - caller_pins

    @staticmethod
    def _vma_walk_range(vma: VmAreaStruct, pgoff: int, nr: int) -> tuple[int, int]:
        """`vma_address()` / `vma_address_end()` of ``nr`` pages from ``pgoff``, clamped to the VMA."""
        start = vma.vm_start + ((pgoff - vma.vm_pgoff) << PAGE_SHIFT)
        end = start + (nr << PAGE_SHIFT)
        return max(start, vma.vm_start), min(end, vma.vm_end)

    def freeze_page_vma(self, vma: VmAreaStruct, page: Page, address: int) -> None:
        """`mm/rmap.c:try_to_migrate_one()` with TTU_SPLIT_HUGE_PMD (6.18 stable, with 9390808
        "fix early failure try_to_migrate() when split huge pmd for shared THP": the walk restarts
        after the PMD split instead of ending the rmap walk). Costs: per VMA mmu_notifier and
        pmd_lock; a PTE table: pte_lock; each PTE frozen: tlb_flush and pte_write."""
        folio = page
        mm = vma.vm_mm
        start, end = self._vma_walk_range(vma, folio.index, N)
        haddr = start & HPAGE_PMD_MASK
        self.costs["mmu_notifier"] += 1
        self.costs["pmd_lock"] += 1
        pmd = mm.pmd.get(haddr)
        if pmd_trans_huge(pmd):
            if pte_pfn(pmd) == folio.pfn:
                self._split_huge_pmd_locked(vma, haddr, True)  # split_huge_pmd_locked(freeze)
            return  # restarted walk: only migration entries of this folio remain here
        table = None
        for vaddr in range(start, end, PAGE_SIZE):
            if vaddr == start or vaddr & ~HPAGE_PMD_MASK == 0:  # page_vma_mapped_walk(): next table
                table = mm.pmd.get(vaddr & HPAGE_PMD_MASK)
                if isinstance(table, dict):
                    self.costs["pte_lock"] += 1
            if not isinstance(table, dict):  # none (or another THP's huge PMD): step over it
                continue
            pte = table.get(vaddr)
            if pte is None or not pte_present(pte) or pte & _PAGE_SPECIAL:
                continue
            pfn = pte_pfn(pte)
            if not folio.pfn <= pfn < folio.pfn + N:
                continue
            subpage = self.pages[pfn]
            anon_exclusive = PageAnonExclusive(subpage)
            self.costs["tlb_flush"] += 1  # ptep_get_and_clear() + deferred flush
            if pte & _PAGE_DIRTY:
                folio.flags |= 1 << PG_dirty  # folio_mark_dirty(folio)
            if anon_exclusive:
                ClearPageAnonExclusive(subpage)  # folio_try_share_anon_rmap_pte(): succeeds
            table[vaddr] = make_migration_pte(pfn, pte_write(pte), anon_exclusive, pte_young(pte),
                                              bool(pte & _PAGE_DIRTY), pte_soft_dirty(pte))
            self.costs["pte_write"] += 1
            self.folio_remove_rmap_ptes(folio, pfn - folio.pfn, 1, vma)
            self.put_page(folio)

    def freeze_page(self, anon_vma: AnonVma, page: Page) -> None:
        """`unmap_folio()` -> `try_to_migrate()`: rmap_walk_locked() over the VMAs of
        ``[index, index + 511]`` in interval-tree order, stopping once the folio is no longer mapped
        (``rwc.done = folio_not_mapped``, rmap_walk_anon())."""
        folio = page
        for vma in anon_vma.interval_tree_foreach(folio.index, folio.index + N - 1):
            self.freeze_page_vma(vma, folio, vma.vm_start)
            if not folio_mapped(folio):
                break

    def unfreeze_page_vma(self, vma: VmAreaStruct, page: Page, address: int,
                          use_zeropage: bool = False) -> None:
        """`mm/migrate.c:remove_migration_pte()` for ``page``'s folio in ``vma`` (the whole large
        folio when not split, one page after the split), with try_to_map_unused_to_zeropage() under
        RMP_USE_SHARED_ZEROPAGE. Costs: pte_lock when the VMA's PMD is a table; pte_write per
        entry."""
        folio = page
        nr = N if folio_test_large(folio) else 1
        start, end = self._vma_walk_range(vma, page.index, nr)
        table = None
        for vaddr in range(start, end, PAGE_SIZE):
            if vaddr == start or vaddr & ~HPAGE_PMD_MASK == 0:  # page_vma_mapped_walk(): next table
                table = vma.vm_mm.pmd.get(vaddr & HPAGE_PMD_MASK)
                if isinstance(table, dict):
                    self.costs["pte_lock"] += 1  # page_vma_mapped_walk(PVMW_SYNC | PVMW_MIGRATION)
            if not isinstance(table, dict):
                continue
            old = table.get(vaddr)
            if old is None or not is_migration_entry(old):
                continue
            pfn = pte_pfn(old)
            if not folio.pfn <= pfn < folio.pfn + nr:
                continue
            new = self.pages[pfn]
            if use_zeropage and not PageCompound(new) and not new.data:
                # try_to_map_unused_to_zeropage(): pages_identical(page, ZERO_PAGE(0))
                table[vaddr] = zero_pte(pte_soft_dirty(old))
                self.costs["pte_write"] += 1
                continue
            self.get_page(folio)  # folio_get(folio)
            pte = mk_pte(pfn)
            if not old & _PAGE_ACCESSED:  # !is_migration_entry_young()
                pte = pte_mkold(pte)
            if folio.flags & (1 << PG_dirty) and old & _PAGE_DIRTY:
                pte |= _PAGE_DIRTY
            if pte_soft_dirty(old):
                pte |= _PAGE_SOFT_DIRTY
            if old & _PAGE_RW:  # is_writable_migration_entry(): pte_mkwrite()
                pte |= _PAGE_RW
            exclusive = bool(old & (_PAGE_RW | _PAGE_VMS_EXCLUSIVE))  # !is_readable_...()
            self.folio_add_anon_rmap_ptes(folio, pfn - folio.pfn, 1, vma, exclusive)
            table[vaddr] = pte  # set_pte_at()
            self.costs["pte_write"] += 1

    def unfreeze_page(self, anon_vma: AnonVma, page: Page, use_zeropage: bool = False) -> None:
        """`remap_page(folio, 512, flags)`: remove_migration_ptes() per (new) folio, each an
        rmap_walk_locked() over the VMAs of its pgoff range."""
        folio = page
        if folio_test_large(folio):
            for vma in anon_vma.interval_tree_foreach(folio.index, folio.index + N - 1):
                self.unfreeze_page_vma(vma, folio, vma.vm_start)
            return
        for i in range(N):
            new = folio.block[i]
            for vma in anon_vma.interval_tree_foreach(new.index, new.index):
                self.unfreeze_page_vma(vma, new, vma.vm_start, use_zeropage)

    def _split_huge_page_tail(self, head: Page, tail: int) -> int:
        """The per-tail body of `__split_folio_to_order(folio, 9, 0)` and its unfreeze in
        __folio_split(): flags cleared but PG_hwpoison (PAGE_FLAGS_CHECK_AT_PREP: the tail's own
        PG_anon_exclusive is dropped, see the comment there), the head's referenced, swapbacked,
        mlocked, uptodate, active, locked, unevictable, dirty copied; mapping, index; _refcount =
        folio_expected_ref_count() + 1 = 1 (nothing maps it after unmap_folio()). PG_lru is set by
        lru_add_split_folio() (or not, onto a list: see split_huge_page_to_list())."""
        page_tail = head.block[tail]
        assert page_tail._mapcount == -1 and page_tail._count == 0
        page_tail.flags &= 1 << PG_hwpoison
        page_tail.flags |= head.flags & (TAIL_COPY_FLAGS | (1 << PG_dirty))
        page_tail.mapping = head.mapping
        page_tail.index = head.index + tail
        self._count_add(page_tail, 1)  # folio_ref_unfreeze(new_folio, 1)
        return 0

    def split_huge_page_to_list(self, head_pfn: int, pin_at: int = RACE_NONE,
                                unpin_at: int = RACE_NONE,
                                to_list: list | None = None) -> tuple[int, int]:
        """`__folio_split(folio, 0, &folio->page, &folio->page, list, true)` (split_folio_to_list()):
        the caller holds one reference and the folio lock; the head stays locked. Returns (0,
        -EBUSY or -EAGAIN, SPLIT_* reason). ``to_list``: reclaim's list (lru_add_split_folio() with
        a list: the new folios get a reference and no PG_lru), else None."""
        folio = self.pages[head_pfn]
        assert PageHead(folio) and PageLocked(folio) and PageAnon(folio)
        anon_vma = self.page_get_anon_vma(folio)
        ret, reason = 0, SPLIT_OK
        if anon_vma is None:
            ret, reason = -EBUSY, SPLIT_FAIL_ANON_VMA
        else:
            self.costs["anon_vma_lock"] += 1  # anon_vma_lock_write()
            if not self.can_split_folio(folio, 1):  # racy check before unmap_folio()
                ret, reason = -EAGAIN, SPLIT_FAIL_PRECHECK
            else:
                self._race(RACE_AFTER_PRECHECK, pin_at, unpin_at, folio)
                self.freeze_page(anon_vma, folio)  # unmap_folio()
                self._race(RACE_AFTER_FREEZE, pin_at, unpin_at, folio)
                if page_count(folio) == 1:  # folio_ref_freeze(folio, 1 + extra_pins)
                    self._unqueue(folio)  # off the deferred list, PG_partially_mapped cleared
                    self.costs["lru_lock"] += 1  # folio_lruvec_lock()
                    self._split_unmapped_folio(folio, to_list)
                    self.unfreeze_page(anon_vma, folio, True)  # RMP_USE_SHARED_ZEROPAGE
                    for i in range(1, N):  # every after-split folio but the one of lock_at
                        new = folio.block[i]
                        new.flags &= ~(1 << PG_locked)  # folio_unlock()
                        self.put_page(new)  # free_folio_and_swap_cache()
                else:
                    self.unfreeze_page(anon_vma, folio)  # remap_page(folio, nr, 0)
                    ret, reason = -EAGAIN, SPLIT_FAIL_RECHECK
        self.vm_events["thp_split_page" if ret == 0 else "thp_split_page_failed"] += 1
        self.mthp_stats["split" if ret == 0 else "split_failed"] += 1
        return ret, reason

    def _split_unmapped_folio(self, folio: Page, to_list: list | None) -> None:
        """`__split_unmapped_folio(folio, 0, ...)` (uniform) and the unfreeze/LRU loop."""
        self.mthp_stats["nr_anon"] -= 1  # mod_mthp_stat(order, MTHP_STAT_NR_ANON, -1)
        assert folio_mapcount(folio) == 0 and folio_entire_mapcount(folio) == 0
        for i in range(1, N):
            self._split_huge_page_tail(folio, i)
        folio.flags &= ~(1 << PG_head)  # ClearPageCompound()
        folio.block[1]._compound_mapcount = -1
        assert folio._nr_pages_mapped == 0 and not folio.partially_mapped
        folio.reset_folio()
        for i in range(1, N):  # lru_add_split_folio()
            new = folio.block[i]
            if to_list is not None:
                self.get_page(new)  # folio_get(new_folio); list_add_tail(&new_folio->lru, list)
                to_list.append(new)
            else:
                new.flags |= 1 << PG_lru  # folio_set_lru(new_folio)

    def split_folio(self, folio: Page, to_list: list | None = None) -> int:
        return self.split_huge_page_to_list(folio.pfn, to_list=to_list)[0]

    # ---- debugfs split_huge_pages_pid() ---------------------------------------------------------

    def split(self, mm: str, addr: int, length: int, race=None) -> list[tuple[int, int, int]]:
        """`mm/huge_memory.c:split_huge_pages_pid()` (6.18): every 4 KiB address in order, ending at
        the first address no VMA holds (``if (!vma) break``); a PMD-order folio found there
        (folio_walk_start(): the zero page is no folio) that can_split_folio(folio, 0) passes is
        trylocked, referenced, split_folio_to_order(folio, 0)ed, unlocked and put; one that fails the
        check is skipped (no counter). Each folio is reported once, with the outcome at its first
        address (a folio whose split failed is tried again at its next addresses, as the C does)."""
        proc = self._live_mm(mm)
        end = self._check_range(addr, length)
        if race is not None:
            race.check()
        if not proc.vmas_overlapping(addr, end):
            raise BadInput(f"{mm!r}: {addr:#x}-{end:#x} overlaps no mapping", field="addr")
        heads = self._split_walk_heads(proc, addr, end)
        pins, unpins = race.arrays(len(heads)) if race else ([RACE_NONE] * len(heads),) * 2
        racing = {h.pfn: (p, u) for h, p, u in zip(heads, pins, unpins)}
        reported: dict[int, tuple[int, int, int]] = {}
        for vaddr in range(addr, end, PAGE_SIZE):
            if proc.vma_lookup(vaddr) is None:
                break
            pfn = self._follow_pfn(proc, vaddr)
            if pfn is None or pfn == ZERO_PFN or not PageTransCompound(self.pages[pfn]):
                continue
            folio = compound_head(self.pages[pfn])
            first = folio.pfn not in reported
            if not self.can_split_folio(folio, 0):
                if first:
                    reported[folio.pfn] = (folio.pfn, -EAGAIN, SPLIT_FAIL_PRECHECK)
                continue
            assert not PageLocked(folio)
            folio.flags |= 1 << PG_locked  # folio_trylock()
            self.get_page(folio)
            pin_at, unpin_at = racing[folio.pfn] if first else (RACE_NONE, RACE_NONE)
            ret, reason = self.split_huge_page_to_list(folio.pfn, pin_at, unpin_at)
            raced = reason not in (SPLIT_FAIL_ANON_VMA, SPLIT_FAIL_PRECHECK)
            if raced and pin_at != RACE_NONE and unpin_at == RACE_AFTER_SPLIT:
                self.put_page(folio)
            elif raced and pin_at != RACE_NONE and unpin_at == RACE_NONE:
                self.pins.setdefault((mm, folio.index << PAGE_SHIFT, PAGE_SIZE),
                                     []).append([folio.pfn])
            folio.flags &= ~(1 << PG_locked)  # folio_unlock()
            self.put_page(folio)
            if first:
                reported[folio.pfn] = (folio.pfn, ret, reason)
        return list(reported.values())

    def _split_walk_heads(self, proc: MmStruct, addr: int, end: int) -> list[Page]:
        """The THPs split_huge_pages_pid() meets, by first address (the race's choice of THPs)."""
        heads, seen = [], set()
        for vaddr in range(addr, end, PAGE_SIZE):
            if proc.vma_lookup(vaddr) is None:
                break
            pfn = self._follow_pfn(proc, vaddr)
            if pfn is None or pfn == ZERO_PFN or not PageTransCompound(self.pages[pfn]):
                continue
            head = compound_head(self.pages[pfn])
            if head.pfn not in seen:
                seen.add(head.pfn)
                heads.append(head)
        return heads

    # ---- the shrinker (deferred_split_scan) -----------------------------------------------------

    @staticmethod
    def thp_underused(folio: Page) -> bool:
        """`mm/huge_memory.c:thp_underused()` as the running 6.18.44 behaves: "if
        (khugepaged_max_ptes_none == HPAGE_PMD_NR - 1) return false;" is still there (measured:
        `echo 2 > drop_caches` splits no all-zero THP at max_ptes_none 511, and counts no
        thp_underused_split_page; the Sep 2025 fix is not in this kernel); else more than
        max_ptes_none zero-filled pages."""
        if KHUGEPAGED_MAX_PTES_NONE == N - 1:
            return False
        num_zero_pages = num_filled_pages = 0
        for i in range(N):
            if not folio.block[i].data:  # pages_identical(page, ZERO_PAGE(0))
                num_zero_pages += 1
                if num_zero_pages > KHUGEPAGED_MAX_PTES_NONE:
                    return True
            else:
                num_filled_pages += 1
                if num_filled_pages >= N - KHUGEPAGED_MAX_PTES_NONE:
                    return False
        return False

    def deferred_split_scan(self) -> list[tuple[int, int, int]]:
        """`mm/huge_memory.c:deferred_split_scan()`, one pass over the whole queue: every folio
        referenced (folio_try_get()) and moved to a local list; then each: not partially mapped ->
        split when thp_underused() (thp_underused_split_page), else it leaves the queue; partially
        mapped -> split_folio(); a failed partially mapped one is spliced back to the queue's tail,
        in order; a failed other one leaves the queue."""
        queue = sorted((p for p in self.pages.values() if PageHead(p) and p.deferred),
                       key=lambda p: p._deferred_seq)
        for folio in queue:
            self.get_page(folio)  # folio_try_get(): a queued folio is never free here
        back, tried = [], []
        for folio in queue:
            did_split = underused = False
            if not folio.partially_mapped:
                underused = self.thp_underused(folio)
            if folio.partially_mapped or underused:
                assert not PageLocked(folio)
                folio.flags |= 1 << PG_locked  # folio_trylock()
                ret, reason = self.split_huge_page_to_list(folio.pfn)
                tried.append((folio.pfn, ret, reason))
                if ret == 0:
                    did_split = True
                    if underused:
                        self.vm_events["thp_underused_split_page"] += 1
                folio.flags &= ~(1 << PG_locked)  # folio_unlock()
            if did_split:
                pass  # split_folio() removed it from the list
            elif not folio.partially_mapped:
                folio.deferred = False  # list_del_init(): it leaves the queue
            else:
                back.append(folio)
            self.put_page(folio)
        for folio in back:  # list_splice_tail(&list, &ds_queue->split_queue)
            self._queue_tail(folio)
        return tried

    # ---- MADV_COLD / MADV_PAGEOUT (mm/madvise.c) and reclaim (mm/vmscan.c) ---------------------

    def madvise_cold_or_pageout_page_range(self, vma: VmAreaStruct, addr: int, end: int,
                                           pageout: bool) -> None:
        """`madvise_cold_or_pageout_page_range()`: walk_page_range() calls the pmd_entry per PMD of
        the range that is not none."""
        mm = vma.vm_mm
        while addr < end:
            next_ = pmd_addr_end(addr, end)
            if mm.pmd.get(addr & HPAGE_PMD_MASK) is not None:
                self.madvise_cold_or_pageout_pte_range(vma, addr, next_, pageout)
            addr = next_

    def _lock_split_put(self, folio: Page) -> int:
        """folio_get(); folio_lock(); split_folio(); folio_unlock(); folio_put()."""
        self.get_page(folio)
        assert not PageLocked(folio)
        folio.flags |= 1 << PG_locked
        err = self.split_folio(folio)
        folio.flags &= ~(1 << PG_locked)
        self.put_page(folio)
        return err

    def _cold_or_isolate(self, folio: Page, pageout: bool, folio_list: list) -> None:
        """The tail of both branches: folio_clear_referenced(); pageout: folio_isolate_lru() (a
        reference, PG_lru cleared) onto the list; cold: folio_deactivate() (lru_deactivate():
        PG_active and PG_referenced cleared; the per-CPU batch taken as drained)."""
        folio.flags &= ~(1 << PG_referenced)
        if pageout:
            if folio.flags & (1 << PG_lru):
                folio.flags &= ~(1 << PG_lru)
                self.get_page(folio)
                folio_list.append(folio)
        elif folio.flags & (1 << PG_active):
            folio.flags &= ~((1 << PG_active) | (1 << PG_referenced))

    def madvise_cold_or_pageout_pte_range(self, vma: VmAreaStruct, addr: int, end: int,
                                          pageout: bool) -> None:
        """`mm/madvise.c:madvise_cold_or_pageout_pte_range()` for one PMD range."""
        mm = vma.vm_mm
        haddr = addr & HPAGE_PMD_MASK
        folio_list: list[Page] = []
        pmd = mm.pmd.get(haddr)
        if pmd_trans_huge(pmd):
            folio = self.pages[pte_pfn(pmd)]
            if folio_maybe_mapped_shared(folio):  # "Do not interfere with other mappings"
                return
            if end - addr != HPAGE_PMD_SIZE:
                if self._lock_split_put(folio):
                    return
                # goto regular_folio
            else:
                if not pageout and pte_young(pmd):
                    mm.pmd[haddr] = pte_mkold(pmd)  # pmdp_invalidate(); pmd_mkold(); set_pmd_at()
                self._cold_or_isolate(folio, pageout, folio_list)
                if pageout:
                    self.reclaim_pages(folio_list)
                return
        table = mm.pmd.get(haddr)
        if not isinstance(table, dict):
            return
        while addr < end:
            nr = 1
            pte = table.get(addr)
            if pte is None or not pte_present(pte) or pte & _PAGE_SPECIAL:  # !vm_normal_folio()
                addr += PAGE_SIZE
                continue
            folio = compound_head(self.pages[pte_pfn(pte)])
            if folio_test_large(folio):
                nr = self._folio_pte_batch(table, addr, end, folio)  # madvise_folio_pte_batch()
                if nr < N:
                    if folio_maybe_mapped_shared(folio):
                        addr += nr * PAGE_SIZE
                        continue
                    if self._lock_split_put(folio) == 0:
                        nr = 0  # look at the same PTE again
                    addr += nr * PAGE_SIZE
                    continue
            nr_pages = N if folio_test_large(folio) else 1
            if not folio.flags & (1 << PG_lru) or folio_mapcount(folio) != nr_pages:
                addr += nr * PAGE_SIZE
                continue
            if not pageout:  # clear_young_dirty_ptes(CYDP_CLEAR_YOUNG) on the batch
                for i in range(nr):
                    table[addr + i * PAGE_SIZE] = pte_mkold(table[addr + i * PAGE_SIZE])
            self._cold_or_isolate(folio, pageout, folio_list)
            addr += nr * PAGE_SIZE
        if pageout:
            self.reclaim_pages(folio_list)

    def reclaim_pages(self, folio_list: list[Page]) -> None:
        """`mm/vmscan.c:reclaim_pages()` -> reclaim_folio_list(): PG_active cleared, then
        shrink_folio_list(ignore_references) with no swap: every folio ends activated; then
        folio_putback_lru(): PG_lru back and the isolation reference dropped (which frees what
        nothing maps any more)."""
        for folio in folio_list:
            folio.flags &= ~(1 << PG_active)  # folio_clear_active()
        ret_folios = self.shrink_folio_list(folio_list)
        for folio in ret_folios:  # folio_putback_lru()
            folio.flags |= 1 << PG_lru
            self.put_page(folio)

    def shrink_folio_list(self, folio_list: list[Page]) -> list[Page]:
        """`mm/vmscan.c:shrink_folio_list()` for anon swap-backed folios with no swap device."""
        ret_folios = []
        queue = list(folio_list)
        while queue:
            folio = queue.pop()  # lru_to_folio(): from the tail
            assert not PageLocked(folio)
            folio.flags |= 1 << PG_locked  # folio_trylock()
            nr_pages = N if folio_test_large(folio) else 1
            ok = True
            if folio_test_large(folio):
                if not self.can_split_folio(folio, 1):  # "cannot split folio, skip it"
                    ok = False
                elif (folio.deferred and folio.partially_mapped
                      and self.split_folio(folio, queue)):  # "Split partially mapped folios"
                    ok = False
            if ok and folio_test_large(folio):
                # folio_alloc_swap() fails: "Fallback to swap normal pages"
                if self.split_folio(folio, queue):
                    ok = False
                else:
                    if nr_pages >= N:
                        self.vm_events["thp_swpout_fallback"] += 1
                    self.mthp_stats["swpout_fallback"] += 1
            # folio_alloc_swap() fails again (or for a small folio): activate_locked(_split)
            folio.flags |= 1 << PG_active  # folio_set_active()
            folio.flags &= ~(1 << PG_locked)  # keep_locked: folio_unlock()
            ret_folios.append(folio)
        return ret_folios

    # ---- mprotect (mm/mprotect.c, MM_CP_TRY_CHANGE_WRITABLE) ------------------------------------

    def change_protection(self, vma: VmAreaStruct, addr: int, end: int) -> None:
        """`change_protection()` with MM_CP_TRY_CHANGE_WRITABLE when the VMA is writable
        (vma_wants_manual_pte_write_upgrade()): pmd_modify()/pte_modify() clear _PAGE_RW, then an
        entry of a PageAnonExclusive page becomes writable at once (can_change_pmd_writable() /
        can_change_pte_writable(); the zero page has no page and stays read-only)."""
        try_writable = bool(vma.vm_flags & VM_WRITE)
        mm = vma.vm_mm
        while addr != end:
            next_ = pmd_addr_end(addr, end)
            haddr = addr & HPAGE_PMD_MASK
            if pmd_trans_huge(mm.pmd.get(haddr)):
                if next_ - addr != HPAGE_PMD_SIZE:
                    self.split_huge_pmd(vma, addr)
                else:
                    entry = pte_wrprotect(mm.pmd[haddr])  # change_huge_pmd()
                    if try_writable and PageAnonExclusive(self.pages[pte_pfn(entry)]):
                        entry |= _PAGE_RW  # pmd_mkwrite()
                    mm.pmd[haddr] = entry
                    addr = next_
                    continue
            table = mm.pmd.get(haddr)
            if isinstance(table, dict):
                for vaddr in range(addr, next_, PAGE_SIZE):
                    if vaddr in table and pte_present(table[vaddr]):
                        entry = pte_wrprotect(table[vaddr])
                        if (try_writable and not entry & _PAGE_SPECIAL
                                and PageAnonExclusive(self.pages[pte_pfn(entry)])):
                            entry |= _PAGE_RW  # pte_mkwrite()
                        table[vaddr] = entry
            addr = next_

