"""The reference model (the oracle) of vmstate: one Python object per page frame, dict page tables per
process, and the kernel functions of the THP refcounting redesign v5 written out line by line.

Slow and obvious on purpose; the engine (``vmstate/``, ``kernels/``) must produce the same ``dump()``
bit for bit. Sources, in order of authority: ``shared/reference/MODEL.md`` (v5 counter arithmetic), the
v5 patch 25/28 (``split_huge_page_to_list()`` and its helpers), ``docs/semantics.md`` (everything
else), then the v4.0/v4.1 C for the surrounding code. Every choice those leave open is commented with
the kernel function it follows and listed under "Open points found by the reference" in
``docs/semantics.md``. ``VM_BUG_ON``/``BUG_ON`` are ``assert``; the one ``BUG()`` the patch reaches on
purpose raises :class:`CorruptState`.

``ReferenceState(variant="v4.5")`` is mainline Linux 4.5 instead (where the series landed, in a later
revision): no permanent offset, ``PG_double_map``, a freeze that drops each mapping's mapcount and
reference and an unfreeze that takes them back. Every 4.5 choice is commented with the v4.5 function
it follows ("v4.5 ..."); docs/semantics.md "Variant v4.5" describes the arithmetic.
"""
from __future__ import annotations

from vmstate.kernels.constants import (
    _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_SOFT_DIRTY,
    _PAGE_VMS_MIGRATION, ANON_FAULT_FLAGS, COSTS, EBUSY, FIRST_BLOCK, HPAGE_PMD_MASK, HPAGE_PMD_NR,
    HPAGE_PMD_SIZE, MAPPING_NULL, PAGE_SHIFT, PAGE_SIZE, RACE_AFTER_FREEZE, RACE_AFTER_PRECHECK,
    RACE_AFTER_SPLIT, RACE_NONE, PG_dirty, PG_head, PG_hwpoison, PG_locked,
    PG_double_map, PG_lru, PG_swapbacked, PG_tail, PTE_PFN_MASK, PTE_PFN_SHIFT, SPLIT_FAIL_ANON_VMA,
    SPLIT_FAIL_PRECHECK, SPLIT_FAIL_RECHECK, SPLIT_OK, TAIL_COPY_FLAGS, TAIL_MAPPING, VM_ANON_DEFAULT,
    VM_EVENTS, VM_EXEC, VM_HUGEPAGE, VM_MAYWRITE, VM_READ, VM_WRITE,
)
from vmstate.errors import BadInput, CorruptState

N = HPAGE_PMD_NR
VARIANTS = ("v5", "v4.5")

# v4.5 __split_huge_page_tail(): the flags copied from the head; PG_dirty is copied, not set.
TAIL_COPY_FLAGS_V45 = TAIL_COPY_FLAGS | (1 << PG_dirty)


# --------------------------------------------------------------------------------------------------
# struct page and its accessors
# --------------------------------------------------------------------------------------------------

class Page:
    """One page frame (`struct page`), with the fields vmstate tracks.

    ``block`` is the 512-entry slice of mem_map the frame lives in (``None`` where a small block left a
    frame unallocated), so ``page.block[i]`` is the kernel's ``head + i`` for a THP head (always the
    first frame of its block). ``_compound_mapcount`` is only meaningful on ``page[1]``, where v5 keeps
    it (in a union with ``->mapping``); ``deferred`` only on a head (the deferred split queue).
    """

    __slots__ = ("pfn", "block", "flags", "_count", "_mapcount", "mapping", "index",
                 "_compound_mapcount", "deferred")

    def __init__(self, pfn: int, block: list):
        self.pfn = pfn
        self.block = block
        self.flags = 0
        self._count = 0
        self._mapcount = -1
        self.mapping = MAPPING_NULL
        self.index = 0
        self._compound_mapcount = -1
        self.deferred = False


def PageHead(page: Page) -> bool:
    return bool(page.flags & (1 << PG_head))


def PageTail(page: Page) -> bool:
    return bool(page.flags & (1 << PG_tail))


def PageCompound(page: Page) -> bool:
    return PageHead(page) or PageTail(page)


PageTransCompound = PageCompound  # anonymous THPs are the only compound pages here


def PageLocked(page: Page) -> bool:
    return bool(page.flags & (1 << PG_locked))


def PageSwapBacked(page: Page) -> bool:
    return bool(page.flags & (1 << PG_swapbacked))


def PageAnon(page: Page) -> bool:
    """Mirror of `include/linux/mm.h:PageAnon()`: derived from ``->mapping``, not a PG_ bit."""
    return page.mapping >= 0


def compound_head(page: Page) -> Page:
    """Mirror of `include/linux/mm.h:compound_head()` (v4.0 ``page->first_page``)."""
    return page.block[0] if PageTail(page) else page


