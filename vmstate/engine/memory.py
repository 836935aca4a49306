"""Faults, zaps and fork's page-table copy, as in ``mm/memory.c``: the wrappers that find a range's
PMD entries and run the kernels of :mod:`vmstate.kernels.memory` and :mod:`vmstate.kernels.pmd`."""
from __future__ import annotations

import numpy as np

from vmstate.engine.mm_types import Mm
from vmstate.kernels import memory as k_memory
from vmstate.kernels import pmd as k_pmd
from vmstate.kernels.constants import (
    ANON_FAULT_FLAGS, HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SHIFT, PTE_PFN_SHIFT, _PAGE_ACCESSED,
    _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW,
)

N = HPAGE_PMD_NR
FAULT_ENTRY = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY  # a write fault's entry


def slots(start, end):
    """The 2 MiB slots ``[start, end)`` touches, and each one's PTE indices inside the range."""
    haddr = np.arange(start & ~(HPAGE_PMD_SIZE - 1), end, HPAGE_PMD_SIZE, dtype=np.int64)
    lo = (np.maximum(haddr, start) - haddr) >> PAGE_SHIFT
    hi = (np.minimum(haddr + HPAGE_PMD_SIZE, end) - haddr) >> PAGE_SHIFT
    return haddr, lo, hi


def do_huge_pmd_anonymous_page(state, mm: Mm, haddr: int, anon_vma: int):
    """A write fault on an unpopulated, aligned 2 MiB of a VM_HUGEPAGE VMA: a new THP mapped by a
    huge PMD (its PTE table deposited, ``MemoryState.set_huge_pmd``)."""
    b = state.alloc_block(anon_vma, haddr >> PAGE_SHIFT)
    state.k.do_huge_pmd_anonymous_page(state.blocks.a, b, state.events)
    state.set_huge_pmd(mm, haddr, (b * N << PTE_PFN_SHIFT) | FAULT_ENTRY | _PAGE_PSE)


def do_anonymous_page(state, mm: Mm, haddr: int, lo: int, hi: int, anon_vma: int):
    """``do_anonymous_page()`` for PTE slots ``[lo, hi)`` of the slot at ``haddr``: one small page
    each (``page_add_new_anon_rmap``: ``_mapcount`` 0; one reference), its PTE written."""
    b = state.alloc_block(anon_vma, haddr >> PAGE_SHIFT, lo, hi)
    rec = state.blocks.a[b]
    rec["flags"][lo:hi] = ANON_FAULT_FLAGS
    rec["_count"][lo:hi] = 1
    rec["_mapcount"][lo:hi] = 0
    t = state.table_of(state.pmd_row(mm, haddr, create=True))
    pfns = np.arange(b * N + lo, b * N + hi, dtype=np.uint64)
    state.ptes[t, lo:hi] = (pfns << np.uint64(PTE_PFN_SHIFT)) | np.uint64(FAULT_ENTRY)


def zap_page_range(state, mm: Mm, start: int, end: int):
    """``unmap_page_range()`` over ``[start, end)`` of one process: every slot's PMD entry through
    ``zap_pmd_range()`` in one kernel call."""
    haddr, lo, hi = slots(start, end)
    rows = mm.lookup_pmds(haddr)
    known = rows >= 0
    partial = known & ((lo != 0) | (hi != N))
    state.withdraw_tables(rows[partial][(state.pmd[rows[partial]] & _PAGE_PSE) != 0])  # split first
    state.k.zap_pmd_range(rows, lo, hi, state.pmds.a, state.tables.a, state.blocks.a,
                          state.cost_counters, state.events)


def copy_page_range(state, dst: Mm, src: Mm, vma):
    """``copy_page_range()`` for one VMA of a fork: ``copy_huge_pmd()`` for each huge PMD,
    ``copy_pte_range()`` for each PTE table (the child's table allocated even when nothing in the
    range is present: ``pte_alloc_map_lock()``)."""
    haddr, lo, hi = slots(vma.vm_start, vma.vm_end)
    rows = src.lookup_pmds(haddr)
    for h, r, a, z in zip(haddr.tolist(), rows.tolist(), lo.tolist(), hi.tolist()):
        if r < 0:
            continue
        entry = int(state.pmd[r])
        if entry & _PAGE_PSE:
            child = state.set_huge_pmd(dst, h, 0)  # the child gets its own deposited table
            k_pmd.copy_huge_pmd(state.pmds.a, r, child, state.blocks.a)
        elif entry & _PAGE_PRESENT:
            ct = state.table_of(state.pmd_row(dst, h, create=True))
            k_memory.copy_pte_range(state.ptes[int(state.pte_table[r])], state.ptes[ct], a, z,
                                    state.blocks.a)
