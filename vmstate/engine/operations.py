"""The scenario operations (``../shared/spec/SCENARIOS.md``) over a :class:`~vmstate.engine.state.MemoryState`.

Each is installed as a method of ``MemoryState``. Every check runs before the first change, so bad
input (:class:`~vmstate.errors.BadInput`) leaves the state untouched. Kernel outcomes (-EBUSY) are
result arrays, not exceptions.
"""
from __future__ import annotations

import numpy as np

from vmstate.kernels.constants import (
    EV_THP_FAULT_ALLOC, HPAGE_PMD_NR,
    HPAGE_PMD_SIZE, PAGE_SHIFT, PAGE_SIZE, PG_head, PTE_PFN_MASK, PTE_PFN_SHIFT,
    ANON_FAULT_FLAGS, PG_tail, V5, VM_ANON_DEFAULT, VM_HUGEPAGE, VM_WRITE, _PAGE_ACCESSED, _PAGE_DIRTY,
    _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW,
)
from vmstate.errors import BadInput
from vmstate.engine.huge_memory import Race, SplitResult, split_thps, thps_mapped
from vmstate.engine.state import Mm, Vma

__all__ = ["mmap", "fork", "exit", "munmap", "madvise_dontneed", "mprotect", "pin", "unpin",
           "split_pmd", "split"]

N = HPAGE_PMD_NR
USER_TOP = 1 << 47
_FAULT_ENTRY = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY


# ---- checks -----------------------------------------------------------------------------------
def _live_mm(state, name, field="mm") -> Mm:
    mm = state.mms.get(name)
    if mm is None:
        raise BadInput(f"process {name!r} does not exist", field=field)
    if not mm.alive:
        raise BadInput(f"process {name!r} has exited", field=field)
    return mm


def _check_range(addr, length):
    if not isinstance(addr, int) or addr <= 0 or addr % PAGE_SIZE:
        raise BadInput(f"expected a positive multiple of 4096 (4K), got {addr!r}", field="addr")
    if not isinstance(length, int) or length <= 0 or length % PAGE_SIZE:
        raise BadInput(f"expected a positive multiple of 4096 (4K), got {length!r}", field="len")
    if addr + length > USER_TOP:
        raise BadInput(f"range 0x{addr:x}+0x{length:x} ends above the 47-bit user address space",
                       field="len")
    return addr + length


def _vmas_in(mm: Mm, start, end):
    return [v for v in mm.vmas if v.vm_start < end and v.vm_end > start]


def _require_mapped(mm: Mm, start, end, errno="ENOMEM"):
    """The whole range must be covered by VMAs (the kernel answers ENOMEM/EFAULT otherwise)."""
    at = start
    for v in _vmas_in(mm, start, end):
        if v.vm_start > at:
            break
        at = v.vm_end
    if at < end:
        raise BadInput(f"0x{at:x} in 0x{start:x}-0x{end:x} is not mapped in process {mm.name!r} "
                       f"(the kernel answers {errno})", field="addr")


def _new_mm(state, name, field):
    if name in state.mms:
        what = "has exited and cannot be reused" if not state.mms[name].alive else "already exists"
        raise BadInput(f"process {name!r} {what}", field=field)
    mm = Mm(name, len(state.mms))
    state.mms[name] = mm
    return mm


def _add_vma(state, mm: Mm, vma: Vma):
    mm.vmas.append(vma)
    mm.vmas.sort(key=lambda v: v.vm_start)
    state.anon_vmas[vma.anon_vma].append(vma)


def _remove_vma(state, vma: Vma):
    vma.mm.vmas.remove(vma)
    state.anon_vmas[vma.anon_vma].remove(vma)


def _split_vma(state, vma: Vma, at):
    """``__split_vma()`` at ``at``: ``__vma_adjust_trans_huge()`` splits a PMD straddling ``at``."""
    state.split_huge_pmd_address(vma.mm, at)
    upper = Vma(vma.mm, at, vma.vm_end, at >> PAGE_SHIFT, vma.vm_flags, vma.anon_vma)
    vma.vm_end = at
    _add_vma(state, vma.mm, upper)
    return upper