def compound_mapcount(head: Page) -> int:
    """Mirror of v5 `include/linux/mm.h:compound_mapcount()`: raw value in ``page[1]`` plus one (the
    same in v4.5)."""
    assert PageHead(head)
    return head.block[1]._compound_mapcount + 1


def PageDoubleMap(head: Page) -> bool:
    """Mirror of v4.5 `include/linux/page-flags.h:PageDoubleMap()`: PG_double_map, kept in
    ``page[1].flags``."""
    return PageHead(head) and bool(head.block[1].flags & (1 << PG_double_map))


def TestSetPageDoubleMap(head: Page) -> bool:
    """Mirror of v4.5 `TestSetPageDoubleMap()` (test_and_set_bit on ``page[1].flags``)."""
    assert PageHead(head)
    old = bool(head.block[1].flags & (1 << PG_double_map))
    head.block[1].flags |= 1 << PG_double_map
    return old


def TestClearPageDoubleMap(head: Page) -> bool:
    """Mirror of v4.5 `TestClearPageDoubleMap()` (test_and_clear_bit on ``page[1].flags``)."""
    assert PageHead(head)
    old = bool(head.block[1].flags & (1 << PG_double_map))
    head.block[1].flags &= ~(1 << PG_double_map)
    return old


def PageDirty(page: Page) -> bool:
    """v4.5 `PAGEFLAG(Dirty, dirty, PF_HEAD)`: a tail page reads its head's PG_dirty."""
    return bool(compound_head(page).flags & (1 << PG_dirty))


def SetPageDirty(page: Page) -> None:
    """v4.5 `PAGEFLAG(Dirty, dirty, PF_HEAD)`: setting it on a tail page sets the head's PG_dirty."""
    compound_head(page).flags |= 1 << PG_dirty


def page_mapcount(page: Page, variant: str = "v5") -> int:
    """Mirror of v5 `include/linux/mm.h:page_mapcount()`: a positive compound_mapcount offsets every
    subpage's ``_mapcount`` by one. ``variant="v4.5"``: v4.5 `mm/util.c:__page_mapcount()`, where
    PG_double_map is the offset: raw + 1 + compound_mapcount - PageDoubleMap."""
    ret = page._mapcount + 1
    if PageCompound(page):
        head = compound_head(page)
        ret += compound_mapcount(head)
        if variant == "v4.5":
            if PageDoubleMap(head):
                ret -= 1
        elif compound_mapcount(head):
            ret -= 1
    return ret


def total_mapcount(head: Page, variant: str = "v5") -> int:
    """Mirror of `mm/huge_memory.c:total_mapcount()` (v5 patch 25/28; ``variant="v4.5"``: v4.5
    `total_mapcount()`, which subtracts N for PG_double_map instead of for compound_mapcount)."""
    ret = compound_mapcount(head)
    for i in range(N):
        ret += head.block[i]._mapcount + 1
    if variant == "v4.5":
        if PageDoubleMap(head):
            ret -= N
    # Positive compound_mapcount() offsets ->_mapcount in every subpage by one.
    elif compound_mapcount(head):
        ret -= N
    return ret


def page_mapped(page: Page) -> bool:
    """Mirror of v4.5 `include/linux/mm.h:page_mapped()`: compound_mapcount or any subpage's
    ``_mapcount`` (equal to ``total_mapcount() != 0`` in both variants)."""
    if not PageCompound(page):
        return page._mapcount >= 0
    head = compound_head(page)
    if head.block[1]._compound_mapcount >= 0:
        return True
    return any(head.block[i]._mapcount >= 0 for i in range(N))


def page_count(page: Page) -> int:
    """Mirror of `include/linux/mm.h:page_count()`: the head's ``_count``."""
    return compound_head(page)._count


def page_to_pgoff(page: Page) -> int:
    """Mirror of v5 `include/linux/pagemap.h:page_to_pgoff()` (the PageTransTail branch)."""
    if PageTail(page):
        head = compound_head(page)
        return head.index + (page.pfn - head.pfn)
    return page.index


def page_dup_rmap(page: Page, compound: bool) -> None:
    """Mirror of v5 `include/linux/rmap.h:page_dup_rmap()`."""
    if compound:
        page.block[1]._compound_mapcount += 1
    else:
        page._mapcount += 1


# --------------------------------------------------------------------------------------------------
# pte_t / pmd_t as u64 ints (x86-64 bits, kernels/constants.py)
# --------------------------------------------------------------------------------------------------

def pte_present(pte: int) -> bool:
    return bool(pte & _PAGE_PRESENT)


