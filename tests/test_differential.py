"""Engine vs the pure-Python reference model, bit for bit, on random operation programs.

A hypothesis ``RuleBasedStateMachine`` drives both with the same operations; after every step it
compares the whole state (page frames, compound mapcounts, deferred queue, PMD and PTE entries, VMAs,
vm events, cost counters) and the split result codes, and runs the engine's validators. Bad input
must be refused by both, leaving both states untouched.

How many programs: ``VMSTATE_FUZZ_EXAMPLES`` (default 500 on v5, 300 on v4.5) and steps per program
``VMSTATE_FUZZ_STEPS`` (default 25). For an hour of fuzzing see the README.
"""
import os

from hypothesis.stateful import invariant

from programs import Programs, machine_settings
from reference import ReferenceState
from vmstate import MemoryState
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
    def validators_pass(self):
        self.a.validate()


class DifferentialV45(Differential):
    """The same programs on mainline 4.5's arithmetic (issue 7)."""
    variant = "v4.5"


for machine, default in ((Differential, "500"), (DifferentialV45, "300")):
    machine.TestCase.settings = machine_settings(
        int(os.environ.get("VMSTATE_FUZZ_EXAMPLES", default)),
        int(os.environ.get("VMSTATE_FUZZ_STEPS", "25")))
TestDifferential = Differential.TestCase
TestDifferentialV45 = DifferentialV45.TestCase
