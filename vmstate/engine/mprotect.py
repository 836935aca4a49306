"""``mprotect()``, as in ``mm/mprotect.c``."""
from __future__ import annotations

from vmstate.engine.checks import check_range, live_mm, require_mapped, vmas_in
from vmstate.engine.memory import slots
from vmstate.engine.mmap import isolate
from vmstate.errors import BadInput
from vmstate.kernels.constants import VM_WRITE


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
        change_protection(state, m, vma.vm_start, vma.vm_end, bool(want))


def change_protection(state, mm, start, end, writable=False):
    """Clear the write bit of every present entry in ``[start, end)`` (``change_pmd_range()``, one
    kernel call); to a writable VMA, the variant's ``MM_CP_TRY_CHANGE_WRITABLE`` may make some
    entries writable at once (6.18: PageAnonExclusive pages)."""
    haddr, lo, hi = slots(start, end)
    state.k.change_pmd_range(mm.lookup_pmds(haddr), lo, hi, state.pmds.a, state.tables.a,
                             state.blocks.a, writable)
