"""Engine vs the pure-Python reference model, bit for bit, on random operation programs.

A hypothesis ``RuleBasedStateMachine`` drives both with the same operations; after every step it
compares the whole state (page frames, compound mapcounts, deferred queue, PMD and PTE entries, VMAs,
vm events, cost counters) and the split result codes, and runs the engine's validators. Bad input
must be refused by both, leaving both states untouched.

How many programs: ``VMSTATE_FUZZ_EXAMPLES`` (default 500 on v5, 200 on v4.5, 250 on 6.18) and steps per program
``VMSTATE_FUZZ_STEPS`` (default 25). For an hour of fuzzing see the README.
"""
import os

from hypothesis.stateful import invariant

from programs import Programs, held, machine_settings
from reference import ReferenceState
from vmstate import BadInput, MemoryState
from vmstate.engine.compare import diff_dumps


class Differential(Programs):
    variant = "v5"

    def models(self):
        return MemoryState(self.variant), ReferenceState(self.variant)

    # -- after every step ------------------------------------------------------------------------
    @invariant()
    def same_state(self):
        a, b = self.a.dump(), self.b.dump()
        if a != b:
            raise AssertionError("engine and reference diverge:\n" + "\n".join(diff_dumps(a, b)))

    @invariant()
    def same_pins(self):
        assert held(self.a) == held(self.b), f"pins: engine {held(self.a)}, reference {held(self.b)}"

    @invariant()
    def validators_pass(self):
        self.a.validate()


class DifferentialV45(Differential):
    """The same programs on mainline 4.5's arithmetic (issue 7)."""
    variant = "v4.5"


class DifferentialV618(Differential):
    """The same programs on Linux 6.18's folio arithmetic (issue 13)."""
    variant = "6.18"


for machine, default in ((Differential, "500"), (DifferentialV45, "200"), (DifferentialV618, "250")):
    machine.TestCase.settings = machine_settings(
        int(os.environ.get("VMSTATE_FUZZ_EXAMPLES", default)),
        int(os.environ.get("VMSTATE_FUZZ_STEPS", "25")))
TestDifferential = Differential.TestCase
TestDifferentialV45 = DifferentialV45.TestCase
TestDifferentialV618 = DifferentialV618.TestCase


# ---- edge addresses: engine and reference refuse (or accept) them alike -------------------------

import pytest  # noqa: E402

from programs import BASE, MB2, PAGE, split_rows  # noqa: E402

TOP = 1 << 47   # the end of the 47-bit user address space: a range may end there, not beyond
EDGES = [       # (addr, len)
    (0, PAGE), (PAGE, PAGE), (TOP - PAGE, PAGE), (TOP - PAGE, 2 * PAGE), (TOP - 2 * PAGE, 2 * PAGE),
    (TOP, PAGE), (-PAGE, PAGE), (PAGE + 1, PAGE), (PAGE, PAGE + 1), (PAGE, 0), (PAGE, -PAGE),
    (BASE + 1, PAGE), (BASE, MB2 - 1),
]
RANGE_OPS = {
    "mmap": lambda addr, length: ("mmap", "b", addr, length, True),
    "munmap": lambda addr, length: ("munmap", "a", addr, length),
    "madvise_dontneed": lambda addr, length: ("madvise_dontneed", "a", addr, length),
    "mprotect": lambda addr, length: ("mprotect", "a", addr, length, "r"),
    "pin": lambda addr, length: ("pin", "a", addr, length),
    "unpin": lambda addr, length: ("unpin", "a", addr, length),
    "split": lambda addr, length: ("split", "a", addr, length, None),
    "split_pmd": lambda addr, length: ("split_pmd", "a", addr),
    "madvise_cold": lambda addr, length: ("madvise_cold", "a", addr, length),
    "madvise_pageout": lambda addr, length: ("madvise_pageout", "a", addr, length),
}


def _edge_models(variant):
    """Process "a" with a THP at BASE and two small pages at the top of the address space, each page
    of them pinned once (so that an unpin of any of those ranges finds a pin)."""
    models = MemoryState(variant), ReferenceState(variant)
    for m in models:
        m.mmap("a", BASE, MB2, True)
        m.mmap("a", TOP - 2 * PAGE, 2 * PAGE, True)
        for addr, length in EDGES:
            if length == PAGE and addr in (TOP - PAGE, BASE):
                m.pin("a", addr, length)
        m.pin("a", TOP - 2 * PAGE, 2 * PAGE)
    return models


@pytest.mark.parametrize("variant", ["v5", "v4.5", "6.18"])
@pytest.mark.parametrize("op", sorted(RANGE_OPS))
def test_edge_addresses_alike(op, variant):
    for addr, length in EDGES:
        engine, ref = _edge_models(variant)
        name, *args = RANGE_OPS[op](addr, length)
        outcome = []
        for model in (engine, ref):
            try:
                outcome.append(("ok", split_rows(getattr(model, name)(*args))))
            except BadInput as e:
                outcome.append(("BadInput", e.field))
        assert outcome[0] == outcome[1], (
            f"{name}{tuple(args)}: engine {outcome[0]}, reference {outcome[1]}")
        a, b = engine.dump(), ref.dump()
        assert a == b, f"{name}{tuple(args)}:\n" + "\n".join(diff_dumps(a, b))
