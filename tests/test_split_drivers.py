"""The one split driver (``split_huge_pages``: the serial mirror ``split_huge_page_to_list()`` per THP
on a prange over many) gives the same state on one thread as on several, and the same as the
reference model, on generated populations of every shape, in every variant."""
import hypothesis.strategies as st
import numba
from hypothesis import given, settings

from reference import ReferenceState
from vmstate import from_population
from vmstate.engine.compare import diff_dumps
from vmstate.engine.population import parse_population, population_program

tables = st.fixed_dictionaries({
    "thps": st.integers(1, 24),
    "shared": st.sampled_from([0.0, 0.3, 1.0]),
    "mappers": st.integers(2, 3),
    "pte_mapped": st.sampled_from([0.0, 0.3, 1.0]),
    "partially_unmapped": st.sampled_from([0.0, 0.3]),
    "pinned": st.sampled_from([0.0, 0.2]),
})
BASE = 0x7F0000000000


def split_on(threads, table, seed, variant):
    state = from_population(table, seed=seed, variant=variant)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        res = state.split("parent", BASE, table["thps"] << 21)
    finally:
        numba.set_num_threads(before)
    return state, res


@settings(max_examples=30, deadline=None)
@given(table=tables, seed=st.integers(0, 1000), variant=st.sampled_from(["v5", "v4.5", "6.18"]))
def test_one_thread_many_threads_and_the_reference_agree(table, seed, variant):
    one, r1 = split_on(1, table, seed, variant)
    many, rn = split_on(numba.config.NUMBA_NUM_THREADS, table, seed, variant)
    ref = ReferenceState(variant)
    for op, *args in population_program(parse_population(table), seed):
        getattr(ref, op)(*args)
    rows = ref.split("parent", BASE, table["thps"] << 21)
    assert r1.reason.tolist() == rn.reason.tolist() == [r[2] for r in rows]
    assert r1.ret.tolist() == [r[1] for r in rows]
    a, b, c = one.dump(), many.dump(), ref.dump()
    assert a == b, "\n".join(diff_dumps(a, b))
    assert a == c, "\n".join(diff_dumps(a, c))
    one.validate()
