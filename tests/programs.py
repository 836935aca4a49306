"""Random operation programs for stateful tests: one ``RuleBasedStateMachine`` that drives two models
with the same ops (mmap with either fill, fork, exit, munmap, madvise_dontneed, madvise_cold,
madvise_pageout, mprotect, pin, unpin, write, mremap, split_pmd, split with racing pins, shrink). Subclasses say which two models and what must hold after every step
(``test_differential.py``: engine vs reference; ``test_variants.py``: v5 vs v4.5)."""
import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from vmstate import BadInput, MemoryState
from vmstate.engine.huge_memory import Race

BASE = 0x7F0000000000
MB2 = 2 << 20
PAGE = 4096
NAMES = ["a", "b", "c", "d", "e", "f", "g", "h"]

# Addresses and lengths that hit the interesting cases: aligned and unaligned 2 MiB edges, single
# pages, whole and partial THPs, ranges over holes.
slot = st.integers(0, 9)
page_off = st.sampled_from([0, 0, 0, 0, 1, 17, 256, 511])
length_pages = st.sampled_from([1, 2, 100, 256, 510, 511, 512, 512, 513, 1023, 1024, 1024, 1025, 1100,
                                1536, 2048])

# Pins that race the split (issue 5): none most of the time, else a pin arriving after the precheck
# or after the freeze and leaving at a later point (or never).
races = st.one_of(st.none(), st.none(), st.builds(
    Race, pin=st.sampled_from(["after_precheck", "after_freeze"]),
    unpin=st.sampled_from(["after_freeze", "after_split", "never"]),
    fraction=st.sampled_from([0.5, 1.0]), seed=st.integers(0, 3)))


def edge_point(data, lo, hi):
    """A page number in ``[lo, hi]``: half the time uniform, else an end of the interval or a page
    at subpage 0, 1 or 511 of a 2 MiB slot inside it."""
    edges = {lo, hi}
    for slot_start in range(lo - lo % 512, hi + 1, 512):
        edges.update(p for p in (slot_start, slot_start + 1, slot_start + 511, slot_start + 512)
                     if lo <= p <= hi)
    return data.draw(st.one_of(st.integers(lo, hi), st.sampled_from(sorted(edges))))


def addr_of(s, off):
    return BASE + s * MB2 + off * PAGE


def held(model):
    """The pins a model holds, one list of pfns per pin (the engine keeps a record per range with
    its multiplicity: ``MemoryState.held_pins()``)."""
    if isinstance(model, MemoryState):
        return model.held_pins()
    return {k: [[int(x) for x in p] for p in v] for k, v in model.pins.items() if v}


def split_rows(res):
    """A split's results as ``[(head_pfn, ret, reason)]`` (the engine returns a SplitResult)."""
    if res is None or isinstance(res, list):
        return [tuple(r) for r in res or []]
    return list(zip(res.heads.tolist(), res.ret.tolist(), res.reason.tolist()))


def machine_settings(examples, steps):
    return settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


