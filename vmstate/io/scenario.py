"""Scenario files (the contract in ``SCENARIOS.md``): read the TOML program and check everything that
can be checked without running it.

``load_scenario(path)`` returns a :class:`Scenario` whose ops carry normalised fields (sizes as ints,
defaults filled in), or raises :class:`~vmstate.errors.BadInput` naming the file, the op's index and the
line of its ``[[op]]`` header, the field, what was expected and what was found::

    demo.toml: op 3 (line 12): field 'len': expected a positive multiple of 4096 (4K), got 5000

What needs the state (a range that is not mapped, an overlapping mmap) is the engine's to refuse; the
runner adds the same context to its messages.
"""

import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field as dc_field
from pathlib import Path

from vmstate.engine.checks import TASK_SIZE
from vmstate.errors import BadInput
from vmstate.kernels.constants import PAGE_SIZE, VARIANTS

MAX_SCENARIO_BYTES = 16 << 20
NAME_MAX = 255  # a snapshot label becomes a directory name

# op -> (required fields, optional fields with their defaults), in the order messages list them.
OPS: dict[str, tuple[tuple[str, ...], dict[str, object]]] = {
    "mmap": (("mm", "addr", "len"), {"thp": True, "fill": "data"}),
    "fork": (("mm", "child"), {}),
    "exit": (("mm",), {}),
    "munmap": (("mm", "addr", "len"), {}),
    "madvise_dontneed": (("mm", "addr", "len"), {}),
    "mprotect": (("mm", "addr", "len", "prot"), {}),
    "pin": (("mm", "addr", "len"), {}),
    "unpin": (("mm", "addr", "len"), {}),
    "split_pmd": (("mm", "addr"), {}),
    "split": (("mm", "addr", "len"), {"race": None}),
    "snapshot": (("label",), {}),
    "madvise_cold": (("mm", "addr", "len"), {}),
    "madvise_pageout": (("mm", "addr", "len"), {}),
    "shrink": ((), {}),
    "write": (("mm", "addr", "len"), {}),
    "mremap": (("mm", "addr", "len", "new_addr"), {}),
}
FILLS = ("data", "zero")
SCENARIO_KEYS = {"name": True, "seed": False, "variant": False}  # key -> required
TOP_LEVEL = ("scenario", "op", "population")
PROTS = ("r", "rw")
# lib/cmdline.c memparse(): simple_strtoull(s, &end, 0) (0x hex, a leading 0 octal, else decimal),
# then one optional suffix K, M, G, T, P or E, either case, each a further << 10.
_SIZE = re.compile(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([KkMmGgTtPpEe]?)")
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_LABEL = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Op:
    """One ``[[op]]``: ``index`` counts from 1 in file order, ``line`` is its header's line (None when
    the file spells the ops another way), ``fields`` holds every field but ``op``, normalised."""
    index: int
    line: int | None
    op: str
    fields: dict


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    path: Path
    ops: list[Op] = dc_field(default_factory=list)
    population: dict | None = None
    variant: str = "v5"  # the refcounting design: "v5" (the patch series) or "v4.5" (mainline)


def where(path, index: int | None = None, line: int | None = None, table: str | None = None) -> str:
    """The message prefix: ``file``, ``file: op 3 (line 12)``, ``file: [scenario] (line 1)``."""
    text = str(path)
    if index is not None:
        text += f": op {index}"
    elif table is not None:
        text += f": [{table}]"
    if line is not None:
        text += f" (line {line})" if index is not None or table is not None else f": line {line}"
    return text


class _Ctx:
    """Where a check happens; ``fail`` raises the BadInput with that context."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def fail(self, msg: str, field: str | None = None):
        head = f"{self.prefix}: field '{field}'" if field is not None else self.prefix
        raise BadInput(f"{head}: {msg}", field=field)

    def expected(self, field: str, expected: str, value, shown: str | None = None):
        self.fail(f"expected {expected}, got {shown if shown is not None else _show(value)}", field)


def _show(value) -> str:
    """A value as the TOML author wrote it, with its type when that is the problem."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return repr(value)
    kind = {float: "float", dict: "table", list: "array"}.get(type(value), type(value).__name__)
    return f"{kind} {value!r}"


# ---------------------------------------------------------------------------------------------
# Reading the file


def load_scenario(path, *, external_processes: bool = False, variants=None) -> Scenario:
    """Read and check a scenario file; raise BadInput for anything the contract does not allow.
    ``external_processes``: the ops may name processes the file does not create (the run starts
    from a loaded capture, ``vmstate run --from-capture``); only the engine can refuse those.
    ``variants``: the accepted ``[scenario] variant`` names (default: the engine's, ``VARIANTS``;
    ``vmstate kernel-run`` runs the ops literally and also takes ``"6.18"``)."""
    path = Path(path)
    text = _read_text(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(_toml_error(path, text, e)) from None
    return parse_scenario(doc, path, _header_lines(text), external_processes=external_processes,
                          variants=variants)


def parse_scenario(doc: dict, path="<api>", lines: dict | None = None, *,
                   external_processes: bool = False, variants=None) -> Scenario:
    """Check a scenario given as the TOML document's Python data (what :func:`load_scenario` does
    after reading the file; ``vmstate.batch.api.parse`` builds scenarios with it). ``lines``: the header
    lines of ``_header_lines()``, when there is a text to count them in."""
    path = Path(path)
    lines = lines or {"scenario": None, "op": []}
    if not isinstance(doc, dict):
        _Ctx(str(path)).expected("scenario", "a dict (the TOML document)", doc)
    for key in doc:
        if key not in TOP_LEVEL:
            _Ctx(str(path)).fail(f"unknown top-level table or key '{key}' (expected "
                                 f"{', '.join(TOP_LEVEL)})")
    name, seed, variant = _check_scenario_table(path, doc.get("scenario"), lines["scenario"],
                                                variants or VARIANTS)
    population = doc.get("population")
    if population is not None and not isinstance(population, dict):
        _Ctx(str(path)).expected("population", "a table [population]", population)
    ops = _check_ops(path, doc.get("op", []), lines["op"],
                     population is not None or external_processes)
    return Scenario(name=name, seed=seed, path=path, ops=ops, population=population, variant=variant)


def _read_text(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SCENARIO_BYTES + 1)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        code = os.strerror(e.errno) if e.errno else str(e)
        raise BadInput(f"{path}: cannot read the scenario: {code}") from None
    if len(data) > MAX_SCENARIO_BYTES:
        got = f"{size / 2**20:.1f} MiB" if size > MAX_SCENARIO_BYTES else "more"
        raise BadInput(f"{path}: expected a scenario of at most 16 MiB, got {got} "
                       f"(use [population] to generate a large state)")
    try:
        return data.decode("utf-8-sig")  # tolerate an editor's byte order mark
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise BadInput(f"{path}: line {line}: expected UTF-8 text (TOML), got byte "
                       f"0x{data[e.start]:02x} at offset {e.start}") from None


def _toml_error(path: Path, text: str, e: tomllib.TOMLDecodeError) -> str:
    """tomllib puts the position at the end of its message; move it to the front, compiler-style."""
    msg = str(e)
    m = re.search(r" \(at line (\d+), column (\d+)\)$", msg)
    if m:
        return f"{path}: line {m[1]}, column {m[2]}: malformed TOML: {msg[:m.start()]}"
    m = re.search(r" \(at end of document\)$", msg)
    if m:
        return f"{path}: line {text.count(chr(10)) + 1}, end of file: malformed TOML: {msg[:m.start()]}"
    return f"{path}: malformed TOML: {msg}"


def _header_lines(text: str) -> dict:
    """Lines (1-based) of the ``[scenario]`` header and of every ``[[op]]`` header. tomllib keeps no
    positions, so scan for header lines outside multi-line strings."""
    found = {"scenario": [], "op": []}
    in_string = None
    for number, line in enumerate(text.split("\n"), start=1):  # TOML ends lines at LF only
        if in_string is None:
            m = re.fullmatch(r"\s*(\[\[?)\s*(?:\"(\w+)\"|'(\w+)'|(\w+))\s*(\]\]?)\s*(#.*)?", line)
            if m:
                key = m[2] or m[3] or m[4]
                if key == "op" and (m[1], m[5]) == ("[[", "]]"):
                    found["op"].append(number)
                elif key == "scenario" and (m[1], m[5]) == ("[", "]"):
                    found["scenario"].append(number)
        for quote in re.findall(r'"""|\'\'\'', line):
            if in_string is None:
                in_string = quote
            elif in_string == quote:
                in_string = None
    return {"scenario": found["scenario"][0] if found["scenario"] else None, "op": found["op"]}


def _check_scenario_table(path: Path, table, line: int | None,
                          variants=VARIANTS) -> tuple[str, int, str]:
    ctx = _Ctx(where(path, table="scenario", line=line))
    if table is None:
        _Ctx(str(path)).fail('missing table [scenario] (expected at least name = "...")')
    if not isinstance(table, dict):
        _Ctx(str(path)).expected("scenario", "a table [scenario]", table)
    for key in table:
        if key not in SCENARIO_KEYS:
            ctx.fail(f"unknown key (expected {', '.join(SCENARIO_KEYS)})", key)
    for key, required in SCENARIO_KEYS.items():
        if required and key not in table:
            ctx.fail("missing", key)
    name = table["name"]
    if not isinstance(name, str) or not name:
        ctx.expected("name", "a non-empty string", name)
    seed = table.get("seed", 0)
    if type(seed) is not int or not 0 <= seed < 1 << 64:
        ctx.expected("seed", "an integer in [0, 2**64)", seed)
    variant = table.get("variant", "v5")
    if variant not in variants:
        ctx.expected("variant", f"one of {', '.join(repr(v) for v in variants)}", variant)
    return name, seed, variant


# ---------------------------------------------------------------------------------------------
# The ops


def _check_ops(path: Path, ops, lines: list[int], population: bool) -> list[Op]:
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        _Ctx(str(path)).expected("op", "an array of tables [[op]]", ops)
    if len(lines) != len(ops):  # the ops were written as an inline array: no header lines
        lines = [None] * len(ops)
    program = _Program(population)
    result = []
    for index, (raw, line) in enumerate(zip(ops, lines), start=1):
        ctx = _Ctx(where(path, index, line))
        name, fields = _check_fields(ctx, raw)
        program.apply(ctx, index, name, fields)
        result.append(Op(index=index, line=line, op=name, fields=fields))
    return result


def _check_fields(ctx: _Ctx, raw: dict) -> tuple[str, dict]:
    """The op's name, and its fields checked one by one and normalised."""
    if "op" not in raw:
        ctx.fail(f"missing (expected one of {', '.join(OPS)})", "op")
    name = raw["op"]
    if not isinstance(name, str):
        ctx.expected("op", "a string", name)
    if name not in OPS:
        close = difflib.get_close_matches(name, OPS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        ctx.fail(f"unknown op {name!r} (expected one of {', '.join(OPS)}{hint})", "op")
    required, optional = OPS[name]
    allowed = required + tuple(optional)
    for key in raw:
        if key != "op" and key not in allowed:
            ctx.fail(f"unknown field for op '{name}' (expected {', '.join(allowed)})", key)
    for key in required:
        if key not in raw:
            ctx.fail(f"missing (op '{name}' needs {', '.join(required)})", key)
    fields = {**optional, **{k: v for k, v in raw.items() if k != "op"}}
    for key in allowed:
        fields[key] = _CHECKS[key](ctx, key, fields[key])
    if "len" in fields and fields["addr"] + fields["len"] > TASK_SIZE:
        ctx.fail(f"expected the range to end within user space (addr + len <= {TASK_SIZE:#x}), "
                 f"got {fields['addr'] + fields['len']:#x}", "len")
    if "new_addr" in fields:
        new, end = fields["new_addr"], fields["new_addr"] + fields["len"]
        if end > TASK_SIZE:
            ctx.fail(f"expected the new range to end within user space (new_addr + len <= "
                     f"{TASK_SIZE:#x}), got {end:#x}", "new_addr")
        if new < fields["addr"] + fields["len"] and fields["addr"] < end:
            ctx.fail(f"expected a new range apart from the old one (mremap answers EINVAL for an "
                     f"overlap), got {new:#x}-{end:#x} against {fields['addr']:#x}-"
                     f"{fields['addr'] + fields['len']:#x}", "new_addr")
    return name, fields


def _check_process(ctx: _Ctx, key: str, value):
    if not isinstance(value, str) or not value:
        ctx.expected(key, "a process name (a non-empty string)", value)
    return value


def _check_addr(ctx: _Ctx, key: str, value):
    if type(value) is not int:
        ctx.expected(key, "an integer address (TOML integers may be hex: 0x7f0000000000)", value)
    if value <= 0 or value >= TASK_SIZE or value % PAGE_SIZE:
        ctx.expected(key, f"a 4096-aligned user address in (0, {TASK_SIZE:#x}) (the kernel answers "
                          f"EINVAL)", value, shown=f"{value:#x}" if value >= 0 else str(value))
    return value


def _check_len(ctx: _Ctx, key: str, value):
    if type(value) is int:
        size = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value)):
        digits = m[1]
        base = 16 if digits[1:2] in ("x", "X") else 8 if digits.startswith("0") else 10
        size = int(digits, base) << _SHIFT[m[2].lower()]
    else:
        ctx.expected(key, 'a size: bytes as an integer, or a string like "4K", "64M", "1G" '
                          '(memparse: K, M, G, T, P, E)', value)
    shown = str(size) if size == value else f"{value!r} ({size})"
    if size <= 0 or size % PAGE_SIZE:
        ctx.expected(key, "a positive multiple of 4096 (4K)", value, shown=shown)
    if size > TASK_SIZE:
        ctx.expected(key, f"a size within the 47-bit user address space (at most {TASK_SIZE:#x}, "
                          f"128T)", value, shown=shown)
    return size


def _check_thp(ctx: _Ctx, key: str, value):
    if type(value) is not bool:
        ctx.expected(key, "a boolean (true or false)", value)
    return value


def _check_prot(ctx: _Ctx, key: str, value):
    if not isinstance(value, str) or value not in PROTS:
        ctx.expected(key, 'one of "r", "rw"', value)
    return value


def _check_fill(ctx: _Ctx, key: str, value):
    if not isinstance(value, str) or value not in FILLS:
        ctx.expected(key, 'one of "data" (non-zero bytes written), "zero" (zeros written)', value)
    return value


def _check_label(ctx: _Ctx, key: str, value):
    if (not isinstance(value, str) or not _LABEL.fullmatch(value) or value in (".", "..")
            or len(value) > NAME_MAX):
        ctx.expected(key, "a label usable as a directory name ([A-Za-z0-9._-]+, not '.' or '..', "
                          f"at most {NAME_MAX} characters)", value)
    return value


def _check_race(ctx: _Ctx, key: str, value):
    """``race = { pin = "after_precheck", unpin = "never", fraction = 0.5 }`` on a split: GUP pins
    that race it (``vmstate.engine.huge_memory.Race``; which THPs, from the scenario's seed and the op's index)."""
    if value is None:
        return None
    from vmstate.engine.huge_memory import Race
    if not isinstance(value, dict):
        ctx.expected(key, 'a table like { pin = "after_precheck", unpin = "never", fraction = 0.5 }',
                     value)
    unknown = sorted(set(value) - {"pin", "unpin", "fraction"})
    if unknown:
        ctx.fail(f"unknown key {unknown[0]!r} (expected pin, unpin, fraction)", f"{key}.{unknown[0]}")
    race = Race(**value)
    try:
        race.check()
    except BadInput as e:
        ctx.fail(str(e), e.field)
    return race


_CHECKS = {"mm": _check_process, "child": _check_process, "addr": _check_addr, "new_addr": _check_addr, "len": _check_len,
           "thp": _check_thp, "fill": _check_fill, "prot": _check_prot, "label": _check_label, "race": _check_race}


class _Program:
    """The rules that follow from file order alone: which process names are live, which pins are
    held, which labels are taken. With a ``[population]`` an unknown name may come from it, so only the
    engine can refuse it."""

    def __init__(self, population: bool):
        self.population = population
        self.live: set[str] = set()
        self.exited: dict[str, int] = {}  # name -> index of its exit op
        self.pins: dict[tuple, int] = {}  # (mm, addr, len) -> pins held
        self.labels: dict[str, int] = {}  # label -> index of its snapshot op

    def apply(self, ctx: _Ctx, index: int, op: str, f: dict):
        if op == "shrink":
            return
        if op == "snapshot":
            if f["label"] in self.labels:
                ctx.fail(f"expected a label not used before, got {f['label']!r} (op "
                         f"{self.labels[f['label']]} uses it)", "label")
            self.labels[f["label"]] = index
            return
        mm = f["mm"]
        if mm in self.exited:
            ctx.fail(f"process {mm!r} exited at op {self.exited[mm]}; its name cannot be used again",
                     "mm")
        if op == "mmap":
            self.live.add(mm)
            return
        if mm not in self.live and not self.population:
            ctx.fail(f"expected a live process, got {mm!r}, which no earlier op created (a process "
                     f"is created by its first mmap or as a fork child)", "mm")
        if op == "fork":
            self._fork(ctx, mm, f["child"])
        elif op == "exit":
            self.live.discard(mm)
            self.exited[mm] = index
        elif op in ("pin", "unpin"):
            key = (mm, f["addr"], f["len"])
            if op == "pin":
                self.pins[key] = self.pins.get(key, 0) + 1
            elif not self.pins.get(key):
                ctx.fail(f"no earlier pin of {mm!r} [{f['addr']:#x}, {f['addr'] + f['len']:#x}) "
                         f"is held (unpin names the same mm, addr and len as the pin it releases)")
            else:
                self.pins[key] -= 1

    def _fork(self, ctx: _Ctx, mm: str, child: str):
        if child in self.live:
            ctx.fail(f"expected a new process name, got {child!r}, which already exists", "child")
        if child in self.exited:
            ctx.fail(f"expected a new process name, got {child!r}, which exited at op "
                     f"{self.exited[child]} (a name cannot be used again)", "child")
        self.live.add(child)
