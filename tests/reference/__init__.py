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

One module per concern, one per variant (the same kernel function names in each):

- ``page.py``: ``struct page`` and its flag and count accessors, ``pte_t``/``pmd_t`` helpers;
- ``mm.py``: ``mm_struct``, ``vm_area_struct``, ``anon_vma``, ``vma_address()``;
- ``state.py``: :class:`ReferenceState`, the machine, the public operations and the shared kernel
  functions; it picks the variant's subclass once, at construction;
- ``v5.py``, ``v4_5.py``, ``v6_18.py`` (mainline 6.18, docs/variant-6.18.md): what differs, a subclass of :class:`ReferenceState` each (the mapcount
  readers, the rmap, ``__split_huge_pmd_locked()``, the freeze and unfreeze, the recheck in
  ``split_huge_page_to_list()``, ``__split_huge_page_tail()``).

A new variant is a new module with a ``class ...(ReferenceState, variant="...")`` and its import
below (the registry is filled in import order; the first is listed first).
"""
from vmstate.errors import BadInput, CorruptState
from vmstate.kernels.constants import HPAGE_PMD_NR as N
from vmstate.kernels.constants import PG_double_map

from .mm import AnonVma, MmStruct, VmAreaStruct, _vma_address, vma_address
from .page import (
    Page, PageAnon, PageCompound, PageDirty, PageDoubleMap, PageHead, PageLocked, PageSwapBacked,
    PageTail, PageTransCompound, SetPageDirty, TestClearPageDoubleMap, TestSetPageDoubleMap,
    compound_head, compound_mapcount, is_cow_mapping, is_migration_entry, make_migration_entry,
    maybe_mkwrite, mk_pte, page_count, page_dup_rmap, page_mapped, page_to_pgoff, pmd_addr_end,
    pmd_trans_huge, pte_mkold, pte_pfn, pte_present, pte_soft_dirty, pte_write, pte_wrprotect,
    pte_young,
)
from .state import ReferenceState

# The registry: importing a variant module registers its subclass (in this order).
from .v5 import ReferenceStateV5  # noqa: I001
from .v4_5 import ReferenceStateV4_5
from .v6_18 import ReferenceStateV6_18

VARIANTS = tuple(ReferenceState.VARIANTS)


def page_mapcount(page: Page, variant: str = ReferenceState.DEFAULT_VARIANT) -> int:
    """The variant's ``page_mapcount()`` (v5 `include/linux/mm.h:page_mapcount()`, v4.5
    `mm/util.c:__page_mapcount()`)."""
    return ReferenceState.variant_class(variant).page_mapcount(page)


def total_mapcount(head: Page, variant: str = ReferenceState.DEFAULT_VARIANT) -> int:
    """The variant's ``mm/huge_memory.c:total_mapcount()``."""
    return ReferenceState.variant_class(variant).total_mapcount(head)


__all__ = [
    "N", "VARIANTS", "BadInput", "CorruptState", "PG_double_map",
    "AnonVma", "MmStruct", "VmAreaStruct", "_vma_address", "vma_address",
    "Page", "PageAnon", "PageCompound", "PageDirty", "PageDoubleMap", "PageHead", "PageLocked",
    "PageSwapBacked", "PageTail", "PageTransCompound", "SetPageDirty", "TestClearPageDoubleMap",
    "TestSetPageDoubleMap", "compound_head", "compound_mapcount", "is_cow_mapping",
    "is_migration_entry", "make_migration_entry", "maybe_mkwrite", "mk_pte", "page_count",
    "page_dup_rmap", "page_mapped", "page_to_pgoff", "pmd_addr_end", "pmd_trans_huge", "pte_mkold",
    "pte_pfn", "pte_present", "pte_soft_dirty", "pte_write", "pte_wrprotect", "pte_young",
    "ReferenceState", "ReferenceStateV5", "ReferenceStateV4_5", "ReferenceStateV6_18",
    "page_mapcount", "total_mapcount",
]
