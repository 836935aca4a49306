"""A catalogue of malformed scenario files: each must be refused by ``load_scenario`` with a BadInput
that names the file, the op's index and header line, the field, what was expected and what was found.
No engine needed: everything here is checked before a MemoryState exists."""

import pytest

from vmstate.errors import BadInput
from vmstate.io.scenario import TASK_SIZE, load_scenario

HEAD = '[scenario]\nname = "t"\nseed = 1\n'  # lines 1-3


def ops(*bodies: str) -> str:
    """HEAD, then one ``[[op]]`` per body: op k's header is on line 4 + sum of earlier bodies' lines + k."""
    return HEAD + "".join("[[op]]\n" + body.strip("\n") + "\n" for body in bodies)


MMAP_A = 'op = "mmap"\nmm = "a"\naddr = 0x200000\nlen = "4M"'  # 4 lines: op 2 header is line 9


def load_bad(tmp_path, text, name="s.toml") -> BadInput:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(BadInput) as info:
        load_scenario(path)
    return info.value


def check(tmp_path, text, message, field=None):
    """The message reads exactly ``<path>: <message>`` and the exception carries ``field``."""
    err = load_bad(tmp_path, text)
    assert str(err) == f"{tmp_path / 's.toml'}: {message}"
    assert err.field == field


# --- the file itself ------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(BadInput, match=r"nope\.toml: cannot read the scenario: No such file"):
        load_scenario(tmp_path / "nope.toml")


def test_directory_is_not_a_scenario(tmp_path):
    with pytest.raises(BadInput, match="cannot read the scenario: Is a directory"):
        load_scenario(tmp_path)


def test_not_utf8(tmp_path):
    check(tmp_path, HEAD.encode() + b'# caf\xe9\n',
          "line 4: expected UTF-8 text (TOML), got byte 0xe9 at offset 36")


def test_over_16_mib(tmp_path):
    text = HEAD + ("#" * 1023 + "\n") * (17 * 1024)
    check(tmp_path, text, "expected a scenario of at most 16 MiB, got 17.0 MiB (use [population] to "
          "generate a large state)")


def test_byte_order_mark_is_tolerated(tmp_path):
    path = tmp_path / "s.toml"
    path.write_bytes(b"\xef\xbb\xbf" + HEAD.encode())
    assert load_scenario(path).name == "t"


@pytest.mark.parametrize("text, where, what", [
    (HEAD + "[[op]]\nop = \n", "line 5, column 6", "Invalid value"),
    (HEAD + "[[op]]\nop = \"mmap\"\nop = \"fork\"\n", "line 6, column 12", "Cannot overwrite a value"),
    (HEAD + "[[op]]\nop = \"mmap\"\n[op]\n", "line 6, column 4", "Cannot declare ('op',) twice"),
    ('[scenario]\nname = "t', "line 2, end of file", "Unterminated string"),
    (HEAD + "x = ", "line 4, end of file", "Invalid value"),
])
def test_malformed_toml_reports_line_and_column(tmp_path, text, where, what):
    check(tmp_path, text, f"{where}: malformed TOML: {what}")


# --- top level and [scenario] ----------------------------------------------------------------


def test_unknown_top_level_key(tmp_path):
    check(tmp_path, HEAD + "[senario]\n",
          "unknown top-level table or key 'senario' (expected scenario, op, population)")


def test_missing_scenario_table(tmp_path):
    check(tmp_path, "[[op]]\n" + MMAP_A,
          'missing table [scenario] (expected at least name = "...")')


@pytest.mark.parametrize("body, message, field", [
    ('seed = 1', "field 'name': missing", "name"),
    ('name = ""', "field 'name': expected a non-empty string, got ''", "name"),
    ('name = 3', "field 'name': expected a non-empty string, got 3", "name"),
    ('name = "t"\nseed = true', "field 'seed': expected an integer in [0, 2**64), got boolean true",
     "seed"),
    ('name = "t"\nseed = -1', "field 'seed': expected an integer in [0, 2**64), got -1", "seed"),
    ('name = "t"\nseed = "7"', "field 'seed': expected an integer in [0, 2**64), got '7'", "seed"),
    ('name = "t"\nsede = 7', "field 'sede': unknown key (expected name, seed, variant)", "sede"),
])
def test_scenario_table(tmp_path, body, message, field):
    check(tmp_path, "# comment\n[scenario]\n" + body + "\n", f"[scenario] (line 2): {message}", field)


def test_scenario_must_be_a_table(tmp_path):
    check(tmp_path, 'scenario = "t"\n', "field 'scenario': expected a table [scenario], got 't'",
          "scenario")


