"""``mremap()``, as in ``mm/mremap.c``: a range moved whole to a free range (``move_vma()``)."""
from __future__ import annotations

import numpy as np

from vmstate.engine.checks import TASK_SIZE, check_range, live_mm, vmas_in
from vmstate.engine.mm_types import Vma
from vmstate.engine.mmap import add_vma, munmap
from vmstate.engine.mprotect import merge_vmas
from vmstate.errors import BadInput
from vmstate.kernels.constants import HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SHIFT, PAGE_SIZE, _PAGE_PSE
from vmstate.kernels.mremap import MOVE_PMD, MOVE_PTES

N = HPAGE_PMD_NR


def mremap(state, mm, addr, length, new_addr):
    """``mremap(addr, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, new_addr)`` of a range inside one VMA
    to a range where nothing is mapped: ``copy_vma()`` (the new VMA keeps the pages' vm_pgoff and
    the anon_vma), ``move_page_tables()`` (:mod:`vmstate.kernels.mremap`), then ``do_munmap()`` of
    the old range (whose PTEs are gone already); 6.18 merges the new VMA with compatible
    neighbours (``vma_merge_new_range()``)."""
    m = live_mm(state, mm)
    end = check_range(addr, length)
    if not isinstance(new_addr, int) or new_addr <= 0 or new_addr % PAGE_SIZE:
        raise BadInput(f"expected a positive multiple of 4096 (4K), got {new_addr!r}",
                       field="new_addr")
    new_end = new_addr + length
    if new_end > TASK_SIZE:
        raise BadInput(f"new range 0x{new_addr:x}+0x{length:x} ends above the 47-bit user address "
                       f"space", field="new_addr")
    if new_addr < end and addr < new_end:
        raise BadInput(f"new range 0x{new_addr:x}-0x{new_end:x} overlaps the old one 0x{addr:x}-"
                       f"0x{end:x} (EINVAL)", field="new_addr")
    inside = [v for v in m.vmas if v.vm_start <= addr < v.vm_end]
    if not inside or inside[0].vm_end < end:
        raise BadInput(f"0x{addr:x}-0x{end:x} is not inside one mapping of process {mm!r} (EFAULT)",
                       field="addr")
    clash = vmas_in(m, new_addr, new_end)
    if clash:
        v = clash[0]
        raise BadInput(f"0x{new_addr:x}-0x{new_end:x} overlaps the mapping 0x{v.vm_start:x}-"
                       f"0x{v.vm_end:x} of process {mm!r} (vmstate moves only to a free range)",
                       field="new_addr")
    vma = inside[0]
    pgoff = vma.vm_pgoff + ((addr - vma.vm_start) >> PAGE_SHIFT)
    add_vma(state, m, Vma(m, new_addr, new_end, pgoff, vma.vm_flags, vma.anon_vma))  # copy_vma()
    m.nonlinear = True
    move_page_tables(state, m, addr, new_addr, length)
    munmap(state, mm, addr, length)
    if state.k.VMA_MERGE:
        merge_vmas(state, m, new_addr, new_end)


def extents(old_addr, new_addr, length):
    """``get_extent()`` over the move: each extent ends at the next PMD boundary of either side.
    Returns per extent the old and new address and the length, as arrays."""
    cuts = np.union1d(np.arange((-old_addr) % HPAGE_PMD_SIZE, length, HPAGE_PMD_SIZE, dtype=np.int64),
                      np.arange((-new_addr) % HPAGE_PMD_SIZE, length, HPAGE_PMD_SIZE, dtype=np.int64))
    at = np.union1d(cuts, np.array([0, length], np.int64))
    return old_addr + at[:-1], new_addr + at[:-1], np.diff(at)


def move_page_tables(state, mm, old_addr, new_addr, length):
    """``move_page_tables()`` in one kernel call: the new PMD rows created, and the tables
    ``move_ptes()`` writes into allocated (``pte_alloc()``, even where nothing will move), a huge
    PMD to be split given its deposited table; per extent, whether the PMD entry itself moves."""
    old, new, size = extents(old_addr, new_addr, length)
    mask = ~(HPAGE_PMD_SIZE - 1)
    old_rows = mm.lookup_pmds(old & mask)
    new_h = new & mask
    nu = np.unique(new_h)
    known = mm.lookup_pmds(new_h)
    new_none = known < 0  # the new side's PMDs before any row is made there: none?
    new_none[~new_none] = state.pmd[known[~new_none]] == 0
    new_rows = state.pmd_rows(mm, nu)[np.searchsorted(nu, new_h)]
    present = old_rows >= 0
    entry = np.zeros(len(old), np.uint64)
    entry[present] = state.pmd[old_rows[present]]
    present &= entry != 0
    huge = (entry & np.uint64(_PAGE_PSE)) != 0
    full = (size == HPAGE_PMD_SIZE) & new_none
    how = np.where(present & full & (huge | state.k.MOVE_NORMAL_PMD), MOVE_PMD, MOVE_PTES)
    ptes = present & (how == MOVE_PTES)
    state.withdraw_tables(np.unique(old_rows[ptes & huge]))  # split_huge_pmd() fills them
    state.table_rows(np.unique(new_rows[ptes]))
    costs = np.zeros(len(state.cost_counters), np.int64)
    events = np.zeros(len(state.events), np.int64)
    state.k.move_page_tables(old_rows, new_rows, (old >> PAGE_SHIFT) & (N - 1),
                             (new >> PAGE_SHIFT) & (N - 1), size >> PAGE_SHIFT, how.astype(np.int64),
                             state.pmds.a, state.tables.a, state.blocks.a, costs, events)
    state.cost_counters += costs
    state.events += events
