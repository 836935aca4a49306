"""``[population]``: a large state generated directly as arrays, from the seed.

The state is the one this operation program produces (:func:`population_program` writes it out, and
``tests/test_population.py`` checks the two agree exactly for small sizes):

1. ``parent`` mmaps the shared THPs ``[addr, addr + S * 2M)`` and forks ``mappers - 1`` children
   (``child1`` …), then mmaps the exclusive THPs right after them;
2. ``split_pmd`` of every PTE-mapped THP in every process that maps it;
3. ``madvise_dontneed`` of ``unmapped_subpages`` subpages of each partially unmapped THP in the
   parent (a zap that keeps the VMA, so VMAs stay two per process whatever the size);
4. ``pins`` ``pin`` ops of one 4 KiB page (never an unmapped one) of each pinned THP, in the parent.

Keys (all optional but ``thps``):

==================== ======== =============================================================
key                  default  meaning
==================== ======== =============================================================
thps                 —        number of THPs
shared               0.0      fraction of THPs mapped by ``mappers`` processes (fork sharing)
mappers              2        processes mapping a shared THP (parent + ``mappers - 1`` children)
pte_mapped           0.0      fraction whose PMDs are split in every process mapping them
partially_unmapped   0.0      fraction with ``unmapped_subpages`` subpages zapped in the parent
unmapped_subpages    128      subpages zapped per partially unmapped THP (1..511), at a random offset
pinned               0.0      fraction with ``pins`` GUP pins on one random mapped subpage
pins                 1        pins per pinned THP
addr                 0x7f0000000000  where the parent maps the THPs (2 MiB aligned)
==================== ======== =============================================================

Fractions become exact counts (``round(fraction * thps)``); which THPs get each property, the zap
offsets and the pinned subpages come from ``numpy.random.default_rng(seed)``.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from vmstate.kernels.constants import (
    ANON_FAULT_FLAGS, C_MMU_NOTIFIER, C_PMD_LOCK, C_PTE_WRITE, C_TLB_FLUSH,
    EV_THP_SPLIT_PMD, HPAGE_PMD_NR,
    HPAGE_PMD_SIZE, PAGE_SHIFT, PAGE_SIZE, PG_dirty, PG_head, PG_tail, PTE_PFN_SHIFT,
    VM_ANON_DEFAULT,
    VM_HUGEPAGE, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW,
)
from vmstate.kernels.pmd import FAULT_ENTRY, populate_pte_tables, zap_mapcounts
from vmstate.engine.mm_types import Mm, Pin, Vma
from vmstate.engine.memory_estimate import MemoryEstimate, check_fits, estimate
from vmstate.engine.state import MemoryState
from vmstate.errors import BadInput

N = HPAGE_PMD_NR
USER_TOP = 1 << 47
FRACTIONS = ("shared", "pte_mapped", "partially_unmapped", "pinned")
DEFAULTS = {"thps": None, "shared": 0.0, "mappers": 2, "pte_mapped": 0.0, "partially_unmapped": 0.0,
             "unmapped_subpages": 128, "pinned": 0.0, "pins": 1, "addr": 0x7F0000000000}


@dataclass(frozen=True)
class Population:
    thps: int
    shared: float
    mappers: int
    pte_mapped: float
    partially_unmapped: float
    unmapped_subpages: int
    pinned: float
    pins: int
    addr: int

    @property
    def nshared(self):
        return round(self.shared * self.thps)


def parse_population(table: dict) -> Population:
    """Check the ``[population]`` table; BadInput names the field and what was expected."""
    if not isinstance(table, dict):
        raise BadInput("expected a table", field="population")
    unknown = sorted(set(table) - set(DEFAULTS))
    if unknown:
        raise BadInput(f"unknown key {unknown[0]!r} (expected one of {', '.join(DEFAULTS)})",
                       field=unknown[0])
    p = {**DEFAULTS, **table}
    if p["thps"] is None:
        raise BadInput("missing: the number of THPs to generate", field="thps")

    def integer(k, lo, hi):
        v = p[k]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise BadInput(f"expected an integer in [{lo}, {hi}], got {v!r}", field=k)

    integer("thps", 1, 1 << 26)
    integer("mappers", 1, 64)
    integer("unmapped_subpages", 1, N - 1)
    integer("pins", 1, 1 << 20)
    integer("addr", 1, USER_TOP - 1)
    for k in FRACTIONS:
        v = p[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise BadInput(f"expected a fraction in [0, 1], got {v!r}", field=k)
    if p["addr"] % HPAGE_PMD_SIZE:
        raise BadInput(f"expected a 2 MiB aligned address, got 0x{p['addr']:x}", field="addr")
    if p["addr"] + p["thps"] * HPAGE_PMD_SIZE > USER_TOP:
        end = p["addr"] + p["thps"] * HPAGE_PMD_SIZE
        raise BadInput(f"{p['thps']} THPs from 0x{p['addr']:x} end at 0x{end:x}, above the 47-bit "
                       f"user address space (0x{USER_TOP:x}): lower addr (e.g. 0x100000000000)",
                       field="thps")
    if p["shared"] and p["mappers"] < 2:
        raise BadInput("shared THPs need mappers >= 2", field="mappers")
    return Population(**{k: p[k] for k in DEFAULTS})


def population_estimate(pop: Population) -> MemoryEstimate:
    """:func:`vmstate.engine.memory_estimate.estimate` of the generated state and its split: a
    page block per THP, a PMD entry and PTE table per mapping (every mapper of a shared THP), one
    pin record per pinned THP, the split of every THP (one rmap entry per mapping) or the
    generation's temporaries where larger. Each array is reserved once (not grown)."""
    return estimate(**population_counts(pop))