def test_op_must_be_an_array_of_tables(tmp_path):
    check(tmp_path, 'op = "mmap"\n' + HEAD, "field 'op': expected an array of tables [[op]], got 'mmap'",
          "op")


def test_population_must_be_a_table(tmp_path):
    check(tmp_path, 'population = 3\n' + HEAD,
          "field 'population': expected a table [population], got 3", "population")


# --- op names and field sets -----------------------------------------------------------------


@pytest.mark.parametrize("body, message, field", [
    ('mm = "a"', "field 'op': missing (expected one of mmap, fork, exit, munmap, madvise_dontneed, "
     "mprotect, pin, unpin, split_pmd, split, snapshot, madvise_cold, madvise_pageout, shrink, write, "
     "mremap)", "op"),
    ('op = "mmapp"', "field 'op': unknown op 'mmapp' (expected one of mmap, fork, exit, munmap, "
     "madvise_dontneed, mprotect, pin, unpin, split_pmd, split, snapshot, madvise_cold, madvise_pageout, "
     "shrink, write, mremap; did you mean 'mmap'?)", "op"),
    ('op = "madvise"', "field 'op': unknown op 'madvise' (expected one of mmap, fork, exit, munmap, "
     "madvise_dontneed, mprotect, pin, unpin, split_pmd, split, snapshot, madvise_cold, madvise_pageout, "
     "shrink, write, mremap; did you mean 'madvise_cold'?)", "op"),
    ('op = 1', "field 'op': expected a string, got 1", "op"),
    ('op = "munmap"\nmm = "a"\naddr = 0x200000\nlength = 4096',
     "field 'length': unknown field for op 'munmap' (expected mm, addr, len)", "length"),
    ('op = "munmap"\nmm = "a"\naddr = 0x200000',
     "field 'len': missing (op 'munmap' needs mm, addr, len)", "len"),
    ('op = "split_pmd"\nmm = "a"\naddr = 0x200000\nlen = 4096',
     "field 'len': unknown field for op 'split_pmd' (expected mm, addr)", "len"),
    ('op = "mprotect"\nmm = "a"\naddr = 0x200000\nlen = 4096',
     "field 'prot': missing (op 'mprotect' needs mm, addr, len, prot)", "prot"),
    ('op = "exit"\nmm = "a"\nthp = false',
     "field 'thp': unknown field for op 'exit' (expected mm)", "thp"),
    ('op = "snapshot"', "field 'label': missing (op 'snapshot' needs label)", "label"),
])
def test_op_fields(tmp_path, body, message, field):
    check(tmp_path, ops(MMAP_A, body), f"op 2 (line 9): {message}", field)


# --- field values ----------------------------------------------------------------------------


def munmap(addr="0x200000", length="4096"):
    return f'op = "munmap"\nmm = "a"\naddr = {addr}\nlen = {length}'


@pytest.mark.parametrize("addr, shown", [
    ('"0x200000"', "'0x200000'"),
    ("true", "boolean true"),
    ("2097152.0", "float 2097152.0"),
    ("[1]", "array [1]"),
])
def test_addr_type(tmp_path, addr, shown):
    check(tmp_path, ops(MMAP_A, munmap(addr=addr)),
          "op 2 (line 9): field 'addr': expected an integer address (TOML integers may be hex: "
          f"0x7f0000000000), got {shown}", "addr")


@pytest.mark.parametrize("addr, shown", [
    ("0x200800", "0x200800"), ("0", "0x0"), ("-4096", "-4096"), ("0x800000000000", "0x800000000000"),
])
def test_addr_value(tmp_path, addr, shown):
    check(tmp_path, ops(MMAP_A, munmap(addr=addr)),
          "op 2 (line 9): field 'addr': expected a 4096-aligned user address in "
          f"(0, 0x800000000000) (the kernel answers EINVAL), got {shown}", "addr")


@pytest.mark.parametrize("length, shown", [
    ("5000", "5000"), ("0", "0"), ("-4096", "-4096"), ('"5K"', "'5K' (5120)"), ('"0"', "'0' (0)"),
])
def test_len_value(tmp_path, length, shown):
    check(tmp_path, ops(MMAP_A, munmap(length=length)),
          f"op 2 (line 9): field 'len': expected a positive multiple of 4096 (4K), got {shown}", "len")


