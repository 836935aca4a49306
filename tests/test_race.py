"""Pins that race the split (the seed's precheck is racy on purpose; the recheck catches the race)."""
import pytest

from vmstate.kernels.constants import (
    SPLIT_FAIL_PRECHECK, SPLIT_FAIL_RECHECK, SPLIT_OK, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT,
    _PAGE_RW,
)
from reference import ReferenceState
from vmstate import BadInput, MemoryState
from vmstate.engine.huge_memory import Race

A = 0x7F0000000000
M2 = 2 << 20


def both(setup):
    e, r = MemoryState(), ReferenceState()
    for m in (e, r):
        setup(m)
    return e, r


@pytest.mark.parametrize("pin", ["after_precheck", "after_freeze"])
def test_pin_after_precheck_fails_at_recheck_and_wastes_the_pmd_split(pin):
    e, r = both(lambda m: m.mmap("p", A, M2))
    twin = MemoryState()  # the same THP with its PMD split by split_huge_pmd instead
    twin.mmap("p", A, M2)
    twin.split_pmd("p", A)
    race = Race(pin=pin, unpin="after_split")
    res = e.split("p", A, M2, race=race)
    assert res.reason.tolist() == [SPLIT_FAIL_RECHECK] and res.ret.tolist() == [-16]
    assert [x[2] for x in r.split("p", A, M2, race=race)] == [SPLIT_FAIL_RECHECK]
    after, split = e.dump(), twin.dump()
    assert after == r.dump()
    e.validate()  # page_count == mapcount + pins: the racing reference went away again
    # the PMD the freeze split stays split: a wasted PMD split, counted
    assert not after["pmds"] and after["vm_events"]["thp_split_pmd"] == 1
    assert after["vm_events"]["thp_split_page_failed"] == 1
    # no reference or mapping lost or made up: the pages are exactly those of the twin; unfreeze
    # restored the 512 PTEs the freeze replaced, present and writable, but old and clean
    # (pte_mkold(mk_pte()) in the seed's unfreeze_page_vma), where split_huge_pmd's are young, dirty
    assert after["pages"] == split["pages"]
    assert after["ptes"].keys() == split["ptes"].keys()
    for k, v in split["ptes"].items():
        assert v & (_PAGE_ACCESSED | _PAGE_DIRTY) and after["ptes"][k] == v & ~(_PAGE_ACCESSED | _PAGE_DIRTY)
    assert {v & (_PAGE_PRESENT | _PAGE_RW) for v in after["ptes"].values()} == {_PAGE_PRESENT | _PAGE_RW}


def test_pte_mapped_unfreeze_restores_the_replaced_ptes():
    def setup(m):
        m.mmap("p", A, M2)
        m.fork("p", "c")
        m.split_pmd("p", A)
        m.split_pmd("c", A)
    e, r = both(setup)
    before = e.dump()
    race = Race(pin="after_freeze", unpin="after_split")
    assert e.split("p", A, M2, race=race).reason.tolist() == [SPLIT_FAIL_RECHECK]
    r.split("p", A, M2, race=race)
    after = e.dump()
    assert after == r.dump()
    assert after["pages"] == before["pages"]
    assert after["vm_events"]["thp_split_pmd"] == before["vm_events"]["thp_split_pmd"]  # none wasted
    assert before["ptes"].keys() == after["ptes"].keys()
    for k, v in before["ptes"].items():  # same pfn and write bit; young/dirty dropped by unfreeze
        assert after["ptes"][k] & ~(_PAGE_ACCESSED | _PAGE_DIRTY) == v & ~(_PAGE_ACCESSED | _PAGE_DIRTY)


def test_a_pin_released_before_the_recheck_does_not_stop_the_split():
    e, r = both(lambda m: m.mmap("p", A, 4 * M2))
    race = Race(pin="after_precheck", unpin="after_freeze")
    assert e.split("p", A, 4 * M2, race=race).reason.tolist() == [SPLIT_OK] * 4
    r.split("p", A, 4 * M2, race=race)
    assert e.dump() == r.dump()
    e.validate()


def test_a_pin_that_stays_is_held_and_released_by_unpin():
    e, r = both(lambda m: m.mmap("p", A, 4 * M2))
    race = Race(pin="after_precheck", unpin="never", fraction=0.5, seed=3)
    res = e.split("p", A, 4 * M2, race=race)
    r.split("p", A, 4 * M2, race=race)
    assert sorted(res.reason.tolist()) == [SPLIT_OK, SPLIT_OK, SPLIT_FAIL_RECHECK, SPLIT_FAIL_RECHECK]
    e.validate()  # the held references are accounted as pins
    held = [k for k, v in e.pins.items() if v]
    assert len(held) == 2
    for m in (e, r):
        for key in held:
            m.unpin(*key)
    assert e.dump() == r.dump()
    e.validate()
    # and now the THPs split; a pin before the split fails it at the precheck, no PMD split
    assert e.split("p", A, 4 * M2).reason.tolist() == [SPLIT_OK] * 2
    e.pin("p", A, 4096)
    assert e.split("p", A, M2).reason.tolist() == []  # the first THP is already split
    assert SPLIT_FAIL_PRECHECK == 2


@pytest.mark.parametrize("race, field", [
    (Race(pin="after_split"), "race.pin"), (Race(unpin="sometime"), "race.unpin"),
    (Race(pin="after_freeze", unpin="after_precheck"), "race.unpin"),
    (Race(fraction=1.5), "race.fraction")])
def test_bad_race_is_bad_input_and_changes_nothing(race, field):
    e = MemoryState()
    e.mmap("p", A, M2)
    before = e.dump()
    with pytest.raises(BadInput) as err:
        e.split("p", A, M2, race=race)
    assert err.value.field == field and e.dump() == before


def test_race_in_a_scenario_file_is_checked_with_its_line(tmp_path):
    from vmstate.io.scenario import load_scenario
    f = tmp_path / "s.toml"
    f.write_text('[scenario]\nname = "x"\n\n[[op]]\nop = "mmap"\nmm = "p"\naddr = 0x7f0000000000\n'
                 'len = "2M"\n\n[[op]]\nop = "split"\nmm = "p"\naddr = 0x7f0000000000\nlen = "2M"\n'
                 'race = { pin = "later" }\n')
    with pytest.raises(BadInput) as err:
        load_scenario(f)
    msg = str(err.value)
    assert "s.toml: op 2 (line 10)" in msg and "race.pin" in msg and "after_precheck" in msg
