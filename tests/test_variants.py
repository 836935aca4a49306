"""The v5 design and mainline 4.5 side by side (issue 7): for any program, the same observable outcome.

A hypothesis ``RuleBasedStateMachine`` drives ``ReferenceState("v5")`` and ``ReferenceState("v4.5")``
with the same random operation programs (the strategies of tests/test_differential.py, races
included) and after every step compares what a process or ``/proc/kpage*`` could see:

- split results: ``(head_pfn, ret, reason)`` per THP;
- per frame: ``page_count()`` (the head's ``_count`` for a compound page), ``page_mapcount()`` (each
  variant's own formula), PageCompound, free or not, and the page flags less ``PG_dirty`` and
  ``PG_double_map``;
- PMD and PTE entries, less the dirty bit, and less one ``_PAGE_RW`` case (see ``same_outcome``);
- VMAs, the vm events other than ``thp_deferred_split_page``, and ``pages_freed``.

What may differ, and does (asserted below): the raw counters (``_mapcount``, compound_mapcount,
PG_double_map), the deferred queue, the cost counters other than ``pages_freed``, ``atomics``.

``observable(dump, variant)`` works on ``dump()`` alone, so the same check applies to the engine once
``MemoryState(variant="v4.5")`` exists (same dump format).

Programs: ``VMSTATE_VARIANT_EXAMPLES`` (default 150) of ``VMSTATE_VARIANT_STEPS`` (default 20) steps.
"""
import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kernels.constants import (
    _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW, _PAGE_VMS_MIGRATION, HPAGE_PMD_NR, MAPPING_NULL, PG_dirty,
    PG_head, PG_tail,
)
from reference import PG_double_map, ReferenceState
from vmstate import MemoryState
from vmstate.errors import BadInput
from vmstate.split import Race

N = HPAGE_PMD_NR
BASE = 0x7F0000000000
MB2 = 2 << 20
PAGE = 4096
NAMES = ["a", "b", "c", "d", "e", "f"]

slot = st.integers(0, 5)
page_off = st.sampled_from([0, 0, 0, 0, 1, 17, 256, 511])
length_pages = st.sampled_from([1, 2, 100, 256, 511, 512, 512, 513, 1024, 1100, 1536])
races = st.one_of(st.none(), st.none(), st.builds(
    Race, pin=st.sampled_from(["after_precheck", "after_freeze"]),
    unpin=st.sampled_from(["after_freeze", "after_split", "never"]),
    fraction=st.sampled_from([0.5, 1.0]), seed=st.integers(0, 3)))

COMPOUND = (1 << PG_head) | (1 << PG_tail)
FLAGS_THAT_DIFFER = (1 << PG_dirty) | (1 << PG_double_map)


def addr_of(s, off):
    return BASE + s * MB2 + off * PAGE


def _page_mapcount(d, pfn, variant):
    """page_mapcount() from a dump: v5 `page_mapcount()` or v4.5 `__page_mapcount()`."""
    flags, _count, raw, _mapping, _index = d["pages"][pfn]
    ret = raw + 1
    if flags & COMPOUND:
        head = pfn - pfn % N  # a THP is a whole block, its head the block's first frame
        cm = d["compound_mapcount"][head] + 1
        ret += cm
        if variant == "v4.5":
            ret -= bool(d["pages"][head + 1][0] & (1 << PG_double_map))
        elif cm:
            ret -= 1
    return ret


def observable(d, variant):
    """What both variants must agree on, computed from ``dump()`` (reference or engine)."""
    pages = {}
    for pfn, (flags, count, _raw, mapping, _index) in d["pages"].items():
        compound = bool(flags & COMPOUND)
        head = pfn - pfn % N if flags & (1 << PG_tail) else pfn
        pages[pfn] = (d["pages"][head][1] if compound else count,   # page_count()
                      _page_mapcount(d, pfn, variant), compound,
                      mapping == MAPPING_NULL,                      # free
                      flags & ~FLAGS_THAT_DIFFER)
    return {
        "pages": pages,
        "pmds": {k: e & ~_PAGE_DIRTY for k, e in d["pmds"].items()},
        "ptes": {k: e & ~_PAGE_DIRTY for k, e in d["ptes"].items()},
        "vmas": d["vmas"],
        "vm_events": {k: v for k, v in d["vm_events"].items() if k != "thp_deferred_split_page"},
        "pages_freed": d["costs"]["pages_freed"],
    }


