"""``[population]`` generates exactly the state its operation program builds, and it validates."""
import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from vmstate import BadInput, MemoryState, from_population
from vmstate.engine.compare import diff_dumps
from vmstate.engine.population import parse_population, population_program


def build_by_ops(table, seed, variant="v5"):
    s = MemoryState(variant)
    for op, *args in population_program(parse_population(table), seed):
        getattr(s, op)(*args)
    return s


populations = st.fixed_dictionaries({
    "thps": st.integers(1, 12),
    "shared": st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    "mappers": st.integers(2, 4),
    "pte_mapped": st.sampled_from([0.0, 0.2, 0.5, 1.0]),
    "partially_unmapped": st.sampled_from([0.0, 0.3, 1.0]),
    "unmapped_subpages": st.sampled_from([1, 64, 300, 511]),
    "pinned": st.sampled_from([0.0, 0.3, 1.0]),
    "pins": st.integers(1, 3),
})


@settings(max_examples=60, deadline=None)
@given(table=populations, seed=st.integers(0, 2**32), variant=st.sampled_from(["v5", "v4.5", "6.18"]))
def test_population_equals_its_program(table, seed, variant):
    generated = from_population(table, seed=seed, variant=variant)
    generated.validate()
    built = build_by_ops(table, seed, variant)
    a, b = generated.dump(), built.dump()
    assert a == b, "\n".join(diff_dumps(a, b))
    assert generated.held_pins() == built.held_pins()


def test_population_then_split_matches_program():
    table = {"thps": 20, "shared": 0.2, "pte_mapped": 0.1, "partially_unmapped": 0.05, "pinned": 0.05}
    generated, built = from_population(table, seed=3), build_by_ops(table, seed=3)
    ra = generated.split("parent", 0x7F0000000000, 20 << 21)
    rb = built.split("parent", 0x7F0000000000, 20 << 21)
    assert ra.reason.tolist() == rb.reason.tolist() and ra.failed == 1
    assert generated.dump() == built.dump()


@pytest.mark.parametrize("table, field", [
    ({}, "thps"), ({"thps": 0}, "thps"), ({"thps": 4, "shared": 1.5}, "shared"),
    ({"thps": 4, "pins": True}, "pins"), ({"thps": 4, "colour": 1}, "colour"),
    ({"thps": 4, "addr": 0x1000}, "addr"), ({"thps": 4, "shared": 0.5, "mappers": 1}, "mappers"),
    ({"thps": 1 << 26}, "thps"),  # 64M THPs: ~400 GiB of records, refused before allocating
])
def test_bad_population_names_the_field(table, field):
    with pytest.raises(BadInput) as e:
        from_population(table)
    assert e.value.field == field
