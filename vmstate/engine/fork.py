"""``fork()``'s copy of the address space, as in ``kernel/fork.c:dup_mmap()``."""
from __future__ import annotations

from vmstate.engine.checks import live_mm
from vmstate.engine.memory import copy_page_range
from vmstate.engine.mm_types import Vma
from vmstate.engine.mmap import add_vma, new_mm


def dup_mmap(state, mm, child):
    """Copy every VMA of ``mm`` into the new process ``child`` (same anon_vma: vmstate keeps one
    tree per mmap), then its page tables (``copy_page_range()``)."""
    parent = live_mm(state, mm)
    c = new_mm(state, child, "child")
    c.nonlinear = parent.nonlinear  # the child's page tables are copies of the parent's
    for vma in list(parent.vmas):
        add_vma(state, c, Vma(c, vma.vm_start, vma.vm_end, vma.vm_pgoff, vma.vm_flags, vma.anon_vma))
        copy_page_range(state, c, parent, vma)
