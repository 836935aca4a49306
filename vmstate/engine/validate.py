"""Validators: the invariants of MODEL.md over the whole state, outside a split.

Each ``validate_*`` raises :class:`~vmstate.errors.CorruptState` naming the first offending pfn (or
entry), the values it tested, and the rule. ``validate_state`` runs them all; tests run it after every
operation, ``vmstate run --validate`` does too.
"""
import numpy as np

from vmstate.kernels.constants import (
    ENTIRELY_MAPPED, HPAGE_PMD_NR, MM_ID_DUMMY, PG_head, PG_hwpoison, PG_tail, PTE_PFN_MASK,
    PTE_PFN_SHIFT, _PAGE_PRESENT, _PAGE_PSE, _PAGE_SPECIAL, _PAGE_VMS_MIGRATION,
)
from vmstate.errors import CorruptState

N = HPAGE_PMD_NR
_HEAD = 1 << PG_head
_TAIL = 1 << PG_tail


def _fail(rule, pfn, msg):
    raise CorruptState(f"pfn 0x{pfn:x}: {msg} [{rule}]", pfn=pfn, rule=rule)


def _entries(state):
    """(pfn, kind, mm, vaddr) of every non-none entry: kind 0 PTE, 1 migration, 2 huge PMD."""
    pmd = state.pmd.astype(np.int64)
    rows = np.arange(len(pmd))
    huge = (pmd & _PAGE_PSE) != 0
    table_rows = rows[((pmd & _PAGE_PRESENT) != 0) & ~huge & (state.pte_table >= 0)]
    tables = state.ptes[state.pte_table[table_rows]] if len(table_rows) else np.zeros((0, N), np.uint64)
    # the zero page's PTEs map no frame of the model
    r, k = np.nonzero((tables != 0) & ((tables & np.uint64(_PAGE_SPECIAL)) == 0))
    ptes = tables[r, k].astype(np.int64)
    pfn = np.concatenate([(ptes & PTE_PFN_MASK) >> PTE_PFN_SHIFT,
                          (pmd[huge] & PTE_PFN_MASK) >> PTE_PFN_SHIFT])
    kind = np.concatenate([np.where(ptes & _PAGE_VMS_MIGRATION, 1, 0), np.full(huge.sum(), 2)])
    where_rows = np.concatenate([table_rows[r], rows[huge]])
    offs = np.concatenate([k, np.zeros(huge.sum(), np.int64)])
    present = np.concatenate([(ptes & _PAGE_PRESENT) != 0, np.ones(huge.sum(), bool)])
    return pfn.astype(np.int64), kind, present, where_rows, offs


def _where(state, row, off):
    rec = state.pmds.a[row]
    name = next((m.name for m in state.mms.values() if m.id == rec["mm"]), "?")
    return f"process {name!r} vaddr 0x{int(rec['haddr']) + (int(off) << 12):x}"


def validate_page_tables(state, entries=None):
    """Every entry maps an in-use page; a huge PMD maps a THP head; no migration entry survives a
    split (they exist only between freeze_page() and unfreeze_page())."""
    pfn, kind, present, rows, offs = entries if entries is not None else _entries(state)
    if not len(pfn):
        return
    nblocks = state.blocks.n
    b = pfn // N
    bad = np.flatnonzero((b < 1) | (b >= nblocks))
    if len(bad):
        j = bad[0]
        _fail("entry maps an allocated frame", int(pfn[j]), f"mapped at {_where(state, rows[j], offs[j])} "
              "but never allocated")
    i = pfn % N
    flags = state.flags[b, i]
    head_count = state._count[b, np.where(flags & _TAIL, 0, i)]
    for j in np.flatnonzero(head_count <= 0)[:1]:
        _fail("a PTE maps a live page", int(pfn[j]), f"mapped at {_where(state, rows[j], offs[j])} "
              f"with page_count={int(head_count[j])}, expected > 0")
    for j in np.flatnonzero((kind == 2) & ((i != 0) | ((flags & _HEAD) == 0)))[:1]:
        _fail("a huge PMD maps a THP head", int(pfn[j]), f"huge PMD at {_where(state, rows[j], offs[j])}"
              f" maps flags=0x{int(flags[j]):x}, expected PG_head")
    for j in np.flatnonzero(kind == 1)[:1]:
        _fail("no migration entry outside a split", int(pfn[j]),
              f"migration entry at {_where(state, rows[j], offs[j])}")