class Programs(RuleBasedStateMachine):
    """Drives ``self.a`` and ``self.b`` (set by :meth:`models`) with the same random program."""

    def models(self):
        raise NotImplementedError

    def __init__(self):
        super().__init__()
        self.a, self.b = self.models()
        self.alive = []   # live process names
        self.used = set()
        self.pins = []    # (mm, addr, len) of pins taken and not released

    def both(self, op, *args):
        """Run ``op`` on both models; both must succeed alike or both refuse it as bad input."""
        errors, results = [], []
        for model in (self.a, self.b):
            try:
                results.append(getattr(model, op)(*args))
                errors.append(None)
            except BadInput as e:
                results.append(None)
                errors.append(e)
        assert (errors[0] is None) == (errors[1] is None), (
            f"{op}{args}: {type(self.a).__name__} {errors[0]!r} vs "
            f"{type(self.b).__name__} {errors[1]!r}")
        event(f"{op}: {'ran' if errors[0] is None else 'bad input'}")
        return errors[0] is None, results

    def live_vma_range(self, data, name):
        """A range inside one live VMA of ``name``, its ends biased to 2 MiB edges and to subpages 1
        and 511 of a slot (the shapes uniform draws rarely build)."""
        vmas = self.b.dump()["vmas"].get(name) or []
        if not vmas:
            return None
        start, end, *_ = data.draw(st.sampled_from(vmas))
        first = edge_point(data, start // PAGE, end // PAGE - 1)
        last = edge_point(data, first + 1, end // PAGE)
        return first * PAGE, (last - first) * PAGE

    def after_start(self, thps):
        """Checks right after the first mmap (a hook)."""

    @initialize(thps=st.integers(1, 4), off=st.sampled_from([0, 0, 1]))
    def start(self, thps, off):
        """Every program starts with a few PMD-mapped THPs in process "a", the common case."""
        ok, _ = self.both("mmap", "a", BASE + off * MB2, thps * MB2, True)
        assert ok
        self.used.add("a")
        self.alive.append("a")
        self.after_start(thps)

    @rule(data=st.data(), s=slot, off=page_off, n=length_pages, thp=st.booleans(),
          fill=st.sampled_from(["data", "data", "zero"]))
    def mmap(self, data, s, off, n, thp, fill):
        fresh = [x for x in NAMES if x not in self.used]
        # mostly a live process or a new one; sometimes any name (an exited one is bad input)
        pool = st.sampled_from(self.alive + fresh[:1]) if self.alive or fresh else st.sampled_from(NAMES)
        name = data.draw(st.one_of(pool, pool, st.sampled_from(NAMES)))
        ok, _ = self.both("mmap", name, addr_of(s, off), n * PAGE, thp, fill)
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
    @rule(data=st.data(), pageout=st.booleans())
    def madvise_cold(self, data, pageout):
        """MADV_COLD or MADV_PAGEOUT (bad input in the variants that predate them)."""
        name = data.draw(st.sampled_from(self.alive))
        self.both("madvise_pageout" if pageout else "madvise_cold", name,
                  *(self.live_vma_range(data, name) or (BASE, PAGE)))

    #: Whether the programs draw ``shrink``: not where two variants are compared (their deferred
    #: queues differ by design, so the shrinker splits different THPs).
    draws_shrink = True

    @precondition(lambda self: self.draws_shrink)
    @rule()
    def shrink(self):
        ok, (ra, rb) = self.both("shrink")
        assert ok
        assert sorted(split_rows(ra)) == sorted(split_rows(rb))
        for reason in sorted({r[2] for r in split_rows(ra)}):
            event(f"shrink outcome {reason}")

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
    @rule(data=st.data(), s=slot, off=page_off, n=length_pages)
    def write(self, data, s, off, n):
        """A write over a range inside one VMA (ends biased to 2 MiB edges), or anywhere (over holes
        and read-only VMAs: bad input)."""
        name = data.draw(st.sampled_from(self.alive))
        rng = self.live_vma_range(data, name) if data.draw(st.integers(0, 3)) else None
        self.both("write", name, *(rng or (addr_of(s, off), n * PAGE)))

    #: Whether the programs draw ``mremap``: not where v5 and 4.5 are compared (the seed's freeze walk
    #: misses pages mremap moved off their PMD alignment, which 4.5's fixed walk finds: by design).
    draws_mremap = True

    @precondition(lambda self: self.alive and self.draws_mremap)
    @rule(data=st.data(), s=st.integers(0, 19), off=page_off)
    def mremap(self, data, s, off):
        """A range inside one VMA moved to slot ``s`` (mostly above the slots mmap uses, so free;
        below, into a hole or onto a mapping: bad input), aligned or not."""
        name = data.draw(st.sampled_from(self.alive))
        rng = self.live_vma_range(data, name) or (BASE, PAGE)
        self.both("mremap", name, *rng, addr_of(s, off))

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), s=slot, off=page_off)
    def split_pmd(self, data, s, off):
        self.both("split_pmd", data.draw(st.sampled_from(self.alive)), addr_of(s, off))

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), s=slot, off=page_off, n=length_pages, whole=st.booleans(), race=races)
    def split(self, data, s, off, n, whole, race):
        name = data.draw(st.sampled_from(self.alive))
        rng = (BASE, 20 * MB2) if whole else (
            self.live_vma_range(data, name) if data.draw(st.booleans()) else None)
        before = set(held(self.a))
        ok, (ra, rb) = self.both("split", name, *(rng or (addr_of(s, off), n * PAGE)), race)
        # racing pins that never left are held like pins of the THP's first page
        self.pins += [k for k in held(self.a) if k not in before]
        assert split_rows(ra) == split_rows(rb)
        assert held(self.a) == held(self.b)
        for reason in sorted({r[2] for r in split_rows(ra)}):
            event(f"split outcome {reason}")

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def split_all(self, data):
        """split over every slot the programs use (a second rule: splits are what we test)."""
        self.split(data, 0, 0, 1, True, None)
