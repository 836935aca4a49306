"""The THP refcounting redesign v5 (Kirill A. Shutemov's 2015 series, patches 25-28/28): what the
reference model does differently from mainline 4.5, under the kernel's function names.

v5 keeps a permanent offset: while compound_mapcount is positive, every subpage's ``_mapcount`` carries
a +1 (``shared/reference/MODEL.md``); the freeze turns mappings into migration entries and keeps their
mapcounts and references; the recheck is ``total_mapcount == page_count - 1``; tails get PG_dirty set.
"""
from __future__ import annotations

from vmstate.kernels.constants import (
    _PAGE_DIRTY, _PAGE_SOFT_DIRTY, EBUSY, HPAGE_PMD_MASK, HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE,
    RACE_AFTER_FREEZE, RACE_AFTER_PRECHECK, RACE_NONE, SPLIT_FAIL_ANON_VMA, SPLIT_FAIL_PRECHECK,
    SPLIT_FAIL_RECHECK, SPLIT_OK, TAIL_COPY_FLAGS, TAIL_MAPPING, PG_dirty, PG_hwpoison,
)
from vmstate.errors import CorruptState

from .mm import AnonVma, VmAreaStruct, _vma_address, vma_address
from .page import (
    Page, PageAnon, PageCompound, PageHead, PageLocked, PageSwapBacked, PageTransCompound,
    compound_head, compound_mapcount, is_migration_entry, make_migration_entry, maybe_mkwrite,
    mk_pte, page_count, page_dup_rmap, page_to_pgoff, pmd_trans_huge, pte_mkold, pte_pfn, pte_present,
    pte_soft_dirty, pte_write, pte_wrprotect, pte_young,
)
from .state import ReferenceState

N = HPAGE_PMD_NR


# --------------------------------------------------------------------------------------------------
# mapcount readers
# --------------------------------------------------------------------------------------------------

def page_mapcount(page: Page) -> int:
    """Mirror of v5 `include/linux/mm.h:page_mapcount()`: a positive compound_mapcount offsets every
    subpage's ``_mapcount`` by one."""
    ret = page._mapcount + 1
    if PageCompound(page):
        head = compound_head(page)
        ret += compound_mapcount(head)
        if compound_mapcount(head):
            ret -= 1
    return ret


def total_mapcount(head: Page) -> int:
    """Mirror of `mm/huge_memory.c:total_mapcount()` (v5 patch 25/28)."""
    ret = compound_mapcount(head)
    for i in range(N):
        ret += head.block[i]._mapcount + 1
    # Positive compound_mapcount() offsets ->_mapcount in every subpage by one.
    if compound_mapcount(head):
        ret -= N
    return ret


