"""``vmstate run SCENARIO --trace ADDR[@MM]``: one THP (or page) followed through the ops.

After each op, :class:`Tracer` reads the 2 MiB frame block that ``ADDR`` of ``MM`` maps (resolved
when it is first mapped, then followed as frames: after a split, an unmap or an exit it is the same
block) in the comparison format of ``docs/semantics.md`` (``vmstate.engine.compare.dump_state``,
restricted to that block by :func:`block_dump`), and :func:`fields` turns it into a record in the
kernel's terms: ``_count`` and ``_mapcount`` of each subpage (as ranges of equal values), the
compound mapcount (v5, 4.5: ``compound_mapcount`` in ``page[1]``; 4.5 also ``PG_double_map``;
6.18: ``_entire_mapcount`` and the folio fields ``_large_mapcount``, ``_nr_pages_mapped``,
``_mm_id``/``_mm_id_mapcount``, ``_mm_ids_shared``, ``PG_partially_mapped``), whether it is on the
deferred split queue, and per process its PMD or the subpages its PTEs map (present or migration
entries). :func:`fields` reads only the dump format, so the reference model's ``dump()`` gives the
same record (``tests/test_trace.py``). Values are raw, as the kernel stores them (``_mapcount``
-1 based).
"""
from __future__ import annotations

import numpy as np

from vmstate.errors import BadInput
from vmstate.kernels.constants import (
    ENTIRELY_MAPPED, HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SHIFT, PG_double_map, PG_head, PTE_PFN_MASK, PTE_PFN_SHIFT,
    _PAGE_PRESENT, _PAGE_PSE, _PAGE_VMS_MIGRATION,
)

N = HPAGE_PMD_NR
FOLIO_FIELDS = ("_large_mapcount", "_nr_pages_mapped", "_mm_id", "_mm_id_mapcount",
                "_mm_ids_shared", "PG_partially_mapped")


def parse_trace(text: str) -> tuple[int, str | None]:
    """``ADDR`` or ``ADDR@MM`` (ADDR in hex with 0x, or decimal)."""
    addr, _, mm = text.partition("@")
    try:
        value = int(addr, 0)
    except ValueError:
        value = -1
    if value < 0:
        raise BadInput(f"--trace {text!r}: expected ADDR or ADDR@MM, e.g. 0x7f0000200000@parent",
                       field="trace")
    return value, (mm or None)


def _pfn_of(entry: int) -> int:
    return (entry & PTE_PFN_MASK) >> PTE_PFN_SHIFT


def locate(dump: dict, mm: str | None, addr: int) -> tuple[str, int] | None:
    """``(mm, pfn)`` that ``addr`` maps (a PMD, a present PTE or a migration entry) in ``mm``, or
    in the first process of the dump that maps it when ``mm`` is None."""
    haddr = addr & ~(HPAGE_PMD_SIZE - 1)
    names = [mm] if mm is not None else list(dump["vmas"])
    for name in names:
        entry = dump["pmds"].get((name, haddr))
        if entry is not None:
            return name, _pfn_of(entry) + ((addr - haddr) >> PAGE_SHIFT)
        entry = dump["ptes"].get((name, addr & ~((1 << PAGE_SHIFT) - 1)))
        if entry and entry & (_PAGE_PRESENT | _PAGE_VMS_MIGRATION):
            return name, _pfn_of(entry)
    return None


def _runs(values: list) -> list[list]:
    """``[first, last, value]`` for each run of equal values."""
    out = []
    for i, v in enumerate(values):
        if out and out[-1][2] == v:
            out[-1][1] = i
        else:
            out.append([i, i, v])
    return out


def _ranges(indexes) -> list[list[int]]:
    return [[a, b] for a, b, _ in _runs_of_consecutive(sorted(indexes))]


def _runs_of_consecutive(xs):
    out = []
    for x in xs:
        if out and out[-1][1] == x - 1:
            out[-1][1] = x
        else:
            out.append([x, x, None])
    return out


