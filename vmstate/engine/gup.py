"""Pinning pages, as in ``mm/gup.c``: ``pin`` takes a ``get_user_pages(FOLL_GET)`` reference on
every page of a range, ``unpin`` drops the latest pin of the same range (``put_page``)."""
from __future__ import annotations

import numpy as np

from vmstate.engine.checks import check_range, live_mm, require_mapped
from vmstate.engine.memory import slots
from vmstate.engine.mm_types import Pin
from vmstate.errors import BadInput
from vmstate.kernels import memory as k_memory
from vmstate.kernels import refcount as k_refcount
from vmstate.kernels.constants import PAGE_SHIFT


def follow_pages(state, mm, start, end):
    """pfn of every page of ``[start, end)`` through present entries (``follow_page()``, one kernel
    call), or None and the first address that has none."""
    haddr, lo, hi = slots(start, end)
    out = np.empty((end - start) >> PAGE_SHIFT, np.int64)
    hole = np.zeros(2, np.int64)
    n = k_memory.follow_page_range(mm.lookup_pmds(haddr), lo, hi, state.pmds.a, state.tables.a, out,
                                   hole)
    if n < 0:
        return None, int(haddr[hole[0]]) + (int(hole[1]) << PAGE_SHIFT)
    return out, None


def hold(state, mm: str, addr: int, length: int, pfns: np.ndarray, nr: int = 1):
    """Record ``nr`` pins of ``pfns`` on ``(mm, addr, length)`` (their references already taken):
    on the latest record of that range when it holds the same pages."""
    stack = state.pins.setdefault((mm, addr, length), [])
    if stack and np.array_equal(stack[-1].pfns, pfns):
        stack[-1].nr += nr
    else:
        stack.append(Pin(pfns, nr))


def pin(state, mm, addr, length):
    """``get_user_pages(FOLL_GET)`` on every page of the range: one reference each, on the head."""
    m = live_mm(state, mm)
    end = check_range(addr, length)
    require_mapped(m, addr, end, errno="EFAULT")
    pfns, hole = follow_pages(state, m, addr, end)
    if pfns is None:
        raise BadInput(f"page 0x{hole:x} of process {mm!r} has no present mapping to pin",
                       field="addr")
    k_refcount.get_pages(state.blocks.a, pfns, 1)
    hold(state, mm, addr, length, pfns)


def unpin(state, mm, addr, length):
    """``put_page()`` on the pages of the latest ``pin`` of the same process and range."""
    live_mm(state, mm)
    check_range(addr, length)
    stack = state.pins.get((mm, addr, length))
    if not stack:
        raise BadInput(f"no pin of 0x{addr:x}+0x{length:x} in process {mm!r} is held", field="addr")
    top = stack[-1]
    k_refcount.put_pages(state.blocks.a, top.pfns, state.cost_counters)
    top.nr -= 1
    if not top.nr:
        stack.pop()
        if not stack:
            del state.pins[(mm, addr, length)]
