"""Mainline Linux 4.5 (where the THP refcounting series landed, in a later revision): what the
reference model does differently from v5, under the kernel's function names.

No permanent offset: the subpages carry a +1 only under ``PG_double_map`` (in ``page[1].flags``), set
while a THP is mapped by PMDs and PTEs at once; a freeze that drops each mapping's mapcount and
reference and an unfreeze that takes them back; the recheck is ``!mapcount && count == 1``; tails get
PG_dirty copied from the head. Every choice is commented with the v4.5 function it follows ("v4.5
..."); docs/semantics.md "Variant v4.5" describes the arithmetic.
"""
from __future__ import annotations

from vmstate.kernels.constants import (
    _PAGE_DIRTY, _PAGE_SOFT_DIRTY, EBUSY, HPAGE_PMD_MASK, HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SHIFT,
    PAGE_SIZE, RACE_AFTER_FREEZE, RACE_AFTER_PRECHECK, RACE_NONE, SPLIT_FAIL_ANON_VMA,
    SPLIT_FAIL_PRECHECK, SPLIT_FAIL_RECHECK, SPLIT_OK, TAIL_COPY_FLAGS, TAIL_MAPPING, PG_dirty,
    PG_hwpoison,
)
from vmstate.errors import CorruptState

from .mm import AnonVma, VmAreaStruct, _vma_address
from .page import (
    Page, PageAnon, PageCompound, PageDirty, PageDoubleMap, PageHead, PageLocked, PageSwapBacked,
    PageTransCompound, SetPageDirty, TestClearPageDoubleMap, TestSetPageDoubleMap, compound_head,
    compound_mapcount, is_migration_entry, make_migration_entry, maybe_mkwrite, mk_pte, page_count,
    page_dup_rmap, page_mapped, page_to_pgoff, pmd_trans_huge, pte_mkold, pte_pfn, pte_present, pte_soft_dirty,
    pte_write, pte_wrprotect, pte_young,
)
from .state import ReferenceState

N = HPAGE_PMD_NR


# --------------------------------------------------------------------------------------------------
# mapcount readers
# --------------------------------------------------------------------------------------------------

def page_mapcount(page: Page) -> int:
    """Mirror of v4.5 `mm/util.c:__page_mapcount()`, where PG_double_map is the offset:
    raw + 1 + compound_mapcount - PageDoubleMap."""
    ret = page._mapcount + 1
    if PageCompound(page):
        head = compound_head(page)
        ret += compound_mapcount(head)
        if PageDoubleMap(head):
            ret -= 1
    return ret


def total_mapcount(head: Page) -> int:
    """Mirror of v4.5 `mm/huge_memory.c:total_mapcount()`, which subtracts N for PG_double_map
    instead of for compound_mapcount."""
    ret = compound_mapcount(head)
    for i in range(N):
        ret += head.block[i]._mapcount + 1
    if PageDoubleMap(head):
        ret -= N
    return ret


