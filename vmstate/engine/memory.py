"""Faults, zaps and fork's page-table copy, as in ``mm/memory.c``: the wrappers that find a range's
PMD entries and run the kernels of :mod:`vmstate.kernels.memory` and :mod:`vmstate.kernels.pmd`."""
from __future__ import annotations

import numba
import numpy as np

from vmstate.engine.mm_types import Mm
from vmstate.kernels.constants import (
    HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SHIFT, _PAGE_PRESENT, _PAGE_PSE,
)

N = HPAGE_PMD_NR


def slots(start, end):
    """The 2 MiB slots ``[start, end)`` touches, and each one's PTE indices inside the range."""
    haddr = np.arange(start & ~(HPAGE_PMD_SIZE - 1), end, HPAGE_PMD_SIZE, dtype=np.int64)
    lo = (np.maximum(haddr, start) - haddr) >> PAGE_SHIFT
    hi = (np.minimum(haddr + HPAGE_PMD_SIZE, end) - haddr) >> PAGE_SHIFT
    return haddr, lo, hi


def do_anonymous_fault(state, mm: Mm, start: int, end: int, anon_vma: int, thp: bool,
                       data: bool = True):
    """A write fault on every page of the new VMA ``[start, end)``, all slots at once: blocks handed
    out in address order, ``do_huge_pmd_anonymous_page()`` for every aligned 2 MiB of a THP VMA
    (a huge PMD each), ``do_anonymous_page()`` for the pages of the other slots; the pages written
    with data (``data``) or zeros."""
    haddr, lo, hi = slots(start, end)
    huge = (lo == 0) & (hi == N) if thp else np.zeros(len(haddr), bool)
    b = state.alloc_blocks(anon_vma, haddr >> PAGE_SHIFT, np.where(huge, 0, lo), np.where(huge, N, hi))
    if huge.any():
        rows = state.pmd_rows(mm, haddr[huge])
        state.k.do_huge_pmd_anonymous_pages(state.blocks.a, b[huge], state.pmds.a, rows, data)
        state.k.count_thp_faults(state.events, int(huge.sum()))
    small = ~huge
    if small.any():
        rows = state.pmd_rows(mm, haddr[small])
        state.table_rows(rows)
        state.k.do_anonymous_pages(state.blocks.a, b[small], lo[small], hi[small], state.pmds.a,
                                   rows, state.tables.a, data)


def zap_page_range(state, mm: Mm, start: int, end: int):
    """``unmap_page_range()`` over ``[start, end)`` of one process: every slot's PMD entry through
    ``zap_pmd_range()`` in one kernel call."""
    haddr, lo, hi = slots(start, end)
    rows = mm.lookup_pmds(haddr)
    known = rows >= 0
    partial = known & ((lo != 0) | (hi != N))
    state.withdraw_tables(rows[partial][(state.pmd[rows[partial]] & _PAGE_PSE) != 0])  # split first
    threads = numba.get_num_threads()
    costs = np.zeros((threads, len(state.cost_counters)), np.int64)
    events = np.zeros((threads, len(state.events)), np.int64)
    state.k.zap_pmd_range(rows, lo, hi, state.pmds.a, state.tables.a, state.blocks.a, costs, events)
    state.cost_counters += costs.sum(axis=0)
    state.events += events.sum(axis=0)


def copy_page_range(state, dst: Mm, src: Mm, vma):
    """``copy_page_range()`` for one VMA of a fork, in one kernel call: ``copy_huge_pmd()`` for each
    huge PMD (the child's entry without a model table: see ``MemoryState.set_huge_pmd``),
    ``copy_pte_range()`` for each PTE table (the child's table allocated even when nothing in the
    range is present: ``pte_alloc_map_lock()``)."""
    haddr, lo, hi = slots(vma.vm_start, vma.vm_end)
    rows = src.lookup_pmds(haddr)
    known = rows >= 0
    entry = np.zeros(len(rows), np.uint64)
    entry[known] = state.pmd[rows[known]]
    copy = (entry & np.uint64(_PAGE_PRESENT)) != 0  # huge PMDs are present too
    if not copy.any():
        return
    haddr, lo, hi, rows = haddr[copy], lo[copy], hi[copy], rows[copy]
    dst_rows = state.pmd_rows(dst, haddr)  # two VMAs of the parent may share a slot
    table = (entry[copy] & np.uint64(_PAGE_PSE)) == 0
    state.table_rows(dst_rows[table])
    state.k.copy_pmd_range(rows, dst_rows, lo, hi, state.pmds.a, state.tables.a, state.blocks.a)