class ReferenceStateV5(ReferenceState, variant="v5"):
    """``ReferenceState("v5")``: the shared machine with v5's mapcount arithmetic."""

    page_mapcount = staticmethod(page_mapcount)
    total_mapcount = staticmethod(total_mapcount)

    # ---- rmap -----------------------------------------------------------------------------------

    def page_add_new_anon_rmap(self, page: Page, vma: VmAreaStruct, address: int,
                               compound: bool) -> None:
        """Mirror of v5 `mm/rmap.c:page_add_new_anon_rmap()`: a THP gets compound_mapcount 1 and the
        offset, a small page ``_mapcount`` 0."""
        if compound:
            assert PageHead(page)
            for i in range(N):
                page.block[i]._mapcount = 0  # the v5 offset
                self.atomics["mapcount_writes"] += 1
            page.block[1]._compound_mapcount = 0  # atomic_set(compound_mapcount_ptr(page), 0)
            self.atomics["mapcount_writes"] += 1
        else:
            page._mapcount = 0  # atomic_set(&page->_mapcount, 0)
            self.atomics["mapcount_writes"] += 1

    def page_remove_rmap(self, page: Page, compound: bool, vma: VmAreaStruct | None = None) -> None:
        """Mirror of v5 `mm/rmap.c:page_remove_rmap()`: dropping the last PMD mapping drops the
        offset; any subpage whose ``_mapcount`` goes negative queues the THP."""
        if compound:
            assert PageHead(page)
            if self._compound_mapcount_add(page, -1) >= 0:  # !atomic_add_negative()
                return
            queue = False
            for i in range(N):
                queue |= self._mapcount_add(page.block[i], -1) < 0
            if queue:
                self.deferred_split_huge_page(page)
            return
        if self._mapcount_add(page, -1) >= 0:
            return
        assert page._mapcount == -1
        if PageTransCompound(page):
            self.deferred_split_huge_page(compound_head(page))

    def page_dup_rmap(self, page: Page, compound: bool, dst_vma: VmAreaStruct) -> None:
        """Mirror of v5 `include/linux/rmap.h:page_dup_rmap()` (copy_huge_pmd() /
        copy_one_pte())."""
        page_dup_rmap(page, compound)
        self.atomics["mapcount_writes"] += 1

    # ---- what v5 and v4.5 do alike: the shrinker, the write faults -------------------------------
    deferred_split_scan = ReferenceState._deferred_split_scan_2015
    do_huge_pmd_wp_page = ReferenceState._do_huge_pmd_wp_page_2015
    do_wp_page = ReferenceState._do_wp_page_2015

    def page_get_anon_vma(self, page: Page) -> AnonVma | None:
        """Mirror of `mm/rmap.c:page_get_anon_vma()`: NULL unless anon and page_mapped() (for a THP:
        total_mapcount() != 0, docs/semantics.md)."""
        if not PageAnon(page):
            return None
        if not total_mapcount(page):
            return None
        return self.anon_vmas[page.mapping]

    # ---- split_huge_pmd -------------------------------------------------------------------------

    def _split_huge_pmd_locked(self, vma: VmAreaStruct, haddr: int, freeze: bool) -> None:
        """Mirror of v5 `mm/huge_memory.c:__split_huge_pmd_locked()` (with the freeze of 25/28)."""
        mm = vma.vm_mm
        pmd = mm.pmd[haddr]
        assert haddr & ~HPAGE_PMD_MASK == 0
        assert vma.vm_start <= haddr and vma.vm_end >= haddr + HPAGE_PMD_SIZE
        assert pmd_trans_huge(pmd)
        self.vm_events["thp_split_pmd"] += 1
        page = self.pages[pte_pfn(pmd)]
        assert page_count(page)
        self._count_add(page, N - 1)  # atomic_add(HPAGE_PMD_NR - 1, &page->_count)
        write, young = pte_write(pmd), pte_young(pmd)
        self.costs["tlb_flush"] += 1  # pmdp_clear_flush_notify(): pmd empty until ptes are filled
        table: dict[int, int] = {}  # pgtable_trans_huge_withdraw()
        for i in range(N):
            if freeze:
                entry = make_migration_entry(page.pfn + i, write)
            else:
                # As v4.0 __split_huge_page_map(): dirty always, write and young from the PMD.
                entry = maybe_mkwrite(mk_pte(page.pfn + i) | _PAGE_DIRTY, vma)
                if not write:
                    entry = pte_wrprotect(entry)
                if not young:
                    entry = pte_mkold(entry)
            address = haddr + i * PAGE_SIZE
            assert address not in table  # BUG_ON(!pte_none(*pte))
            table[address] = entry
            self.costs["pte_write"] += 1
            self._mapcount_add(page.block[i], 1)
        if self._compound_mapcount_add(page, -1) < 0:  # atomic_add_negative(): last PMD mapping
            for i in range(N):  # the offset becomes the PTE mapping
                self._mapcount_add(page.block[i], -1)
        mm.pmd[haddr] = table  # pmd_populate()

    # ---- split_huge_page (v5 patch 25/28) -------------------------------------------------------

    def freeze_page_vma(self, vma: VmAreaStruct, page: Page, address: int) -> None:
        """Mirror of `mm/huge_memory.c:freeze_page_vma()`."""
        mm = vma.vm_mm
        # pgd/pud are present for every VMA that was faulted in; the PMD lock is taken before the
        # pmd_present() test, so it is counted also for a none PMD.
        self.costs["pmd_lock"] += 1
        pmd = mm.pmd.get(address)
        if pmd is None:
            return
        if pmd_trans_huge(pmd):
            if self.pages[pte_pfn(pmd)] is page:
                self._split_huge_pmd_locked(vma, address, True)
            return
        self.costs["pte_lock"] += 1  # pte_offset_map_lock()
        for i in range(N):  # every PTE of the table, also outside this VMA
            vaddr = address + i * PAGE_SIZE
            pte = pmd.get(vaddr)
            if pte is None or not pte_present(pte):
                continue
            if page.pfn + i != pte_pfn(pte):
                continue
            self.costs["tlb_flush"] += 1  # ptep_clear_flush()
            swp_pte = make_migration_entry(page.pfn + i, pte_write(pte))
            if pte_soft_dirty(pte):
                swp_pte |= _PAGE_SOFT_DIRTY  # pte_swp_mksoft_dirty()
            pmd[vaddr] = swp_pte
            self.costs["pte_write"] += 1

    def freeze_page(self, anon_vma: AnonVma, page: Page) -> None:
        """Mirror of `mm/huge_memory.c:freeze_page()`: freeze_page_vma() gets the PMD-aligned
        ``__vma_address()``."""
        assert PageHead(page)
        pgoff = page_to_pgoff(page)
        for vma in anon_vma.interval_tree_foreach(pgoff, pgoff + N - 1):
            address = _vma_address(page, vma)
            self.costs["mmu_notifier"] += 1  # mmu_notifier_invalidate_range_start/end
            self.freeze_page_vma(vma, page, address & HPAGE_PMD_MASK)

    def unfreeze_page_vma(self, vma: VmAreaStruct, page: Page, address: int) -> None:
        """Mirror of `mm/huge_memory.c:unfreeze_page_vma()`."""
        pmd = vma.vm_mm.pmd.get(address & HPAGE_PMD_MASK)
        if not isinstance(pmd, dict):  # mm_find_pmd(): none or huge -> NULL
            return
        self.costs["pte_lock"] += 1  # pte_offset_map_lock()
        pte = pmd.get(address)
        if pte is None or pte_present(pte):  # !is_swap_pte()
            return
        if not is_migration_entry(pte) or pte_pfn(pte) != page.pfn:
            return
        entry = pte_mkold(mk_pte(page.pfn))
        if pte_write(pte):  # is_write_migration_entry()
            entry = maybe_mkwrite(entry, vma)
        pmd[address] = entry  # set_pte_at()
        self.costs["pte_write"] += 1

    def unfreeze_page(self, anon_vma: AnonVma, page: Page) -> None:
        """Mirror of `mm/huge_memory.c:unfreeze_page()`: one rmap walk per mapped subpage."""
        pgoff = page_to_pgoff(page)
        for i in range(N):
            subpage = page.block[i]
            if not page_mapcount(subpage):
                continue
            for vma in anon_vma.interval_tree_foreach(pgoff + i, pgoff + i):
                address = vma_address(subpage, vma)
                self.costs["mmu_notifier"] += 1
                self.unfreeze_page_vma(vma, subpage, address)

    def _split_huge_page_tail(self, head: Page, tail: int) -> int:
        """Mirror of `mm/huge_memory.c:__split_huge_page_tail()`."""
        page_tail = head.block[tail]
        mapcount = page_mapcount(page_tail)
        assert page_tail._count == 0
        self._count_add(page_tail, page_mapcount(page_tail) + 1)
        page_tail.flags &= 1 << PG_hwpoison  # &= ~PAGE_FLAGS_CHECK_AT_PREP | __PG_HWPOISON
        page_tail.flags |= head.flags & TAIL_COPY_FLAGS
        page_tail.flags |= 1 << PG_dirty
        # ->mapping in first tail page is compound_mapcount (vmstate keeps it apart)
        assert tail == 1 or page_tail.mapping == TAIL_MAPPING
        page_tail.mapping = head.mapping
        page_tail.index = head.index + tail
        self.lru_add_page_tail(head, page_tail)
        return mapcount

    def split_huge_page_to_list(self, head_pfn: int, pin_at: int = RACE_NONE,
                                unpin_at: int = RACE_NONE) -> tuple[int, int]:
        """Mirror of `mm/huge_memory.c:split_huge_page_to_list(page, NULL)` (v5 patch 25/28). The
        caller holds a reference and the page lock. Returns (0 or -EBUSY, SPLIT_* reason).
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
                mapcount, count = total_mapcount(head), page_count(head)
                if mapcount == count - 1:
                    self._split_huge_page(page)
                    ret, reason = 0, SPLIT_OK
                elif mapcount > count - 1:  # the kernel's BUG(): report the values tested
                    raise CorruptState(f"pfn {head.pfn:#x}: total_mapcount: {mapcount}, "
                                       f"page_count(): {count}", pfn=head.pfn,
                                       rule="split_huge_page_to_list: total_mapcount <= "
                                            "page_count - 1 after freeze_page")
                else:
                    self.unfreeze_page(anon_vma, head)
                    ret, reason = -EBUSY, SPLIT_FAIL_RECHECK
        self.vm_events["thp_split_page" if ret == 0 else "thp_split_page_failed"] += 1
        return ret, reason
