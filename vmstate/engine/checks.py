"""The checks every operation makes before its first change, so that bad input
(:class:`~vmstate.errors.BadInput`) leaves the state untouched; and the VMA queries they need."""
from __future__ import annotations

from vmstate.engine.mm_types import Mm
from vmstate.errors import BadInput
from vmstate.kernels.constants import PAGE_SIZE

TASK_SIZE = 1 << 47  # x86-64 4-level paging: the top of the user address space


def live_mm(state, name, field="mm") -> Mm:
    mm = state.mms.get(name)
    if mm is None:
        raise BadInput(f"process {name!r} does not exist", field=field)
    if not mm.alive:
        raise BadInput(f"process {name!r} has exited", field=field)
    return mm


def check_range(addr, length):
    """``[addr, addr + length)`` is page aligned, not empty, above 0 and below ``TASK_SIZE``; its end."""
    if not isinstance(addr, int) or addr <= 0 or addr % PAGE_SIZE:
        raise BadInput(f"expected a positive multiple of 4096 (4K), got {addr!r}", field="addr")
    if not isinstance(length, int) or length <= 0 or length % PAGE_SIZE:
        raise BadInput(f"expected a positive multiple of 4096 (4K), got {length!r}", field="len")
    if addr + length > TASK_SIZE:
        raise BadInput(f"range 0x{addr:x}+0x{length:x} ends above the 47-bit user address space",
                       field="len")
    return addr + length


def vmas_in(mm: Mm, start, end):
    return [v for v in mm.vmas if v.vm_start < end and v.vm_end > start]


def mapped_end(mm: Mm, start, end):
    """The end of the run of VMAs from ``start`` (``start`` itself where no VMA holds it), at most
    ``end``: where a walk that stops at the first hole stops."""
    at = start
    for v in vmas_in(mm, start, end):
        if v.vm_start > at:
            break
        at = v.vm_end
    return min(at, end)


def require_mapped(mm: Mm, start, end, errno="ENOMEM"):
    """The whole range must be covered by VMAs (the kernel answers ENOMEM/EFAULT otherwise)."""
    at = start
    for v in vmas_in(mm, start, end):
        if v.vm_start > at:
            break
        at = v.vm_end
    if at < end:
        raise BadInput(f"0x{at:x} in 0x{start:x}-0x{end:x} is not mapped in process {mm.name!r} "
                       f"(the kernel answers {errno})", field="addr")