@pytest.mark.parametrize("length, shown", [
    ('"64MB"', "'64MB'"), ('"64 M"', "'64 M'"), ('""', "''"), ('"1X"', "'1X'"), ('"08"', "'08'"),
    ('"0x"', "'0x'"), ('"-4K"', "'-4K'"), ('"1KK"', "'1KK'"), ('"0b1000000000000"', "'0b1000000000000'"),
    ("true", "boolean true"), ("4096.0", "float 4096.0"),
])
def test_len_type(tmp_path, length, shown):
    check(tmp_path, ops(MMAP_A, munmap(length=length)),
          "op 2 (line 9): field 'len': expected a size: bytes as an integer, or a string like "
          f'"4K", "64M", "1G" (memparse: K, M, G, T, P, E), got {shown}', "len")


@pytest.mark.parametrize("length, size", [
    ('"4096"', 4096), ('"8K"', 8 << 10), ('"8k"', 8 << 10), ('"2M"', 2 << 20), ('"2m"', 2 << 20),
    ('"1G"', 1 << 30), ('"1g"', 1 << 30), ('"1T"', 1 << 40), ('"1t"', 1 << 40),
    ('"64T"', 64 << 40), ('"127t"', 127 << 40),
    ('"0x1000"', 0x1000), ('"0X2000"', 0x2000), ('"0x2M"', 2 << 20), ('"0x1e000"', 0x1E000),
    ('"010000"', 0o10000), ('"04K"', 4 << 10),  # memparse's base 0: a leading 0 is octal
])
def test_len_memparse_suffixes(tmp_path, length, size):
    """lib/cmdline.c memparse(): an integer (0x hex, 0 octal, decimal), then K, M, G, T, P or E in
    either case; ``0x1e000`` is hex digits only (strtoull takes the E)."""
    path = tmp_path / "s.toml"
    path.write_text(ops(MMAP_A, munmap(length=length)))
    assert load_scenario(path).ops[1].fields["len"] == size


@pytest.mark.parametrize("length, size", [
    ('"129T"', 129 << 40), ('"256t"', 256 << 40), ('"1P"', 1 << 50), ('"1p"', 1 << 50),
    ('"1E"', 1 << 60), ('"1e"', 1 << 60), ('"16E"', 16 << 60), ('"0x1000000000000"', 1 << 48),
    (str(1 << 48), 1 << 48),
])
def test_len_beyond_the_47_bit_address_space(tmp_path, length, size):
    shown = str(size) if not length.startswith('"') else f"{length[1:-1]!r} ({size})"
    check(tmp_path, ops(MMAP_A, munmap(length=length)),
          "op 2 (line 9): field 'len': expected a size within the 47-bit user address space "
          f"(at most 0x800000000000, 128T), got {shown}", "len")


def test_len_of_the_whole_address_space_is_a_size_but_not_a_range(tmp_path):
    check(tmp_path, ops(MMAP_A, munmap(length='"128T"')),
          "op 2 (line 9): field 'len': expected the range to end within user space "
          "(addr + len <= 0x800000000000), got 0x800000200000", "len")


def test_range_beyond_user_space(tmp_path):
    check(tmp_path, ops(MMAP_A, munmap(addr="0x7fffffe00000", length='"4M"')),
          "op 2 (line 9): field 'len': expected the range to end within user space "
          "(addr + len <= 0x800000000000), got 0x800000200000", "len")