def fields(dump: dict, block: int, variant: str) -> dict:
    """The traced block's record from a dump (``dump_state`` or the reference's ``dump()``)."""
    base = block * N
    pages = [dump["pages"].get(base + i) for i in range(N)]
    flags = [p[0] if p is not None else 0 for p in pages]
    head = bool(flags[0] & (1 << PG_head))
    rec = {"pfn": base, "compound": head,
           "_count": _runs([p[1] if p is not None else None for p in pages]),
           "_mapcount": _runs([p[2] if p is not None else None for p in pages])}
    if head and variant == "6.18":
        f = dump["folio"][base]
        rec["_entire_mapcount"] = dump["compound_mapcount"][base]
        rec |= dict(zip(FOLIO_FIELDS, (f[0], f[1], [f[2], f[3]], [f[4], f[5]], f[6], f[7])))
    elif head:
        rec["compound_mapcount"] = dump["compound_mapcount"][base]
        if variant == "v4.5":
            rec["PG_double_map"] = bool(flags[1] & (1 << PG_double_map))
    rec["deferred"] = base in dump["deferred"]
    maps: dict[str, dict] = {}
    for (mm, haddr), entry in dump["pmds"].items():
        if _pfn_of(entry) // N == block:
            maps.setdefault(mm, {})["pmd"] = f"{haddr:#x}"
    pte: dict[str, dict[str, list]] = {}
    for (mm, addr), entry in dump["ptes"].items():
        pfn = _pfn_of(entry)
        if pfn // N != block:
            continue
        kind = "pte" if entry & _PAGE_PRESENT else "migration" if entry & _PAGE_VMS_MIGRATION \
            else None
        if kind is not None:
            pte.setdefault(mm, {}).setdefault(kind, []).append(pfn - base)
    for mm, kinds in pte.items():
        for kind, idx in kinds.items():
            maps.setdefault(mm, {})[kind] = _ranges(idx)
    rec["mappings"] = {mm: maps[mm] for mm in sorted(maps)}
    return rec


