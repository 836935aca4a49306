"""``mprotect()``, as in ``mm/mprotect.c``."""
from __future__ import annotations

import numpy as np

from vmstate.engine.checks import check_range, live_mm, require_mapped, vmas_in
from vmstate.engine.memory import slots
from vmstate.engine.mmap import isolate
from vmstate.errors import BadInput
from vmstate.kernels.constants import VM_WRITE, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW


def mprotect(state, mm, addr, length, prot):
    """``mprotect()``: per VMA whose VM_WRITE changes, split at the edges (``mprotect_fixup()``) and
    write-protect entries (``change_protection()``; private anonymous entries become writable only
    on a write fault)."""
    m = live_mm(state, mm)
    end = check_range(addr, length)
    if prot not in ("r", "rw"):
        raise BadInput(f"expected \"r\" or \"rw\", got {prot!r}", field="prot")
    require_mapped(m, addr, end)
    want = VM_WRITE if prot == "rw" else 0
    for vma in vmas_in(m, addr, end):
        if vma.vm_flags & VM_WRITE == want:
            continue
        (vma,) = isolate(state, m, max(addr, vma.vm_start), min(end, vma.vm_end))
        vma.vm_flags = (vma.vm_flags & ~VM_WRITE) | want
        change_protection(state, m, vma.vm_start, vma.vm_end)


def change_protection(state, mm, start, end):
    """Clear the write bit of every present entry in ``[start, end)``: ``change_huge_pmd()`` on a
    huge PMD, ``change_pte_range()`` on a PTE table."""
    haddr, lo, hi = slots(start, end)
    for r, a, z in zip(mm.lookup_pmds(haddr).tolist(), lo.tolist(), hi.tolist()):
        if r < 0:
            continue
        if state.pmd[r] & _PAGE_PSE:
            state.pmd[r] &= ~np.uint64(_PAGE_RW)
        elif state.pmd[r] & _PAGE_PRESENT:
            seg = state.ptes[int(state.pte_table[r]), a:z]
            seg[(seg & _PAGE_PRESENT) != 0] &= ~np.uint64(_PAGE_RW)
