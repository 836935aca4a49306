"""The write and mremap ops' bad input: a clear error naming the field, and the state untouched
(``dump()`` equal before and after), in every variant."""
import pytest

from vmstate import BadInput, MemoryState
from vmstate.kernels.constants import VARIANTS

B = 0x7F0000000000
M2 = 2 << 20
P = 4096


def _state(variant):
    s = MemoryState(variant)
    s.mmap("a", B, 2 * M2)
    s.mmap("a", B + 4 * M2, M2)
    s.mprotect("a", B + M2, P, "r")
    s.fork("a", "b")
    return s


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("op, args, field, words", [
    ("write", ("a", B + M2, 2 * P), "addr", "read-only"),
    ("write", ("a", B + 2 * M2 - P, 2 * P), "addr", "not mapped"),
    ("write", ("z", B, P), "mm", "does not exist"),
    ("mremap", ("a", B, P, B + 4 * M2), "new_addr", "overlaps the mapping"),
    ("mremap", ("a", B, 3 * M2, B + 8 * M2), "addr", "not inside one mapping"),
    ("mremap", ("a", B + M2 - P, 2 * P, B + 8 * M2), "addr", "not inside one mapping"),
    ("mremap", ("a", B, 2 * P, B + P), "new_addr", "overlaps the old one"),
    ("mremap", ("a", B, P, B + 3), "new_addr", "multiple of 4096"),
    ("mremap", ("a", B, P, (1 << 47) - P + P), "new_addr", "47-bit"),
])
def test_bad_input_leaves_the_state_untouched(variant, op, args, field, words):
    s = _state(variant)
    before = s.dump()
    with pytest.raises(BadInput) as info:
        getattr(s, op)(*args)
    assert info.value.field == field and words in str(info.value)
    assert s.dump() == before
    s.validate()


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_moved_range_is_found_again(variant):
    """After mremap the pages are where the move put them, the VMA keeps vm_pgoff, and writes and
    splits through the new address work on the same frames."""
    s = _state(variant)
    pfns = [s.dump()["pmds"][("a", B)]]
    s.mremap("a", B, M2, B + 8 * M2 + 3 * P)
    d = s.dump()
    assert ("a", B) not in d["pmds"]
    vma = next(v for v in d["vmas"]["a"] if v[0] == B + 8 * M2 + 3 * P)
    assert vma[2] == B >> 12  # vm_pgoff: the pages' index, not the new address
    moved = [d["ptes"][("a", B + 8 * M2 + 3 * P + i * P)] >> 12 for i in (0, 511)]
    assert moved == [pfns[0] >> 12, (pfns[0] >> 12) + 511]
    res = s.split("a", B + 8 * M2 + 3 * P, M2)  # from the VMA's start: 6.18's walk ends at a hole
    assert (res.attempted, res.succeeded) == (1, 1)
    s.write("a", B + 8 * M2 + 3 * P, M2)
    s.validate()
