"""``madvise()``, as in ``mm/madvise.c``."""
from __future__ import annotations

from vmstate.engine.checks import check_range, live_mm, require_mapped, vmas_in
from vmstate.engine.memory import zap_page_range


def madvise_dontneed(state, mm, addr, length):
    """``madvise(MADV_DONTNEED)`` → ``zap_page_range()`` per VMA; the VMAs stay."""
    m = live_mm(state, mm)
    end = check_range(addr, length)
    require_mapped(m, addr, end)
    for vma in vmas_in(m, addr, end):
        zap_page_range(state, m, max(addr, vma.vm_start), min(end, vma.vm_end))
