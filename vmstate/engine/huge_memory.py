"""Huge PMDs and the split, as in ``mm/huge_memory.c``: ``split_huge_pmd()`` on a process's
address, and the ``split`` operation (debugfs ``split_huge_pages`` over a range).

check → index arrays → kernel → result, as every public operation. The rmap walk of each THP (the
anon_vma interval query, ``haddr`` in each VMA, the PMD entry there) is computed with NumPy for all
THPs at once; the variant's ``split_huge_pages`` kernel (:mod:`vmstate.kernels.split`) then splits
each THP on its own prange iteration.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from vmstate.kernels.constants import (
    BUG_COMPOUND_MAPCOUNT, BUG_RECHECK_MAPCOUNT, BUG_TAIL_COUNT, COSTS, HPAGE_PMD_NR, HPAGE_PMD_SIZE,
    PAGE_SHIFT, PAGE_SIZE, PG_head, PTE_PFN_MASK, RACE_NONE, RACE_POINTS, SPLIT_BUG,
    SPLIT_FAIL_ANON_VMA, SPLIT_FAIL_PRECHECK, SPLIT_FAIL_RECHECK, SPLIT_NOT_TRIED, SPLIT_OK,
    N_EVENTS, VM_EVENTS, VM_WRITE, _PAGE_PRESENT, _PAGE_PSE,
)
from vmstate.kernels.pagewalk import WALK_ROW0, WALK_ROW1, WALK_SHIFT, follow_thps
from vmstate.engine.checks import check_range, live_mm, mapped_end, vmas_in
from vmstate.engine.gup import hold
from vmstate.errors import BadInput, CorruptState

N = HPAGE_PMD_NR


@dataclass
class SplitResult:
    """Outcome of one ``split`` op: per THP in split order, the head pfn, ret (0 or -EBUSY) and
    reason (``SPLIT_*``: 0 ok, 1 anon_vma, 2 precheck, 3 recheck)."""
    heads: np.ndarray
    ret: np.ndarray
    reason: np.ndarray
    seconds: dict = field(default_factory=dict)  # "rmap" (the index arrays) and "split" (the kernel)
    costs: np.ndarray | None = None    # [thp, COSTS] what each THP's split cost
    events: np.ndarray | None = None   # [thp, VM_EVENTS] the events each THP's split counted
    queued: int | None = None          # shrink: the THPs on the deferred queue before it ran
    walked_to: int | None = None       # 6.18 debugfs: where its address walk ended (the first hole)

    def frame(self):
        """One row per THP: ``head_pfn``, ``ret``, ``reason`` and every cost and event counter."""
        import polars as pl
        cols = {"head_pfn": self.heads.astype(np.uint64), "ret": self.ret, "reason": self.reason}
        if self.costs is not None:
            cols.update({name: self.costs[:, i] for i, name in enumerate(COSTS)})
            cols.update({name: self.events[:, i] for i, name in enumerate(VM_EVENTS)
                         if name in ("thp_split_pmd",)})
        return pl.DataFrame(cols)

    @property
    def attempted(self):
        """THPs whose split was tried (the shrinker leaves some alone: ``SPLIT_NOT_TRIED``)."""
        return int((self.reason != SPLIT_NOT_TRIED).sum())

    @property
    def succeeded(self):
        return int((self.reason == SPLIT_OK).sum())

    @property
    def failed(self):
        return self.attempted - self.succeeded


def thps_mapped(state, mm, start, end):
    """Blocks of the THPs mapped in ``[start, end)`` of ``mm``, once each, by lowest address."""
    haddrs, rows = mm.haddrs, mm.rows
    i0 = np.searchsorted(haddrs, start & ~(HPAGE_PMD_SIZE - 1))
    i1 = np.searchsorted(haddrs, end)
    h = haddrs[i0:i1]
    lo = (np.maximum(h, start) - h) >> PAGE_SHIFT
    hi = (np.minimum(h + HPAGE_PMD_SIZE, end) - h) >> PAGE_SHIFT
    seen = np.zeros(state.blocks.n, np.uint8)
    out = np.empty(state.blocks.n, np.int64)
    n = follow_thps(rows[i0:i1], lo, hi, state.pmds.a, state.tables.a, state.blocks.a, seen, out)
    return out[:n].copy()


def _rmap_part(ks, order, v, ii):
    """The rmap entries of VMA ``v`` (``order`` in its tree) for the THPs ``ks`` at pgoffs ``ii``:
    the walk entry (PMD rows of the slot of ``__vma_address()`` and of the next slot, the head's PTE
    position: :mod:`vmstate.kernels.pagewalk`), the subpage range the VMA covers, VM_WRITE."""
    pages = (v.vm_end - v.vm_start) >> PAGE_SHIFT
    address = v.vm_start + ((ii - v.vm_pgoff) << PAGE_SHIFT)  # __vma_address(): PMD aligned unless
    haddr = address & ~(HPAGE_PMD_SIZE - 1)                   # mremap moved the range
    walk = np.full((len(ii), 3), -1, np.int64)
    walk[:, WALK_ROW0] = v.mm.lookup_pmds(haddr)
    walk[:, WALK_SHIFT] = (address >> PAGE_SHIFT) & (N - 1)
    cross = walk[:, WALK_SHIFT] != 0
    if cross.any():
        walk[cross, WALK_ROW1] = v.mm.lookup_pmds(haddr[cross] + HPAGE_PMD_SIZE)
    return (ks, np.full(len(ii), order), walk,
            np.maximum(0, v.vm_pgoff - ii), np.minimum(N, v.vm_pgoff + pages - ii),
            np.full(len(ii), 1 if v.vm_flags & VM_WRITE else 0))


def rmap_arrays(state, thps):
    """Per THP ``k`` the VMAs of its anon_vma query ``[index, index + 511]`` in tree order, as CSR
    arrays: ``ptr`` (``k``'s VMAs are ``ptr[k]:ptr[k + 1]``), where that VMA's process maps it (the
    rmap walk entry: ``[n, 3]`` rows and head position, :mod:`vmstate.kernels.pagewalk`), the
    subpage range ``[lo, hi)`` the VMA covers, VM_WRITE."""
    a = state.blocks.a
    mapping = a["mapping"][thps]
    index = a["index"][thps].astype(np.int64)
    parts = []
    for av in np.flatnonzero(np.bincount(mapping)) if len(mapping) else ():  # anon_vma ids, O(n)
        ks = np.flatnonzero(mapping == av)
        idx = index[ks]
        tree = state.anon_vma_tree(int(av))
        if len(tree) <= 8:  # few VMAs (the common case): one vectorized pass over the THPs each
            for order, v in enumerate(tree):
                pages = (v.vm_end - v.vm_start) >> PAGE_SHIFT
                hit = (v.vm_pgoff <= idx + N - 1) & (v.vm_pgoff + pages - 1 >= idx)
                if hit.any():
                    parts.append(_rmap_part(ks[hit], order, v, idx[hit]))
            continue
        # many VMAs (mprotect/munmap left one per piece): the (THP, VMA) overlap as one mask, in
        # chunks of THPs, then per VMA that any THP meets
        pgoff = np.array([v.vm_pgoff for v in tree], np.int64)
        last = pgoff + np.array([(v.vm_end - v.vm_start) >> PAGE_SHIFT for v in tree], np.int64) - 1
        step = max(1, (1 << 22) // len(tree))
        for c in range(0, len(idx), step):
            ci = idx[c:c + step]
            mask = (pgoff[None, :] <= ci[:, None] + N - 1) & (last[None, :] >= ci[:, None])
            for order in np.flatnonzero(mask.any(axis=0)).tolist():
                hit = mask[:, order]
                parts.append(_rmap_part(ks[c:c + step][hit], order, tree[order], ci[hit]))
    if parts:
        k, order, rows, lo, hi, write = (np.concatenate(c) for c in zip(*parts))
        if len(parts) > 1:  # parts come in tree order per anon_vma: a stable sort by THP keeps it
            sort = np.argsort(k, kind="stable")
            k, rows, lo, hi, write = k[sort], rows[sort], lo[sort], hi[sort], write[sort]
    else:
        k = lo = hi = write = np.zeros(0, np.int64)
        rows = np.zeros((0, 3), np.int64)
    ptr = np.zeros(len(thps) + 1, np.int64)
    np.cumsum(np.bincount(k, minlength=len(thps)), out=ptr[1:])
    return ptr, rows.astype(np.int64), lo.astype(np.int64), hi.astype(np.int64), write.astype(np.int64)


@dataclass(frozen=True)
class Race:
    """Racing GUP pins during a split: on ``fraction`` of the THPs (chosen from ``seed``) a reference
    on the head arrives at point ``pin`` and is dropped at point ``unpin`` (``RACE_POINTS`` names;
    ``"never"``: it stays, as a pin of the THP's first 4 KiB that a later ``unpin`` releases)."""
    pin: str = "after_precheck"
    unpin: str = "never"
    fraction: float = 1.0
    seed: int = 0

    def check(self):
        pins = ("after_precheck", "after_freeze")
        if self.pin not in pins:
            raise BadInput(f"expected one of {', '.join(pins)}, got {self.pin!r}", field="race.pin")
        if self.unpin not in RACE_POINTS:
            raise BadInput(f"expected one of {', '.join(RACE_POINTS)}, got {self.unpin!r}",
                           field="race.unpin")
        if self.unpin != "never" and RACE_POINTS[self.unpin] < RACE_POINTS[self.pin]:
            raise BadInput(f"the pin cannot leave ({self.unpin}) before it arrives ({self.pin})",
                           field="race.unpin")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) \
                or not 0 <= self.fraction <= 1:
            raise BadInput(f"expected a fraction in [0, 1], got {self.fraction!r}",
                           field="race.fraction")

    def arrays(self, n):
        """Per THP: the pin and unpin points (``RACE_NONE`` for THPs the race leaves alone)."""
        chosen = np.zeros(n, bool)
        rng = np.random.default_rng(self.seed)
        chosen[rng.choice(n, round(self.fraction * n), replace=False)] = True
        pin = np.where(chosen, RACE_POINTS[self.pin], RACE_NONE).astype(np.int64)
        unpin = np.where(chosen, RACE_POINTS[self.unpin], RACE_NONE).astype(np.int64)
        return pin, unpin


def split_thps(state, thps, *, race: Race | None = None, mm=None, debugfs=False,
               shrinker=False) -> SplitResult:
    """``get_page``, lock, ``split_huge_page_to_list(head, NULL)``, unlock, ``put_page`` for each THP
    (block numbers), each split whole on its own prange iteration; raises CorruptState on the
    kernel's BUG() path. ``race``: racing pins (:class:`Race`); a pin that stays is recorded as a
    pin of ``mm``. ``debugfs``: as debugfs ``split_huge_pages`` does it (6.18 passes over a folio
    ``can_split_folio(folio, 0)`` refuses); ``shrinker``: as the variant's ``deferred_split_scan()``
    does it (a THP it leaves alone has reason ``SPLIT_NOT_TRIED``)."""
    seconds = {}
    t0 = time.perf_counter()
    ptr, rows, lo, hi, write = rmap_arrays(state, thps)
    known = rows[:, WALK_ROW0][rows[:, WALK_ROW0] >= 0]  # a huge PMD maps a THP only aligned
    state.withdraw_tables(known[(state.pmd[known] & _PAGE_PSE) != 0])  # the freeze splits them
    seconds["rmap"] = time.perf_counter() - t0
    n = len(thps)
    reason = np.zeros(n, np.int64)
    ret = np.zeros(n, np.int64)
    race_pin, race_unpin = race.arrays(n) if race else (np.zeros(n, np.int64), np.zeros(n, np.int64))
    bugs = np.zeros((n, 4), np.int64)
    costs = np.zeros((n, len(COSTS)), np.int64)
    events = np.zeros((n, N_EVENTS), np.int64)
    t0 = time.perf_counter()
    if shrinker:
        state.k.deferred_split_scan(thps, ptr, rows, lo, hi, write, state.blocks.a, state.pmds.a,
                                    state.tables.a, ret, reason, costs, events, bugs)
    else:
        state.k.split_huge_pages(thps, ptr, rows, lo, hi, write, state.blocks.a, state.pmds.a,
                                 state.tables.a, ret, reason, costs, events, bugs, race_pin,
                                 race_unpin, debugfs)
    seconds["split"] = time.perf_counter() - t0
    _raise_bug(thps, reason, bugs[:, 1:], state, costs, events)
    _reduce(state, costs, events)
    _record_held_pins(state, mm, thps, reason, race_pin, race_unpin)
    return SplitResult(thps * N, ret, reason, seconds, costs, events)


def _record_held_pins(state, mm, thps, reason, race_pin, race_unpin):
    """A racing pin that never left is held like a ``pin`` of the THP's first page in ``mm``."""
    held = (race_pin != RACE_NONE) & (race_unpin == RACE_NONE) \
        & (reason != SPLIT_FAIL_PRECHECK) & (reason != SPLIT_FAIL_ANON_VMA)
    for b in thps[held].tolist():
        vaddr = int(state.blocks.a["index"][b]) << PAGE_SHIFT
        hold(state, mm, vaddr, PAGE_SIZE, np.array([b * N], np.int64))


def _reduce(state, costs, events):
    state.cost_counters += costs.sum(axis=0)
    state.events += events.sum(axis=0)


def _raise_bug(thps, reason, bugs, state, costs, events):
    hit = np.flatnonzero(reason == SPLIT_BUG)
    if not len(hit):
        return
    _reduce(state, costs, events)
    k = int(hit[0])
    head = int(thps[k]) * N
    kind, a, b = (int(x) for x in bugs[k])
    if kind == BUG_RECHECK_MAPCOUNT:
        msg = (f"pfn 0x{head:x}: split_huge_page_to_list() recheck after freeze_page() found "
               f"total_mapcount={a} with page_count={b}: a mapping the freeze did not account for "
               f"(the kernel BUG()s here)")
    elif kind == BUG_COMPOUND_MAPCOUNT:
        msg = (f"pfn 0x{head:x}: compound_mapcount={a} after freeze_page(), expected 0 "
               f"(VM_BUG_ON_PAGE in split_huge_page_to_list)")
    elif kind == BUG_TAIL_COUNT:
        msg = f"pfn 0x{head + a:x}: tail _count={b} in __split_huge_page_tail(), expected 0"
    else:
        msg = f"pfn 0x{head:x}: BUG kind {kind}"
    raise CorruptState(msg, pfn=head, rule="split_huge_page_to_list")


def split_huge_pmd(state, row):
    """``split_huge_pmd()`` (not freeze) on the huge PMD entry ``row``."""
    state.withdraw_tables([row])
    state.k.split_huge_pmd(state.pmds.a, state.tables.a, row, state.blocks.a, state.cost_counters,
                           state.events)


def split_huge_pmd_address(state, mm, address: int):
    """Mirror of ``split_huge_pmd_address()``: split a huge PMD that straddles ``address``."""
    if address % HPAGE_PMD_SIZE == 0:
        return
    row = mm.pmd_row(address & ~(HPAGE_PMD_SIZE - 1))
    if row is not None and state.pmd[row] & _PAGE_PSE:
        split_huge_pmd(state, row)


def split_pmd(state, mm, addr):
    """The ``split_pmd`` op: ``split_huge_pmd()`` on the PMD mapping ``addr``; nothing if it is not a
    huge PMD."""
    m = live_mm(state, mm)
    check_range(addr, PAGE_SIZE)
    if not vmas_in(m, addr, addr + 1):
        raise BadInput(f"0x{addr:x} is not mapped in process {mm!r}", field="addr")
    row = m.pmd_row(addr & ~(HPAGE_PMD_SIZE - 1))
    if row is not None and state.pmd[row] & _PAGE_PSE:
        split_huge_pmd(state, row)


def split(state, mm, addr, length, race: Race | None = None) -> SplitResult:
    """The ``split`` op, debugfs ``split_huge_pages`` on ``[addr, addr + len)`` of a process: each THP
    mapped there once, by lowest address, through ``split_huge_page_to_list(head, NULL)``.
    ``race``: GUP pins that race the split (:class:`Race`)."""
    m = live_mm(state, mm)
    end = check_range(addr, length)
    if race is not None:
        race.check()
    if not vmas_in(m, addr, end):
        raise BadInput(f"0x{addr:x}-0x{end:x} overlaps no mapping of process {mm!r}", field="addr")
    if not state.k.DEBUGFS_SPLIT_PER_ADDRESS:
        return split_thps(state, thps_mapped(state, m, addr, end), race=race, mm=mm, debugfs=True)
    # 6.18 split_huge_pages_pid(): address by address, "if (!vma) break;" at the first hole
    end = mapped_end(m, addr, end)
    res = split_thps(state, thps_mapped(state, m, addr, end), race=race, mm=mm, debugfs=True)
    if race is not None:
        _split_again(state, m, addr, end, res)
    res.walked_to = end
    return res


def _split_again(state, m, start, end, res):
    """6.18 debugfs meets a folio whose split failed again at its next address: a racing pin that
    left after the split no longer stops ``can_split_folio()`` there, and the split is done then
    (what the op reports stays the first try's)."""
    a = state.blocks.a
    blocks = res.heads // N
    failed = blocks[(res.reason == SPLIT_FAIL_RECHECK) & ((a["flags"][blocks, 0] & (1 << PG_head)) != 0)]
    again = [b for b in failed.tolist() if _mapped_after_first(state, m, start, end, b)]
    if again:
        split_thps(state, np.array(again, np.int64), debugfs=True)


def _mapped_after_first(state, m, start, end, b):
    """Whether a page of the THP in block ``b`` is mapped in ``[start, end)`` of ``m`` after the
    first address there that maps it."""
    seen = 0
    for haddr in range(start & ~(HPAGE_PMD_SIZE - 1), end, HPAGE_PMD_SIZE):
        row = m.pmd_row(haddr)
        if row is None:
            continue
        entry = int(state.pmd[row])
        lo = max(start, haddr)
        hi = min(end, haddr + HPAGE_PMD_SIZE)
        if entry & _PAGE_PSE:
            if (entry & PTE_PFN_MASK) >> PAGE_SHIFT == b * N:
                seen += (hi - lo) >> PAGE_SHIFT
        elif entry & _PAGE_PRESENT:
            pte = state.ptes[int(state.pte_table[row])][(lo - haddr) >> PAGE_SHIFT:
                                                        (hi - haddr) >> PAGE_SHIFT]
            present = (pte & np.uint64(_PAGE_PRESENT)) != 0
            pfn = (pte & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT)
            seen += int((present & (pfn // np.uint64(N) == b)).sum())
        if seen > 1:
            return True
    return False


def shrink(state) -> SplitResult:
    """The ``shrink`` op: memory pressure runs the deferred-split shrinker over its whole queue
    (``echo 2 > /proc/sys/vm/drop_caches``), the variant's ``deferred_split_scan()``: one pass, in
    queue order (every split is its THP's own, so the order changes nothing but speed)."""
    queued = np.flatnonzero(state.blocks.a["deferred"]).astype(np.int64)
    what = np.zeros(len(queued), np.int64)
    state.k.deferred_split_filter(state.blocks.a, queued, what)  # the others leave the queue
    res = split_thps(state, queued[what != 0], shrinker=True)
    res.queued = len(queued)
    return res