def population_counts(pop: Population) -> dict:
    """The counts :func:`~vmstate.engine.memory_estimate.estimate` takes, for the population and a
    split of all its THPs."""
    mappings = pop.thps + pop.nshared * (pop.mappers - 1)
    pinned = round(pop.pinned * pop.thps)
    return {"blocks": pop.thps, "mappings": mappings, "pins": pinned, "pinned_pages": pinned,
            "split_thps": pop.thps, "rmap_entries": mappings, "generated_thps": pop.thps,
            "zapped_subpages": round(pop.partially_unmapped * pop.thps) * pop.unmapped_subpages}


def population_bytes(pop: Population) -> int:
    """The total of :func:`population_estimate`."""
    return population_estimate(pop).total


@dataclass
class Draw:
    """The seed's choices, one array per property (length ``thps``)."""
    mappers: np.ndarray
    pte: np.ndarray
    partial: np.ndarray
    offset: np.ndarray      # first zapped subpage of a partially unmapped THP
    pinned: np.ndarray
    pin_page: np.ndarray    # the pinned subpage (outside the zapped range)


def draw(pop: Population, seed: int) -> Draw:
    rng = np.random.default_rng(seed)
    n = pop.thps

    def subset(fraction):
        sel = np.zeros(n, bool)
        sel[rng.choice(n, round(fraction * n), replace=False)] = True
        return sel

    pte, partial, pinned = subset(pop.pte_mapped), subset(pop.partially_unmapped), subset(pop.pinned)
    k = pop.unmapped_subpages
    offset = np.where(partial, rng.integers(0, N - k + 1, n), 0)
    q = np.where(partial, rng.integers(0, N - k, n), rng.integers(0, N, n))
    pin_page = np.where(partial & (q >= offset), q + k, q)
    mappers = np.where(np.arange(n) < pop.nshared, pop.mappers, 1)
    return Draw(mappers, pte, partial, offset, pinned, pin_page)


def population_program(pop: Population, seed: int) -> list[tuple]:
    """The operation program whose result :func:`build_population` generates: ``(op, *args)``."""
    d = draw(pop, seed)
    s, a, two = pop.nshared, pop.addr, HPAGE_PMD_SIZE
    children = [f"child{c}" for c in range(1, pop.mappers)] if s else []
    prog = []
    if s:
        prog.append(("mmap", "parent", a, s * two))
        prog += [("fork", "parent", c) for c in children]
    if s < pop.thps:
        prog.append(("mmap", "parent", a + s * two, (pop.thps - s) * two))
    for j in np.flatnonzero(d.pte):
        for mm in ["parent"] + (children if j < s else []):
            prog.append(("split_pmd", mm, a + int(j) * two))
    k = pop.unmapped_subpages
    for j in np.flatnonzero(d.partial):
        prog.append(("madvise_dontneed", "parent", a + int(j) * two + int(d.offset[j]) * PAGE_SIZE,
                     k * PAGE_SIZE))
    for j in np.flatnonzero(d.pinned):
        page = a + int(j) * two + int(d.pin_page[j]) * PAGE_SIZE
        prog += [("pin", "parent", page, PAGE_SIZE)] * pop.pins
    return prog