def test_range_ending_at_user_space_top_is_fine(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(ops('op = "mmap"\nmm = "a"\naddr = 0x7fffffe00000\nlen = "2M"'))
    assert load_scenario(path).ops[0].fields["len"] == 2 << 20
    assert TASK_SIZE == 0x800000000000


@pytest.mark.parametrize("thp, shown", [("1", "1"), ('"yes"', "'yes'")])
def test_thp_is_a_boolean(tmp_path, thp, shown):
    check(tmp_path, ops(MMAP_A + f"\nthp = {thp}"),
          f"op 1 (line 4): field 'thp': expected a boolean (true or false), got {shown}", "thp")


@pytest.mark.parametrize("prot, shown", [('"rwx"', "'rwx'"), ('"w"', "'w'"), ("1", "1"),
                                         ('["r"]', "array ['r']")])
def test_prot(tmp_path, prot, shown):
    check(tmp_path, ops(MMAP_A, f'op = "mprotect"\nmm = "a"\naddr = 0x200000\nlen = 4096\nprot = {prot}'),
          f"op 2 (line 9): field 'prot': expected one of \"r\", \"rw\", got {shown}", "prot")


@pytest.mark.parametrize("mm, shown", [('""', "''"), ("1", "1"), ("true", "boolean true")])
def test_process_name_type(tmp_path, mm, shown):
    check(tmp_path, ops(f'op = "mmap"\nmm = {mm}\naddr = 0x200000\nlen = 4096'),
          f"op 1 (line 4): field 'mm': expected a process name (a non-empty string), got {shown}", "mm")


LABEL_RULE = ("expected a label usable as a directory name ([A-Za-z0-9._-]+, not '.' or '..', "
              "at most 255 characters)")


@pytest.mark.parametrize("label, shown", [
    ('""', "''"), ('"a/b"', "'a/b'"), ('".."', "'..'"), ('"."', "'.'"), ('"x y"', "'x y'"),
    ('"é"', "'é'"), ("1", "1"), ('"' + "a" * 256 + '"', repr("a" * 256)),
])
def test_snapshot_label(tmp_path, label, shown):
    check(tmp_path, ops(f"op = \"snapshot\"\nlabel = {label}"),
          f"op 1 (line 4): field 'label': {LABEL_RULE}, got {shown}", "label")


def test_snapshot_label_unique(tmp_path):
    check(tmp_path, ops('op = "snapshot"\nlabel = "x"', 'op = "snapshot"\nlabel = "x"'),
          "op 2 (line 7): field 'label': expected a label not used before, got 'x' (op 1 uses it)",
          "label")


# --- rules that follow from file order ---------------------------------------------------------


def fork(mm="a", child="b"):
    return f'op = "fork"\nmm = "{mm}"\nchild = "{child}"'


def exit_(mm="a"):
    return f'op = "exit"\nmm = "{mm}"'


@pytest.mark.parametrize("bodies, line, message, field", [
    ((fork(),), 4, "field 'mm': expected a live process, got 'a', which no earlier op created (a "
     "process is created by its first mmap or as a fork child)", "mm"),
    ((MMAP_A, fork(child="a")), 9, "field 'child': expected a new process name, got 'a', which "
     "already exists", "child"),
    ((MMAP_A, fork(), fork(child="b")), 13, "field 'child': expected a new process name, got 'b', "
     "which already exists", "child"),
    ((MMAP_A, fork(), exit_("b"), fork(child="b")), 16, "field 'child': expected a new process name, "
     "got 'b', which exited at op 3 (a name cannot be used again)", "child"),
    ((MMAP_A, exit_(), MMAP_A), 12, "field 'mm': process 'a' exited at op 2; its name cannot be used "
     "again", "mm"),
    ((MMAP_A, exit_(), munmap()), 12, "field 'mm': process 'a' exited at op 2; its name cannot be "
     "used again", "mm"),
    ((MMAP_A, exit_(), exit_()), 12, "field 'mm': process 'a' exited at op 2; its name cannot be "
     "used again", "mm"),
    ((MMAP_A, 'op = "split_pmd"\nmm = "b"\naddr = 0x200000'), 9, "field 'mm': expected a live "
     "process, got 'b', which no earlier op created (a process is created by its first mmap or as a "
     "fork child)", "mm"),
])
def test_process_names(tmp_path, bodies, line, message, field):
    n = len(bodies)
    check(tmp_path, ops(*bodies), f"op {n} (line {line}): {message}", field)


def pin(op="pin", length="4096"):
    return f'op = "{op}"\nmm = "a"\naddr = 0x200000\nlen = {length}'


@pytest.mark.parametrize("bodies, line", [
    ((MMAP_A, pin("unpin")), 9),
    ((MMAP_A, pin(), pin("unpin"), pin("unpin")), 19),
    ((MMAP_A, pin(), pin("unpin", length="8192")), 14),
])
def test_unpin_needs_a_held_pin(tmp_path, bodies, line):
    n = len(bodies)
    length = 8192 if "8192" in bodies[-1] else 4096
    check(tmp_path, ops(*bodies),
          f"op {n} (line {line}): no earlier pin of 'a' [0x200000, {0x200000 + length:#x}) is held "
          "(unpin names the same mm, addr and len as the pin it releases)")


def test_first_error_wins(tmp_path):
    err = load_bad(tmp_path, ops(MMAP_A, munmap(addr="3"), munmap(length="3")))
    assert "op 2 (line 9): field 'addr'" in str(err)


# --- what a good file gives ------------------------------------------------------------------


GOOD = """\
# The contract's example.
[scenario]
name = "fork-then-split"
seed = 7

[[op]]
op = "mmap"                    # comment after a value
mm = "parent"
addr = 0x7f0000000000
len = "64M"

[[ op ]]
op = "fork"
mm = "parent"
child = "child"

[["op"]]
op = "mprotect"
mm = "child"
addr = 0x7f0000000000
len = 0x200000
prot = "r"

[[op]]
op = "mmap"
mm = "other"
addr = 0x200000
len = "0x1000k"
thp = false

[[op]]
op = "split"
mm = "parent"
addr = 0x7f0000000000
len = "64m"

[[op]]
op = "snapshot"
label = "after-split.v1"
"""


def test_good_scenario(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    sc = load_scenario(path)
    assert (sc.name, sc.seed, sc.path, sc.population) == ("fork-then-split", 7, path, None)
    assert [(o.index, o.line, o.op) for o in sc.ops] == [
        (1, 6, "mmap"), (2, 12, "fork"), (3, 17, "mprotect"), (4, 24, "mmap"), (5, 31, "split"),
        (6, 37, "snapshot")]
    assert sc.ops[0].fields == {"mm": "parent", "addr": 0x7f0000000000, "len": 64 << 20, "thp": True,
                                 "fill": "data"}
    assert sc.ops[2].fields == {"mm": "child", "addr": 0x7f0000000000, "len": 2 << 20, "prot": "r"}
    assert sc.ops[3].fields == {"mm": "other", "addr": 0x200000, "len": 4 << 20, "thp": False, "fill": "data"}
    assert sc.ops[4].fields["len"] == 64 << 20
    assert sc.ops[5].fields == {"label": "after-split.v1"}


def test_seed_defaults_to_zero_and_ops_may_be_absent(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[scenario]\nname = "empty"\n')
    sc = load_scenario(path)
    assert (sc.seed, sc.ops) == (0, [])


def test_header_inside_multiline_string_does_not_shift_lines(tmp_path):
    text = '[scenario]\nname = """\n[[op]]\n"""\n' + "[[op]]\n" + munmap(length="5")
    check(tmp_path, text, "op 1 (line 5): field 'len': expected a positive multiple of 4096 (4K), "
          "got 5", "len")


def test_lines_are_counted_at_lf_only(tmp_path):
    text = HEAD + "# U+2028 \u2028 and NEL \x85 end no TOML line\n[[op]]\n" + munmap(length="5")
    check(tmp_path, text, "op 1 (line 5): field 'len': expected a positive multiple of 4096 (4K), "
          "got 5", "len")


def test_inline_ops_have_no_line(tmp_path):
    text = 'op = [{op = "mmap", mm = "a", addr = 0x200000, len = 12}]\n' + HEAD
    check(tmp_path, text, "op 1: field 'len': expected a positive multiple of 4096 (4K), got 12", "len")


def test_population_passes_through_and_may_name_processes(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(HEAD + "[population]\nthps = 1000\nsharing = [1, 2]\n\n"
                    + "[[op]]\n" + fork("p0", "c") + "\n")
    sc = load_scenario(path)
    assert sc.population == {"thps": 1000, "sharing": [1, 2]}
    assert sc.ops[0].fields == {"mm": "p0", "child": "c"} and sc.ops[0].line == 8


MREMAP = 'op = "mremap"\nmm = "a"\naddr = 0x200000\nlen = "2M"\nnew_addr = {new}'


def test_mremap_needs_new_addr(tmp_path):
    check(tmp_path, ops(MMAP_A, 'op = "mremap"\nmm = "a"\naddr = 0x200000\nlen = "2M"'),
          "op 2 (line 9): field 'new_addr': missing (op 'mremap' needs mm, addr, len, new_addr)",
          "new_addr")


@pytest.mark.parametrize("new, message", [
    ("0x300000", "expected a new range apart from the old one (mremap answers EINVAL for an "
                 "overlap), got 0x300000-0x500000 against 0x200000-0x400000"),
    ("0x7fffffe01000", "expected the new range to end within user space (new_addr + len <= "
                       "0x800000000000), got 0x800000001000"),
    ("0x200001", "expected a 4096-aligned user address in (0, 0x800000000000) (the kernel answers "
                 "EINVAL), got 0x200001"),
])
def test_mremap_new_addr(tmp_path, new, message):
    check(tmp_path, ops(MMAP_A, MREMAP.format(new=new)), f"op 2 (line 9): field 'new_addr': {message}",
          "new_addr")


def test_write_and_mremap_parse(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(ops(MMAP_A, MREMAP.format(new="0x7f0000000000"),
                        'op = "write"\nmm = "a"\naddr = 0x7f0000000000\nlen = "4K"'))
    mremap, write = load_scenario(path).ops[1:]
    assert mremap.fields == {"mm": "a", "addr": 0x200000, "len": 2 << 20, "new_addr": 0x7F0000000000}
    assert write.fields == {"mm": "a", "addr": 0x7F0000000000, "len": 4096}