class ReferenceStateV4_5(ReferenceState, variant="v4.5"):
    """``ReferenceState("v4.5")``: the shared machine with mainline 4.5's mapcount arithmetic."""

    page_mapcount = staticmethod(page_mapcount)
    total_mapcount = staticmethod(total_mapcount)

    # ---- rmap -----------------------------------------------------------------------------------

    def page_add_new_anon_rmap(self, page: Page, vma: VmAreaStruct, address: int,
                               compound: bool) -> None:
        """Mirror of v4.5 `mm/rmap.c:page_add_new_anon_rmap()`: a THP gets compound_mapcount 1 only
        (its subpages' ``_mapcount`` stays -1), a small page ``_mapcount`` 0."""
        if compound:
            assert PageHead(page)
            page.block[1]._compound_mapcount = 0  # atomic_set(compound_mapcount_ptr(page), 0)
            self.atomics["mapcount_writes"] += 1
        else:
            page._mapcount = 0  # atomic_set(&page->_mapcount, 0)
            self.atomics["mapcount_writes"] += 1

    def page_remove_rmap(self, page: Page, compound: bool, vma: VmAreaStruct | None = None) -> None:
        """Mirror of v4.5 `mm/rmap.c:page_remove_rmap()`: the compound case is
        `page_remove_anon_compound_rmap()`; a small mapping queues the THP once its subpage's
        ``_mapcount`` goes negative (the same test and the same queueing as v5)."""
        if compound:
            self.page_remove_anon_compound_rmap(page)
            return
        if self._mapcount_add(page, -1) >= 0:
            return
        assert page._mapcount == -1
        if PageTransCompound(page):
            self.deferred_split_huge_page(compound_head(page))

    def page_remove_anon_compound_rmap(self, page: Page) -> None:
        """Mirror of v4.5 `mm/rmap.c:page_remove_anon_compound_rmap()`: the subpages carry a +1 only
        under PG_double_map; nr counts those that are left unmapped."""
        assert PageHead(page)
        if self._compound_mapcount_add(page, -1) >= 0:  # !atomic_add_negative()
            return
        if TestClearPageDoubleMap(page):
            nr = 0
            for i in range(N):  # atomic_add_negative(-1, &page[i]._mapcount)
                if self._mapcount_add(page.block[i], -1) < 0:
                    nr += 1
        else:
            nr = N
        if nr:
            self.deferred_split_huge_page(page)

    def page_dup_rmap(self, page: Page, compound: bool, dst_vma: VmAreaStruct) -> None:
        """Mirror of v4.5 `include/linux/rmap.h:page_dup_rmap()` (copy_huge_pmd() /
        copy_one_pte())."""
        page_dup_rmap(page, compound)
        self.atomics["mapcount_writes"] += 1

    # ---- what v5 and v4.5 do alike: the shrinker, the write faults -------------------------------
    deferred_split_scan = ReferenceState._deferred_split_scan_2015
    do_huge_pmd_wp_page = ReferenceState._do_huge_pmd_wp_page_2015
    do_wp_page = ReferenceState._do_wp_page_2015

    def page_get_anon_vma(self, page: Page) -> AnonVma | None:
        """Mirror of v4.5 `mm/rmap.c:page_get_anon_vma()`: NULL unless anon and page_mapped() (for a
        THP the same as v5's total_mapcount() != 0)."""
        if not PageAnon(page):
            return None
        if not page_mapped(page):
            return None
        return self.anon_vmas[page.mapping]

    # ---- split_huge_pmd -------------------------------------------------------------------------

    def _split_huge_pmd_locked(self, vma: VmAreaStruct, haddr: int, freeze: bool) -> None:
        """Mirror of v4.5 `mm/huge_memory.c:__split_huge_pmd_locked()`."""
        mm = vma.vm_mm
        pmd = mm.pmd[haddr]
        assert haddr & ~HPAGE_PMD_MASK == 0
        assert vma.vm_start <= haddr and vma.vm_end >= haddr + HPAGE_PMD_SIZE
        assert pmd_trans_huge(pmd)
        self.vm_events["thp_split_pmd"] += 1
        page = self.pages[pte_pfn(pmd)]
        assert page_count(page)
        self._count_add(page, N - 1)  # atomic_add(HPAGE_PMD_NR - 1, &page->_count)
        # v4.5: write, young and dirty read from the PMD; dirty goes to PG_dirty, not to the PTEs
        write, young, dirty = pte_write(pmd), pte_young(pmd), bool(pmd & _PAGE_DIRTY)
        table: dict[int, int] = {}  # pgtable_trans_huge_withdraw() + pmd_populate(mm, &_pmd, ...)
        for i in range(N):
            if freeze:
                entry = make_migration_entry(page.pfn + i, write)
            else:
                # v4.5: mk_pte(), maybe_mkwrite(), pte_wrprotect() unless write, pte_mkold() unless
                # young: no pte_mkdirty() (MADV_FREE keeps the dirtiness in PG_dirty instead)
                entry = maybe_mkwrite(mk_pte(page.pfn + i), vma)
                if not write:
                    entry = pte_wrprotect(entry)
                if not young:
                    entry = pte_mkold(entry)
            if dirty:
                SetPageDirty(page.block[i])  # v4.5: SetPageDirty(page + i), PF_HEAD: the head's bit
            address = haddr + i * PAGE_SIZE
            assert address not in table  # BUG_ON(!pte_none(*pte))
            table[address] = entry
            self.costs["pte_write"] += 1
            self._mapcount_add(page.block[i], 1)  # v4.5: atomic_inc(&page[i]._mapcount)
        # v4.5: "Set PG_double_map before dropping compound_mapcount to avoid false-negative
        # page_mapped()"
        if compound_mapcount(page) > 1 and not TestSetPageDoubleMap(page):
            for i in range(N):
                self._mapcount_add(page.block[i], 1)
        if self._compound_mapcount_add(page, -1) < 0:  # v4.5: last compound_mapcount is gone
            if TestClearPageDoubleMap(page):  # v4.5: "No need in mapcount reference anymore"
                for i in range(N):
                    self._mapcount_add(page.block[i], -1)
        self.costs["tlb_flush"] += 1  # v4.5 pmdp_invalidate() before pmd_populate()
        mm.pmd[haddr] = table  # pmd_populate()
        if freeze:  # v4.5: the migration entries hold neither a mapcount nor a reference
            for i in range(N):
                self.page_remove_rmap(page.block[i], False)
                self.put_page(page.block[i])

    # ---- split_huge_page (v4.5) -----------------------------------------------------------------

    def freeze_page_vma(self, vma: VmAreaStruct, page: Page, address: int) -> None:
        """Mirror of v4.5 `mm/huge_memory.c:freeze_page_vma()`: only the VMA's part of the THP, from
        ``address`` (``__vma_address()`` of the head) on; each PTE frozen drops its mapcount and
        reference."""
        mm = vma.vm_mm
        head = page
        haddr = address & HPAGE_PMD_MASK
        off, nr = 0, N
        if address < vma.vm_start:  # v4.5: "Skip pages which doesn't belong to the VMA"
            off = (vma.vm_start - address) >> PAGE_SHIFT
            page = head.block[off]  # page += off
            nr -= off
            address = vma.vm_start
        # pgd/pud present (as in v5); v4.5 also takes pmd_lock() before the pmd_present() test.
        self.costs["pmd_lock"] += 1
        pmd = mm.pmd.get(address & HPAGE_PMD_MASK)  # pmd_offset(pud, address): after the skip
        if pmd is None:
            return
        if pmd_trans_huge(pmd):
            if self.pages[pte_pfn(pmd)] is page:  # v4.5: page == pmd_page(*pmd)
                self._split_huge_pmd_locked(vma, haddr, True)
            return
        self.costs["pte_lock"] += 1  # pte_offset_map_lock()
        for i in range(nr):  # v4.5: from the VMA's start (or the THP's) to the THP's end
            vaddr = address + i * PAGE_SIZE
            if vaddr == haddr + HPAGE_PMD_SIZE:  # "crossed page table boundary" (after mremap)
                pmd = mm.pmd.get(vaddr)  # mm_find_pmd(): none or huge -> NULL
                if not isinstance(pmd, dict):
                    return
                haddr = vaddr
                self.costs["pte_lock"] += 1
            sub = head.block[off + i]
            pte = pmd.get(vaddr)
            if pte is None or not pte_present(pte):
                continue
            if sub.pfn != pte_pfn(pte):
                continue
            self.costs["tlb_flush"] += 1  # ptep_clear_flush()
            if pte & _PAGE_DIRTY:
                SetPageDirty(sub)  # v4.5: if (pte_dirty(entry)) SetPageDirty(page)
            swp_pte = make_migration_entry(sub.pfn, pte_write(pte))
            if pte_soft_dirty(pte):
                swp_pte |= _PAGE_SOFT_DIRTY  # pte_swp_mksoft_dirty()
            pmd[vaddr] = swp_pte
            self.costs["pte_write"] += 1
            self.page_remove_rmap(sub, False)  # v4.5 freeze_page_vma()
            self.put_page(sub)

    def freeze_page(self, anon_vma: AnonVma, page: Page) -> None:
        """Mirror of v4.5 `mm/huge_memory.c:freeze_page()`: the same walk as v5; freeze_page_vma()
        gets ``__vma_address()`` unmasked."""
        assert PageHead(page)
        pgoff = page_to_pgoff(page)
        for vma in anon_vma.interval_tree_foreach(pgoff, pgoff + N - 1):
            address = _vma_address(page, vma)
            self.costs["mmu_notifier"] += 1  # mmu_notifier_invalidate_range_start/end
            self.freeze_page_vma(vma, page, address)

    def unfreeze_page_vma(self, vma: VmAreaStruct, page: Page, address: int) -> None:
        """Mirror of v4.5 `mm/huge_memory.c:unfreeze_page_vma()`: one PTE lock for the VMA's part of
        the THP; each migration entry of the THP found there becomes a PTE again and takes back a
        reference and a mapcount. ``maybe_mkwrite()`` reads this VMA's VM_WRITE also for entries
        past ``vm_end`` (v4.5 does not stop at the VMA's end)."""
        head = page
        haddr = address & HPAGE_PMD_MASK
        off, nr = 0, N
        if address < vma.vm_start:  # v4.5: "Skip pages which doesn't belong to the VMA"
            off = (vma.vm_start - address) >> PAGE_SHIFT
            nr -= off
            address = vma.vm_start
        pmd = vma.vm_mm.pmd.get(address & HPAGE_PMD_MASK)  # mm_find_pmd(address), after the skip
        if not isinstance(pmd, dict):  # mm_find_pmd(): none or huge -> NULL
            return
        self.costs["pte_lock"] += 1  # pte_offset_map_lock()
        for i in range(nr):
            vaddr = address + i * PAGE_SIZE
            if vaddr == haddr + HPAGE_PMD_SIZE:  # "crossed page table boundary" (after mremap)
                pmd = vma.vm_mm.pmd.get(vaddr)  # mm_find_pmd(): none or huge -> NULL
                if not isinstance(pmd, dict):
                    return
                haddr = vaddr
                self.costs["pte_lock"] += 1
            sub = head.block[off + i]
            pte = pmd.get(vaddr)
            if pte is None or pte_present(pte):  # !is_swap_pte()
                continue
            if not is_migration_entry(pte) or pte_pfn(pte) != sub.pfn:
                continue
            self.get_page(sub)  # v4.5 unfreeze_page_vma(): get_page(page)
            self._mapcount_add(sub, 1)  # v4.5 page_add_anon_rmap(page, vma, address, false)
            entry = pte_mkold(mk_pte(sub.pfn))
            if PageDirty(sub):
                entry |= _PAGE_DIRTY  # v4.5: if (PageDirty(page)) entry = pte_mkdirty(entry)
            if pte_write(pte):  # is_write_migration_entry()
                entry = maybe_mkwrite(entry, vma)
            pmd[vaddr] = entry  # set_pte_at()
            self.costs["pte_write"] += 1

    def unfreeze_page(self, anon_vma: AnonVma, page: Page) -> None:
        """Mirror of v4.5 `mm/huge_memory.c:unfreeze_page()`: one walk of ``[pgoff, pgoff + N - 1]``,
        one mmu-notifier range per VMA."""
        pgoff = page_to_pgoff(page)
        for vma in anon_vma.interval_tree_foreach(pgoff, pgoff + N - 1):
            self.costs["mmu_notifier"] += 1  # v4.5 unfreeze_page(): per VMA
            self.unfreeze_page_vma(vma, page, _vma_address(page, vma))

    def _split_huge_page_tail(self, head: Page, tail: int) -> int:
        """Mirror of v4.5 `mm/huge_memory.c:__split_huge_page_tail()`."""
        page_tail = head.block[tail]
        # v4.5: mapcount = atomic_read(&page_tail->_mapcount) + 1 (0 after the freeze)
        mapcount = page_tail._mapcount + 1
        assert page_tail._count == 0  # VM_BUG_ON_PAGE(atomic_read(&page_tail->_count) != 0)
        self._count_add(page_tail, mapcount + 1)  # v4.5: atomic_add(mapcount + 1, ...)
        # v4.5: &= ~PAGE_FLAGS_CHECK_AT_PREP, which leaves __PG_HWPOISON since commit f4c18e6f7b5b
        # ("mm: check __PG_HWPOISON separately from PAGE_FLAGS_CHECK_AT_*", 2015, before v4.5); it
        # clears PG_double_map (PG_private_2) on page[1]
        page_tail.flags &= 1 << PG_hwpoison
        page_tail.flags |= head.flags & (TAIL_COPY_FLAGS | (1 << PG_dirty))  # v4.5: PG_dirty copied
        # v4.5: VM_BUG_ON_PAGE(tail > 2 && page_tail->mapping != TAIL_MAPPING)
        assert tail <= 2 or page_tail.mapping == TAIL_MAPPING
        page_tail.mapping = head.mapping
        page_tail.index = head.index + tail
        self.lru_add_page_tail(head, page_tail)
        return mapcount

    def split_huge_page_to_list(self, head_pfn: int, pin_at: int = RACE_NONE,
                                unpin_at: int = RACE_NONE) -> tuple[int, int]:
        """Mirror of v4.5 `mm/huge_memory.c:split_huge_page_to_list(page, NULL)`: the recheck is
        ``!mapcount && count == 1``. The caller holds a reference and the page lock. Returns (0 or
        -EBUSY, SPLIT_* reason).
        ``pin_at``/``unpin_at``: where another CPU's GUP reference on the head arrives and leaves."""
        page = self.pages[head_pfn]
        head = compound_head(page)
        assert PageAnon(head) and PageLocked(page) and PageSwapBacked(head) and PageCompound(page)
        anon_vma = self.page_get_anon_vma(head)
        if anon_vma is None:
            ret, reason = -EBUSY, SPLIT_FAIL_ANON_VMA
        else:
            self.costs["anon_vma_lock"] += 1  # anon_vma_lock_write()
            # Racy check if we can split the page, before freeze_page() will split PMDs
            if total_mapcount(head) != page_count(head) - 1:
                ret, reason = -EBUSY, SPLIT_FAIL_PRECHECK
            else:
                self._race(RACE_AFTER_PRECHECK, pin_at, unpin_at, head)
                self.freeze_page(anon_vma, head)
                self._race(RACE_AFTER_FREEZE, pin_at, unpin_at, head)
                assert compound_mapcount(head) == 0  # VM_BUG_ON_PAGE
                # v4.5, under split_queue_lock: the freeze left no mapping, so only the caller's
                # reference may remain
                count = page_count(head)
                mapcount = total_mapcount(head)
                if not mapcount and count == 1:
                    head.deferred = False  # v4.5: list_del(page_deferred_list(head)) under the lock
                    self._split_huge_page(page)
                    ret, reason = 0, SPLIT_OK
                elif mapcount:
                    # v4.5: IS_ENABLED(CONFIG_DEBUG_VM) && mapcount -> BUG() with the values read
                    raise CorruptState(f"pfn {head.pfn:#x}: total_mapcount: {mapcount}, "
                                       f"page_count(): {count}", pfn=head.pfn,
                                       rule="split_huge_page_to_list: total_mapcount == 0 after "
                                            "freeze_page")
                else:
                    self.unfreeze_page(anon_vma, head)  # v4.5: a pin: unfreeze, -EBUSY
                    ret, reason = -EBUSY, SPLIT_FAIL_RECHECK
        self.vm_events["thp_split_page" if ret == 0 else "thp_split_page_failed"] += 1
        return ret, reason