def same_outcome(o5, o45):
    """Assert equal observables. One allowance: a PTE v5 has writable may be read-only in v4.5. v4.5
    `unfreeze_page_vma()` restores every migration entry from the VMA's start to the THP's end with
    that VMA's ``maybe_mkwrite()``, so when a read-only VMA is followed by a writable one inside one
    THP (mprotect of its lower part), the upper part comes back write-protected (a spurious write
    fault later, nothing else). Returns how many PTEs used the allowance."""
    for key in ("pages", "pmds", "vmas", "vm_events", "pages_freed"):
        if o5[key] != o45[key]:
            diff = [(k, o5[key].get(k), o45[key].get(k)) for k in set(o5[key]) | set(o45[key])
                    if o5[key].get(k) != o45[key].get(k)] if isinstance(o5[key], dict) else None
            raise AssertionError(f"{key} differ: {sorted(diff or [], key=str)[:8]}"
                                 if diff else f"{key} differ: {o5[key]} vs {o45[key]}")
    assert o5["ptes"].keys() == o45["ptes"].keys(), "different PTEs mapped"
    lost_rw = 0
    for k, e5 in o5["ptes"].items():
        e45 = o45["ptes"][k]
        if e5 == e45:
            continue
        assert e5 & ~_PAGE_RW == e45 & ~_PAGE_RW and e5 & _PAGE_RW and e5 & _PAGE_PRESENT, (
            f"pte {k[0]} {k[1]:#x}: v5 {e5:#x}, v4.5 {e45:#x}")
        lost_rw += 1
    return lost_rw


def _held(model):
    """The pins a model holds, as plain lists (the engine keeps numpy arrays)."""
    return {k: [[int(x) for x in p] for p in v] for k, v in model.pins.items() if v}


class Variants(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.v5 = ReferenceState("v5")
        self.v45 = ReferenceState("v4.5")
        self.alive = []
        self.used = set()
        self.pins = []

    def both(self, op, *args):
        errors, results = [], []
        for model in (self.v5, self.v45):
            try:
                results.append(getattr(model, op)(*args))
                errors.append(None)
            except BadInput as e:
                results.append(None)
                errors.append(e)
        assert (errors[0] is None) == (errors[1] is None), f"{op}{args}: {errors}"
        return errors[0] is None, results

    def live_vma_range(self, data, name):
        vmas = self.v5.dump()["vmas"].get(name) or []
        if not vmas:
            return None
        start, end, *_ = data.draw(st.sampled_from(vmas))
        pages = (end - start) // PAGE
        lo = data.draw(st.integers(0, pages - 1))
        n = data.draw(st.integers(1, pages - lo))
        return start + lo * PAGE, n * PAGE

    @initialize(thps=st.integers(1, 3), off=st.sampled_from([0, 0, 1]))
    def start(self, thps, off):
        ok, _ = self.both("mmap", "a", BASE + off * MB2, thps * MB2, True)
        assert ok
        self.used.add("a")
        self.alive.append("a")
        # the internal arithmetic does differ: v5's offset vs v4.5's bare compound_mapcount
        d5, d45 = self.v5.dump(), self.v45.dump()
        head = min(d5["compound_mapcount"])
        assert d5["pages"][head + 7][2] == 0 and d45["pages"][head + 7][2] == -1
        if hasattr(self.v5, "atomics"):  # the reference counts atomics; the engine does not
            assert self.v5.atomics["mapcount_writes"] == thps * (N + 1)
            assert self.v45.atomics["mapcount_writes"] == thps

    @rule(data=st.data(), s=slot, off=page_off, n=length_pages, thp=st.booleans())
    def mmap(self, data, s, off, n, thp):
        fresh = [x for x in NAMES if x not in self.used]
        pool = (st.sampled_from(self.alive + fresh[:1]) if self.alive or fresh
                else st.sampled_from(NAMES))
        name = data.draw(st.one_of(pool, pool, st.sampled_from(NAMES)))
        ok, _ = self.both("mmap", name, addr_of(s, off), n * PAGE, thp)
        if ok and name not in self.used:
            self.used.add(name)
            self.alive.append(name)

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), child=st.sampled_from(NAMES))
    def fork(self, data, child):
        ok, _ = self.both("fork", data.draw(st.sampled_from(self.alive)), child)
        if ok:
            self.used.add(child)
            self.alive.append(child)

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def exit(self, data):
        name = data.draw(st.sampled_from(self.alive))
        self.both("exit", name)
        self.alive.remove(name)
        self.pins = [p for p in self.pins if p[0] != name]

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), s=slot, off=page_off, n=length_pages)
    def munmap(self, data, s, off, n):
        self.both("munmap", data.draw(st.sampled_from(self.alive)), addr_of(s, off), n * PAGE)

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def madvise_dontneed(self, data):
        name = data.draw(st.sampled_from(self.alive))
        self.both("madvise_dontneed", name, *(self.live_vma_range(data, name) or (BASE, PAGE)))

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), prot=st.sampled_from(["r", "rw"]))
    def mprotect(self, data, prot):
        name = data.draw(st.sampled_from(self.alive))
        self.both("mprotect", name, *(self.live_vma_range(data, name) or (BASE, PAGE)), prot)

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def pin(self, data):
        name = data.draw(st.sampled_from(self.alive))
        rng = self.live_vma_range(data, name) or (BASE, PAGE)
        ok, _ = self.both("pin", name, *rng)
        if ok:
            self.pins.append((name, *rng))

    @precondition(lambda self: self.pins)
    @rule(data=st.data())
    def unpin(self, data):
        p = data.draw(st.sampled_from(self.pins))
        ok, _ = self.both("unpin", *p)
        assert ok
        self.pins.remove(p)

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), s=slot, off=page_off)
    def split_pmd(self, data, s, off):
        self.both("split_pmd", data.draw(st.sampled_from(self.alive)), addr_of(s, off))

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), s=slot, off=page_off, n=length_pages, whole=st.booleans(), race=races)
    def split(self, data, s, off, n, whole, race):
        name = data.draw(st.sampled_from(self.alive))
        rng = (BASE, 6 * MB2) if whole else (
            self.live_vma_range(data, name) if data.draw(st.booleans()) else None)
        before = {k for k, v in self.v5.pins.items() if v}
        ok, (r5, r45) = self.both("split", name, *(rng or (addr_of(s, off), n * PAGE)), race)
        self.pins += [k for k, v in self.v5.pins.items() if v and k not in before]
        assert r5 == r45
        assert _held(self.v5) == _held(self.v45)
        for _head, _ret, reason in r5 or []:
            event(f"split outcome {reason}")

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def split_all(self, data):
        self.split(data, 0, 0, 1, True, None)

    @invariant()
    def same_observable_outcome(self):
        lost_rw = same_outcome(observable(self.v5.dump(), "v5"), observable(self.v45.dump(), "v4.5"))
        if lost_rw:
            event("v4.5 unfreeze left PTEs of a writable VMA read-only")


