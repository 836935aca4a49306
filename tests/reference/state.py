"""The reference model's machine (``ReferenceState``): frames, processes, anon_vmas, pins, counters,
the public operations and every kernel function that the two refcounting variants share, written out
line by line.

What differs between v5 (the patch series) and mainline 4.5 lives in one module per variant
(``v5.py``, ``v4_5.py``), a subclass of :class:`ReferenceState` defining the kernel functions named in
:data:`ReferenceState.VARIANT_FUNCTIONS` under the kernel's names. ``ReferenceState(variant)`` picks
that subclass once, at construction (:meth:`ReferenceState.__new__`, from the registry the subclasses
fill); nothing below tests the variant. Sources: see the package docstring.
"""
from __future__ import annotations

from vmstate.kernels.constants import (
    _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, ANON_FAULT_FLAGS, COSTS,
    FIRST_BLOCK, HPAGE_PMD_MASK, HPAGE_PMD_NR, HPAGE_PMD_SIZE, MAPPING_NULL, PAGE_SHIFT, PAGE_SIZE,
    RACE_AFTER_SPLIT, RACE_NONE, SPLIT_FAIL_ANON_VMA, SPLIT_FAIL_PRECHECK, VM_ANON_DEFAULT,
    VM_EVENTS, VM_EXEC, VM_HUGEPAGE, VM_READ, VM_WRITE, PG_head, PG_hwpoison, PG_locked, PG_lru,
    PG_tail, PTE_PFN_SHIFT, TAIL_MAPPING, _PAGE_SPECIAL, MTHP_STATS, ZERO_PFN,
)
from vmstate.errors import BadInput

from .mm import USER_TOP, AnonVma, MmStruct, VmAreaStruct
from .page import (
    Page, PageCompound, PageDoubleMap, PageHead, PageLocked, PageTransCompound, compound_head,
    compound_mapcount, is_cow_mapping, page_count, pmd_addr_end, pmd_trans_huge,
    pte_mkold,
    pte_pfn, pte_present, pte_wrprotect,
)

N = HPAGE_PMD_NR
#: A write fault's entry (mk_pte(page, vm_page_prot) + pte_mkdirty() + maybe_mkwrite(); x86
#: PAGE_COPY carries _PAGE_ACCESSED): present, writable, young, dirty.
FAULT_PTE = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY


def linear_page_index(vma: VmAreaStruct, address: int) -> int:
    """Mirror of `include/linux/pagemap.h:linear_page_index()`: the page index ``address`` has in
    ``vma`` (vm_pgoff survives mremap, so a moved page keeps its index)."""
    return ((address - vma.vm_start) >> PAGE_SHIFT) + vma.vm_pgoff


