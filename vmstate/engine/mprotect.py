"""``mprotect()``, as in ``mm/mprotect.c``."""
from __future__ import annotations

from vmstate.engine.checks import check_range, live_mm, require_mapped, vmas_in
from vmstate.engine.memory import slots
from vmstate.engine.mmap import isolate, remove_vma
from vmstate.errors import BadInput
from vmstate.kernels.constants import PAGE_SHIFT, VM_WRITE


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
    changed = False
    for vma in vmas_in(m, addr, end):
        if vma.vm_flags & VM_WRITE == want:
            continue
        (vma,) = isolate(state, m, max(addr, vma.vm_start), min(end, vma.vm_end))
        vma.vm_flags = (vma.vm_flags & ~VM_WRITE) | want
        change_protection(state, m, vma.vm_start, vma.vm_end, bool(want))
        changed = True
    if changed and state.k.VMA_MERGE:
        merge_vmas(state, m, addr, end)


def merge_vmas(state, mm, addr, end):
    """What ``vma_modify_flags()`` leaves after ``mprotect_fixup()`` of every VMA of ``[addr, end)``
    (``mm/vma.c``): each changed VMA merged with an adjacent one, its neighbours outside the range
    too, of the same flags and anon_vma whose pgoff follows on (``can_vma_merge_after()``)."""
    window = [v for v in vmas_in(mm, addr - 1, end + 1)]
    for prev, vma in zip(window, window[1:]):
        if (prev.vm_end == vma.vm_start and prev.vm_flags == vma.vm_flags
                and prev.anon_vma == vma.anon_vma
                and prev.vm_pgoff + ((prev.vm_end - prev.vm_start) >> PAGE_SHIFT) == vma.vm_pgoff):
            vma.vm_start, vma.vm_pgoff = prev.vm_start, prev.vm_pgoff  # vma absorbs prev
            remove_vma(state, prev)


def change_protection(state, mm, start, end, writable=False):
    """Clear the write bit of every present entry in ``[start, end)`` (``change_pmd_range()``, one
    kernel call); to a writable VMA, the variant's ``MM_CP_TRY_CHANGE_WRITABLE`` may make some
    entries writable at once (6.18: PageAnonExclusive pages)."""
    haddr, lo, hi = slots(start, end)
    state.k.change_pmd_range(mm.lookup_pmds(haddr), lo, hi, state.pmds.a, state.tables.a,
                             state.blocks.a, writable)