Variants.TestCase.settings = settings(
    max_examples=int(os.environ.get("VMSTATE_VARIANT_EXAMPLES", "150")),
    stateful_step_count=int(os.environ.get("VMSTATE_VARIANT_STEPS", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)
TestVariants = Variants.TestCase


# ---- the same check on fixed programs, and where the raw arithmetic differs ----------------------

def run_both(program):
    states = ReferenceState("v5"), ReferenceState("v4.5")
    results = [[getattr(s, op)(*args) for op, *args in program] for s in states]
    assert results[0] == results[1]
    return states


def test_observable_equal_raw_counters_differ_fork_and_split():
    v5, v45 = run_both([("mmap", "a", BASE, MB2), ("fork", "a", "b"), ("split_pmd", "a", BASE),
                        ("split", "b", BASE, MB2)])
    d5, d45 = v5.dump(), v45.dump()
    assert same_outcome(observable(d5, "v5"), observable(d45, "v4.5")) == 0
    assert d5["ptes"] != d45["ptes"]                      # dirty bits: v4.5 restores PG_dirty
    assert d5["deferred"] == d45["deferred"] == []
    assert d45["vm_events"]["thp_deferred_split_page"] == 1   # v4.5's freeze queued it
    assert d5["vm_events"]["thp_deferred_split_page"] == 0
    assert v5.atomics != v45.atomics


def test_mprotect_lower_half_then_split_loses_rw_in_v45():
    v5, v45 = run_both([("mmap", "a", BASE, MB2), ("mprotect", "a", BASE, MB2 // 2, "r"),
                        ("split", "a", BASE, MB2)])
    assert same_outcome(observable(v5.dump(), "v5"), observable(v45.dump(), "v4.5")) == N // 2


def test_observable_catches_a_difference():
    v5, v45 = run_both([("mmap", "a", BASE, MB2), ("pin", "a", BASE, PAGE)])
    v45.pages[0x200]._count += 1
    try:
        same_outcome(observable(v5.dump(), "v5"), observable(v45.dump(), "v4.5"))
    except AssertionError:
        return
    raise AssertionError("a refcount difference went unnoticed")


def test_migration_entries_never_outlive_a_split():
    v5, v45 = run_both([("mmap", "a", BASE, 2 * MB2), ("fork", "a", "b"),
                        ("munmap", "b", BASE + PAGE, PAGE), ("split", "a", BASE, 2 * MB2)])
    for s in (v5, v45):
        assert not any(e & _PAGE_VMS_MIGRATION for e in s.dump()["ptes"].values())


# ---- the same random programs on the engine: MemoryState("v5") against MemoryState("v4.5") ------

def _rows(res):
    """A split's results as the reference's (head, ret, reason) list."""
    if res is None or isinstance(res, list):
        return res
    return list(zip(res.heads.tolist(), res.ret.tolist(), res.reason.tolist()))


class EngineVariants(Variants):
    """Issue 7's cross-variant test on the engine (which test_differential.py ties to the reference)."""

    def __init__(self):
        super().__init__()
        self.v5 = MemoryState("v5")
        self.v45 = MemoryState("v4.5")

    def both(self, op, *args):
        ok, results = super().both(op, *args)
        return ok, [_rows(r) for r in results]

    @invariant()
    def same_pins(self):
        assert _held(self.v5) == _held(self.v45)


EngineVariants.TestCase.settings = settings(
    max_examples=int(os.environ.get("VMSTATE_VARIANT_EXAMPLES", "100")),
    stateful_step_count=int(os.environ.get("VMSTATE_VARIANT_STEPS", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)
TestEngineVariants = EngineVariants.TestCase
