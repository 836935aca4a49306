"""``mm_struct``, ``vm_area_struct``, ``anon_vma`` and ``vma_address()``: the processes of the
reference model (``tests/reference/``), the same in both refcounting variants."""
from __future__ import annotations

from vmstate.kernels.constants import PAGE_SHIFT

from .page import Page, page_to_pgoff

#: The top of the user address space vmstate accepts (the engine's ``USER_TOP``): a range may end
#: exactly there. (x86-64 ``TASK_SIZE_MAX`` is one page lower, ``(1 << 47) - PAGE_SIZE``.)
USER_TOP = 1 << 47


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
    entries); a missing key is pmd_none. ``order`` is the creation order (interval query ties);
    ``mm_id`` is 6.15+'s ``mm->mm_id`` (kernel/fork.c mm_alloc_id(): an IDA from MM_ID_MIN = 1, so
    creation order + 1)."""

    def __init__(self, name: str, order: int):
        self.name = name
        self.order = order
        self.mm_id = order + 1
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