class ReferenceState:
    """The whole simulated machine: frames, processes, anon_vmas, pins, counters.

    ``variant``: ``"v5"`` (the patch series, default) or ``"v4.5"`` (mainline Linux 4.5); the
    instance is of that variant's subclass (``ReferenceStateV5``, ``ReferenceStateV4_5``). ``atomics``
    counts, in both variants and apart from ``dump()``: ``mapcount_writes`` (every write to a
    ``_mapcount`` or a compound_mapcount) and ``refcount_ops`` (every atomic on a ``_count``);
    docs/semantics.md "Variant v4.5" gives the rules."""

    #: The registry: variant name -> its subclass, in the order the variant modules are imported
    #: (``tests/reference/__init__.py``). A subclass registers with ``class X(ReferenceState,
    #: variant="...")``.
    VARIANTS: dict[str, type[ReferenceState]] = {}
    DEFAULT_VARIANT = "v5"
    #: What a variant module defines, under the kernel's names (the rest is shared, below).
    VARIANT_FUNCTIONS = (
        "page_mapcount", "total_mapcount", "page_add_new_anon_rmap", "page_remove_rmap",
        "_split_huge_pmd_locked", "freeze_page_vma", "freeze_page", "unfreeze_page_vma",
        "unfreeze_page", "_split_huge_page_tail", "page_get_anon_vma", "split_huge_page_to_list",
        "page_dup_rmap", "deferred_split_scan", "do_huge_pmd_wp_page", "do_wp_page",
    )
    #: Whether the variant has MADV_COLD / MADV_PAGEOUT (Linux 5.4+): only 6.18.
    HAS_MADV_COLD = False
    variant: str

    def __init_subclass__(cls, variant: str, **kwargs):
        super().__init_subclass__(**kwargs)
        missing = [f for f in ReferenceState.VARIANT_FUNCTIONS if f not in vars(cls)]
        assert not missing, f"variant {variant!r} ({cls.__name__}) does not define {missing}"
        assert variant not in ReferenceState.VARIANTS, f"variant {variant!r} registered twice"
        cls.variant = variant
        ReferenceState.VARIANTS[variant] = cls

    @staticmethod
    def variant_class(variant: str) -> type[ReferenceState]:
        """The registered subclass of ``variant``; BadInput (field ``variant``) for another name."""
        sub = ReferenceState.VARIANTS.get(variant)
        if sub is None:
            raise BadInput(f"expected one of {', '.join(ReferenceState.VARIANTS)}, got {variant!r}",
                           field="variant")
        return sub

    def __new__(cls, variant: str | None = None):
        """The variant is chosen here, once: ``ReferenceState("v4.5")`` is a ``ReferenceStateV4_5``
        (a variant's own class takes no other name)."""
        if variant is None:
            variant = getattr(cls, "variant", ReferenceState.DEFAULT_VARIANT)
        sub = ReferenceState.variant_class(variant)
        if not issubclass(sub, cls):
            raise BadInput(f"{cls.__name__} is variant {cls.variant!r}, got {variant!r}",
                           field="variant")
        return super().__new__(sub)

    def __init__(self, variant: str | None = None):
        self.pages: dict[int, Page] = {}
        self.mem_map: dict[int, list] = {}  # block -> 512 entries (Page or None)
        self.next_block = FIRST_BLOCK
        self.mms: dict[str, MmStruct] = {}  # live processes
        self.used_names: set[str] = set()   # every name ever created (live or exited)
        self.anon_vmas: list[AnonVma] = []
        self.pins: dict[tuple[str, int, int], list[list[int]]] = {}
        self.vm_events = {k: 0 for k in VM_EVENTS}
        self.mthp_stats = {k: 0 for k in MTHP_STATS}  # hugepages-2048kB/stats (6.18 only)
        self.costs = {k: 0 for k in COSTS}
        self._fill_data = True  # the `data` bit the current mmap's faults write (fill)
        self._queue_seq = 0     # list_add_tail() order of the deferred split queue (6.18)
        self._alloc_run = None  # the write's last new small page: (vma, address, block)
        self.atomics = {"mapcount_writes": 0, "refcount_ops": 0}

    # ---- counted atomics ------------------------------------------------------------------------

    def _mapcount_add(self, page: Page, delta: int) -> int:
        """One atomic on ``page->_mapcount`` (atomic_inc/dec/add_negative); returns the new raw."""
        page._mapcount += delta
        self.atomics["mapcount_writes"] += 1
        return page._mapcount

    def _compound_mapcount_add(self, head: Page, delta: int) -> int:
        """One atomic on ``compound_mapcount_ptr(head)``; returns the new raw value."""
        head.block[1]._compound_mapcount += delta
        self.atomics["mapcount_writes"] += 1
        return head.block[1]._compound_mapcount

    def _count_add(self, page: Page, delta: int) -> None:
        """One atomic on ``page->_count`` other than get_page()/put_page() (atomic_add/sub/inc)."""
        page._count += delta
        self.atomics["refcount_ops"] += 1

    # ---- validation (raises before any state changes) -------------------------------------------

    def _live_mm(self, mm: str, field: str = "mm") -> MmStruct:
        proc = self.mms.get(mm)
        if proc is None:
            why = "has exited" if mm in self.used_names else "does not exist"
            raise BadInput(f"process {mm!r} {why}", field=field)
        return proc

    @staticmethod
    def _check_range(addr: int, length: int) -> int:
        """The engine's checks of an address range (``vmstate/engine/operations.py``), the same
        fields and messages: ``addr`` a positive multiple of 4 KiB (address 0 is refused), ``len``
        a positive multiple of 4 KiB, the range inside the 47-bit user address space. Returns the
        end."""
        if not isinstance(addr, int) or addr <= 0 or addr % PAGE_SIZE:
            raise BadInput(f"expected a positive multiple of 4096 (4K), got {addr!r}", field="addr")
        if not isinstance(length, int) or length <= 0 or length % PAGE_SIZE:
            raise BadInput(f"expected a positive multiple of 4096 (4K), got {length!r}", field="len")
        if addr + length > USER_TOP:
            raise BadInput(f"range 0x{addr:x}+0x{length:x} ends above the 47-bit user address space",
                           field="len")
        return addr + length

    @staticmethod
    def _check_mapped(proc: MmStruct, start: int, end: int) -> None:
        """The kernel's ENOMEM for madvise/mprotect (and GUP's EFAULT): no hole in ``[start, end)``."""
        addr = start
        for vma in proc.vmas:
            if vma.vm_end <= addr:
                continue
            if vma.vm_start > addr:
                break
            addr = vma.vm_end
            if addr >= end:
                return
        raise BadInput(f"{proc.name!r}: range {start:#x}-{end:#x} is not mapped at {addr:#x}",
                       field="addr")

    def _new_mm(self, name: str) -> MmStruct:
        proc = MmStruct(name, len(self.used_names))
        self.used_names.add(name)
        self.mms[name] = proc
        return proc

    # ---- page allocator -------------------------------------------------------------------------

    def _alloc_block(self) -> int:
        """Bump allocator of 512-frame blocks (docs/semantics.md "Physical frames")."""
        b = self.next_block
        self.next_block += 1
        self.mem_map[b] = [None] * N
        return b

    def _new_page(self, pfn: int) -> Page:
        block = self.mem_map[pfn // N]
        page = Page(pfn, block)
        block[pfn % N] = page
        self.pages[pfn] = page
        return page

    def get_page(self, page: Page) -> None:
        """Mirror of v5 `include/linux/mm.h:get_page()`: every reference goes to the head."""
        head = compound_head(page)
        assert head._count > 0  # VM_BUG_ON_PAGE(atomic_read(&page->_count) <= 0)
        head._count += 1
        self.atomics["refcount_ops"] += 1

    def put_page(self, page: Page) -> None:
        """Mirror of v5 `mm/swap.c:put_page()`: the head's reference; the last one frees."""
        head = compound_head(page)
        assert head._count > 0
        head._count -= 1  # put_page_testzero()
        self.atomics["refcount_ops"] += 1
        if head._count == 0:
            if PageHead(head):
                self._free_compound_page(head)
            else:
                self._free_page(head)

    def _free_page(self, page: Page) -> None:
        """Mirror of `mm/page_alloc.c:free_hot_cold_page()` (free_pages_check: unmapped)."""
        assert page._mapcount == -1 and page._count == 0
        page.flags &= 1 << PG_hwpoison
        page.mapping = MAPPING_NULL
        page.index = 0
        page.data = False  # a freed frame holds nothing (docs/variant-6.18.md "Page content")
        self.costs["pages_freed"] += 1

    def _free_compound_page(self, head: Page) -> None:
        """Mirror of `mm/page_alloc.c:__free_pages_ok()` of a THP: 512 frames; leaves the deferred
        queue (v5 26/28 free_transhuge_page())."""
        assert compound_mapcount(head) == 0
        assert not PageDoubleMap(head)  # v4.5: PG_double_map goes with the last compound mapping
        for page in head.block:
            assert page._mapcount == -1
            assert page is head or page._count == 0
            page.flags &= 1 << PG_hwpoison
            page.mapping = MAPPING_NULL
            page.index = 0
            page._count = 0
            page.data = False
        head.deferred = False
        self.costs["pages_freed"] += N

    # ---- faults (mmap touches every page) -------------------------------------------------------

    def do_huge_pmd_anonymous_page(self, vma: VmAreaStruct, haddr: int) -> None:
        """Mirror of `mm/huge_memory.c:do_huge_pmd_anonymous_page()` + the variant's
        `page_add_new_anon_rmap(page, vma, haddr, true)` (``__page_set_anon_rmap()``'s ``->mapping``
        and ``->index`` are written here)."""
        b = self._alloc_block()
        pages = [self._new_page(b * N + i) for i in range(N)]
        head = pages[0]
        head.flags = (1 << PG_head) | ANON_FAULT_FLAGS
        head._count = 1
        head.mapping = vma.anon_vma.id
        head.index = linear_page_index(vma, haddr)
        for tail in pages[1:]:
            tail.flags = 1 << PG_tail
            tail.mapping = TAIL_MAPPING
        for page in pages:
            page.data = self._fill_data  # mmap's fill: the fault writes data or zeros
        self.page_add_new_anon_rmap(head, vma, haddr, True)
        vma.vm_mm.pmd[haddr] = ((head.pfn << PTE_PFN_SHIFT) | _PAGE_PRESENT | _PAGE_PSE | _PAGE_RW
                                | _PAGE_ACCESSED | _PAGE_DIRTY)
        self.vm_events["thp_fault_alloc"] += 1

    def do_anonymous_page(self, vma: VmAreaStruct, address: int, b: int) -> None:
        """Mirror of `mm/memory.c:do_anonymous_page()`: one small page in block ``b``."""
        page = self._new_page(b * N + ((address >> PAGE_SHIFT) & (N - 1)))
        page.flags = ANON_FAULT_FLAGS
        page._count = 1
        page.mapping = vma.anon_vma.id
        page.index = linear_page_index(vma, address)
        page.data = self._fill_data
        self.page_add_new_anon_rmap(page, vma, address, False)
        haddr = address & HPAGE_PMD_MASK
        table = vma.vm_mm.pmd.get(haddr)
        if table is None:
            table = vma.vm_mm.pmd[haddr] = {}  # __pte_alloc()
        assert isinstance(table, dict)
        table[address] = (page.pfn << PTE_PFN_SHIFT) | FAULT_PTE

    # ---- rmap -----------------------------------------------------------------------------------

    def deferred_split_huge_page(self, head: Page) -> None:
        """Mirror of v5 26/28 `mm/huge_memory.c:deferred_split_huge_page()` (+ vmstate's counter)."""
        if not head.deferred:
            head.deferred = True
            self.vm_events["thp_deferred_split_page"] += 1

    # ---- zap (munmap, madvise_dontneed, exit) ---------------------------------------------------

    def zap_huge_pmd(self, vma: VmAreaStruct, haddr: int) -> None:
        """Mirror of `mm/huge_memory.c:zap_huge_pmd()`; the deposited table is freed with it."""
        orig_pmd = vma.vm_mm.pmd.pop(haddr)  # pmdp_get_and_clear_full()
        page = self.pages[pte_pfn(orig_pmd)]
        self.page_remove_rmap(page, True, vma)
        assert self.page_mapcount(page) >= 0
        assert PageHead(page)
        self.put_page(page)  # tlb_remove_page()

    def zap_pte(self, vma: VmAreaStruct, addr: int) -> None:
        """Mirror of the present-PTE body of `mm/memory.c:zap_pte_range()`."""
        table = vma.vm_mm.pmd[addr & HPAGE_PMD_MASK]
        ptent = table.pop(addr)  # ptep_get_and_clear_full()
        assert pte_present(ptent)  # migration entries live only inside split_huge_page
        if ptent & _PAGE_SPECIAL:  # vm_normal_page() NULL: the shared zero page, no rmap, no put
            assert pte_pfn(ptent) == ZERO_PFN
            return
        page = self.pages[pte_pfn(ptent)]
        self.page_remove_rmap(page, False, vma)
        assert self.page_mapcount(page) >= 0  # print_bad_pte()
        self.put_page(page)  # __tlb_remove_page()

    def zap_pmd_range(self, vma: VmAreaStruct, addr: int, end: int) -> None:
        """Mirror of `mm/memory.c:zap_pmd_range()` (v5: split_huge_pmd() on a partial huge PMD)."""
        mm = vma.vm_mm
        while addr != end:
            next_ = pmd_addr_end(addr, end)
            haddr = addr & HPAGE_PMD_MASK
            if pmd_trans_huge(mm.pmd.get(haddr)):
                if next_ - addr != HPAGE_PMD_SIZE:
                    self.split_huge_pmd(vma, addr)
                else:
                    self.zap_huge_pmd(vma, haddr)
                    addr = next_
                    continue
                # fall through: the huge PMD was just split
            table = mm.pmd.get(haddr)
            if isinstance(table, dict):
                self.zap_pte_range(vma, table, addr, next_)
            addr = next_

    def zap_pte_range(self, vma: VmAreaStruct, table: dict, addr: int, end: int) -> None:
        """Mirror of v4.0 `mm/memory.c:zap_pte_range()`: one PTE at a time (6.18 batches)."""
        for vaddr in range(addr, end, PAGE_SIZE):
            if vaddr in table:
                self.zap_pte(vma, vaddr)

    def unmap_single_vma(self, vma: VmAreaStruct, start_addr: int, end_addr: int) -> None:
        """Mirror of `mm/memory.c:unmap_single_vma()`."""
        start = max(vma.vm_start, start_addr)
        end = min(vma.vm_end, end_addr)
        if start < end:
            self.zap_pmd_range(vma, start, end)

    # ---- split_huge_pmd -------------------------------------------------------------------------

    def split_huge_pmd(self, vma: VmAreaStruct, address: int) -> None:
        """Mirror of v5 `mm/huge_memory.c:__split_huge_pmd()` (behind the split_huge_pmd() macro)."""
        haddr = address & HPAGE_PMD_MASK
        self.costs["mmu_notifier"] += 1  # mmu_notifier_invalidate_range_start/end
        self.costs["pmd_lock"] += 1
        if pmd_trans_huge(vma.vm_mm.pmd.get(haddr)):
            self._split_huge_pmd_locked(vma, haddr, False)

    def split_huge_pmd_address(self, vma: VmAreaStruct, address: int) -> None:
        """Mirror of v5 `mm/huge_memory.c:split_huge_pmd_address()`."""
        if pmd_trans_huge(vma.vm_mm.pmd.get(address & HPAGE_PMD_MASK)):
            self.split_huge_pmd(vma, address)

    # ---- VMA split ------------------------------------------------------------------------------

    def _vma_adjust_trans_huge(self, vma: VmAreaStruct, start: int, end: int) -> None:
        """Mirror of `mm/huge_memory.c:__vma_adjust_trans_huge()` (adjust_next == 0): split a huge
        PMD that the new start or end of ``vma`` would cut."""
        for edge in (start, end):
            if (edge & ~HPAGE_PMD_MASK
                    and (edge & HPAGE_PMD_MASK) >= vma.vm_start
                    and (edge & HPAGE_PMD_MASK) + HPAGE_PMD_SIZE <= vma.vm_end):
                self.split_huge_pmd_address(vma, edge)

    def _split_vma(self, mm: MmStruct, vma: VmAreaStruct, addr: int, new_below: bool) -> None:
        """Mirror of `mm/mmap.c:__split_vma()`: ``vma`` keeps the upper part when ``new_below``, the
        lower part otherwise; the new VMA joins the same anon_vma (anon_vma_clone())."""
        if new_below:
            self._vma_adjust_trans_huge(vma, addr, vma.vm_end)
        else:
            self._vma_adjust_trans_huge(vma, vma.vm_start, addr)
        new = vma.copy()
        if new_below:
            new.vm_end = addr
            vma.vm_pgoff += (addr - vma.vm_start) >> PAGE_SHIFT
            vma.vm_start = addr
        else:
            new.vm_start = addr
            new.vm_pgoff += (addr - vma.vm_start) >> PAGE_SHIFT
            vma.vm_end = addr
        mm.insert_vma(new)
        vma.anon_vma.vmas.append(new)

    def _remove_vma(self, mm: MmStruct, vma: VmAreaStruct) -> None:
        """`detach_vmas_to_be_unmapped()` + `unlink_anon_vmas()`."""
        mm.vmas.remove(vma)
        vma.anon_vma.vmas.remove(vma)

    # ---- fork -----------------------------------------------------------------------------------

    def copy_huge_pmd(self, dst_mm: MmStruct, src_mm: MmStruct, haddr: int,
                      dst_vma: VmAreaStruct) -> None:
        """Mirror of v5 `mm/huge_memory.c:copy_huge_pmd()` (6.18: the same steps around
        folio_try_dup_anon_rmap_pmd(), which cannot fail for FOLL_GET pins)."""
        pmd = src_mm.pmd[haddr]
        src_page = self.pages[pte_pfn(pmd)]
        assert PageHead(src_page)
        self.get_page(src_page)
        self.page_dup_rmap(src_page, True, dst_vma)
        src_mm.pmd[haddr] = pte_wrprotect(pmd)  # pmdp_set_wrprotect()
        dst_mm.pmd[haddr] = pte_mkold(pte_wrprotect(pmd))

    def copy_one_pte(self, dst_pte: dict, src_pte: dict, vma: VmAreaStruct, addr: int,
                     dst_vma: VmAreaStruct) -> None:
        """Mirror of `mm/memory.c:copy_one_pte()` (present PTEs: no migration entry outside a split;
        6.18 `copy_present_ptes()` does the same per PTE). The shared zero page (vm_normal_page()
        NULL) is copied, write-protected and made old, with no reference or mapcount."""
        pte = src_pte[addr]
        assert pte_present(pte)
        if is_cow_mapping(vma.vm_flags):
            src_pte[addr] = pte_wrprotect(pte)  # ptep_set_wrprotect()
            pte = pte_wrprotect(pte)
        pte = pte_mkold(pte)
        if not pte & _PAGE_SPECIAL:
            page = self.pages[pte_pfn(pte)]  # vm_normal_page()
            self.get_page(page)
            self.page_dup_rmap(page, False, dst_vma)
        dst_pte[addr] = pte

    def copy_pte_range(self, dst_mm: MmStruct, src_mm: MmStruct, vma: VmAreaStruct, addr: int,
                       end: int, dst_vma: VmAreaStruct) -> None:
        """Mirror of `mm/memory.c:copy_pte_range()`: the child's table is allocated first
        (pte_alloc_map_lock()), even when the parent's holds nothing in the range."""
        haddr = addr & HPAGE_PMD_MASK
        dst_pte = dst_mm.pmd.setdefault(haddr, {})
        assert isinstance(dst_pte, dict)
        src_pte = src_mm.pmd[haddr]
        for vaddr in range(addr, end, PAGE_SIZE):
            if vaddr in src_pte:  # pte_none() -> continue
                self.copy_one_pte(dst_pte, src_pte, vma, vaddr, dst_vma)

    def copy_page_range(self, dst_mm: MmStruct, src_mm: MmStruct, vma: VmAreaStruct,
                        dst_vma: VmAreaStruct) -> None:
        """Mirror of `mm/memory.c:copy_page_range()` / `copy_pmd_range()`."""
        addr = vma.vm_start
        while addr != vma.vm_end:
            next_ = pmd_addr_end(addr, vma.vm_end)
            src = src_mm.pmd.get(addr & HPAGE_PMD_MASK)
            if pmd_trans_huge(src):
                assert next_ - addr == HPAGE_PMD_SIZE
                self.copy_huge_pmd(dst_mm, src_mm, addr, dst_vma)
            elif src is not None:  # pmd_none_or_clear_bad() -> continue
                self.copy_pte_range(dst_mm, src_mm, vma, addr, next_, dst_vma)
            addr = next_

    # ---- mprotect -------------------------------------------------------------------------------

    def change_protection(self, vma: VmAreaStruct, addr: int, end: int) -> None:
        """Mirror of `mm/mprotect.c:change_pmd_range()`/`change_pte_range()`: the new vm_page_prot of
        a private anonymous VMA is never writable; pmd_modify()/pte_modify() keep young, dirty and
        soft-dirty."""
        mm = vma.vm_mm
        while addr != end:
            next_ = pmd_addr_end(addr, end)
            haddr = addr & HPAGE_PMD_MASK
            if pmd_trans_huge(mm.pmd.get(haddr)):
                if next_ - addr != HPAGE_PMD_SIZE:
                    self.split_huge_pmd(vma, addr)
                else:
                    mm.pmd[haddr] = pte_wrprotect(mm.pmd[haddr])  # change_huge_pmd()
                    addr = next_
                    continue
            table = mm.pmd.get(haddr)
            if isinstance(table, dict):
                for vaddr in range(addr, next_, PAGE_SIZE):
                    if vaddr in table and pte_present(table[vaddr]):
                        table[vaddr] = pte_wrprotect(table[vaddr])
            addr = next_

    def mprotect_fixup(self, mm: MmStruct, vma: VmAreaStruct, start: int, end: int,
                       newflags: int) -> None:
        """Mirror of `mm/mprotect.c:mprotect_fixup()` without vma_merge()."""
        if newflags == vma.vm_flags:
            return
        if start != vma.vm_start:
            self._split_vma(mm, vma, start, new_below=True)
        if end != vma.vm_end:
            self._split_vma(mm, vma, end, new_below=False)
        vma.vm_flags = newflags
        self.change_protection(vma, start, end)

    # ---- write faults (mm/memory.c, mm/huge_memory.c) --------------------------------------------

    #: Whether a VMA may get a PMD-mapped THP at ``haddr``: VM_HUGEPAGE (THP "madvise" mode) and the
    #: aligned 2 MiB inside the VMA (`thp_vma_suitable_order()`; no pgoff test for anonymous VMAs).
    @staticmethod
    def _thp_vma_suitable(vma: VmAreaStruct, haddr: int) -> bool:
        return bool(vma.vm_flags & VM_HUGEPAGE) and vma.vm_start <= haddr \
            and haddr + HPAGE_PMD_SIZE <= vma.vm_end

    def _write_block(self, vma: VmAreaStruct, address: int) -> int:
        """The block a write's new small page (a COW copy or a new fault) takes its frame from: the
        block of the previous page when that one, in the same VMA and 2 MiB slot, also took a new
        frame in this write; else the next block (docs/semantics.md "Physical frames")."""
        run = self._alloc_run
        if (run is not None and run[0] is vma and run[1] == address - PAGE_SIZE
                and run[1] & HPAGE_PMD_MASK == address & HPAGE_PMD_MASK):
            b = run[2]
        else:
            b = self._alloc_block()
        self._alloc_run = (vma, address, b)
        return b

    def handle_mm_fault(self, vma: VmAreaStruct, address: int) -> None:
        """What a user write to ``address`` does (`mm/memory.c:__handle_mm_fault()` with
        FAULT_FLAG_WRITE when it faults): a none PMD gets a THP where the VMA allows one
        (`create_huge_pmd()`), else a small page; a write-protected huge PMD takes
        `do_huge_pmd_wp_page()`, which may fall back to the PTEs; a write-protected PTE takes
        `do_wp_page()`, a none PTE `do_anonymous_page()`. A present writable entry does not fault:
        the MMU sets its accessed and dirty bits."""
        mm = vma.vm_mm
        haddr = address & HPAGE_PMD_MASK
        pmd = mm.pmd.get(haddr)
        if pmd is None:  # pmd_none()
            if self._thp_vma_suitable(vma, haddr):
                self._fill_data = False  # a THP fault zeroes the page (clear_huge_page())
                self.do_huge_pmd_anonymous_page(vma, haddr)
            else:
                self._fill_data = False
                self.do_anonymous_page(vma, address, self._write_block(vma, address))
            return
        if pmd_trans_huge(pmd):
            if pmd & _PAGE_RW:
                mm.pmd[haddr] = pmd | _PAGE_ACCESSED | _PAGE_DIRTY  # the MMU's A/D update
                return
            if not self.do_huge_pmd_wp_page(vma, address):
                return
            pmd = mm.pmd[haddr]  # VM_FAULT_FALLBACK: the PMD was split, take the PTE fault
        assert isinstance(pmd, dict)
        pte = pmd.get(address)
        if pte is None:  # pte_none(): do_anonymous_page()
            self._fill_data = False
            self.do_anonymous_page(vma, address, self._write_block(vma, address))
        elif pte & _PAGE_RW:
            pmd[address] = pte | _PAGE_ACCESSED | _PAGE_DIRTY
        else:
            self.do_wp_page(vma, address)

    def wp_page_reuse(self, vma: VmAreaStruct, address: int) -> None:
        """Mirror of `mm/memory.c:wp_page_reuse()`: pte_mkyoung(), pte_mkdirty(), maybe_mkwrite()."""
        table = vma.vm_mm.pmd[address & HPAGE_PMD_MASK]
        table[address] |= _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_RW  # ptep_set_access_flags()
        self.costs["pte_write"] += 1

    def wp_page_copy(self, vma: VmAreaStruct, address: int) -> None:
        """Mirror of `mm/memory.c:wp_page_copy()`: a new small page (a copy of the old one, or
        zeroed for the shared zero page) mapped writable in place of the old entry
        (ptep_clear_flush_notify() under one mmu-notifier range), page_add_new_anon_rmap(), then
        page_remove_rmap() and the reference of the old page dropped."""
        table = vma.vm_mm.pmd[address & HPAGE_PMD_MASK]
        orig = table[address]
        old = None if orig & _PAGE_SPECIAL else self.pages[pte_pfn(orig)]
        self._fill_data = old.data if old is not None else False  # cow_user_page() / zeroed
        self.costs["mmu_notifier"] += 1
        self.costs["tlb_flush"] += 1
        self.costs["pte_write"] += 1
        self.do_anonymous_page(vma, address, self._write_block(vma, address))
        if old is not None:
            self.page_remove_rmap(old, False, vma)
            self.put_page(old)

    def _huge_pmd_copy(self, vma: VmAreaStruct, haddr: int) -> None:
        """2015–5.7 `do_huge_pmd_wp_page()` past its reuse test: a new THP (`thp_fault_alloc`),
        `copy_user_huge_page()`, the new huge PMD installed (pmdp_huge_clear_flush_notify()), the
        old THP's PMD rmap and reference dropped. get_user_huge_page()/put_user_huge_page() take
        and drop one more reference around the copy."""
        mm = vma.vm_mm
        page = self.pages[pte_pfn(mm.pmd[haddr])]
        self.get_page(page)  # get_user_huge_page()
        content = [p.data for p in page.block]
        self._fill_data = False
        self.do_huge_pmd_anonymous_page(vma, haddr)  # alloc_hugepage_vma() .. set_pmd_at()
        new = self.pages[pte_pfn(mm.pmd[haddr])]
        for p, d in zip(new.block, content):
            p.data = d  # copy_user_huge_page()
        self.put_page(page)  # put_user_huge_page()
        self.costs["mmu_notifier"] += 1
        self.costs["tlb_flush"] += 1
        self.costs["pte_write"] += 1
        self.page_remove_rmap(page, True, vma)
        self.put_page(page)

    def _do_huge_pmd_wp_page_2015(self, vma: VmAreaStruct, address: int) -> bool:
        """Mirror of v5 / v4.5 `mm/huge_memory.c:do_huge_pmd_wp_page()` ("mm, thp: adjust conditions
        when we can reuse the page on WP fault"): reuse the THP when ``page_mapcount(page) == 1 &&
        page_count(page) == 1``, else copy it whole (the THP allocation always succeeds here, so the
        small-page fallback is never taken). Returns False: the fault is done (no fallback)."""
        haddr = address & HPAGE_PMD_MASK
        pmd = vma.vm_mm.pmd[haddr]
        page = self.pages[pte_pfn(pmd)]
        if self.page_mapcount(page) == 1 and page_count(page) == 1:
            vma.vm_mm.pmd[haddr] = pmd | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_RW
            self.costs["pte_write"] += 1
            return False
        self._huge_pmd_copy(vma, haddr)
        return False

    def _do_wp_page_2015(self, vma: VmAreaStruct, address: int) -> None:
        """Mirror of v5 / v4.5 `mm/memory.c:do_wp_page()` on an anonymous page: reuse it when
        `reuse_swap_page()` says so — never for a THP subpage ("The page is part of THP and cannot
        be reused"), else when page_mapcount() <= 1 (no swap cache) — else `wp_page_copy()`."""
        pte = vma.vm_mm.pmd[address & HPAGE_PMD_MASK][address]
        if not pte & _PAGE_SPECIAL:
            page = self.pages[pte_pfn(pte)]
            if not PageTransCompound(page) and self.page_mapcount(page) <= 1:
                self.wp_page_reuse(vma, address)  # page_move_anon_rmap(): one anon_vma per mmap
                return
        self.wp_page_copy(vma, address)

    # ---- mremap (mm/mremap.c) ---------------------------------------------------------------------

    #: Whether move_page_tables() moves a whole PTE table when the extent is an aligned 2 MiB on both
    #: sides and the new PMD is none (`move_normal_pmd()`, CONFIG_HAVE_MOVE_PMD, Linux 4.20+: 6.18).
    MOVE_NORMAL_PMD = False

    def _move_extent(self, vma: VmAreaStruct, old_addr: int, new_addr: int, extent: int) -> bool:
        """One extent of `move_page_tables()`; whether an entry moved."""
        mm = vma.vm_mm
        old_h, new_h = old_addr & HPAGE_PMD_MASK, new_addr & HPAGE_PMD_MASK
        old_pmd = mm.pmd.get(old_h)
        if old_pmd is None:  # get_old_pmd(): NULL for pmd_none()
            return False
        whole = extent == HPAGE_PMD_SIZE and mm.pmd.get(new_h) is None
        if pmd_trans_huge(old_pmd) and not whole:
            self.split_huge_pmd(vma, old_addr)
            old_pmd = mm.pmd[old_h]
        elif whole and (pmd_trans_huge(old_pmd) or self.MOVE_NORMAL_PMD):
            # move_huge_pmd() (the deposited table moves with it) / move_normal_pmd() (the table)
            entry = mm.pmd.pop(old_h)
            mm.pmd[new_h] = entry if pmd_trans_huge(entry) else {
                a - old_h + new_h: e for a, e in entry.items()}
            self.costs["pmd_lock"] += 1
            self.costs["pte_write"] += 1
            return True
        new_table = mm.pmd.setdefault(new_h, {})  # pte_alloc()
        assert isinstance(new_table, dict)
        self.costs["pte_lock"] += 1
        moved = False
        for off in range(0, extent, PAGE_SIZE):  # move_ptes()
            if old_addr + off in old_pmd:
                new_table[new_addr + off] = old_pmd.pop(old_addr + off)
                self.costs["pte_write"] += 1
                moved = True
        return moved

    def move_page_tables(self, vma: VmAreaStruct, old_addr: int, new_vma: VmAreaStruct,
                         new_addr: int, length: int) -> None:
        """Mirror of `mm/mremap.c:move_page_tables()`: per extent (to the next PMD boundary of either
        side), a huge PMD moves whole (`move_huge_pmd()`) when the extent is the aligned 2 MiB on
        both sides, else is split first (`split_huge_pmd()`); PTEs move one by one (`move_ptes()`:
        no rmap change, the entry as it was: no soft-dirty, CONFIG_MEM_SOFT_DIRTY is off) into the
        new table (`pte_alloc()` even when nothing moves). One mmu-notifier range; one TLB flush
        when anything moved."""
        old_end = old_addr + length
        self.costs["mmu_notifier"] += 1
        moved = False
        while old_addr < old_end:
            extent = min(pmd_addr_end(old_addr, old_end) - old_addr,
                         ((new_addr + HPAGE_PMD_SIZE) & HPAGE_PMD_MASK) - new_addr)
            moved |= self._move_extent(vma, old_addr, new_addr, extent)
            old_addr += extent
            new_addr += extent
        if moved:
            self.costs["tlb_flush"] += 1  # flush_tlb_range()

    # ---- split_huge_page: the steps both variants share ------------------------------------------

    def lru_add_page_tail(self, head: Page, page_tail: Page) -> None:
        """Mirror of `mm/swap.c:lru_add_page_tail()` with ``list == NULL``."""
        assert PageHead(head)
        assert not PageCompound(page_tail)
        assert not page_tail.flags & (1 << PG_lru)
        page_tail.flags |= 1 << PG_lru

    def _split_huge_page(self, page: Page) -> None:
        """Mirror of `mm/huge_memory.c:__split_huge_page()` (the same steps in v4.5)."""
        head = compound_head(page)
        self.costs["lru_lock"] += 1  # spin_lock_irq(&zone->lru_lock)
        tail_mapcount = 0
        for i in range(N - 1, 0, -1):
            tail_mapcount += self._split_huge_page_tail(head, i)
        self._count_add(head, -tail_mapcount)  # atomic_sub(tail_mapcount, &head->_count)
        head.flags &= ~(1 << PG_head)  # ClearPageCompound()
        head.block[1]._compound_mapcount = -1
        head.deferred = False  # v5 26/28: list_del(page_deferred_list(head)) (v4.5: done already)
        self.unfreeze_page(self.anon_vmas[head.mapping], head)  # page_anon_vma(head)
        for i in range(N):
            subpage = head.block[i]
            if subpage is page:
                continue
            subpage.flags &= ~(1 << PG_locked)  # unlock_page()
            self.put_page(subpage)

    def _race(self, point: int, pin_at: int, unpin_at: int, head: Page) -> None:
        """A racing get_user_pages() reference on the head arriving / leaving at ``point``."""
        if pin_at == point:
            self.get_page(head)
        if unpin_at == point:
            self.put_page(head)

    # ---- lookups --------------------------------------------------------------------------------

    @staticmethod
    def _follow_pfn(mm: MmStruct, address: int) -> int | None:
        """The pfn a present entry maps at ``address`` (follow_page_mask()), or None."""
        haddr = address & HPAGE_PMD_MASK
        pmd = mm.pmd.get(haddr)
        if pmd_trans_huge(pmd):
            return pte_pfn(pmd) + ((address - haddr) >> PAGE_SHIFT)
        if isinstance(pmd, dict):
            pte = pmd.get(address)
            if pte is not None and pte_present(pte):
                return pte_pfn(pte)
        return None

    def _thps_mapped(self, mm: MmStruct, vmas: list[VmAreaStruct], start: int,
                     end: int) -> list[Page]:
        """Heads of the THPs mapped in ``[start, end)``, by lowest mapping address."""
        heads: list[Page] = []
        seen: set[int] = set()
        for vma in vmas:
            for addr in range(max(start, vma.vm_start), min(end, vma.vm_end), PAGE_SIZE):
                pfn = self._follow_pfn(mm, addr)
                if pfn is None or pfn == ZERO_PFN or not PageTransCompound(self.pages[pfn]):
                    continue
                head = compound_head(self.pages[pfn])
                if head.pfn not in seen:
                    seen.add(head.pfn)
                    heads.append(head)
        return heads

    # ==== public operations ======================================================================

    def mmap(self, mm: str, addr: int, length: int, thp: bool = True, fill: str = "data") -> None:
        """mmap(MAP_PRIVATE|MAP_ANONYMOUS) (+ MADV_HUGEPAGE), then a fault on every page in address
        order: one block per 2 MiB slot touched, a THP where the slot is entirely inside. ``fill``:
        each fault writes non-zero data (``"data"``: the pages' ``data`` bit set) or zeros."""
        end = self._check_range(addr, length)
        if not isinstance(thp, bool):
            raise BadInput(f"expected true or false, got {thp!r}", field="thp")
        if fill not in ("data", "zero"):
            raise BadInput(f'expected one of "data", "zero", got {fill!r}', field="fill")
        if mm in self.used_names and mm not in self.mms:
            raise BadInput(f"process {mm!r} has exited", field="mm")
        proc = self.mms.get(mm)
        if proc is not None and proc.vmas_overlapping(addr, end):
            raise BadInput(f"{mm!r}: {addr:#x}-{end:#x} overlaps a mapping", field="addr")
        if proc is None:
            proc = self._new_mm(mm)
        anon_vma = AnonVma(len(self.anon_vmas))
        self.anon_vmas.append(anon_vma)
        flags = VM_ANON_DEFAULT | (VM_HUGEPAGE if thp else 0)
        vma = VmAreaStruct(proc, addr, end, addr >> PAGE_SHIFT, flags, anon_vma)
        proc.insert_vma(vma)
        anon_vma.vmas.append(vma)
        haddr = addr & HPAGE_PMD_MASK
        self._fill_data = fill == "data"
        while haddr < end:
            if thp and haddr >= addr and haddr + HPAGE_PMD_SIZE <= end:
                self.do_huge_pmd_anonymous_page(vma, haddr)
            else:
                b = self._alloc_block()
                for vaddr in range(max(haddr, addr), min(haddr + HPAGE_PMD_SIZE, end), PAGE_SIZE):
                    self.do_anonymous_page(vma, vaddr, b)
            haddr += HPAGE_PMD_SIZE

    def fork(self, mm: str, child: str) -> None:
        """Mirror of `kernel/fork.c:dup_mmap()`: every VMA copied into the same anon_vma
        (anon_vma_fork()), then copy_page_range()."""
        parent = self._live_mm(mm)
        if child in self.used_names:
            raise BadInput(f"fork child {child!r} exists or existed", field="child")
        proc = self._new_mm(child)
        for vma in parent.vmas:
            tmp = vma.copy()
            tmp.vm_mm = proc
            proc.insert_vma(tmp)
            vma.anon_vma.vmas.append(tmp)
            self.copy_page_range(proc, parent, vma, tmp)

    def exit(self, mm: str) -> None:
        """Mirror of `mm/mmap.c:exit_mmap()`: unmap_vmas() over every VMA, free_pgtables(),
        remove_vma(). Pins taken by the process stay held."""
        proc = self._live_mm(mm)
        for vma in proc.vmas:
            self.unmap_single_vma(vma, vma.vm_start, vma.vm_end)
        for vma in list(proc.vmas):
            self._remove_vma(proc, vma)
        proc.pmd.clear()
        del self.mms[mm]

    def munmap(self, mm: str, addr: int, length: int) -> None:
        """Mirror of `mm/mmap.c:do_munmap()`: split the VMAs at the edges (splitting a huge PMD
        that straddles one), then unmap_region() and remove the VMAs inside."""
        proc = self._live_mm(mm)
        end = self._check_range(addr, length)
        vma = proc.find_vma(addr)
        if vma is None or vma.vm_start >= end:
            return
        if addr > vma.vm_start:
            self._split_vma(proc, vma, addr, new_below=False)
        last = proc.find_vma(end)
        if last is not None and end > last.vm_start:
            self._split_vma(proc, last, end, new_below=True)
        doomed = [v for v in proc.vmas if addr <= v.vm_start and v.vm_end <= end]
        for v in doomed:
            self.unmap_single_vma(v, addr, end)
        for v in doomed:
            self._remove_vma(proc, v)

    def madvise_dontneed(self, mm: str, addr: int, length: int) -> None:
        """Mirror of `mm/madvise.c:madvise_dontneed()` -> zap_page_range(); the VMAs stay."""
        proc = self._live_mm(mm)
        end = self._check_range(addr, length)
        self._check_mapped(proc, addr, end)
        for vma in proc.vmas_overlapping(addr, end):
            self.unmap_single_vma(vma, addr, end)
            if self.PT_RECLAIM:
                self._reclaim_pt(vma, max(addr, vma.vm_start), min(end, vma.vm_end))

    #: Whether MADV_DONTNEED frees a PTE table it emptied whole (CONFIG_PT_RECLAIM, 6.14+: on here).
    PT_RECLAIM = False

    def _reclaim_pt(self, vma: VmAreaStruct, start: int, end: int) -> None:
        """Mirror of `mm/pt_reclaim.c` as `zap_pte_range()` uses it for MADV_DONTNEED
        (`reclaim_pt_is_enabled()`: the zap covers the table's whole 2 MiB; `try_to_free_pte()`:
        every entry is none): the table is freed and the PMD is none again."""
        mm = vma.vm_mm
        for haddr in range((start + HPAGE_PMD_SIZE - 1) & HPAGE_PMD_MASK, end & HPAGE_PMD_MASK,
                           HPAGE_PMD_SIZE):
            table = mm.pmd.get(haddr)
            if isinstance(table, dict) and not table:
                del mm.pmd[haddr]

    def mprotect(self, mm: str, addr: int, length: int, prot: str) -> None:
        """Mirror of `mm/mprotect.c:SYSCALL_DEFINE3(mprotect)`: per VMA, newflags from the request
        and the VMA's other flags, then mprotect_fixup()."""
        proc = self._live_mm(mm)
        end = self._check_range(addr, length)
        if prot not in ("r", "rw"):
            raise BadInput(f"prot {prot!r}: expected 'r' or 'rw'", field="prot")
        self._check_mapped(proc, addr, end)
        vm_flags = VM_READ | (VM_WRITE if prot == "rw" else 0)
        changed = False
        for vma in proc.vmas_overlapping(addr, end):
            newflags = vm_flags | (vma.vm_flags & ~(VM_READ | VM_WRITE | VM_EXEC))
            changed |= newflags != vma.vm_flags
            self.mprotect_fixup(proc, vma, max(addr, vma.vm_start), min(end, vma.vm_end),
                                newflags)
        if changed and self.VMA_MERGE:
            self._merge_vmas(proc, addr, end)

    def write(self, mm: str, addr: int, length: int) -> None:
        """A user write to every page of ``[addr, addr + len)`` in address order
        (`handle_mm_fault()` where it faults); each page written then holds data. The whole range
        must be mapped and writable (else SIGSEGV: bad input)."""
        proc = self._live_mm(mm)
        end = self._check_range(addr, length)
        self._check_mapped(proc, addr, end)
        for vma in proc.vmas_overlapping(addr, end):
            if not vma.vm_flags & VM_WRITE:
                raise BadInput(f"{mm!r}: {vma.vm_start:#x}-{vma.vm_end:#x} is read-only: a write "
                               f"there is SIGSEGV", field="addr")
        self._alloc_run = None
        for vaddr in range(addr, end, PAGE_SIZE):
            self.handle_mm_fault(proc.find_vma(vaddr), vaddr)
            self.pages[self._follow_pfn(proc, vaddr)].data = True  # the write stores data

    def mremap(self, mm: str, addr: int, length: int, new_addr: int) -> None:
        """mremap(addr, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, new_addr) (`mm/mremap.c:
        move_vma()`): the range, inside one VMA, to ``new_addr`` where nothing is mapped:
        `copy_vma()` (the new VMA keeps the pages' vm_pgoff and the anon_vma),
        `move_page_tables()`, then `do_munmap()` of the old range."""
        proc = self._live_mm(mm)
        end = self._check_range(addr, length)
        if not isinstance(new_addr, int) or new_addr <= 0 or new_addr % PAGE_SIZE:
            raise BadInput(f"expected a positive multiple of 4096 (4K), got {new_addr!r}",
                           field="new_addr")
        new_end = new_addr + length
        if new_end > USER_TOP:
            raise BadInput(f"new range {new_addr:#x}+{length:#x} ends above the 47-bit user "
                           f"address space", field="new_addr")
        if new_addr < end and addr < new_end:
            raise BadInput(f"{mm!r}: new range {new_addr:#x}-{new_end:#x} overlaps the old one "
                           f"(EINVAL)", field="new_addr")
        vma = proc.vma_lookup(addr)
        if vma is None or vma.vm_end < end:
            raise BadInput(f"{mm!r}: {addr:#x}-{end:#x} is not inside one mapping (EFAULT)",
                           field="addr")
        if proc.vmas_overlapping(new_addr, new_end):
            raise BadInput(f"{mm!r}: {new_addr:#x}-{new_end:#x} is mapped (vmstate moves only to "
                           f"a free range)", field="new_addr")
        pgoff = vma.vm_pgoff + ((addr - vma.vm_start) >> PAGE_SHIFT)
        new_vma = VmAreaStruct(proc, new_addr, new_end, pgoff, vma.vm_flags, vma.anon_vma)
        proc.insert_vma(new_vma)  # copy_vma()
        vma.anon_vma.vmas.append(new_vma)
        self.move_page_tables(vma, addr, new_vma, new_addr, length)
        self.munmap(mm, addr, length)  # do_munmap() of the old range: its PTEs are gone already
        if self.VMA_MERGE:
            self._merge_vmas(proc, new_addr, new_end)  # copy_vma()'s vma_merge_new_range()

    #: Whether mprotect merges the VMAs it changed with compatible neighbours (vma_merge()): 6.18,
    #: where it is observable against the running kernel; v5 and v4.5 keep the seed's no-merge rule.
    VMA_MERGE = False

    def _merge_vmas(self, proc: MmStruct, addr: int, end: int) -> None:
        """Mirror of what `mm/vma.c:vma_modify_flags()` leaves after `mprotect_fixup()` of every VMA
        of ``[addr, end)``: each changed VMA merged with an adjacent one (its neighbours outside the
        range too) of the same flags and anon_vma whose pgoff follows on (`can_vma_merge_after()`)."""
        window = [v for v in proc.vmas if v.vm_end >= addr and v.vm_start <= end]
        for prev, vma in zip(window, window[1:]):
            if (prev.vm_end == vma.vm_start and prev.vm_flags == vma.vm_flags
                    and prev.anon_vma is vma.anon_vma
                    and prev.vm_pgoff + prev.pages() == vma.vm_pgoff):
                vma.vm_start, vma.vm_pgoff = prev.vm_start, prev.vm_pgoff  # vma absorbs prev
                self._remove_vma(proc, prev)

    def pin(self, mm: str, addr: int, length: int) -> None:
        """get_user_pages_fast() on every page (gup_pte_range()/gup_huge_pmd()): one reference each,
        to the head for a THP subpage; no young/dirty/PG_referenced change."""
        proc = self._live_mm(mm)
        end = self._check_range(addr, length)
        self._check_mapped(proc, addr, end)
        pfns = []
        for vaddr in range(addr, end, PAGE_SIZE):
            pfn = self._follow_pfn(proc, vaddr)
            if pfn is None:
                raise BadInput(f"{mm!r}: no present page at {vaddr:#x} (EFAULT)", field="addr")
            pfns.append(pfn)
        for pfn in pfns:
            if pfn != ZERO_PFN:  # the shared zero page takes no modelled reference
                self.get_page(self.pages[pfn])
        self.pins.setdefault((mm, addr, length), []).append(pfns)

    def unpin(self, mm: str, addr: int, length: int) -> None:
        """put_page() on every page of the latest pin of exactly ``(mm, addr, length)``."""
        self._live_mm(mm)
        self._check_range(addr, length)
        stack = self.pins.get((mm, addr, length))
        if not stack:
            raise BadInput(f"{mm!r}: no pin of {addr:#x}+{length:#x} to release", field="addr")
        pfns = stack.pop()
        if not stack:
            del self.pins[(mm, addr, length)]
        for pfn in pfns:
            if pfn != ZERO_PFN:
                self.put_page(self.pages[pfn])

    def _madvise_lru(self, op: str, advice: str, mm: str, addr: int, length: int,
                     pageout: bool) -> None:
        if not self.HAS_MADV_COLD:
            raise BadInput(f"op {op!r} does not exist in variant {self.variant!r} ({advice} is Linux "
                           f"5.4+; use variant '6.18')", field="op")
        proc = self._live_mm(mm)
        end = self._check_range(addr, length)
        self._check_mapped(proc, addr, end)
        for vma in proc.vmas_overlapping(addr, end):  # madvise_walk_vmas()
            self.madvise_cold_or_pageout_page_range(vma, max(addr, vma.vm_start),
                                                    min(end, vma.vm_end), pageout)

    def madvise_cold(self, mm: str, addr: int, length: int) -> None:
        """MADV_COLD (`mm/madvise.c:madvise_cold()`): 6.18 only; the whole range must be mapped."""
        self._madvise_lru("madvise_cold", "MADV_COLD", mm, addr, length, False)

    def madvise_pageout(self, mm: str, addr: int, length: int) -> None:
        """MADV_PAGEOUT (`mm/madvise.c:madvise_pageout()`): 6.18 only; the whole range must be
        mapped."""
        self._madvise_lru("madvise_pageout", "MADV_PAGEOUT", mm, addr, length, True)

    def madvise_cold_or_pageout_page_range(self, vma: VmAreaStruct, addr: int, end: int,
                                           pageout: bool) -> None:
        raise NotImplementedError  # variants with HAS_MADV_COLD define it

    def shrink(self) -> list[tuple[int, int, int]]:
        """``echo 2 > /proc/sys/vm/drop_caches``: one pass of the variant's deferred_split_scan()
        over its whole queue. Returns (head_pfn, ret, reason) of every THP it tried to split, by
        pfn (the engine's order: splits of distinct THPs do not interact)."""
        return sorted(self.deferred_split_scan())

    def _deferred_split_scan_2015(self) -> list[tuple[int, int, int]]:
        """Mirror of v5 26/28 (= v4.5) `mm/huge_memory.c:deferred_split_scan()`: the queue is taken
        whole, get_page_unless_zero() on every THP (every queued THP is referenced: a freed one left
        the queue), then lock_page(), split_huge_page(), unlock_page(), put_page() each; what failed
        is spliced back. Splits of distinct THPs do not interact, so pfn order stands for queue
        order."""
        heads = [p for _, p in sorted(self.pages.items()) if PageHead(p) and p.deferred]
        for head in heads:
            self.get_page(head)
        tried = []
        for head in heads:
            assert not PageLocked(head)
            head.flags |= 1 << PG_locked  # lock_page()
            tried.append((head.pfn, *self.split_huge_page_to_list(head.pfn)))
            head.flags &= ~(1 << PG_locked)  # unlock_page()
            self.put_page(head)
        return tried

    def split_pmd(self, mm: str, addr: int) -> None:
        """split_huge_pmd() on the PMD mapping ``addr``; nothing where it is not a huge PMD."""
        proc = self._live_mm(mm)
        self._check_range(addr, PAGE_SIZE)  # as the engine: the page at addr ("len" if above 2^47)
        vma = proc.vma_lookup(addr)
        if vma is None:
            raise BadInput(f"{mm!r}: {addr:#x} is not mapped", field="addr")
        self.split_huge_pmd_address(vma, addr)

    def split(self, mm: str, addr: int, length: int, race=None) -> list[tuple[int, int, int]]:
        """debugfs split_huge_pages: for each THP mapped in the range, get_page(), lock_page(),
        split_huge_page(), unlock_page(), put_page(). Returns (head_pfn, ret, reason) per THP.
        ``race`` (``vmstate.engine.huge_memory.Race``, used only for its choice of THPs and points): a GUP pin
        that races each chosen THP's split; one that never leaves is held as a pin of its page."""
        proc = self._live_mm(mm)
        end = self._check_range(addr, length)
        if race is not None:
            race.check()
        vmas = proc.vmas_overlapping(addr, end)
        if not vmas:
            raise BadInput(f"{mm!r}: {addr:#x}-{end:#x} overlaps no mapping", field="addr")
        results = []
        heads = self._thps_mapped(proc, vmas, addr, end)
        pins, unpins = race.arrays(len(heads)) if race else ([RACE_NONE] * len(heads),) * 2
        for head, pin_at, unpin_at in zip(heads, pins, unpins):
            self.get_page(head)
            assert not PageLocked(head)
            head.flags |= 1 << PG_locked  # lock_page()
            ret, reason = self.split_huge_page_to_list(head.pfn, pin_at, unpin_at)
            raced = reason not in (SPLIT_FAIL_ANON_VMA, SPLIT_FAIL_PRECHECK)
            if raced and pin_at != RACE_NONE and unpin_at == RACE_AFTER_SPLIT:
                self.put_page(head)
            elif raced and pin_at != RACE_NONE and unpin_at == RACE_NONE:
                self.pins.setdefault((mm, head.index << PAGE_SHIFT, PAGE_SIZE), []).append([head.pfn])
            head.flags &= ~(1 << PG_locked)  # unlock_page()
            self.put_page(head)
            results.append((head.pfn, ret, reason))
        return results

    def dump(self) -> dict:
        """The comparison format of docs/semantics.md."""
        pmds: dict[tuple[str, int], int] = {}
        ptes: dict[tuple[str, int], int] = {}
        for name, proc in self.mms.items():
            for haddr, pmd in proc.pmd.items():
                if isinstance(pmd, dict):
                    ptes.update(((name, vaddr), pte) for vaddr, pte in pmd.items())
                else:
                    pmds[(name, haddr)] = pmd
        heads = [p for p in self.pages.values() if PageHead(p)]
        return {
            "pages": {pfn: (p.flags, p._count, p._mapcount, p.mapping, p.index, int(p.data))
                      for pfn, p in sorted(self.pages.items())},
            "compound_mapcount": {h.pfn: h.block[1]._compound_mapcount for h in heads},
            "folio": {h.pfn: h.folio_tuple() for h in heads},
            "deferred": sorted(h.pfn for h in heads if h.deferred),
            "pmds": pmds,
            "ptes": ptes,
            "vmas": {name: sorted((v.vm_start, v.vm_end, v.vm_pgoff, v.vm_flags, v.anon_vma.id)
                                  for v in proc.vmas)
                     for name, proc in self.mms.items()},
            "vm_events": {k: self.vm_events[k] for k in VM_EVENTS},
            "mthp_stats": {k: self.mthp_stats[k] for k in MTHP_STATS},
            "costs": dict(self.costs),
        }
