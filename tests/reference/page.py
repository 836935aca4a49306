"""``struct page`` and its accessors, and ``pte_t``/``pmd_t`` as ints: the part of the reference model
(``tests/reference/``) that both refcounting variants share.

The mapcount readers that differ between the variants (``page_mapcount()``, ``total_mapcount()``) live
in the variant modules (``v5.py``, ``v4_5.py``); the PG_double_map and PF_HEAD PG_dirty helpers below
are mainline 4.5's page-flags.h, read only by ``v4_5.py`` (and by an assertion that v5 never sets
PG_double_map).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from vmstate.kernels.constants import (
    _PAGE_ACCESSED, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_SOFT_DIRTY, _PAGE_VMS_MIGRATION,
    HPAGE_PMD_MASK, HPAGE_PMD_NR, HPAGE_PMD_SIZE, MAPPING_NULL, PG_dirty, PG_double_map, PG_head,
    PG_locked, PG_swapbacked, PG_tail, PTE_PFN_MASK, PTE_PFN_SHIFT, VM_MAYWRITE, VM_WRITE,
)

if TYPE_CHECKING:
    from .mm import VmAreaStruct

N = HPAGE_PMD_NR


# --------------------------------------------------------------------------------------------------
# struct page and its accessors
# --------------------------------------------------------------------------------------------------

class Page:
    """One page frame (`struct page`), with the fields vmstate tracks.

    ``block`` is the 512-entry slice of mem_map the frame lives in (``None`` where a small block left a
    frame unallocated), so ``page.block[i]`` is the kernel's ``head + i`` for a THP head (always the
    first frame of its block). ``_compound_mapcount`` is only meaningful on ``page[1]``, where v5 keeps
    it (in a union with ``->mapping``; 6.18's ``_entire_mapcount``); ``deferred`` only on a head (the
    deferred split queue; ``_deferred_seq`` orders 6.18's queue, list_add_tail()).

    ``data``: the page holds non-zero bytes (every variant; only 6.18 reads it). The 6.18 folio fields
    (docs/variant-6.18.md, include/linux/mm_types.h), kept on the head as the kernel keeps them in
    the first tail page, raw: ``_large_mapcount`` (-1 based), ``_nr_pages_mapped``, ``_mm_id[2]``,
    ``_mm_id_mapcount[2]`` (-1 based), ``_mm_ids_shared`` (FOLIO_MM_IDS_SHARED_BIT),
    ``partially_mapped`` (PG_partially_mapped). Initial values as prep_compound_head() sets them.
    """

    __slots__ = ("pfn", "block", "flags", "_count", "_mapcount", "mapping", "index",
                 "_compound_mapcount", "deferred", "_deferred_seq", "data", "_large_mapcount",
                 "_nr_pages_mapped", "_mm_id", "_mm_id_mapcount", "_mm_ids_shared",
                 "partially_mapped")

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
        self._deferred_seq = 0
        self.data = False
        self.reset_folio()

    def reset_folio(self) -> None:
        """The 6.18 folio fields as `mm/internal.h:prep_compound_head()` initialises them."""
        self._large_mapcount = -1
        self._nr_pages_mapped = 0
        self._mm_id = [0, 0]  # MM_ID_DUMMY
        self._mm_id_mapcount = [-1, -1]
        self._mm_ids_shared = False
        self.partially_mapped = False

    def folio_tuple(self) -> tuple:
        """dump()'s ``folio`` entry (docs/variant-6.18.md "The comparison format")."""
        return (self._large_mapcount, self._nr_pages_mapped, self._mm_id[0], self._mm_id[1],
                self._mm_id_mapcount[0], self._mm_id_mapcount[1], int(self._mm_ids_shared),
                int(self.partially_mapped))


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