def validate_mapcounts(state, entries=None):
    """``_mapcount`` and compound_mapcount equal what the page tables hold (offset included; 4.5:
    PG_double_map only while a PMD still maps the THP)."""
    pfn, kind, present, rows, offs = entries if entries is not None else _entries(state)
    nb = state.blocks.n
    ptemaps = np.bincount(pfn[kind != 2], minlength=nb * N)[:nb * N].reshape(nb, N)
    pmdmaps = np.bincount(pfn[kind == 2] // N, minlength=nb)[:nb]
    a = state.blocks.a
    compound = (a["flags"][:, 0] & _HEAD) != 0
    want_cmc = np.where(compound, pmdmaps - 1, -1)
    for blk in np.flatnonzero(a["compound_mapcount"] != want_cmc)[:1]:
        _fail("compound_mapcount = PMD mappings", int(blk) * N,
              f"compound_mapcount raw={int(a['compound_mapcount'][blk])}, expected {int(want_cmc[blk])}"
              f" ({int(pmdmaps[blk])} PMD mappings)")
    offset = state.mapcount_offsets()
    for blk in np.flatnonzero(offset & (pmdmaps == 0))[:1]:
        _fail("the mapcount offset only while PMD-mapped", int(blk) * N,
              f"mapcount offset ({state.variant}) on a THP no PMD maps")
    want = ptemaps - 1 + offset[:, None]
    bad = np.argwhere(a["_mapcount"] != want)
    if len(bad):
        blk, k = (int(x) for x in bad[0])
        _fail("_mapcount = PTE mappings (+1 v5 offset while PMD-mapped)", blk * N + k,
              f"_mapcount raw={int(a['_mapcount'][blk, k])}, expected {int(want[blk, k])} "
              f"({int(ptemaps[blk, k])} PTE mappings, {int(pmdmaps[blk])} PMD mappings)")


def validate_refcounts(state):
    """Tails hold 0 while compound; ``page_count == total_mapcount + pins`` for every in-use page;
    free frames are clean."""
    a = state.blocks.a
    nb = state.blocks.n
    compound = (a["flags"][:, 0] & _HEAD) != 0
    tails = (a["flags"] & _TAIL) != 0
    bad = np.argwhere(tails & (a["_count"] != 0))
    if len(bad):
        blk, k = (int(x) for x in bad[0])
        _fail("tails' _count is 0 while compound", blk * N + k,
              f"tail _count={int(a['_count'][blk, k])}, expected 0")
    held = [p for stack in state.pins.values() for p in stack]
    pins = np.zeros((nb, N), np.int64)
    if held:
        pfns = np.concatenate([p.pfns for p in held])
        nr = np.concatenate([np.full(len(p.pfns), p.nr, np.int64) for p in held])
        pins = np.bincount(pfns, weights=nr, minlength=nb * N)[:nb * N].astype(np.int64).reshape(nb, N)
    cmc = a["compound_mapcount"] + 1
    per_page = a["_mapcount"] + 1 - state.mapcount_offsets()[:, None]
    thp_total = np.where(compound, cmc + per_page.sum(axis=1), 0)
    want = np.where(compound[:, None], 0, per_page + pins)
    want[:, 0] = np.where(compound, thp_total + pins.sum(axis=1), want[:, 0])
    in_use = (a["_count"] != 0) | tails
    bad = np.argwhere(in_use & ~tails & (a["_count"] != want))
    if len(bad):
        blk, k = (int(x) for x in bad[0])
        what = (f"THP page_count={int(a['_count'][blk, 0])}, expected total_mapcount="
                f"{int(thp_total[blk])} + pins={int(pins[blk].sum())}") if compound[blk] else (
                f"page_count={int(a['_count'][blk, k])}, expected mapcount={int(per_page[blk, k])}"
                f" + pins={int(pins[blk, k])}")
        _fail("page_count = total_mapcount + pins", blk * N + k, what)
    i = np.arange(N)[None, :]
    allocated = (i >= a["alloc_start"][:, None]) & (i < a["alloc_end"][:, None])
    dirty_free = allocated & ~in_use & (((a["flags"] & ~np.uint32(1 << PG_hwpoison)) != 0) | (a["_mapcount"] != -1))
    bad = np.argwhere(dirty_free)
    if len(bad):
        blk, k = (int(x) for x in bad[0])
        _fail("a free frame is clean", blk * N + k, f"free frame flags=0x{int(a['flags'][blk, k]):x} "
              f"_mapcount={int(a['_mapcount'][blk, k])}, expected 0 and -1")


def validate_folios(state, entries=None):
    """6.18's large-folio fields equal what the page tables hold: ``_large_mapcount`` every mapping,
    ``_nr_pages_mapped`` the PTE-mapped pages (+ ENTIRELY_MAPPED while PMD-mapped), each MM slot at
    most its MM's mappings (``include/linux/rmap.h``); migration entries count nowhere (they only exist
    inside a split)."""
    pfn, kind, present, rows, offs = entries if entries is not None else _entries(state)
    a = state.blocks.a
    nb = state.blocks.n
    compound = (a["flags"][:, 0] & _HEAD) != 0
    live = kind != 1
    blk = pfn[live] // N
    maps = np.bincount(blk, minlength=nb)[:nb]
    for b in np.flatnonzero(compound & (a["_large_mapcount"] + 1 != maps))[:1]:
        _fail("_large_mapcount = every mapping", int(b) * N,
              f"_large_mapcount raw={int(a['_large_mapcount'][b])}, expected {int(maps[b]) - 1}")
    pte = live & (kind == 0)
    ptemapped = np.zeros((nb, N), bool)
    ptemapped[pfn[pte] // N, pfn[pte] % N] = True
    pmdmapped = np.bincount(pfn[kind == 2] // N, minlength=nb)[:nb] > 0
    want = ptemapped.sum(axis=1) + np.where(pmdmapped, ENTIRELY_MAPPED, 0)
    for b in np.flatnonzero(compound & (a["_nr_pages_mapped"] != want))[:1]:
        _fail("_nr_pages_mapped = PTE-mapped pages + ENTIRELY_MAPPED", int(b) * N,
              f"_nr_pages_mapped={int(a['_nr_pages_mapped'][b]):#x}, expected {int(want[b]):#x}")
    mm_id = state.pmds.a["mm"][rows[live]].astype(np.int64) + 1
    for slot in range(2):
        ids = a["_mm_id"][:, slot].astype(np.int64)
        owned = np.bincount(blk, weights=(mm_id == ids[blk]), minlength=nb)[:nb].astype(np.int64)
        # "valid corner cases where we might underflow a per-MM mapcount (some mappings added when
        # no slot was free, some mappings added once a slot was free)": a slot may count fewer
        # mappings than its MM has, never more
        bad = compound & (ids != MM_ID_DUMMY) & (a["_mm_id_mapcount"][:, slot] + 1 > owned)
        for b in np.flatnonzero(bad)[:1]:
            _fail("an MM slot counts at most its MM's mappings", int(b) * N,
                  f"_mm_id[{slot}]={int(ids[b])} _mm_id_mapcount raw="
                  f"{int(a['_mm_id_mapcount'][b, slot])}, expected at most {int(owned[b]) - 1}")


def validate_state(state):
    entries = _entries(state)
    validate_page_tables(state, entries)
    validate_refcounts(state)
    validate_mapcounts(state, entries)
    if state.k.LARGE_FOLIO_FIELDS:
        validate_folios(state, entries)