def _isolate(state, mm, start, end):
    """Split the VMAs at ``start`` and ``end``; return the VMAs inside ``[start, end)``."""
    inside = []
    for v in _vmas_in(mm, start, end):
        if v.vm_start < start:
            v = _split_vma(state, v, start)
        if v.vm_end > end:
            _split_vma(state, v, end)
        inside.append(v)
    return inside


def _hpage_slots(start, end):
    return range(start & ~(HPAGE_PMD_SIZE - 1), end, HPAGE_PMD_SIZE)


def _pte_span(haddr, start, end):
    """PTE indices ``[lo, hi)`` of the slot at ``haddr`` inside ``[start, end)``."""
    return (max(start, haddr) - haddr) >> PAGE_SHIFT, (min(end, haddr + HPAGE_PMD_SIZE) - haddr) >> PAGE_SHIFT


def _after(state):
    if state.validate_after_ops:
        state.validate()


# ---- operations ---------------------------------------------------------------------------------
def mmap(self, mm, addr, length, thp=True):
    """MAP_PRIVATE|MAP_ANONYMOUS (+ MADV_HUGEPAGE) at ``addr``, every page faulted in by a write."""
    end = _check_range(addr, length)
    if not isinstance(thp, bool):
        raise BadInput(f"expected true or false, got {thp!r}", field="thp")
    m = self.mms.get(mm)
    if m is not None:
        _live_mm(self, mm)
        clash = _vmas_in(m, addr, end)
        if clash:
            v = clash[0]
            raise BadInput(f"0x{addr:x}-0x{end:x} overlaps the mapping 0x{v.vm_start:x}-"
                           f"0x{v.vm_end:x} of process {mm!r}", field="addr")
    else:
        m = _new_mm(self, mm, "mm")
    anon_vma = len(self.anon_vmas)
    self.anon_vmas.append([])
    flags = VM_ANON_DEFAULT | (VM_HUGEPAGE if thp else 0)
    _add_vma(self, m, Vma(m, addr, end, addr >> PAGE_SHIFT, flags, anon_vma))
    for haddr in _hpage_slots(addr, end):
        if thp and addr <= haddr and haddr + HPAGE_PMD_SIZE <= end:
            _fault_thp(self, m, haddr, anon_vma)
        else:
            _fault_small(self, m, haddr, *_pte_span(haddr, addr, end), anon_vma)
    _after(self)


def _fault_thp(state, mm, haddr, anon_vma):
    """``do_huge_pmd_anonymous_page()`` + ``page_add_new_anon_rmap(page, compound)``."""
    b = state.alloc_block(anon_vma, haddr >> PAGE_SHIFT)
    rec = state.blocks.a[b]
    rec["flags"][0] = (1 << PG_head) | ANON_FAULT_FLAGS
    rec["flags"][1:] = 1 << PG_tail
    rec["_count"][0] = 1
    # v5: the offset, every subpage carries the PMD mapping; 4.5: no offset (raw -1 stays)
    rec["_mapcount"][:] = 0 if state.variant == V5 else -1
    rec["compound_mapcount"] = 0
    state.set_huge_pmd(mm, haddr, (b * N << PTE_PFN_SHIFT) | _FAULT_ENTRY | _PAGE_PSE)
    state.events[EV_THP_FAULT_ALLOC] += 1


def _fault_small(state, mm, haddr, lo, hi, anon_vma):
    """``do_anonymous_page()`` for PTE slots ``[lo, hi)`` of the slot at ``haddr``."""
    b = state.alloc_block(anon_vma, haddr >> PAGE_SHIFT, lo, hi)
    rec = state.blocks.a[b]
    rec["flags"][lo:hi] = ANON_FAULT_FLAGS
    rec["_count"][lo:hi] = 1
    rec["_mapcount"][lo:hi] = 0
    t = state.table_of(state.pmd_row(mm, haddr, create=True))
    pfns = np.arange(b * N + lo, b * N + hi, dtype=np.uint64)
    state.ptes[t, lo:hi] = (pfns << np.uint64(PTE_PFN_SHIFT)) | np.uint64(_FAULT_ENTRY)