def from_population(table: dict, seed: int = 0, variant: str = "v5"):
    """A :class:`~vmstate.engine.state.MemoryState` generated from a ``[population]`` table; refused
    with the estimate (:func:`population_estimate`), before allocating, when it would not fit in
    the memory available."""
    pop = parse_population(table)
    check_fits(population_bytes(pop), field="thps", what=f"a population of {pop.thps} THPs and "
               f"its split")
    state = build_population(MemoryState(variant), pop, seed)
    _malloc_trim()
    return state


def _malloc_trim():
    """Hand the generation's freed temporaries back to the system: glibc keeps freed arrays under
    its 32 MiB mmap threshold in the heap (measured: 124 bytes a THP of RSS at 200k THPs, which
    ``malloc_trim(0)`` returns, leaving the state's own 6216). Elsewhere a no-op."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def build_population(state, pop: Population, seed: int):
    """Fill an empty :class:`~vmstate.engine.state.MemoryState` with the population, as arrays."""
    d = draw(pop, seed)
    n, s, k = pop.thps, pop.nshared, pop.unmapped_subpages
    m = d.mappers
    # Per THP: PMD mappings left (P) and PTE mappings of every subpage before the zap (T).
    P = np.where(d.pte, 0, m - d.partial)
    T = np.where(d.pte, m, d.partial.astype(np.int64))
    mappings = n + s * (pop.mappers - 1)
    state.pmds.reserve(mappings)  # one allocation each: growing by doubling would copy gigabytes
    state.tables.reserve(mappings)
    b0 = state.blocks.append(n, zero=False)  # every field is written below
    blocks = state.blocks.a[b0:]
    blocks["flags"][:, 0] = (1 << PG_head) | ANON_FAULT_FLAGS
    blocks["flags"][:, 1:] = 1 << PG_tail
    # The offset on every subpage, as the variant has it (v5: while a PMD maps the THP; 4.5:
    # PG_double_map while PMDs and PTEs map it at once, a partial zap in the parent of a THP other
    # processes map by PMD).
    offset = np.empty(n, np.int64)
    state.k.set_mapcount_offsets(state.blocks.a, b0, P.astype(np.int64), T.astype(np.int64), offset)
    blocks = state.blocks.a[b0:]
    blocks["_mapcount"][:] = (T - 1 + offset)[:, None]
    zap_rows = np.flatnonzero(d.partial)
    zap_mapcounts(state.blocks.a, b0 + zap_rows, d.offset[zap_rows].astype(np.int64), k)
    counted = np.empty(n, np.int64)
    state.k.set_population_folios(state.blocks.a, b0, P.astype(np.int64), T.astype(np.int64),
                                  m.astype(np.int64), d.partial, d.pte, counted)
    blocks = state.blocks.a[b0:]
    blocks["data"] = np.uint64(0xFFFFFFFFFFFFFFFF)  # every page written with data (mmap's default)
    blocks["_count"][:, 1:] = 0
    blocks["_count"][:, 0] = P + N * T - k * d.partial + pop.pins * d.pinned
    blocks["mapping"] = np.where(np.arange(n) < s, 0, 1 if s else 0)
    haddr = pop.addr + np.arange(n, dtype=np.int64) * HPAGE_PMD_SIZE
    blocks["index"] = haddr >> PAGE_SHIFT
    blocks["alloc_start"] = 0
    blocks["alloc_end"] = N
    heads = (b0 + np.arange(n, dtype=np.int64)) * N

    # Processes and VMAs: two anon_vmas at most (shared run, exclusive run).
    parent = Mm("parent", 0)
    state.mms["parent"] = parent
    children = [Mm(f"child{c}", c) for c in range(1, pop.mappers)] if s else []
    flags = VM_ANON_DEFAULT | VM_HUGEPAGE
    end_s = pop.addr + s * HPAGE_PMD_SIZE
    if s:
        state.anon_vmas.append([])
        for mm in [parent] + children:
            state.mms[mm.name] = mm
            vma = Vma(mm, pop.addr, end_s, pop.addr >> PAGE_SHIFT, flags, 0)
            mm.vmas.append(vma)
            state.anon_vmas[0].append(vma)
    if s < n:
        state.anon_vmas.append([])
        vma = Vma(parent, end_s, pop.addr + n * HPAGE_PMD_SIZE, end_s >> PAGE_SHIFT, flags,
                  len(state.anon_vmas) - 1)
        parent.vmas.append(vma)
        state.anon_vmas[-1].append(vma)

    # Page tables. copy_huge_pmd write-protected the parent's shared PMDs and made the child's old.
    # Split PMDs' PTEs get the variant's dirty bit (v5 makes them dirty); where it sets the head's
    # PG_dirty instead (4.5), the PMDs split were dirty (a write fault's).
    dirty = int(state.k.split_pmd_pte_bits(state.blocks.a[0], np.uint64(FAULT_ENTRY | _PAGE_PSE), False)
                & _PAGE_DIRTY)
    if state.k.SPLIT_PMD_SETS_PAGE_DIRTY:
        blocks["flags"][:, 0] |= np.where(d.pte | d.partial, 1 << PG_dirty, 0).astype(np.uint32)
    young_parent = _PAGE_PRESENT | _PAGE_ACCESSED | dirty
    write = np.where(m == 1, _PAGE_RW, 0)
    _add_entries(state, parent, haddr, heads, young_parent | write,
                 _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_DIRTY | write, d.pte | d.partial,
                 zap=(d.partial, d.offset, k))
    for c in children:
        _add_entries(state, c, haddr[:s], heads[:s], _PAGE_PRESENT | dirty,
                     _PAGE_PRESENT | _PAGE_DIRTY, d.pte[:s])

    splits = int((d.pte * m).sum() + (d.partial & ~d.pte).sum())
    state.k.count_thp_faults(state.events, n)
    state.events[EV_THP_SPLIT_PMD] += splits
    state.k.count_deferred_split(state.events, int(counted.sum()))
    for c in (C_PMD_LOCK, C_MMU_NOTIFIER, C_TLB_FLUSH):
        state.cost_counters[c] += splits
    state.cost_counters[C_PTE_WRITE] += splits * N

    pin_pfns = heads[d.pinned] + d.pin_page[d.pinned]
    for pfn, page in zip(pin_pfns.tolist(), (haddr[d.pinned] + d.pin_page[d.pinned] * PAGE_SIZE).tolist()):
        state.pins[("parent", page, PAGE_SIZE)] = [Pin(np.array([pfn], np.int64), pop.pins)]
    return state


def _add_entries(state, mm, haddr, heads, bits, huge_bits, split, zap=None):
    """PMD entries of ``mm`` for THPs at ``haddr``: huge (``huge_bits``) where not ``split``, else a
    PTE table with the PTEs ``__split_huge_pmd_locked`` writes (``bits`` | pfn)."""
    n = len(haddr)
    r0 = state.pmds.append(n, zero=False)
    rows = state.pmds.a[r0:]
    rows["mm"] = mm.id
    rows["haddr"] = haddr
    bits = np.broadcast_to(np.asarray(bits, np.uint64), (n,))
    hb = np.broadcast_to(np.asarray(huge_bits, np.uint64), (n,))
    huge = (heads.astype(np.uint64) << np.uint64(PTE_PFN_SHIFT)) | hb | np.uint64(_PAGE_PSE)
    rows["pmd"] = np.where(split, np.uint64(_PAGE_PRESENT), huge)
    # A split PMD's PTE table holds what split_huge_pmd wrote (and the zap left); a huge PMD's
    # deposited table is allocated only when it is split (MemoryState.withdraw_tables).
    nsplit = int(np.count_nonzero(split))
    t0 = state.tables.append(nsplit, zero=False)
    rows["pte_table"] = np.where(split, t0 + np.cumsum(split) - 1, -1)
    zap_lo = np.zeros(n, np.int64)
    zap_hi = np.zeros(n, np.int64)
    if zap is not None:
        partial, offset, k = zap
        zap_lo = np.where(partial, offset, 0)
        zap_hi = np.where(partial, offset + k, 0)
    s = np.flatnonzero(split)
    populate_pte_tables(state.tables.a, t0, heads[s].astype(np.uint64),
                        np.ascontiguousarray(bits[s]), zap_lo[s], zap_hi[s])
    mm.add_pmd_rows(haddr, np.arange(r0, r0 + n, dtype=np.int64))