def block_dump(state, block: int) -> dict:
    """``dump_state(state)`` restricted to frame block ``block``: its pages (flags, ``_count``,
    ``_mapcount``), compound and folio fields, deferred mark, and every PMD and PTE of a live
    process that maps one of its frames. Reads only that block and the page tables."""
    a = state.blocks.a[block]
    lo, hi = int(a["alloc_start"]), int(a["alloc_end"])
    base = block * N
    pages = {base + i: (int(a["flags"][i]), int(a["_count"][i]), int(a["_mapcount"][i]))
             for i in range(lo, hi)}
    head = bool(a["flags"][0] & (1 << PG_head)) and lo == 0
    folio = {base: (int(a["_large_mapcount"]), int(a["_nr_pages_mapped"]), int(a["_mm_id"][0]),
                    int(a["_mm_id"][1]), int(a["_mm_id_mapcount"][0]),
                    int(a["_mm_id_mapcount"][1]), int(a["_mm_ids_shared"]),
                    int(a["partially_mapped"]))} if head else {}
    pmds, ptes, vmas = {}, {}, {}
    for mm in sorted((m for m in state.mms.values() if m.alive), key=lambda m: m.id):
        vmas[mm.name] = None
        rows = np.asarray(mm.rows)
        if not len(rows):
            continue
        entries = np.asarray(state.pmd)[rows].astype(np.uint64)
        huge = (entries & np.uint64(_PAGE_PSE)) != 0
        pfn = (entries & np.uint64(PTE_PFN_MASK)) >> np.uint64(PTE_PFN_SHIFT)
        for k in np.flatnonzero(huge & (pfn // np.uint64(N) == np.uint64(block))):
            pmds[(mm.name, int(mm.haddrs[k]))] = int(entries[k])
        table = ~huge & ((entries & np.uint64(_PAGE_PRESENT)) != 0)
        for k in np.flatnonzero(table):
            t = state.ptes[int(state.pte_table[rows[k]])]
            p = (t & np.uint64(PTE_PFN_MASK)) >> np.uint64(PTE_PFN_SHIFT)
            for i in np.flatnonzero((t != 0) & (p // np.uint64(N) == np.uint64(block))):
                ptes[(mm.name, int(mm.haddrs[k]) + (int(i) << PAGE_SHIFT))] = int(t[i])
    deferred = [base] if a["deferred"] else []
    return {"pages": pages, "compound_mapcount": {base: int(a["compound_mapcount"])} if head else {},
            "folio": folio, "deferred": deferred, "pmds": pmds, "ptes": ptes, "vmas": vmas}


def locate_in_state(state, mm: str | None, addr: int) -> tuple[str, int] | None:
    """:func:`locate` on the engine's page tables, without a dump."""
    haddr = addr & ~(HPAGE_PMD_SIZE - 1)
    mms = [state.mms.get(mm)] if mm is not None else sorted(state.mms.values(), key=lambda m: m.id)
    for m in mms:
        if m is None or not m.alive:
            continue
        k = np.flatnonzero(np.asarray(m.haddrs) == haddr)
        if not len(k):
            continue
        row = int(np.asarray(m.rows)[k[0]])
        entry = int(state.pmd[row])
        if entry & _PAGE_PSE:
            return m.name, _pfn_of(entry) + ((addr - haddr) >> PAGE_SHIFT)
        if entry & _PAGE_PRESENT:
            pte = int(state.ptes[int(state.pte_table[row])][(addr - haddr) >> PAGE_SHIFT])
            if pte & (_PAGE_PRESENT | _PAGE_VMS_MIGRATION):
                return m.name, _pfn_of(pte)
    return None


class Tracer:
    """Collects one record per op (``records``); the runner calls :meth:`after_op` after each op
    (and :meth:`after_op` with ``op=None`` for the initial state)."""

    def __init__(self, addr: int, mm: str | None, variant: str):
        self.addr, self.mm, self.variant = addr, mm, variant
        self.block: int | None = None
        self.records: list[dict] = []

    def after_op(self, state, op) -> None:
        self.record(op, lambda: locate_in_state(state, self.mm, self.addr),
                    lambda b: block_dump(state, b))

    def record(self, op, where, dump_of) -> None:
        """``where()``: ``(mm, pfn)`` the address maps now or None; ``dump_of(block)``: a dump
        holding that block (the engine's :func:`block_dump`, or a whole reference dump)."""
        head = {"op": None if op is None else op.index, "name": "initial" if op is None else op.op}
        if self.block is None:
            found = where()
            if found is None:
                self.records.append({**head, "mapped": False})
                return
            self.mm = found[0]
            self.block = found[1] // N
        self.records.append({**head, "mapped": True, "traced_mm": self.mm,
                             **fields(dump_of(self.block), self.block, self.variant)})


# ---- the text form --------------------------------------------------------------------------

def _value(k, v) -> str:
    """A field's value as the kernel would name it: ``_nr_pages_mapped`` with ENTIRELY_MAPPED."""
    if v is None:
        return "-"
    if k == "_nr_pages_mapped" and v >= ENTIRELY_MAPPED:
        return f"ENTIRELY_MAPPED+{v - ENTIRELY_MAPPED}"
    return str(v)


def _describe_map(m: dict | None) -> str:
    if not m:
        return "unmapped"
    parts = [f"PMD {m['pmd']}"] if "pmd" in m else []
    for kind in ("pte", "migration"):
        if kind in m:
            parts.append(f"{kind.upper() if kind == 'pte' else kind} "
                         + ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in m[kind]))
    return " + ".join(parts)


def _expand(runs):
    out = [None] * N
    for a, b, v in runs:
        out[a:b + 1] = [v] * (b - a + 1)
    return out


def _subpage_changes(name, old, new, first=False) -> list[str]:
    old, new = _expand(old) if old else [None] * N, _expand(new)
    changed = [(i, old[i], new[i]) for i in range(N) if old[i] != new[i]]
    out, run = [], None
    for i, a, b in changed:
        if run and run[1] == i - 1 and run[2:] == [a, b]:
            run[1] = i
        else:
            run = [i, i, a, b]
            out.append(run)
    fmt = (lambda v: "-" if v is None else str(v))
    return [f"{name}[{a}{'' if a == b else f'-{b}'}] " + (fmt(y) if first else f"{fmt(x)}->{fmt(y)}")
            for a, b, x, y in out]


def trace_lines(records: list[dict], addr: int, mm: str | None) -> list[str]:
    """One line per op: what changed in the traced block since the previous op."""
    lines, prev = [], None
    for r in records:
        what = f"op {r['op']:>3} {r['name']:<17}" if r["op"] is not None else f"{'initial':<24}"
        if not r["mapped"]:
            lines.append(f"{what} {addr:#x} not mapped" + (f" in {mm}" if mm else ""))
            continue
        if prev is None:
            lines.append(f"trace {addr:#x}@{r['traced_mm']}: frame block pfn {r['pfn']:#x} "
                         f"({'a THP' if r['compound'] else 'small pages'}), values raw as the "
                         f"kernel stores them (_mapcount -1 based)")
        changes = []
        for k in ("_count", "_mapcount"):
            if prev is None or prev.get(k) != r[k]:
                changes += _subpage_changes(k, prev.get(k) if prev else None, r[k], prev is None)
        if prev is not None and prev["compound"] != r["compound"]:
            changes.append("PG_head cleared: split into small pages" if prev["compound"]
                           else "compound")
        for k in ("compound_mapcount", "PG_double_map", "_entire_mapcount", *FOLIO_FIELDS,
                  "deferred"):
            old, new = (prev or {}).get(k), r.get(k)
            if prev is None and new is not None:
                changes.append(f"{k} {_value(k, new)}")
            elif new is not None and old != new or (prev is not None and k in prev and k not in r):
                changes.append(f"{k} {_value(k, old)}->{_value(k, new)}")
        for m in sorted(set(r["mappings"]) | set((prev or {}).get("mappings", {}))):
            old, new = (prev or {}).get("mappings", {}).get(m), r["mappings"].get(m)
            if old != new:
                changes.append(f"{m}: {_describe_map(new)}" if prev is None
                               else f"{m}: {_describe_map(old)} -> {_describe_map(new)}")
        lines.append(f"{what} " + ("; ".join(changes) if changes else "no change"))
        prev = r
    return lines