def fork(self, mm, child):
    """``dup_mmap()``: copy every VMA; ``copy_huge_pmd()`` / ``copy_one_pte()`` for its entries."""
    parent = _live_mm(self, mm)
    c = _new_mm(self, child, "child")
    for vma in list(parent.vmas):
        _add_vma(self, c, Vma(c, vma.vm_start, vma.vm_end, vma.vm_pgoff, vma.vm_flags,
                              vma.anon_vma))
        for haddr in _hpage_slots(vma.vm_start, vma.vm_end):
            row = parent.pmd_rows.get(haddr)
            if row is None:
                continue
            if self.pmd[row] & _PAGE_PSE:
                _copy_huge_pmd(self, c, haddr, row)
            elif self.pmd[row] & _PAGE_PRESENT:
                _copy_pte_range(self, c, haddr, row, *_pte_span(haddr, vma.vm_start, vma.vm_end))
    _after(self)


def _copy_huge_pmd(state, child, haddr, row):
    """``copy_huge_pmd()``: get_page + page_dup_rmap(compound); both write-protected, child's old."""
    entry = int(state.pmd[row]) & ~_PAGE_RW
    b = ((entry & PTE_PFN_MASK) >> PTE_PFN_SHIFT) // N
    state._count[b, 0] += 1
    state.compound_mapcount_raw[b] += 1
    state.pmd[row] = entry
    state.set_huge_pmd(child, haddr, entry & ~_PAGE_ACCESSED)  # the child gets its own pgtable


