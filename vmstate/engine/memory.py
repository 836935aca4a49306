"""Faults, zaps and fork's page-table copy, as in ``mm/memory.c``: the wrappers that find a range's
PMD entries and run the kernels of :mod:`vmstate.kernels.memory`, :mod:`vmstate.kernels.pmd` and
:mod:`vmstate.kernels.fault` (the ``write`` op's faults)."""
from __future__ import annotations

import numba
import numpy as np

from vmstate.engine.checks import check_range, live_mm, require_mapped, vmas_in
from vmstate.engine.mm_types import Mm
from vmstate.errors import BadInput
from vmstate.kernels.constants import (
    HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SHIFT, VM_HUGEPAGE, VM_WRITE, _PAGE_PRESENT, _PAGE_PSE,
    _PAGE_RW,
)
from vmstate.kernels.fault import C_USED

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
    zap = state.k.zap_pmd_range_serial if mm.nonlinear else state.k.zap_pmd_range
    zap(rows, lo, hi, state.pmds.a, state.tables.a, state.blocks.a, costs, events)
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


def write(state, mm, addr, length):
    """A user write to every page of ``[addr, addr + length)`` in address order
    (``handle_mm_fault()`` where it faults: :mod:`vmstate.kernels.fault`); the pages written then
    hold data. The range must be mapped and writable: a write elsewhere is SIGSEGV, bad input."""
    m = live_mm(state, mm)
    end = check_range(addr, length)
    require_mapped(m, addr, end, errno="SIGSEGV")
    vmas = vmas_in(m, addr, end)
    for v in vmas:
        if not v.vm_flags & VM_WRITE:
            raise BadInput(f"0x{v.vm_start:x}-0x{v.vm_end:x} of process {mm!r} is read-only: a write "
                           f"there is SIGSEGV", field="addr")
    parts = []
    for v in vmas:  # segments: per (VMA, slot) part of the range, in address order
        haddr, lo, hi = slots(max(addr, v.vm_start), min(end, v.vm_end))
        thp = (haddr >= v.vm_start) & (haddr + HPAGE_PMD_SIZE <= v.vm_end) \
            & bool(v.vm_flags & VM_HUGEPAGE)  # thp_vma_suitable_order(), THP "madvise" mode
        index = v.vm_pgoff + ((haddr - v.vm_start) >> PAGE_SHIFT)  # linear_page_index() of PTE 0
        parts.append((haddr, lo, hi, index, thp, np.full(len(haddr), v.anon_vma)))
    haddr, lo, hi, index, thp, mapping = (np.concatenate(c) for c in zip(*parts))
    uniq = np.unique(haddr)
    rows = state.pmd_rows(m, uniq)[np.searchsorted(uniq, haddr)]  # one row per slot
    entry = state.pmd[rows]
    none = entry == 0
    state.table_rows(np.unique(rows[none & ~thp]))  # do_anonymous_page()'s __pte_alloc()
    if not state.k.HUGE_PMD_WP_COPIES_THP:  # the deposited tables a wp fault may split into
        huge = rows[((entry & np.uint64(_PAGE_PSE)) != 0) & ((entry & np.uint64(_PAGE_RW)) == 0)]
        state.withdraw_tables(np.unique(huge))
    costs = np.zeros(len(state.cost_counters), np.int64)
    events = np.zeros(len(state.events), np.int64)
    cursor = np.array([0, 0, 0, -1, -1, -1], np.int64)
    pool = np.array([state.blocks.n, 0], np.int64)
    grow = len(rows) + 1  # a THP or a run's block per slot covers the common case; else it grows
    while True:
        state.blocks.append(grow)  # zeroed; the kernel initialises each block it takes
        pool[1] += grow
        done = state.k.handle_mm_faults(rows, lo, hi, index.astype(np.uint64), thp.astype(np.uint8),
                                        mapping.astype(np.int32), state.pmds.a, state.tables.a,
                                        state.blocks.a, pool, cursor, costs, events)
        if done:
            break
        grow = 2 * grow
    state.blocks.truncate(int(pool[0] + cursor[C_USED]))  # the pool's unused blocks go back
    state.cost_counters += costs
    state.events += events
