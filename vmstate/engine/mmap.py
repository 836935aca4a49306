"""VMAs and the operations that make and remove them, as in ``mm/mmap.c``: ``mmap`` (with every page
faulted in by a write), ``munmap``, ``exit_mmap`` and the VMA split they need."""
from __future__ import annotations

from vmstate.engine.checks import check_range, live_mm, vmas_in
from vmstate.engine.huge_memory import split_huge_pmd_address
from vmstate.engine.memory import do_anonymous_fault, zap_page_range
from vmstate.engine.mm_types import Mm, Vma
from vmstate.errors import BadInput
from vmstate.kernels.constants import PAGE_SHIFT, VM_ANON_DEFAULT, VM_HUGEPAGE


def new_mm(state, name, field) -> Mm:
    if name in state.mms:
        what = "has exited and cannot be reused" if not state.mms[name].alive else "already exists"
        raise BadInput(f"process {name!r} {what}", field=field)
    mm = Mm(name, len(state.mms))
    state.mms[name] = mm
    return mm


def add_vma(state, mm: Mm, vma: Vma):
    mm.vmas.append(vma)
    mm.vmas.sort(key=lambda v: v.vm_start)
    state.anon_vmas[vma.anon_vma].append(vma)


def remove_vma(state, vma: Vma):
    vma.mm.vmas.remove(vma)
    state.anon_vmas[vma.anon_vma].remove(vma)


def split_vma(state, vma: Vma, at):
    """``__split_vma()`` at ``at``: ``__vma_adjust_trans_huge()`` splits a PMD straddling ``at``."""
    split_huge_pmd_address(state, vma.mm, at)
    upper = Vma(vma.mm, at, vma.vm_end, vma.vm_pgoff + ((at - vma.vm_start) >> PAGE_SHIFT),
                vma.vm_flags, vma.anon_vma)
    vma.vm_end = at
    add_vma(state, vma.mm, upper)
    return upper


def isolate(state, mm, start, end):
    """Split the VMAs at ``start`` and ``end``; return the VMAs inside ``[start, end)``."""
    inside = []
    for v in vmas_in(mm, start, end):
        if v.vm_start < start:
            v = split_vma(state, v, start)
        if v.vm_end > end:
            split_vma(state, v, end)
        inside.append(v)
    return inside


def mmap(state, mm, addr, length, thp=True, fill="data"):
    """MAP_PRIVATE|MAP_ANONYMOUS (+ MADV_HUGEPAGE) at ``addr``, every page faulted in by a write of
    data (``fill = "data"``) or of zeros (``"zero"``): a THP for every aligned 2 MiB when ``thp``,
    small pages elsewhere."""
    end = check_range(addr, length)
    if not isinstance(thp, bool):
        raise BadInput(f"expected true or false, got {thp!r}", field="thp")
    if fill not in ("data", "zero"):
        raise BadInput(f'expected "data" or "zero", got {fill!r}', field="fill")
    m = state.mms.get(mm)
    if m is not None:
        live_mm(state, mm)
        clash = vmas_in(m, addr, end)
        if clash:
            v = clash[0]
            raise BadInput(f"0x{addr:x}-0x{end:x} overlaps the mapping 0x{v.vm_start:x}-"
                           f"0x{v.vm_end:x} of process {mm!r}", field="addr")
    else:
        m = new_mm(state, mm, "mm")
    anon_vma = len(state.anon_vmas)
    state.anon_vmas.append([])
    flags = VM_ANON_DEFAULT | (VM_HUGEPAGE if thp else 0)
    add_vma(state, m, Vma(m, addr, end, addr >> PAGE_SHIFT, flags, anon_vma))
    do_anonymous_fault(state, m, addr, end, anon_vma, thp, fill == "data")


def munmap(state, mm, addr, length):
    """``do_munmap()``: split VMAs at the edges, zap, remove. Holes are allowed."""
    m = live_mm(state, mm)
    end = check_range(addr, length)
    for vma in isolate(state, m, addr, end):
        zap_page_range(state, m, vma.vm_start, vma.vm_end)
        remove_vma(state, vma)


def exit_mmap(state, mm):
    """``exit_mmap()``: zap every mapping; the process is gone, its pins stay held."""
    m = live_mm(state, mm)
    for vma in list(m.vmas):
        zap_page_range(state, m, vma.vm_start, vma.vm_end)
        remove_vma(state, vma)
    m.alive = False
