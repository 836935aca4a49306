"""Engine vs the pure-Python reference model, bit for bit, on random operation programs.

A hypothesis ``RuleBasedStateMachine`` drives both with the same operations; after every step it
compares the whole state (page frames, compound mapcounts, deferred queue, PMD and PTE entries, VMAs,
vm events, cost counters) and the split result codes, and runs the engine's validators. Bad input
must be refused by both, leaving both states untouched.

How many programs: ``VMSTATE_FUZZ_EXAMPLES`` (default 500 on v5, 300 on v4.5) and steps per program
``VMSTATE_FUZZ_STEPS`` (default 25). For an hour of fuzzing see the README.
"""
import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis import event
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from reference import ReferenceState
from vmstate import BadInput, MemoryState
from vmstate.compare import diff_dumps
from vmstate.split import Race

BASE = 0x7F0000000000
MB2 = 2 << 20
PAGE = 4096
NAMES = ["a", "b", "c", "d", "e", "f", "g", "h"]

# Addresses and lengths that hit the interesting cases: aligned and unaligned 2 MiB edges, single
# pages, whole and partial THPs, ranges over holes.
slot = st.integers(0, 9)
page_off = st.sampled_from([0, 0, 0, 0, 1, 17, 256, 511])
length_pages = st.sampled_from([1, 2, 100, 256, 511, 512, 512, 513, 1024, 1024, 1100, 1536, 2048])


# Pins that race the split (issue 5): none most of the time, else a pin arriving after the precheck
# or after the freeze and leaving at a later point (or never).
races = st.one_of(st.none(), st.none(), st.builds(
    Race, pin=st.sampled_from(["after_precheck", "after_freeze"]),
    unpin=st.sampled_from(["after_freeze", "after_split", "never"]),
    fraction=st.sampled_from([0.5, 1.0]), seed=st.integers(0, 3)))


def addr_of(s, off):
    return BASE + s * MB2 + off * PAGE


class Differential(RuleBasedStateMachine):
    variant = "v5"

    def __init__(self):
        super().__init__()
        self.engine = MemoryState(self.variant)
        self.ref = ReferenceState(self.variant)
        self.alive = []   # live process names
        self.used = set()
        self.pins = []    # (mm, addr, len) of pins taken and not released
        self.steps = 0

    # -- helpers -------------------------------------------------------------------------------
    def both(self, op, *args):
        """Run ``op`` on both models; both must succeed alike or both refuse it as bad input."""
        self.steps += 1
        errors = []
        results = []
        for model in (self.engine, self.ref):
            try:
                results.append(getattr(model, op)(*args))
                errors.append(None)
            except BadInput as e:
                results.append(None)
                errors.append(e)
        assert (errors[0] is None) == (errors[1] is None), (
            f"{op}{args}: engine {errors[0]!r} vs reference {errors[1]!r}")
        event(f"{op}: {'ran' if errors[0] is None else 'bad input'}")
        return errors[0] is None, results

    def live_vma_range(self, data, name):
        vmas = self.ref.dump()["vmas"].get(name) or []
        if not vmas:
            return None
        start, end, *_ = data.draw(st.sampled_from(vmas))
        pages = (end - start) // PAGE
        lo = data.draw(st.integers(0, pages - 1))
        n = data.draw(st.integers(1, pages - lo))
        return start + lo * PAGE, n * PAGE

    # -- rules ---------------------------------------------------------------------------------
    @initialize(thps=st.integers(1, 4), off=st.sampled_from([0, 0, 1]))
    def start(self, thps, off):
        """Every program starts with a few PMD-mapped THPs in process "a", the common case."""
        ok, _ = self.both("mmap", "a", BASE + off * MB2, thps * MB2, True)
        assert ok
        self.used.add("a")
        self.alive.append("a")

    @rule(data=st.data(), s=slot, off=page_off, n=length_pages, thp=st.booleans())
    def mmap(self, data, s, off, n, thp):
        fresh = [x for x in NAMES if x not in self.used]
        # mostly a live process or a new one; sometimes any name (an exited one is bad input)
        pool = st.sampled_from(self.alive + fresh[:1]) if self.alive or fresh else st.sampled_from(NAMES)
        name = data.draw(st.one_of(pool, pool, st.sampled_from(NAMES)))
        ok, _ = self.both("mmap", name, addr_of(s, off), n * PAGE, thp)
        if ok and name not in self.used:
            self.used.add(name)
            self.alive.append(name)

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), child=st.sampled_from(NAMES))
    def fork(self, data, child):
        parent = data.draw(st.sampled_from(self.alive))
        ok, _ = self.both("fork", parent, child)
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
        rng = self.live_vma_range(data, name) or (BASE, PAGE)
        self.both("madvise_dontneed", name, *rng)

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), prot=st.sampled_from(["r", "rw"]))
    def mprotect(self, data, prot):
        name = data.draw(st.sampled_from(self.alive))
        rng = self.live_vma_range(data, name) or (BASE, PAGE)
        self.both("mprotect", name, *rng, prot)

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
        rng = (BASE, 10 * MB2) if whole else (
            self.live_vma_range(data, name) if data.draw(st.booleans()) else None)
        before = {k for k, v in self.engine.pins.items() if v}
        ok, (res, ref_res) = self.both("split", name, *(rng or (addr_of(s, off), n * PAGE)), race)
        # racing pins that never left are held like pins of the THP's first page
        self.pins += [k for k, v in self.engine.pins.items() if v and k not in before]
        if ok:
            engine = list(zip(res.heads.tolist(), res.ret.tolist(), res.reason.tolist()))
            assert engine == [tuple(r) for r in ref_res]
            for reason in sorted(set(res.reason.tolist())):
                event(f"split outcome {reason}")

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def split_all(self, data):
        """split over every slot the programs use (a second rule: splits are what we test)."""
        self.split(data, 0, 0, 1, True, None)

    # -- after every step ------------------------------------------------------------------------
    @invariant()
    def same_state(self):
        a, b = self.engine.dump(), self.ref.dump()
        if a != b:
            raise AssertionError("engine and reference diverge:\n" + "\n".join(diff_dumps(a, b)))

    @invariant()
    def validators_pass(self):
        self.engine.validate()


class DifferentialV45(Differential):
    """The same programs on mainline 4.5's arithmetic (issue 7)."""
    variant = "v4.5"


for machine, default in ((Differential, "500"), (DifferentialV45, "300")):
    machine.TestCase.settings = settings(
        max_examples=int(os.environ.get("VMSTATE_FUZZ_EXAMPLES", default)),
        stateful_step_count=int(os.environ.get("VMSTATE_FUZZ_STEPS", "25")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                               HealthCheck.data_too_large],
    )
TestDifferential = Differential.TestCase
TestDifferentialV45 = DifferentialV45.TestCase