def pte_write(pte: int) -> bool:
    return bool(pte & _PAGE_RW)


def pte_young(pte: int) -> bool:
    return bool(pte & _PAGE_ACCESSED)


def pte_soft_dirty(pte: int) -> bool:
    return bool(pte & _PAGE_SOFT_DIRTY)


def pte_pfn(pte: int) -> int:
    return (pte & PTE_PFN_MASK) >> PTE_PFN_SHIFT


def pte_wrprotect(pte: int) -> int:
    return pte & ~_PAGE_RW


def pte_mkold(pte: int) -> int:
    return pte & ~_PAGE_ACCESSED


def mk_pte(pfn: int) -> int:
    """`mk_pte(page, vma->vm_page_prot)`: x86 PAGE_COPY of a private anonymous VMA is present and
    accessed, never writable (write access comes from maybe_mkwrite())."""
    return (pfn << PTE_PFN_SHIFT) | _PAGE_PRESENT | _PAGE_ACCESSED


def maybe_mkwrite(pte: int, vma: "VmAreaStruct") -> int:
    """Mirror of `include/linux/mm.h:maybe_mkwrite()`."""
    return pte | _PAGE_RW if vma.vm_flags & VM_WRITE else pte


def is_migration_entry(pte: int) -> bool:
    return not pte_present(pte) and bool(pte & _PAGE_VMS_MIGRATION)


def make_migration_entry(pfn: int, write: bool) -> int:
    """vmstate's migration entry: non-present, the pfn in place, ``_PAGE_RW`` = write entry."""
    return _PAGE_VMS_MIGRATION | (pfn << PTE_PFN_SHIFT) | (_PAGE_RW if write else 0)


def pmd_trans_huge(pmd) -> bool:
    """A PMD slot holds an int (huge PMD), a dict (PTE table) or nothing (``None``: pmd_none)."""
    return isinstance(pmd, int) and bool(pmd & _PAGE_PSE)


def pmd_addr_end(addr: int, end: int) -> int:
    return min((addr & HPAGE_PMD_MASK) + HPAGE_PMD_SIZE, end)


def is_cow_mapping(vm_flags: int) -> bool:
    """Mirror of `mm/internal.h:is_cow_mapping()`; vmstate has no VM_SHARED mapping."""
    return bool(vm_flags & VM_MAYWRITE)


# --------------------------------------------------------------------------------------------------
# mm_struct, vm_area_struct, anon_vma
# --------------------------------------------------------------------------------------------------

class VmAreaStruct:
    """A `struct vm_area_struct` (anonymous, private)."""

    __slots__ = ("vm_mm", "vm_start", "vm_end", "vm_pgoff", "vm_flags", "anon_vma")

    def __init__(self, vm_mm, vm_start, vm_end, vm_pgoff, vm_flags, anon_vma):
        self.vm_mm = vm_mm
        self.vm_start = vm_start
        self.vm_end = vm_end
        self.vm_pgoff = vm_pgoff
        self.vm_flags = vm_flags
        self.anon_vma = anon_vma

    def copy(self) -> "VmAreaStruct":
        return VmAreaStruct(self.vm_mm, self.vm_start, self.vm_end, self.vm_pgoff, self.vm_flags,
                            self.anon_vma)

    def pages(self) -> int:
        return (self.vm_end - self.vm_start) >> PAGE_SHIFT


class MmStruct:
    """A process. ``pmd[haddr]`` is a huge PMD (int) or a PTE table (dict vaddr -> pte of the non-none
    entries); a missing key is pmd_none. ``order`` is the creation order (interval query ties)."""

    def __init__(self, name: str, order: int):
        self.name = name
        self.order = order
        self.vmas: list[VmAreaStruct] = []  # sorted by vm_start (mm->mmap)
        self.pmd: dict[int, int | dict[int, int]] = {}

    def insert_vma(self, vma: VmAreaStruct) -> None:
        self.vmas.append(vma)
        self.vmas.sort(key=lambda v: v.vm_start)

    def find_vma(self, addr: int) -> VmAreaStruct | None:
        """Mirror of `mm/mmap.c:find_vma()`: the first VMA with ``addr < vm_end``."""
        for vma in self.vmas:
            if addr < vma.vm_end:
                return vma
        return None

    def vma_lookup(self, addr: int) -> VmAreaStruct | None:
        vma = self.find_vma(addr)
        return vma if vma is not None and vma.vm_start <= addr else None

    def vmas_overlapping(self, start: int, end: int) -> list[VmAreaStruct]:
        return [v for v in self.vmas if v.vm_start < end and v.vm_end > start]


