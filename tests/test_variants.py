"""The v5 design and mainline 4.5 side by side (issue 7): for any program, the same observable outcome.

A hypothesis ``RuleBasedStateMachine`` drives ``ReferenceState("v5")`` and ``ReferenceState("v4.5")``
with the same random operation programs (the strategies of tests/test_differential.py, races
and writes included; no mremap: after it the seed's freeze walk misses moved pages that 4.5 finds,
a designed difference shown by datasets/selftests/split_pte_mapped_thp) and after every step
compares what a process or ``/proc/kpage*`` could see:

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

from hypothesis import event
from hypothesis.stateful import invariant

from vmstate.kernels.constants import (
    _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW, _PAGE_VMS_MIGRATION, HPAGE_PMD_NR, MAPPING_NULL, PG_dirty,
    PG_double_map, PG_head, PG_tail,
)
from programs import BASE, MB2, PAGE, Programs, machine_settings
from reference import ReferenceState
from vmstate import MemoryState

N = HPAGE_PMD_NR
COMPOUND = (1 << PG_head) | (1 << PG_tail)
FLAGS_THAT_DIFFER = (1 << PG_dirty) | (1 << PG_double_map)


def _page_mapcount(d, pfn, variant):
    """page_mapcount() from a dump: v5 `page_mapcount()` or v4.5 `__page_mapcount()`."""
    flags, _count, raw, _mapping, _index = d["pages"][pfn][:5]
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
    for pfn, (flags, count, _raw, mapping, _index, *_data) in d["pages"].items():
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


class Variants(Programs):
    draws_shrink = False  # the deferred queue differs by design between v5 and v4.5
    draws_mremap = False  # after mremap the seed's split misses moved pages, 4.5 finds them
    def models(self):
        return ReferenceState("v5"), ReferenceState("v4.5")

    def after_start(self, thps):
        # the internal arithmetic does differ: v5's offset vs v4.5's bare compound_mapcount
        d5, d45 = self.a.dump(), self.b.dump()
        head = min(d5["compound_mapcount"])
        assert d5["pages"][head + 7][2] == 0 and d45["pages"][head + 7][2] == -1
        if hasattr(self.a, "atomics"):  # the reference counts atomics; the engine does not
            assert self.a.atomics["mapcount_writes"] == thps * (N + 1)
            assert self.b.atomics["mapcount_writes"] == thps

    @invariant()
    def same_observable_outcome(self):
        lost_rw = same_outcome(observable(self.a.dump(), "v5"), observable(self.b.dump(), "v4.5"))
        if lost_rw:
            event("v4.5 unfreeze left PTEs of a writable VMA read-only")


Variants.TestCase.settings = machine_settings(
    int(os.environ.get("VMSTATE_VARIANT_EXAMPLES", "150")),
    int(os.environ.get("VMSTATE_VARIANT_STEPS", "20")))
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

class EngineVariants(Variants):
    """Issue 7's cross-variant test on the engine (which test_differential.py ties to the reference)."""

    def models(self):
        return MemoryState("v5"), MemoryState("v4.5")


EngineVariants.TestCase.settings = machine_settings(
    int(os.environ.get("VMSTATE_VARIANT_EXAMPLES", "100")),
    int(os.environ.get("VMSTATE_VARIANT_STEPS", "20")))
TestEngineVariants = EngineVariants.TestCase
