"""The ``split`` operation's wrapper: find the THPs, build the rmap index arrays, run the kernels.

check → index arrays → kernel → result, as every public operation. The rmap walk of each THP (the
anon_vma interval query, ``haddr`` in each VMA, the PMD entry there) is computed with NumPy for all
THPs at once; the kernels in :mod:`vmstate.kernels.split` then run phase by phase over all of them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from numba import get_num_threads

from vmstate.kernels import split as k_split
from vmstate.kernels.constants import (
    BUG_COMPOUND_MAPCOUNT, BUG_RECHECK_MAPCOUNT, BUG_TAIL_COUNT, COSTS, HPAGE_PMD_NR, HPAGE_PMD_SIZE,
    PAGE_SHIFT, PAGE_SIZE, RACE_NONE, RACE_POINTS, SPLIT_BUG, SPLIT_FAIL_ANON_VMA,
    SPLIT_FAIL_PRECHECK, SPLIT_OK, VM_EVENTS, VM_WRITE,
)
from vmstate.kernels.pagewalk import follow_thps
from vmstate.errors import CorruptState

N = HPAGE_PMD_NR
PHASES = ("precheck", "freeze", "recheck", "tail_split", "unfreeze", "put")


@dataclass
class SplitResult:
    """Outcome of one ``split`` op: per THP in split order, the head pfn, ret (0 or -EBUSY) and
    reason (``SPLIT_*``: 0 ok, 1 anon_vma, 2 precheck, 3 recheck)."""
    heads: np.ndarray
    ret: np.ndarray
    reason: np.ndarray
    seconds: dict = field(default_factory=dict)  # per phase, plus "rmap"
    costs: np.ndarray | None = None    # [thp, COSTS] what each THP's split cost (not when phased)
    events: np.ndarray | None = None   # [thp, VM_EVENTS] the events each THP's split counted

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
        return len(self.heads)

    @property
    def succeeded(self):
        return int((self.reason == SPLIT_OK).sum())

    @property
    def failed(self):
        return self.attempted - self.succeeded


def thps_mapped(state, mm, start, end):
    """Blocks of the THPs mapped in ``[start, end)`` of ``mm``, once each, by lowest address."""
    haddrs, rows = mm.sorted_pmds(state)
    i0 = np.searchsorted(haddrs, start & ~(HPAGE_PMD_SIZE - 1))
    i1 = np.searchsorted(haddrs, end)
    h = haddrs[i0:i1]
    lo = (np.maximum(h, start) - h) >> PAGE_SHIFT
    hi = (np.minimum(h + HPAGE_PMD_SIZE, end) - h) >> PAGE_SHIFT
    seen = np.zeros(state.blocks.n, np.uint8)
    out = np.empty(state.blocks.n, np.int64)
    n = follow_thps(rows[i0:i1], lo, hi, state.pmds.a, state.tables.a, state.blocks.a, seen, out)
    return out[:n].copy()


def rmap_arrays(state, thps):
    """Per THP ``k`` the VMAs of its anon_vma query ``[index, index + 511]`` in tree order, as CSR
    arrays: ``ptr`` (``k``'s VMAs are ``ptr[k]:ptr[k + 1]``), the PMD row at the THP's ``haddr`` in
    that VMA's process (-1: none), the subpage range ``[lo, hi)`` the VMA covers, VM_WRITE."""
    a = state.blocks.a
    mapping = a["mapping"][thps]
    index = a["index"][thps].astype(np.int64)
    parts = []
    for av in np.unique(mapping):
        ks = np.flatnonzero(mapping == av)
        idx = index[ks]
        for order, v in enumerate(state.anon_vma_tree(int(av))):
            pages = (v.vm_end - v.vm_start) >> PAGE_SHIFT
            hit = (v.vm_pgoff <= idx + N - 1) & (v.vm_pgoff + pages - 1 >= idx)
            if not hit.any():
                continue
            ii = idx[hit]
            haddr = (v.vm_start + ((ii - v.vm_pgoff) << PAGE_SHIFT)) & ~(HPAGE_PMD_SIZE - 1)
            parts.append((ks[hit], np.full(len(ii), order), v.mm.lookup_pmds(state, haddr),
                          np.maximum(0, v.vm_pgoff - ii), np.minimum(N, v.vm_pgoff + pages - ii),
                          np.full(len(ii), 1 if v.vm_flags & VM_WRITE else 0)))
    if parts:
        k, order, rows, lo, hi, write = (np.concatenate(c) for c in zip(*parts))
        if len(parts) > 1:  # parts come in tree order per anon_vma: a stable sort by THP keeps it
            sort = np.argsort(k, kind="stable")
            k, rows, lo, hi, write = k[sort], rows[sort], lo[sort], hi[sort], write[sort]
    else:
        k = rows = lo = hi = write = np.zeros(0, np.int64)
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
        from vmstate.errors import BadInput
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


def split_thps(state, thps, *, phased=False, race: Race | None = None, mm=None) -> SplitResult:
    """``get_page``, lock, ``split_huge_page_to_list(head, NULL)``, unlock, ``put_page`` for each THP
    (block numbers); raises CorruptState on the kernel's BUG() path.

    By default each THP is split whole on one prange iteration (``split_huge_pages_parallel``);
    ``phased=True`` runs each phase over every THP before the next and times it (the same final
    state, ``tests/test_split_phases.py``; slower, since each phase streams all THPs again).
    ``race``: racing pins (:class:`Race`); a pin that stays is recorded as a pin of ``mm``."""
    seconds = {}
    t0 = time.perf_counter()
    ptr, rows, lo, hi, write = rmap_arrays(state, thps)
    seconds["rmap"] = time.perf_counter() - t0
    n = len(thps)
    reason = np.zeros(n, np.int64)
    ret = np.zeros(n, np.int64)
    threads = get_num_threads()
    costs = np.zeros((threads, len(COSTS)), np.int64)
    events = np.zeros((threads, len(VM_EVENTS)), np.int64)
    blocks, pmds, tables = state.blocks.a, state.pmds.a, state.tables.a
    race_pin, race_unpin = race.arrays(n) if race else (np.zeros(n, np.int64), np.zeros(n, np.int64))
    if not phased:
        bugs = np.zeros((n, 4), np.int64)
        per_costs = np.zeros((n, len(COSTS)), np.int64)
        per_events = np.zeros((n, len(VM_EVENTS)), np.int64)
        t0 = time.perf_counter()
        k_split.split_huge_pages_parallel(thps, ptr, rows, lo, hi, write, blocks, pmds, tables, ret,
                                          reason, per_costs, per_events, bugs, race_pin, race_unpin,
                                          state.variant)
        seconds["split"] = time.perf_counter() - t0
        _raise_bug(thps, reason, bugs[:, 1:], state, per_costs, per_events)
        _reduce(state, per_costs, per_events)
        _record_held_pins(state, mm, thps, reason, race_pin, race_unpin)
        return SplitResult(thps * N, ret, reason, seconds, per_costs, per_events)
    bugs = np.zeros((n, 3), np.int64)

    def timed(name, fn, *args):
        t = time.perf_counter()
        fn(*args)
        seconds[name] = time.perf_counter() - t

    v = state.variant
    timed("precheck", k_split.phase_precheck, thps, blocks, reason, ret, costs, events, race_pin,
          race_unpin, v)
    timed("freeze", k_split.phase_freeze, thps, ptr, rows, lo, hi, blocks, pmds, tables, reason, costs,
          events, race_pin, race_unpin, v)
    timed("recheck", k_split.phase_recheck, thps, blocks, reason, ret, bugs, events, v)
    _raise_bug(thps, reason, bugs, state, costs, events)
    timed("tail_split", k_split.phase_split_tails, thps, blocks, reason, bugs, costs,
          np.zeros((threads, 4), np.int64), v)
    _raise_bug(thps, reason, bugs, state, costs, events)
    timed("unfreeze", k_split.phase_unfreeze, thps, ptr, rows, lo, hi, write, blocks, pmds, tables,
          reason, costs, v)
    timed("put", k_split.phase_put, thps, blocks, reason, ret, costs, events, race_unpin)
    _reduce(state, costs, events)
    _record_held_pins(state, mm, thps, reason, race_pin, race_unpin)
    return SplitResult(thps * N, ret, reason, seconds)


def _record_held_pins(state, mm, thps, reason, race_pin, race_unpin):
    """A racing pin that never left is held like a ``pin`` of the THP's first page in ``mm``."""
    held = (race_pin != RACE_NONE) & (race_unpin == RACE_NONE) \
        & (reason != SPLIT_FAIL_PRECHECK) & (reason != SPLIT_FAIL_ANON_VMA)
    for b in thps[held].tolist():
        vaddr = int(state.blocks.a["index"][b]) << PAGE_SHIFT
        state.pins.setdefault((mm, vaddr, PAGE_SIZE), []).append(np.array([b * N], np.int64))


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