class AnonVma:
    """A `struct anon_vma` with its interval tree of VMAs (every VMA forked from the mapping)."""

    def __init__(self, id_: int):
        self.id = id_
        self.vmas: list[VmAreaStruct] = []

    def interval_tree_foreach(self, first: int, last: int) -> list[VmAreaStruct]:
        """Mirror of `anon_vma_interval_tree_foreach()`: VMAs whose pgoff range meets
        ``[first, last]``, in (vm_pgoff, process creation, vm_start) order."""
        hits = [v for v in self.vmas
                if v.vm_pgoff <= last and v.vm_pgoff + v.pages() - 1 >= first]
        return sorted(hits, key=lambda v: (v.vm_pgoff, v.vm_mm.order, v.vm_start))


def vma_address(page: Page, vma: VmAreaStruct) -> int:
    """Mirror of `mm/internal.h:vma_address()` (v5 patch 25/28)."""
    address = _vma_address(page, vma)
    assert vma.vm_start <= address < vma.vm_end  # VM_BUG_ON_VMA
    return address


def _vma_address(page: Page, vma: VmAreaStruct) -> int:
    """Mirror of `mm/internal.h:__vma_address()`."""
    return vma.vm_start + ((page_to_pgoff(page) - vma.vm_pgoff) << PAGE_SHIFT)


# --------------------------------------------------------------------------------------------------
# The state
# --------------------------------------------------------------------------------------------------

