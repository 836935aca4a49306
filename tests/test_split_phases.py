"""The three split drivers agree: the serial one that reads like the C (``split_huge_pages_pid``),
the fused prange one the ``split`` op uses, and the timed phase-by-phase one of the benchmarks."""
import hypothesis.strategies as st
import numpy as np
from hypothesis import given, settings

from vmstate.kernels.constants import COSTS, VM_EVENTS
from vmstate.kernels.split import split_huge_pages_pid
from vmstate import MemoryState, from_population
from vmstate.engine.huge_memory import rmap_arrays, split_thps, thps_mapped


def serial(state, thps):
    ptr, rows, lo, hi, write = rmap_arrays(state, thps)
    ret, reason = np.zeros(len(thps), np.int64), np.zeros(len(thps), np.int64)
    costs, events = np.zeros(len(COSTS), np.int64), np.zeros(len(VM_EVENTS), np.int64)
    none = np.zeros(len(thps), np.int64)
    split_huge_pages_pid(thps, ptr, rows, lo, hi, write, state.blocks.a, state.pmds.a,
                         state.tables.a, ret, reason, costs, events, np.zeros(4, np.int64), none, none,
                         state.variant)
    state.cost_counters += costs
    state.events += events
    return reason


tables = st.fixed_dictionaries({
    "thps": st.integers(1, 40),
    "shared": st.sampled_from([0.0, 0.3, 1.0]),
    "mappers": st.integers(2, 3),
    "pte_mapped": st.sampled_from([0.0, 0.3, 1.0]),
    "partially_unmapped": st.sampled_from([0.0, 0.3]),
    "pinned": st.sampled_from([0.0, 0.2]),
})


@settings(max_examples=40, deadline=None)
@given(table=tables, seed=st.integers(0, 1000))
def test_drivers_agree(table, seed):
    states = [from_population(table, seed=seed) for _ in range(3)]
    end = 0x7F0000000000 + (table["thps"] << 21)
    thps = [thps_mapped(s, s.mms["parent"], 0x7F0000000000, end) for s in states]
    r0 = serial(states[0], thps[0])
    r1 = split_thps(states[1], thps[1]).reason
    r2 = split_thps(states[2], thps[2], phased=True).reason
    assert r0.tolist() == r1.tolist() == r2.tolist()
    d0, d1, d2 = (s.dump() for s in states)
    assert d0 == d1
    assert d0 == d2
    states[1].validate()