def _copy_pte_range(state, child, haddr, row, lo, hi):
    """``copy_one_pte()`` for every present PTE in ``[lo, hi)``: get_page + page_dup_rmap."""
    # pte_alloc_map_lock(): the child's table exists even if nothing in the range is present
    ct = state.table_of(state.pmd_row(child, haddr, create=True))
    t = int(state.pte_table[row])
    seg = state.ptes[t, lo:hi]
    present = np.flatnonzero(seg & _PAGE_PRESENT)
    if not len(present):
        return
    seg[present] &= ~np.uint64(_PAGE_RW)   # ptep_set_wrprotect(src)
    state.ptes[ct, lo + present] = seg[present] & ~np.uint64(_PAGE_ACCESSED)  # pte_mkold
    pfns = ((seg[present] & PTE_PFN_MASK) >> PTE_PFN_SHIFT).astype(np.int64)
    state.get_pages(pfns)
    np.add.at(state._mapcount, (pfns // N, pfns % N), 1)


def exit(self, mm):
    """``exit_mmap()``: zap every mapping; the process is gone, its pins stay held."""
    m = _live_mm(self, mm)
    for vma in list(m.vmas):
        self.zap_pte_range(m, vma.vm_start, vma.vm_end)
        _remove_vma(self, vma)
    m.alive = False
    _after(self)


def munmap(self, mm, addr, length):
    """``do_munmap()``: split VMAs at the edges, zap, remove. Holes are allowed."""
    m = _live_mm(self, mm)
    end = _check_range(addr, length)
    for vma in _isolate(self, m, addr, end):
        self.zap_pte_range(m, vma.vm_start, vma.vm_end)
        _remove_vma(self, vma)
    _after(self)


def madvise_dontneed(self, mm, addr, length):
    """``madvise(MADV_DONTNEED)`` → ``zap_page_range()``; the VMAs stay."""
    m = _live_mm(self, mm)
    end = _check_range(addr, length)
    _require_mapped(m, addr, end)
    for vma in _vmas_in(m, addr, end):
        self.zap_pte_range(m, max(addr, vma.vm_start), min(end, vma.vm_end))
    _after(self)


def mprotect(self, mm, addr, length, prot):
    """``mprotect()``: per VMA whose VM_WRITE changes, split at the edges and write-protect entries
    (``change_protection()``; private anonymous entries become writable only on a write fault)."""
    m = _live_mm(self, mm)
    end = _check_range(addr, length)
    if prot not in ("r", "rw"):
        raise BadInput(f"expected \"r\" or \"rw\", got {prot!r}", field="prot")
    _require_mapped(m, addr, end)
    want = VM_WRITE if prot == "rw" else 0
    for vma in _vmas_in(m, addr, end):
        if vma.vm_flags & VM_WRITE == want:
            continue
        (vma,) = _isolate(self, m, max(addr, vma.vm_start), min(end, vma.vm_end))
        vma.vm_flags = (vma.vm_flags & ~VM_WRITE) | want
        _change_protection(self, m, vma.vm_start, vma.vm_end)
    _after(self)


def _change_protection(state, mm, start, end):
    for haddr in _hpage_slots(start, end):
        row = mm.pmd_rows.get(haddr)
        if row is None:
            continue
        if state.pmd[row] & _PAGE_PSE:
            state.pmd[row] &= ~np.uint64(_PAGE_RW)  # change_huge_pmd()
        elif state.pmd[row] & _PAGE_PRESENT:
            lo, hi = _pte_span(haddr, start, end)
            seg = state.ptes[int(state.pte_table[row]), lo:hi]
            seg[(seg & _PAGE_PRESENT) != 0] &= ~np.uint64(_PAGE_RW)


def _mapped_pfns(state, mm, start, end):
    """pfn of every page of ``[start, end)`` through present entries, or the first hole's address."""
    out = []
    for haddr in _hpage_slots(start, end):
        lo, hi = _pte_span(haddr, start, end)
        row = mm.pmd_rows.get(haddr)
        if row is not None and state.pmd[row] & _PAGE_PSE:
            head = (int(state.pmd[row]) & PTE_PFN_MASK) >> PTE_PFN_SHIFT
            out.append(np.arange(head + lo, head + hi, dtype=np.int64))
            continue
        if row is None or not state.pmd[row] & _PAGE_PRESENT:
            return None, haddr + (lo << PAGE_SHIFT)
        seg = state.ptes[int(state.pte_table[row]), lo:hi]
        missing = np.flatnonzero((seg & _PAGE_PRESENT) == 0)
        if len(missing):
            return None, haddr + (lo + int(missing[0]) << PAGE_SHIFT)
        out.append(((seg & PTE_PFN_MASK) >> PTE_PFN_SHIFT).astype(np.int64))
    return np.concatenate(out), None


def pin(self, mm, addr, length):
    """``get_user_pages(FOLL_GET)`` on every page of the range: one reference each, on the head."""
    m = _live_mm(self, mm)
    end = _check_range(addr, length)
    _require_mapped(m, addr, end, errno="EFAULT")
    pfns, hole = _mapped_pfns(self, m, addr, end)
    if pfns is None:
        raise BadInput(f"page 0x{hole:x} of process {mm!r} has no present mapping to pin",
                       field="addr")
    self.get_pages(pfns)
    self.pins.setdefault((mm, addr, length), []).append(pfns)
    _after(self)


def unpin(self, mm, addr, length):
    """``put_page()`` on the pages of the latest ``pin`` of the same process and range."""
    _live_mm(self, mm)
    _check_range(addr, length)
    held = self.pins.get((mm, addr, length))
    if not held:
        raise BadInput(f"no pin of 0x{addr:x}+0x{length:x} in process {mm!r} is held", field="addr")
    self.put_pages(held.pop())
    _after(self)


def split_pmd(self, mm, addr):
    """``split_huge_pmd()`` on the PMD mapping ``addr``; nothing if it is not a huge PMD."""
    m = _live_mm(self, mm)
    _check_range(addr, PAGE_SIZE)
    if not _vmas_in(m, addr, addr + 1):
        raise BadInput(f"0x{addr:x} is not mapped in process {mm!r}", field="addr")
    row = m.pmd_rows.get(addr & ~(HPAGE_PMD_SIZE - 1))
    if row is not None and self.pmd[row] & _PAGE_PSE:
        self.split_huge_pmd(row)
    _after(self)


def split(self, mm, addr, length, race: Race | None = None) -> SplitResult:
    """debugfs ``split_huge_pages`` on ``[addr, addr + len)`` of a process: each THP mapped there once,
    by lowest address, through ``split_huge_page_to_list(head, NULL)`` (:mod:`vmstate.engine.huge_memory`).
    ``race``: GUP pins that race the split (:class:`vmstate.engine.huge_memory.Race`)."""
    m = _live_mm(self, mm)
    end = _check_range(addr, length)
    if race is not None:
        race.check()
    if not _vmas_in(m, addr, end):
        raise BadInput(f"0x{addr:x}-0x{end:x} overlaps no mapping of process {mm!r}", field="addr")
    result = split_thps(self, thps_mapped(self, m, addr, end), race=race, mm=mm)
    _after(self)
    return result