class ReferenceState:
    """The whole simulated machine: frames, processes, anon_vmas, pins, counters.

    ``variant``: ``"v5"`` (the patch series, default) or ``"v4.5"`` (mainline Linux 4.5). ``atomics``
    counts, in both variants and apart from ``dump()``: ``mapcount_writes`` (every write to a
    ``_mapcount`` or a compound_mapcount) and ``refcount_ops`` (every atomic on a ``_count``);
    docs/semantics.md "Variant v4.5" gives the rules."""

    def __init__(self, variant: str = "v5"):
        if variant not in VARIANTS:
            raise BadInput(f"expected one of {', '.join(VARIANTS)}, got {variant!r}", field="variant")
        self.variant = variant
        self.v45 = variant == "v4.5"
        self.pages: dict[int, Page] = {}
        self.mem_map: dict[int, list] = {}  # block -> 512 entries (Page or None)
        self.next_block = FIRST_BLOCK
        self.mms: dict[str, MmStruct] = {}  # live processes
        self.used_names: set[str] = set()   # every name ever created (live or exited)
        self.anon_vmas: list[AnonVma] = []
        self.pins: dict[tuple[str, int, int], list[list[int]]] = {}
        self.vm_events = {k: 0 for k in VM_EVENTS}
        self.costs = {k: 0 for k in COSTS}
        self.atomics = {"mapcount_writes": 0, "refcount_ops": 0}

    # ---- variant-aware accessors ----------------------------------------------------------------

    def page_mapcount(self, page: Page) -> int:
        return page_mapcount(page, self.variant)

    def total_mapcount(self, head: Page) -> int:
        return total_mapcount(head, self.variant)

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
    def _check_addr(addr: int) -> None:
        if addr < 0 or addr % PAGE_SIZE:
            raise BadInput(f"addr {addr:#x}: expected a 4 KiB-aligned address >= 0", field="addr")

    def _check_range(self, addr: int, length: int) -> int:
        self._check_addr(addr)
        if length <= 0 or length % PAGE_SIZE:
            raise BadInput(f"len {length:#x}: expected a positive multiple of 4 KiB", field="len")
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
        head.deferred = False
        self.costs["pages_freed"] += N

    # ---- faults (mmap touches every page) -------------------------------------------------------

    def do_huge_pmd_anonymous_page(self, vma: VmAreaStruct, haddr: int) -> None:
        """Mirror of `mm/huge_memory.c:do_huge_pmd_anonymous_page()` + v5
        `page_add_new_anon_rmap(page, vma, haddr, true)`: compound_mapcount 1 and the offset (v4.5
        `page_add_new_anon_rmap()`: compound_mapcount 1 only)."""
        b = self._alloc_block()
        pages = [self._new_page(b * N + i) for i in range(N)]
        head = pages[0]
        head.flags = (1 << PG_head) | ANON_FAULT_FLAGS
        head._count = 1
        head.mapping = vma.anon_vma.id
        head.index = haddr >> PAGE_SHIFT  # linear_page_index(vma, haddr)
        for tail in pages[1:]:
            tail.flags = 1 << PG_tail
            tail.mapping = TAIL_MAPPING
        if not self.v45:  # v4.5 page_add_new_anon_rmap(compound): subpage _mapcount stays -1
            for page in pages:
                page._mapcount = 0  # the v5 offset
                self.atomics["mapcount_writes"] += 1
        pages[1]._compound_mapcount = 0  # atomic_set(compound_mapcount_ptr(page), 0)
        self.atomics["mapcount_writes"] += 1
        vma.vm_mm.pmd[haddr] = ((head.pfn << PTE_PFN_SHIFT) | _PAGE_PRESENT | _PAGE_PSE | _PAGE_RW
                                | _PAGE_ACCESSED | _PAGE_DIRTY)
        self.vm_events["thp_fault_alloc"] += 1

    def do_anonymous_page(self, vma: VmAreaStruct, address: int, b: int) -> None:
        """Mirror of `mm/memory.c:do_anonymous_page()`: one small page in block ``b``."""
        page = self._new_page(b * N + ((address >> PAGE_SHIFT) & (N - 1)))
        page.flags = ANON_FAULT_FLAGS
        page._count = 1
        page._mapcount = 0  # page_add_new_anon_rmap(): atomic_set(&page->_mapcount, 0)
        self.atomics["mapcount_writes"] += 1
        page.mapping = vma.anon_vma.id
        page.index = address >> PAGE_SHIFT
        haddr = address & HPAGE_PMD_MASK
        table = vma.vm_mm.pmd.get(haddr)
        if table is None:
            table = vma.vm_mm.pmd[haddr] = {}  # __pte_alloc()
        assert isinstance(table, dict)
        table[address] = (page.pfn << PTE_PFN_SHIFT) | _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED \
            | _PAGE_DIRTY

    # ---- rmap -----------------------------------------------------------------------------------

    def deferred_split_huge_page(self, head: Page) -> None:
        """Mirror of v5 26/28 `mm/huge_memory.c:deferred_split_huge_page()` (+ vmstate's counter)."""
        if not head.deferred:
            head.deferred = True
            self.vm_events["thp_deferred_split_page"] += 1

    def page_remove_rmap(self, page: Page, compound: bool) -> None:
        """Mirror of v5 `mm/rmap.c:page_remove_rmap()`: dropping the last PMD mapping drops the
        offset; any subpage whose ``_mapcount`` goes negative queues the THP. v4.5: the compound case
        is `page_remove_anon_compound_rmap()`."""
        if compound:
            assert PageHead(page)
            if self._compound_mapcount_add(page, -1) >= 0:  # !atomic_add_negative()
                return
            if self.v45:
                # v4.5 page_remove_anon_compound_rmap(): the subpages carry a +1 only under
                # PG_double_map; nr counts those that are left unmapped.
                if TestClearPageDoubleMap(page):
                    nr = 0
                    for i in range(N):  # atomic_add_negative(-1, &page[i]._mapcount)
                        if self._mapcount_add(page.block[i], -1) < 0:
                            nr += 1
                else:
                    nr = N
                if nr:
                    self.deferred_split_huge_page(page)
                return
            queue = False
            for i in range(N):
                queue |= self._mapcount_add(page.block[i], -1) < 0
            if queue:
                self.deferred_split_huge_page(page)
            return
        # v4.5 page_remove_rmap(page, false): the same test and the same queueing
        if self._mapcount_add(page, -1) >= 0:
            return
        assert page._mapcount == -1
        if PageTransCompound(page):
            self.deferred_split_huge_page(compound_head(page))

    # ---- zap (munmap, madvise_dontneed, exit) ---------------------------------------------------

    def zap_huge_pmd(self, vma: VmAreaStruct, haddr: int) -> None:
        """Mirror of `mm/huge_memory.c:zap_huge_pmd()`; the deposited table is freed with it."""
        orig_pmd = vma.vm_mm.pmd.pop(haddr)  # pmdp_get_and_clear_full()
        page = self.pages[pte_pfn(orig_pmd)]
        self.page_remove_rmap(page, True)
        assert self.page_mapcount(page) >= 0
        assert PageHead(page)
        self.put_page(page)  # tlb_remove_page()

    def zap_pte(self, vma: VmAreaStruct, addr: int) -> None:
        """Mirror of the present-PTE body of `mm/memory.c:zap_pte_range()`."""
        table = vma.vm_mm.pmd[addr & HPAGE_PMD_MASK]
        ptent = table.pop(addr)  # ptep_get_and_clear_full()
        assert pte_present(ptent)  # migration entries live only inside split_huge_page
        page = self.pages[pte_pfn(ptent)]
        self.page_remove_rmap(page, False)
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
            if isinstance(table, dict):  # zap_pte_range()
                for vaddr in range(addr, next_, PAGE_SIZE):
                    if vaddr in table:
                        self.zap_pte(vma, vaddr)
            addr = next_

    def unmap_single_vma(self, vma: VmAreaStruct, start_addr: int, end_addr: int) -> None:
        """Mirror of `mm/memory.c:unmap_single_vma()`."""
        start = max(vma.vm_start, start_addr)
        end = min(vma.vm_end, end_addr)
        if start < end:
            self.zap_pmd_range(vma, start, end)

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
        if self.v45:
            self._split_huge_pmd_locked_v45(vma, haddr, freeze, page)
            return
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

    def _split_huge_pmd_locked_v45(self, vma: VmAreaStruct, haddr: int, freeze: bool,
                                   page: Page) -> None:
        """Mirror of v4.5 `mm/huge_memory.c:__split_huge_pmd_locked()` after its
        ``atomic_add(HPAGE_PMD_NR - 1, &page->_count)``."""
        mm = vma.vm_mm
        pmd = mm.pmd[haddr]
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

    def copy_huge_pmd(self, dst_mm: MmStruct, src_mm: MmStruct, haddr: int) -> None:
        """Mirror of v5 `mm/huge_memory.c:copy_huge_pmd()`."""
        pmd = src_mm.pmd[haddr]
        src_page = self.pages[pte_pfn(pmd)]
        assert PageHead(src_page)
        self.get_page(src_page)
        page_dup_rmap(src_page, True)  # the same in v4.5 copy_huge_pmd()
        self.atomics["mapcount_writes"] += 1
        src_mm.pmd[haddr] = pte_wrprotect(pmd)  # pmdp_set_wrprotect()
        dst_mm.pmd[haddr] = pte_mkold(pte_wrprotect(pmd))

    def copy_one_pte(self, dst_pte: dict, src_pte: dict, vma: VmAreaStruct, addr: int) -> None:
        """Mirror of `mm/memory.c:copy_one_pte()` (present PTEs: no migration entry outside a split)."""
        pte = src_pte[addr]
        assert pte_present(pte)
        if is_cow_mapping(vma.vm_flags):
            src_pte[addr] = pte_wrprotect(pte)  # ptep_set_wrprotect()
            pte = pte_wrprotect(pte)
        pte = pte_mkold(pte)
        page = self.pages[pte_pfn(pte)]  # vm_normal_page()
        self.get_page(page)
        page_dup_rmap(page, False)  # the same in v4.5 copy_one_pte()
        self.atomics["mapcount_writes"] += 1
        dst_pte[addr] = pte

    def copy_pte_range(self, dst_mm: MmStruct, src_mm: MmStruct, vma: VmAreaStruct, addr: int,
                       end: int) -> None:
        """Mirror of `mm/memory.c:copy_pte_range()`: the child's table is allocated first
        (pte_alloc_map_lock()), even when the parent's holds nothing in the range."""
        haddr = addr & HPAGE_PMD_MASK
        dst_pte = dst_mm.pmd.setdefault(haddr, {})
        assert isinstance(dst_pte, dict)
        src_pte = src_mm.pmd[haddr]
        for vaddr in range(addr, end, PAGE_SIZE):
            if vaddr in src_pte:  # pte_none() -> continue
                self.copy_one_pte(dst_pte, src_pte, vma, vaddr)

    def copy_page_range(self, dst_mm: MmStruct, src_mm: MmStruct, vma: VmAreaStruct) -> None:
        """Mirror of `mm/memory.c:copy_page_range()` / `copy_pmd_range()`."""
        addr = vma.vm_start
        while addr != vma.vm_end:
            next_ = pmd_addr_end(addr, vma.vm_end)
            src = src_mm.pmd.get(addr & HPAGE_PMD_MASK)
            if pmd_trans_huge(src):
                assert next_ - addr == HPAGE_PMD_SIZE
                self.copy_huge_pmd(dst_mm, src_mm, addr)
            elif src is not None:  # pmd_none_or_clear_bad() -> continue
                self.copy_pte_range(dst_mm, src_mm, vma, addr, next_)
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

    # ---- split_huge_page (v5 patch 25/28) -------------------------------------------------------

    def freeze_page_vma(self, vma: VmAreaStruct, page: Page, address: int) -> None:
        """Mirror of `mm/huge_memory.c:freeze_page_vma()` (v4.5: `_freeze_page_vma_v45()`)."""
        if self.v45:
            self._freeze_page_vma_v45(vma, page, address)
            return
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

    def _freeze_page_vma_v45(self, vma: VmAreaStruct, page: Page, address: int) -> None:
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
        pmd = mm.pmd.get(haddr)
        if pmd is None:
            return
        if pmd_trans_huge(pmd):
            if self.pages[pte_pfn(pmd)] is page:  # v4.5: page == pmd_page(*pmd)
                self._split_huge_pmd_locked(vma, haddr, True)
            return
        self.costs["pte_lock"] += 1  # pte_offset_map_lock()
        for i in range(nr):  # v4.5: from the VMA's start (or the THP's) to the THP's end
            vaddr = address + i * PAGE_SIZE
            assert vaddr != haddr + HPAGE_PMD_SIZE  # page-table crossing: THPs are aligned here
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
        """Mirror of `mm/huge_memory.c:freeze_page()` (v4.5: the same walk; freeze_page_vma() gets
        ``__vma_address()`` unmasked)."""
        assert PageHead(page)
        pgoff = page_to_pgoff(page)
        for vma in anon_vma.interval_tree_foreach(pgoff, pgoff + N - 1):
            address = _vma_address(page, vma)
            self.costs["mmu_notifier"] += 1  # mmu_notifier_invalidate_range_start/end
            self.freeze_page_vma(vma, page, address if self.v45 else address & HPAGE_PMD_MASK)

    def unfreeze_page_vma(self, vma: VmAreaStruct, page: Page, address: int) -> None:
        """Mirror of `mm/huge_memory.c:unfreeze_page_vma()` (v4.5: `_unfreeze_page_vma_v45()`)."""
        if self.v45:
            self._unfreeze_page_vma_v45(vma, page, address)
            return
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

    def _unfreeze_page_vma_v45(self, vma: VmAreaStruct, page: Page, address: int) -> None:
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
        pmd = vma.vm_mm.pmd.get(haddr)
        if not isinstance(pmd, dict):  # mm_find_pmd(): none or huge -> NULL
            return
        self.costs["pte_lock"] += 1  # pte_offset_map_lock()
        for i in range(nr):
            vaddr = address + i * PAGE_SIZE
            assert vaddr != haddr + HPAGE_PMD_SIZE  # page-table crossing: THPs are aligned here
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
        """Mirror of `mm/huge_memory.c:unfreeze_page()`: one rmap walk per mapped subpage (v4.5: one
        walk of ``[pgoff, pgoff + N - 1]``, one mmu-notifier range per VMA)."""
        pgoff = page_to_pgoff(page)
        if self.v45:
            for vma in anon_vma.interval_tree_foreach(pgoff, pgoff + N - 1):
                self.costs["mmu_notifier"] += 1  # v4.5 unfreeze_page(): per VMA
                self.unfreeze_page_vma(vma, page, _vma_address(page, vma))
            return
        for i in range(N):
            subpage = page.block[i]
            if not page_mapcount(subpage):
                continue
            for vma in anon_vma.interval_tree_foreach(pgoff + i, pgoff + i):
                address = vma_address(subpage, vma)
                self.costs["mmu_notifier"] += 1
                self.unfreeze_page_vma(vma, subpage, address)

    def lru_add_page_tail(self, head: Page, page_tail: Page) -> None:
        """Mirror of `mm/swap.c:lru_add_page_tail()` with ``list == NULL``."""
        assert PageHead(head)
        assert not PageCompound(page_tail)
        assert not page_tail.flags & (1 << PG_lru)
        page_tail.flags |= 1 << PG_lru

    def _split_huge_page_tail(self, head: Page, tail: int) -> int:
        """Mirror of `mm/huge_memory.c:__split_huge_page_tail()` (v4.5: its own, below)."""
        page_tail = head.block[tail]
        if self.v45:
            # v4.5: mapcount = atomic_read(&page_tail->_mapcount) + 1 (0 after the freeze)
            mapcount = page_tail._mapcount + 1
            assert page_tail._count == 0  # VM_BUG_ON_PAGE(atomic_read(&page_tail->_count) != 0)
            self._count_add(page_tail, mapcount + 1)  # v4.5: atomic_add(mapcount + 1, ...)
            page_tail.flags = 0  # v4.5: &= ~PAGE_FLAGS_CHECK_AT_PREP (also PG_double_map)
            page_tail.flags |= head.flags & TAIL_COPY_FLAGS_V45  # v4.5: PG_dirty copied
            # v4.5: VM_BUG_ON_PAGE(tail > 2 && page_tail->mapping != TAIL_MAPPING)
            assert tail <= 2 or page_tail.mapping == TAIL_MAPPING
        else:
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

    def page_get_anon_vma(self, page: Page) -> AnonVma | None:
        """Mirror of `mm/rmap.c:page_get_anon_vma()`: NULL unless anon and page_mapped() (for a THP:
        total_mapcount() != 0, docs/semantics.md; v4.5 page_mapped() gives the same)."""
        if not PageAnon(page):
            return None
        if not (page_mapped(page) if self.v45 else total_mapcount(page)):
            return None
        return self.anon_vmas[page.mapping]

    def split_huge_page_to_list(self, head_pfn: int, pin_at: int = RACE_NONE,
                                unpin_at: int = RACE_NONE) -> tuple[int, int]:
        """Mirror of `mm/huge_memory.c:split_huge_page_to_list(page, NULL)` (v5 patch 25/28; v4.5:
        the recheck is ``!mapcount && count == 1``). The caller holds a reference and the page lock.
        Returns (0 or -EBUSY, SPLIT_* reason).
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
            if self.total_mapcount(head) != page_count(head) - 1:
                ret, reason = -EBUSY, SPLIT_FAIL_PRECHECK
            else:
                self._race(RACE_AFTER_PRECHECK, pin_at, unpin_at, head)
                self.freeze_page(anon_vma, head)
                self._race(RACE_AFTER_FREEZE, pin_at, unpin_at, head)
                assert compound_mapcount(head) == 0  # VM_BUG_ON_PAGE
                if self.v45:
                    ret, reason = self._recheck_v45(anon_vma, page, head)
                else:
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

    def _recheck_v45(self, anon_vma: AnonVma, page: Page, head: Page) -> tuple[int, int]:
        """The recheck of v4.5 `split_huge_page_to_list()`, under split_queue_lock: the freeze left
        no mapping, so only the caller's reference may remain."""
        count = page_count(head)
        mapcount = total_mapcount(head, "v4.5")
        if not mapcount and count == 1:
            head.deferred = False  # v4.5: list_del(page_deferred_list(head)) under the lock
            self._split_huge_page(page)
            return 0, SPLIT_OK
        if mapcount:  # v4.5: IS_ENABLED(CONFIG_DEBUG_VM) && mapcount -> BUG() with the values read
            raise CorruptState(f"pfn {head.pfn:#x}: total_mapcount: {mapcount}, "
                               f"page_count(): {count}", pfn=head.pfn,
                               rule="split_huge_page_to_list: total_mapcount == 0 after "
                                    "freeze_page")
        self.unfreeze_page(anon_vma, head)  # v4.5: a pin: unfreeze, -EBUSY
        return -EBUSY, SPLIT_FAIL_RECHECK

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
                if pfn is None or not PageTransCompound(self.pages[pfn]):
                    continue
                head = compound_head(self.pages[pfn])
                if head.pfn not in seen:
                    seen.add(head.pfn)
                    heads.append(head)
        return heads

    # ==== public operations ======================================================================

    def mmap(self, mm: str, addr: int, length: int, thp: bool = True) -> None:
        """mmap(MAP_PRIVATE|MAP_ANONYMOUS) (+ MADV_HUGEPAGE), then a fault on every page in address
        order: one block per 2 MiB slot touched, a THP where the slot is entirely inside."""
        if mm in self.used_names and mm not in self.mms:
            raise BadInput(f"process {mm!r} has exited", field="mm")
        end = self._check_range(addr, length)
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
            self.copy_page_range(proc, parent, vma)

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

    def mprotect(self, mm: str, addr: int, length: int, prot: str) -> None:
        """Mirror of `mm/mprotect.c:SYSCALL_DEFINE3(mprotect)`: per VMA, newflags from the request
        and the VMA's other flags, then mprotect_fixup()."""
        proc = self._live_mm(mm)
        end = self._check_range(addr, length)
        if prot not in ("r", "rw"):
            raise BadInput(f"prot {prot!r}: expected 'r' or 'rw'", field="prot")
        self._check_mapped(proc, addr, end)
        vm_flags = VM_READ | (VM_WRITE if prot == "rw" else 0)
        for vma in proc.vmas_overlapping(addr, end):
            newflags = vm_flags | (vma.vm_flags & ~(VM_READ | VM_WRITE | VM_EXEC))
            self.mprotect_fixup(proc, vma, max(addr, vma.vm_start), min(end, vma.vm_end),
                                newflags)

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
            self.put_page(self.pages[pfn])

    def split_pmd(self, mm: str, addr: int) -> None:
        """split_huge_pmd() on the PMD mapping ``addr``; nothing where it is not a huge PMD."""
        proc = self._live_mm(mm)
        self._check_addr(addr)
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
            "pages": {pfn: (p.flags, p._count, p._mapcount, p.mapping, p.index)
                      for pfn, p in sorted(self.pages.items())},
            "compound_mapcount": {h.pfn: h.block[1]._compound_mapcount for h in heads},
            "deferred": sorted(h.pfn for h in heads if h.deferred),
            "pmds": pmds,
            "ptes": ptes,
            "vmas": {name: sorted((v.vm_start, v.vm_end, v.vm_pgoff, v.vm_flags, v.anon_vma.id)
                                  for v in proc.vmas)
                     for name, proc in self.mms.items()},
            "vm_events": dict(self.vm_events),
            "costs": dict(self.costs),
        }
