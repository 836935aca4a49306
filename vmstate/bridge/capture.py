"""A live process's THP state from ``/proc``, as a state dataset, and that dataset loaded into the engine.

:func:`capture` reads each process's ``/proc/PID/maps`` and ``pagemap``, then ``/proc/kpageflags`` and
``/proc/kpagecount`` for every frame it maps (and every frame of each THP it maps part of), and
returns ``pages`` and ``pagemap`` frames in exactly the simulator's schema
(``../shared/spec/SCENARIOS.md``). What ``/proc`` does not say is left out or bounded, and written
into the Parquet files' key-value metadata (``vmstate.*`` keys):

- ``refcount`` is null: the kernel exports no page_count() (``/proc/kpagecount`` is the mapcount).
  Pins (GUP, vmsplice, io_uring buffers) are invisible.
- ``pmd``: pagemap has no PMD bit. The ``PAGEMAP_SCAN`` ioctl (Linux 6.7+) reports ``PAGE_IS_HUGE``
  for a PMD-mapped THP exactly; before 6.7 a heuristic stands in (a 2 MiB-aligned slot whose 512 pages
  map pfns ``head .. head + 511`` of one THP, ``head`` 512-aligned, inside one VMA), checked against
  smaps ``AnonHugePages``.
- ``writable``: no interface exports the PTE write bit. It is true when the VMA allows writing and the
  page is mapped exclusively (pagemap bit 56, and no page of its THP mapped twice): an upper bound —
  a write-protected PTE of an exclusive page (left by fork after the child exited, or by mprotect)
  reads as writable; false is exact.
- ``migration``: a pagemap swap entry of a migration type (27-30); its pfn is the swap offset.

:func:`from_capture` rebuilds processes, VMAs, THPs, small pages
and page tables from such a dataset (or from a simulator snapshot) with the v5 counters the mappings
imply, validates, and leaves a report of what it could not know in ``state.capture_report``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from vmstate.kernels.constants import (
    HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SHIFT, PG_double_map, PG_head, PG_locked, PG_tail,
    PTE_PFN_SHIFT, V4_5,
    VM_ANON_DEFAULT, VM_HUGEPAGE, VM_WRITE, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE,
    _PAGE_RW,
)
from vmstate.bridge import procfs
from vmstate.io.atomic import write_tree
from vmstate.io.dataset import PAGEMAP, PAGES, parquet_writer, read_dataset
from vmstate.engine.state import MemoryState
from vmstate.errors import BadInput, CorruptState
from vmstate.io.export import (
    PG_TO_KPF, KPF_ANON, KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_THP, PAGEMAP_SCHEMA, PAGES_SCHEMA,
)

N = HPAGE_PMD_NR
REFCOUNT_REASON = ("null: the kernel exports no page_count(); /proc/kpagecount is the mapcount. "
                   "References held outside the page tables (GUP pins, vmsplice, io_uring "
                   "registered buffers, the page cache) are invisible in /proc")
WRITABLE_MEANING = ("upper bound: VMA allows write AND pagemap bit 56 (mapped exclusively) AND no "
                    "page of its THP mapped twice. The PTE write bit itself is exported nowhere: an "
                    "exclusive page behind a write-protected PTE reads as writable; false is exact")
PMD_SCAN = "PAGEMAP_SCAN PAGE_IS_HUGE (exact)"
PMD_HEURISTIC = ("heuristic: 512 pages of a 2 MiB-aligned slot map pfns head..head+511 of one THP "
                 "(head 512-aligned) inside one VMA; checked against smaps AnonHugePages")


@dataclass(frozen=True)
class Target:
    """A process to capture: ``name`` becomes the ``mm`` column."""
    name: str
    pid: int


@dataclass
class Captured:
    pages: pl.DataFrame
    pagemap: pl.DataFrame
    pages_meta: dict
    pagemap_meta: dict
    notes: list


# ---------------------------------------------------------------------------------------------
# Reading /proc


def capture(targets: list[Target], ranges: list[tuple[int, int]] | None = None,
            extra_pfns=None) -> Captured:
    """The state dataset of ``targets`` over ``ranges`` (``[start, end)`` pairs; every VMA when
    None). ``extra_pfns``: frames to list in ``pages`` even if nothing maps them now (kernel-run
    passes every frame its processes ever mapped, as the simulator lists every frame it allocated)."""
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise BadInput(f"two processes named {sorted(n for n in names if names.count(n) > 1)[0]!r}",
                       field="pid")
    parts, vmas, notes, methods = [], {}, [], set()
    for t in targets:
        part, vm, method = _capture_process(t, ranges, notes)
        parts.append(part)
        vmas[t.name] = [v.as_json() for v in vm]
        methods.add(method)
    vaddr = np.concatenate([p["vaddr"] for p in parts]) if parts else np.zeros(0, np.uint64)
    entry = np.concatenate([p["entry"] for p in parts]) if parts else np.zeros(0, np.uint64)
    huge = np.concatenate([p["huge"] for p in parts]) if parts else np.zeros(0, bool)
    vwrite = np.concatenate([p["vma_write"] for p in parts]) if parts else np.zeros(0, bool)
    mm = np.concatenate([np.full(len(p["vaddr"]), i) for i, p in enumerate(parts)]) if parts \
        else np.zeros(0, np.int64)

    present = (entry & np.uint64(procfs.PM_PRESENT)) != 0
    swap = ((entry & np.uint64(procfs.PM_SWAP)) != 0) & ~present
    swp_type = (entry & np.uint64(31)).astype(np.int64)
    migration = swap & (swp_type >= procfs.SWP_MIGRATION_TYPES.start) & (
        swp_type < procfs.SWP_MIGRATION_TYPES.stop)
    raw = entry & np.uint64(procfs.PM_PFN_MASK)
    pfn = np.where(present, raw, raw >> np.uint64(procfs.SWP_TYPE_BITS)).astype(np.int64)
    keep = present | migration
    if (swap & ~migration).any():
        notes.append(f"{int((swap & ~migration).sum())} swapped-out pages left out (no frame)")
    if (present & (pfn == 0)).any():
        raise BadInput("pagemap shows present pages with pfn 0: reading page frame numbers needs "
                       "CAP_SYS_ADMIN (run as root)", field="pid")
    vaddr, pfn, present, migration, huge, vwrite, mm, entry = (
        x[keep] for x in (vaddr, pfn, present, migration, huge, vwrite, mm, entry))

    frames = np.unique(np.concatenate([pfn, np.asarray(extra_pfns if extra_pfns is not None else [],
                                                       np.int64)]))
    pages = _pages(frames)
    lookup = pl.DataFrame({"pfn": pfn.astype(np.uint64)}).join(
        pages.select("pfn", "mapcount", "head_pfn"), on="pfn", how="left", maintain_order="left")
    head = lookup["head_pfn"].fill_null(0).to_numpy().astype(np.int64)
    in_thp = lookup["head_pfn"].is_not_null().to_numpy()
    count = lookup["mapcount"].to_numpy()
    # A THP is exclusive when none of its pages is mapped twice (kpagecount <= 1 for all 512).
    thp_max = pages.filter(pl.col("head_pfn").is_not_null()).group_by("head_pfn").agg(
        pl.col("mapcount").max().alias("max"))
    shared_heads = set(thp_max.filter(pl.col("max") > 1)["head_pfn"].to_list())
    thp_shared = np.isin(head, np.fromiter(shared_heads, np.int64, len(shared_heads))) & in_thp
    exclusive = ((entry & np.uint64(procfs.PM_MMAP_EXCLUSIVE)) != 0) & (count <= 1) & ~thp_shared
    writable = vwrite & present & exclusive
    if "heuristic" in methods:
        huge = huge | _pmd_heuristic(mm, vaddr, pfn, head, in_thp, present, targets, vmas, notes)
    pagemap = pl.DataFrame({
        "mm": [names[i] for i in mm.tolist()], "vaddr": vaddr.astype(np.uint64),
        "pfn": pfn.astype(np.uint64), "present": present, "migration": migration,
        "writable": writable, "pmd": huge & present,
    }, schema=PAGEMAP_SCHEMA)
    common = {"vmstate.source": "capture", "vmstate.kernel": os.uname().release,
              "vmstate.captured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "vmstate.processes": json.dumps({t.name: t.pid for t in targets}),
              "vmstate.notes": json.dumps(notes)}
    pages_meta = {**common, "vmstate.refcount": REFCOUNT_REASON,
                  "vmstate.head_pfn": "from KPF_COMPOUND_HEAD/KPF_COMPOUND_TAIL of KPF_THP pages"}
    pagemap_meta = {**common, "vmstate.pmd": PMD_SCAN if methods == {"scan"} else PMD_HEURISTIC,
                    "vmstate.writable": WRITABLE_MEANING, "vmstate.vmas": json.dumps(vmas)}
    return Captured(pages, pagemap, pages_meta, pagemap_meta, notes)


def _capture_process(t: Target, ranges, notes):
    """Pagemap entries of one process: vaddr, entry, huge (PAGE_IS_HUGE), the VMA's write bit."""
    maps = procfs.read_maps(t.pid)
    ranges = _merge(ranges) if ranges is not None else None
    clipped = []
    for v in maps:
        for lo, hi in ranges if ranges is not None else [(v.start, v.end)]:
            lo, hi = max(lo, v.start), min(hi, v.end)
            if lo < hi:
                clipped.append((v, lo, hi))
    path = f"/proc/{t.pid}/pagemap"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise procfs._proc_error(path, e) from None
    vaddrs, entries, huges, writes, method = [], [], [], [], "scan"
    try:
        for v, lo, hi in clipped:
            regions = procfs.pagemap_scan(fd, lo, hi) if method == "scan" else None
            if regions is None:
                method = "heuristic"
                if hi - lo > 1 << 36:
                    notes.append(f"{t.name}: VMA 0x{v.start:x}-0x{v.end:x} over 64 GiB skipped "
                                 f"(no PAGEMAP_SCAN on this kernel)")
                    continue
                regions = [(lo, hi, 0)]
            for s, e, cat in regions:
                ent = procfs.read_pagemap(fd, s, e)
                va = np.arange(s, e, procfs.PAGE, dtype=np.uint64)
                sel = (ent & np.uint64(procfs.PM_PRESENT | procfs.PM_SWAP)) != 0
                vaddrs.append(va[sel])
                entries.append(ent[sel])
                huges.append(np.full(int(sel.sum()), bool(cat & procfs.PAGE_IS_HUGE)))
                writes.append(np.full(int(sel.sum()), "w" in v.perms))
    except OSError as e:
        if e.errno == 3:  # ESRCH: it exited under us
            raise BadInput(f"process {t.pid} exited during the capture", field="pid") from None
        raise procfs._proc_error(path, e) from None
    finally:
        os.close(fd)
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))
    part = {"vaddr": cat(vaddrs, np.uint64), "entry": cat(entries, np.uint64),
            "huge": cat(huges, bool), "vma_write": cat(writes, bool)}
    vmas = [procfs.MapsVma(lo, hi, v.perms, v.offset, v.inode, v.path) for v, lo, hi in clipped]
    return part, vmas, method


def _merge(ranges):
    """Overlapping or touching ``[start, end)`` ranges merged, in address order."""
    out = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [tuple(r) for r in out]


def _pages(frames: np.ndarray) -> pl.DataFrame:
    """pages.parquet rows for ``frames`` and every frame of each THP among them. head_pfn comes from
    the compound flags: a tail belongs to the nearest KPF_COMPOUND_HEAD before it with only tails in
    between (an anonymous THP is at most PMD-sized and naturally aligned: within its 512-frame
    window)."""
    if not len(frames):
        return pl.DataFrame(schema=PAGES_SCHEMA)
    flags, _ = procfs.read_kpage(frames)
    thp = ((flags >> np.uint64(KPF_THP)) & np.uint64(1)) == 1
    windows = np.unique(frames[thp] >> 9)
    win_pfns = (windows[:, None] * 512 + np.arange(512)[None, :]).ravel()
    whead = np.zeros(0, np.int64)
    folio = np.zeros(0, np.int64)
    if len(windows):
        wflags = procfs.read_kpage(win_pfns)[0].reshape(-1, 512)
        bit = (lambda k: ((wflags >> np.uint64(k)) & np.uint64(1)) == 1)
        tail, is_head = bit(KPF_COMPOUND_TAIL), bit(KPF_COMPOUND_HEAD) & bit(KPF_THP)
        idx = np.broadcast_to(np.arange(512), tail.shape)
        last = np.maximum.accumulate(np.where(~tail, idx, -1), axis=1)  # last non-tail up to here
        ok = (last >= 0) & np.take_along_axis(is_head, np.maximum(last, 0), axis=1)
        whead = np.where(ok, windows[:, None] * 512 + last, -1).ravel()
        wanted = np.unique(whead[np.isin(win_pfns, frames) & (whead >= 0)])
        folio = win_pfns[np.isin(whead, wanted)]
    all_pfns = np.unique(np.concatenate([frames, folio]))
    f, c = procfs.read_kpage(all_pfns)
    head = np.full(len(all_pfns), -1, np.int64)
    if len(win_pfns):
        pos = np.minimum(np.searchsorted(win_pfns, all_pfns), len(win_pfns) - 1)
        hit = win_pfns[pos] == all_pfns
        head[hit] = whead[pos[hit]]
    head_s = pl.Series("head_pfn", np.maximum(head, 0).astype(np.uint64)).set(
        pl.Series(head < 0), None)
    return pl.DataFrame({"pfn": all_pfns.astype(np.uint64), "flags": f,
                         "mapcount": c.astype(np.int64),
                         "refcount": pl.Series([None] * len(all_pfns), dtype=pl.Int64),
                         "head_pfn": head_s}, schema=PAGES_SCHEMA)


def _pmd_heuristic(mm, vaddr, pfn, head, in_thp, present, targets, vmas, notes):
    """Where PAGEMAP_SCAN is missing: a page is PMD-mapped when its whole 2 MiB slot maps, in
    order, the 512 frames of one THP whose head is 512-aligned, inside one VMA. (A THP whose PMD
    was split but whose 512 PTEs still map it in order reads as PMD-mapped: smaps AnonHugePages,
    which counts only PMD mappings, is compared for every VMA captured whole.)"""
    slot = vaddr.astype(np.int64) >> 21
    off = (vaddr.astype(np.int64) >> PAGE_SHIFT) & 511
    good = in_thp & present & (head % 512 == 0) & (pfn - head == off)
    agg = pl.DataFrame({"mm": mm, "slot": slot, "good": good, "head": head}).group_by(
        "mm", "slot").agg(pl.col("good").all().alias("all"), pl.len().alias("n"),
                          pl.col("head").n_unique().alias("heads"))
    whole = agg.filter(pl.col("all") & (pl.col("n") == 512) & (pl.col("heads") == 1))
    key = set(zip(whole["mm"].to_list(), whole["slot"].to_list()))
    for i, t in enumerate(targets):
        spans = vmas[t.name]
        key -= {(i, s) for m, s in key if m == i and not any(
            v[0] <= s << 21 and (s + 1) << 21 <= v[1] for v in spans)}  # inside one VMA
        try:
            smaps = procfs.smaps_anon_huge(t.pid)
        except OSError:
            continue
        for (lo, hi), ahp in smaps.items():
            if not any(v[0] == lo and v[1] == hi for v in spans):
                continue  # not captured whole
            mine = sum(1 for m, s in key if m == i and lo <= s << 21 < hi)
            if mine != ahp // HPAGE_PMD_SIZE:
                notes.append(f"{t.name}: VMA 0x{lo:x}-0x{hi:x}: the pmd heuristic finds {mine} "
                             f"PMD-mapped THPs, smaps AnonHugePages {ahp // HPAGE_PMD_SIZE}")
    return np.array([(m, s) in key for m, s in zip(mm.tolist(), slot.tolist())], bool)


def write_capture(c: Captured, out):
    """``out/pagemap.parquet`` then ``out/pages.parquet``, each atomically (``vmstate run --out``'s
    scheme)."""
    write_tree(out, [(PAGEMAP, parquet_writer(c.pagemap, c.pagemap_meta)),
                     (PAGES, parquet_writer(c.pages, c.pages_meta))])


def parse_range(text: str) -> tuple[int, int]:
    """``START-END`` (hex with 0x, or decimal), END exclusive."""
    try:
        lo, hi = (int(x, 0) for x in text.split("-"))
    except ValueError:
        raise BadInput(f"--range {text!r}: expected START-END, e.g. 0x7f0000000000-0x7f0004000000",
                       field="range") from None
    if not 0 <= lo < hi:
        raise BadInput(f"--range {text!r}: expected START < END", field="range")
    return lo, hi


# ---------------------------------------------------------------------------------------------
# Loading a dataset into the engine

_KPF_TO_PG = [(pg, kp) for pg, kp in PG_TO_KPF if pg not in (PG_head, PG_tail, PG_locked)]
_ENTRY = _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_DIRTY


def _pg_flags(kpf: np.ndarray) -> np.ndarray:
    """PG_* bits of each page from its kpageflags (the inverse of export.py's table), without
    PG_locked (nobody holds the lock in the loaded state) and the compound bits."""
    out = np.zeros(len(kpf), np.uint32)
    for pg, kp in _KPF_TO_PG:
        out |= (((kpf >> np.uint64(kp)) & np.uint64(1)).astype(np.uint32) << np.uint32(pg))
    return out


def from_capture(path, *, names: dict | None = None, variant: str = "v5") -> MemoryState:
    """A state rebuilt from a state dataset directory (``vmstate capture``, ``kernel-run`` or a
    simulator snapshot), validated; ``state.capture_report`` says what the dataset could not tell
    (pins). ``names`` renames processes (``{"1234": "parent"}``)."""
    state = MemoryState(variant)
    ds = read_dataset(path)
    loader = _Loader(state, ds, names or {})
    loader.load()
    state.validate()
    return state


class _Loader:
    def __init__(self, state, ds, names):
        self.state, self.ds, self.names = state, ds, names
        self.notes: list[str] = []
        self.pm_file = ds.path / PAGEMAP
        self.pages_file = ds.path / PAGES

    def bad(self, file, column, msg):
        raise BadInput(f"{file}: column '{column}': {msg}", field=column)

    def load(self):
        rows = self._rows()
        mms = self._processes(rows)
        vmas = self._vmas(rows, mms)
        self._anon_vmas(rows, vmas)
        self._frames(rows)
        self._page_tables(rows, mms)
        self._report(rows)

    # ---- rows -------------------------------------------------------------------------------
    def _rows(self) -> pl.DataFrame:
        ds = self.ds
        pm = ds.pagemap
        if self.names:
            pm = pm.with_columns(pl.col("mm").replace(self.names))
        bad = pm.filter(pl.col("vaddr") % 4096 != 0)
        if bad.height:
            self.bad(self.pm_file, "vaddr", f"0x{bad['vaddr'][0]:x} is not 4096-aligned")
        dup = pm.group_by("mm", "vaddr").len().filter(pl.col("len") > 1)
        if dup.height:
            self.bad(self.pm_file, "vaddr", f"{dup['mm'][0]!r} 0x{dup['vaddr'][0]:x} appears "
                                            f"{dup['len'][0]} times")
        pages = ds.pages.unique("pfn", keep="first")
        if pages.height != ds.pages.height:
            self.bad(self.pages_file, "pfn", "a pfn appears more than once")
        j = pm.join(pages.rename({"mapcount": "kpagecount"}), on="pfn", how="left",
                    maintain_order="left")
        missing = j.filter(pl.col("flags").is_null())
        if missing.height:
            r = missing.row(0, named=True)
            self.bad(self.pm_file, "pfn", f"pfn 0x{r['pfn']:x} ({r['mm']!r} 0x{r['vaddr']:x}) has "
                                          f"no row in {PAGES}")
        kpf = j["flags"].to_numpy()
        zero = (kpf >> np.uint64(procfs.KPF_ZERO_PAGE)) & np.uint64(1) == 1
        anon = (kpf >> np.uint64(KPF_ANON)) & np.uint64(1) == 1
        swapped = ~j["present"].to_numpy() & ~j["migration"].to_numpy()
        keep = ~zero & anon & ~swapped
        for what, mask in (("the shared zero page", zero), ("non-anonymous pages", ~anon & ~zero),
                           ("non-present, non-migration entries", swapped & anon & ~zero)):
            if mask.sum():
                self.notes.append(f"{int(mask.sum())} pagemap rows mapping {what} left out")
        if (j["migration"].to_numpy() & keep).any():
            self.notes.append(f"{int((j['migration'].to_numpy() & keep).sum())} migration entries "
                              f"(a split or migration in flight) loaded as present PTEs")
        j = j.filter(pl.Series(keep))
        # THP membership: a head_pfn whose folio has all 512 frames in pages.parquet
        sizes = pages.filter(pl.col("head_pfn").is_not_null()).group_by("head_pfn").len()
        small_folios = sizes.filter(pl.col("len") != N)["head_pfn"]
        if len(small_folios):
            self.notes.append(f"{len(small_folios)} large folios that are not 512 pages (mTHP, or "
                              f"a THP not listed whole) loaded as small pages")
        j = j.with_columns(
            pl.when(pl.col("head_pfn").is_in(small_folios.to_list())).then(None)
            .otherwise(pl.col("head_pfn")).alias("head_pfn"))
        j = j.with_columns((pl.col("pfn").cast(pl.Int64) - pl.col("head_pfn").cast(pl.Int64))
                           .alias("sub"),
                           (pl.col("vaddr") // HPAGE_PMD_SIZE * HPAGE_PMD_SIZE).alias("haddr"),
                           ((pl.col("vaddr") // 4096) % N).cast(pl.Int64).alias("voff"))
        odd = j.filter(pl.col("head_pfn").is_not_null() & (
            (pl.col("sub") != pl.col("voff")) | (pl.col("head_pfn") % N != 0)))
        if odd.height:
            r = odd.row(0, named=True)
            self.bad(self.pm_file, "vaddr", f"{r['mm']!r} 0x{r['vaddr']:x} maps subpage {r['sub']} "
                     f"of the THP at pfn 0x{r['head_pfn']:x} at offset {r['voff']} of its 2 MiB slot "
                     f"(an mremap'd THP): vmstate maps subpage i at offset i")
        return j

    def _processes(self, rows):
        state = self.state
        from vmstate.engine.state import Mm
        order = rows["mm"].unique(maintain_order=True).to_list()
        declared = self.ds.meta_json("vmstate.vmas", {}) or {}
        for name in declared:
            name = self.names.get(name, name)
            if name not in order:
                order.append(name)
        mms = {}
        for i, name in enumerate(order):
            mms[name] = state.mms[name] = Mm(name, i)
        return mms

    # ---- VMAs and anon_vmas ------------------------------------------------------------------
    def _vmas(self, rows, mms):
        """VMAs from the capture's ``vmstate.vmas`` metadata (anonymous private ones), else one
        read-write VMA per run of contiguous mapped pages."""
        from vmstate.engine.state import Vma
        declared = self.ds.meta_json("vmstate.vmas")
        thp_slots = set(zip(*rows.filter(pl.col("head_pfn").is_not_null())
                            .select("mm", "haddr").unique().get_columns())) if rows.height else set()
        out = []
        for name, mm in mms.items():
            mine = rows.filter(pl.col("mm") == name)["vaddr"].sort().to_numpy().astype(np.int64)
            if declared is not None:
                orig = next((k for k, v in self.names.items() if v == name), name)
                spans = [(s, e, "w" in perms) for s, e, perms, p in declared.get(orig, [])
                         if perms.endswith("p")]
                covered = np.zeros(len(mine), bool)
                for s, e, _ in spans:
                    covered |= (mine >= s) & (mine < e)
                if not covered.all():
                    self.bad(self.pm_file, "vaddr", f"{name!r} 0x{int(mine[~covered][0]):x} lies in "
                             f"no VMA of the metadata vmstate.vmas")
                spans = [sp for sp in spans if ((mine >= sp[0]) & (mine < sp[1])).any()]
            else:
                breaks = np.flatnonzero(np.diff(mine) != 4096) + 1
                spans = [(int(r[0]), int(r[-1]) + 4096, True) for r in np.split(mine, breaks) if len(r)]
            for s, e, w in spans:
                flags = VM_ANON_DEFAULT & ~(0 if w else VM_WRITE)
                if any(n == name and s < h + HPAGE_PMD_SIZE and h < e for n, h in thp_slots):
                    flags |= VM_HUGEPAGE
                v = Vma(mm, s, e, s >> PAGE_SHIFT, flags, -1)
                mm.vmas.append(v)
                out.append(v)
            mm.vmas.sort(key=lambda v: v.vm_start)
        if declared is None:
            self.notes.append("no VMA metadata (a simulator snapshot?): one read-write VMA per run "
                              "of contiguous mapped pages")
        return out

    def _anon_vmas(self, rows, vmas):
        """VMAs that map a common page share an anon_vma (the one fork's anon_vma chain gives the
        rmap walk); every other VMA gets its own. A page mapped at two addresses is refused."""
        parent = list(range(len(vmas)))

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x
        idx = {}
        by_mm = {}
        for k, v in enumerate(vmas):
            by_mm.setdefault(v.mm.name, []).append((v.vm_start, v.vm_end, k))
        vma_of = np.full(rows.height, -1, np.int64)
        mm_col, va = rows["mm"].to_list(), rows["vaddr"].to_numpy().astype(np.int64)
        for name, spans in by_mm.items():
            sel = np.flatnonzero(np.array([m == name for m in mm_col], bool))
            starts = np.array([s for s, _, _ in spans], np.int64)
            ks = np.array([k for _, _, k in spans], np.int64)
            order = np.argsort(starts)
            pos = np.searchsorted(starts[order], va[sel], side="right") - 1
            vma_of[sel] = ks[order][pos]
        folio = np.where(rows["head_pfn"].is_not_null().to_numpy(),
                         rows["head_pfn"].fill_null(0).to_numpy().astype(np.int64),
                         rows["pfn"].to_numpy().astype(np.int64))
        pairs = pl.DataFrame({"folio": folio, "vma": vma_of}).unique()
        multi = pairs.group_by("folio").agg(pl.col("vma")).filter(pl.col("vma").list.len() > 1)
        for group in multi["vma"].to_list():
            for other in group[1:]:
                a, b = find(group[0]), find(other)
                if a != b:
                    parent[b] = a
        for k, v in enumerate(vmas):
            root = find(k)
            if root not in idx:
                idx[root] = len(self.state.anon_vmas)
                self.state.anon_vmas.append([])
            v.anon_vma = idx[root]
            self.state.anon_vmas[v.anon_vma].append(v)
        # page->index is one per page: every mapping of a page must be at the same address
        moved = (pl.DataFrame({"pfn": rows["pfn"], "vaddr": rows["vaddr"]}).group_by("pfn")
                 .agg(pl.col("vaddr").n_unique().alias("n"), pl.col("vaddr").min().alias("v"))
                 .filter(pl.col("n") > 1))
        if moved.height:
            self.bad(self.pm_file, "vaddr", f"pfn 0x{moved['pfn'][0]:x} is mapped at "
                     f"{moved['n'][0]} addresses (mremap): vmstate keeps one page->index per page")
        self.anon_vma_of_row = np.array([vmas[k].anon_vma for k in vma_of.tolist()], np.int64)

    # ---- frames -------------------------------------------------------------------------------
    def _frames(self, rows):
        """One block per THP, one per run of small pages in a 2 MiB slot, allocated in order of the
        first mapping (process, address); the v5 counters the mappings imply."""
        st = self.state
        ids = {n: m.id for n, m in st.mms.items()}
        r = rows.with_columns(pl.Series("av", self.anon_vma_of_row),
                              pl.col("mm").replace_strict(ids, return_dtype=pl.Int64).alias("mm_id"),
                              pl.int_range(pl.len()).alias("row"))
        first = r.sort("mm_id", "vaddr")
        thp = (first.filter(pl.col("head_pfn").is_not_null())
               .group_by("head_pfn", maintain_order=True)
               .agg(pl.col("mm_id", "vaddr", "haddr", "av", "flags").first()))
        small = (first.filter(pl.col("head_pfn").is_null())
                 .group_by("pfn", maintain_order=True)
                 .agg(pl.col("mm_id", "vaddr", "haddr", "voff", "av", "flags").first())
                 .sort("av", "haddr", "voff"))
        new_run = ((pl.col("av") != pl.col("av").shift()) | (pl.col("haddr") != pl.col("haddr").shift())
                   | (pl.col("voff") != pl.col("voff").shift() + 1)).fill_null(True)
        runs = (small.with_columns(new_run.cum_sum().alias("run"))
                .group_by("run").agg(pl.col("mm_id", "vaddr").sort_by("mm_id", "vaddr").first(),
                                     pl.col("haddr", "av").first(), pl.col("voff").min().alias("lo"),
                                     pl.col("voff").max().alias("hi"), pl.col("pfn"),
                                     pl.col("flags")))
        specs = [((g["mm_id"], g["vaddr"]), 0, g) for g in thp.iter_rows(named=True)]
        specs += [((g["mm_id"], g["vaddr"]), 1, g) for g in runs.iter_rows(named=True)]
        specs.sort(key=lambda s: (s[0], s[1]))
        heads, head_blocks, spfns, sblocks = [], [], [], []
        for _, kind, g in specs:
            if kind == 0:
                b = st.alloc_block(int(g["av"]), int(g["haddr"]) >> PAGE_SHIFT)
                rec = st.blocks.a[b]
                rec["flags"][0] = (1 << PG_head) | int(_pg_flags(np.array([g["flags"]], np.uint64))[0])
                rec["flags"][1:] = 1 << PG_tail
                heads.append(g["head_pfn"])
                head_blocks.append(b)
            else:
                lo, hi = int(g["lo"]), int(g["hi"]) + 1
                b = st.alloc_block(int(g["av"]), int(g["haddr"]) >> PAGE_SHIFT, lo, hi)
                st.blocks.a[b]["flags"][lo:hi] = _pg_flags(np.array(g["flags"], np.uint64))
                spfns += g["pfn"]
                sblocks += [b] * len(g["pfn"])
        # engine pfn of every row: block * 512 + its offset (subpage i of a THP, or the page's
        # offset in its 2 MiB virtual slot)
        blk = pl.concat([pl.DataFrame({"key": pl.Series(heads, dtype=pl.UInt64),
                                       "blk": pl.Series(head_blocks, dtype=pl.Int64)}),
                         pl.DataFrame({"key": pl.Series(spfns, dtype=pl.UInt64),
                                       "blk": pl.Series(sblocks, dtype=pl.Int64)})])
        keyed = r.with_columns(pl.coalesce("head_pfn", "pfn").alias("key")).join(
            blk, on="key", how="left", maintain_order="left")
        self.row_pfn = (keyed["blk"] * N + keyed["voff"]).to_numpy().astype(np.int64)
        self.captured = pl.DataFrame({"pfn": self.row_pfn.astype(np.uint64),
                                      "captured_pfn": rows["pfn"]}).unique("pfn").sort("pfn")
        a = st.blocks.a
        b, i = self.row_pfn // N, self.row_pfn % N
        pmd = rows["pmd"].to_numpy()
        nb = st.blocks.n
        ptemaps = np.bincount(self.row_pfn[~pmd], minlength=nb * N)[:nb * N].reshape(nb, N)
        pmdmaps = np.bincount(b[pmd & (i == 0)], minlength=nb)[:nb]
        compound = (a["flags"][:, 0] & (1 << PG_head)) != 0
        a["compound_mapcount"] = np.where(compound, pmdmaps - 1, -1)
        allocated = np.zeros((nb, N), bool)
        allocated[b, i] = True
        allocated[compound] = True
        # the offset on every subpage's raw _mapcount: v5 while PMD-mapped; 4.5 while PG_double_map
        # (mapped by PMDs and PTEs at once), which lives on page[1]
        if st.variant == V4_5:
            offset = compound & (pmdmaps > 0) & (ptemaps > 0).any(axis=1)
            a["flags"][offset, 1] |= np.uint32(1 << PG_double_map)
        else:
            offset = compound & (pmdmaps > 0)
        raw = ptemaps - 1 + offset[:, None]
        a["_mapcount"] = np.where(allocated, raw, -1)
        total = pmdmaps + ptemaps.sum(axis=1)
        a["_count"] = np.where(compound[:, None], 0, np.where(allocated, ptemaps, 0))
        a["_count"][compound, 0] = total[compound]
        # v5 queues a THP whenever a subpage's _mapcount drops to -1 (26/28): one partly unmapped
        a["deferred"] = compound & (pmdmaps == 0) & (ptemaps == 0).any(axis=1)
        self.ptemaps, self.pmdmaps, self.compound = ptemaps, pmdmaps, compound

    # ---- page tables --------------------------------------------------------------------------
    def _page_tables(self, rows, mms):
        st = self.state
        pmd = rows["pmd"].to_numpy()
        write = rows["writable"].to_numpy()
        va = rows["vaddr"].to_numpy().astype(np.int64)
        haddr = va & ~(HPAGE_PMD_SIZE - 1)
        mm_col = rows["mm"].to_numpy()
        for name, mm in mms.items():
            sel = mm_col == name
            h, p, w, v, sp = haddr[sel], pmd[sel], write[sel], va[sel], self.row_pfn[sel]
            for slot in np.unique(h).tolist():
                at = h == slot
                if p[at].any():
                    if not (p[at].all() and at.sum() == N and (sp[at] % N == (v[at] - slot) >> 12).all()
                            and len(np.unique(sp[at] // N)) == 1 and self.compound[sp[at][0] // N]):
                        self.bad(self.pm_file, "pmd", f"{name!r} 0x{slot:x}: pmd is set on "
                                 f"{int(p[at].sum())} rows, expected the 512 pages of one THP")
                    head = int(sp[at].min())
                    st.set_huge_pmd(mm, slot, (head << PTE_PFN_SHIFT) | _ENTRY | _PAGE_PSE | (
                        _PAGE_RW if w[at].all() else 0))
                else:
                    t = st.table_of(st.pmd_row(mm, slot, create=True))
                    k = (v[at] - slot) >> PAGE_SHIFT
                    st.ptes[t, k] = (sp[at].astype(np.uint64) << np.uint64(PTE_PFN_SHIFT)) | \
                        np.uint64(_ENTRY) | np.where(w[at], np.uint64(_PAGE_RW), np.uint64(0))

    # ---- what the capture could not say -------------------------------------------------------
    def _check_consistent(self, rows, kpc, implied):
        """A simulator snapshot lists every process, so its mapcounts must be exactly the mappings
        its pagemap holds, and no refcount may be below the mapcount: otherwise the dataset is
        corrupt (exit 3), reported with the values tested. (A capture of live processes may see
        mappings of processes it did not capture: reported, not refused.)"""
        pfn = rows["pfn"].to_numpy()
        if self.ds.meta.get("vmstate.source", "simulator") == "simulator":
            for j in np.flatnonzero(kpc != implied)[:1]:
                raise CorruptState(
                    f"{self.pages_file}: pfn 0x{int(pfn[j]):x}: mapcount={int(kpc[j])}, but "
                    f"{int(implied[j])} entries of the pagemap map it [mapcount = PTE mappings + "
                    f"PMD mappings of its THP]", pfn=int(pfn[j]), rule="mapcount = mappings")
        refc = rows["refcount"].to_numpy(allow_copy=True) if "refcount" in rows.columns else None
        if refc is not None and rows["refcount"].null_count() == 0:
            for j in np.flatnonzero(refc < kpc)[:1]:
                raise CorruptState(
                    f"{self.pages_file}: pfn 0x{int(pfn[j]):x}: refcount={int(refc[j])} below "
                    f"mapcount={int(kpc[j])} [page_count = total_mapcount + pins]",
                    pfn=int(pfn[j]), rule="page_count >= mapcount")

    def _report(self, rows):
        st = self.state
        b, i = self.row_pfn // N, self.row_pfn % N
        implied = self.ptemaps[b, i] + self.pmdmaps[b]
        kpc = rows["kpagecount"].to_numpy()
        self._check_consistent(rows, kpc, implied)
        more = kpc > implied
        if more.any():
            self.notes.append(f"{int(more.sum())} mapped pages have a mapcount above the captured "
                              f"mappings (mapped by processes outside the capture): only the "
                              f"captured mappings are modelled")
        if (kpc < implied).any():
            self.notes.append(f"{int((kpc < implied).sum())} mapped pages have a mapcount below the "
                              f"captured mappings (the state changed during the capture)")
        refc = rows["refcount"]
        pins = "pins are invisible in /proc: refcounts are what the mappings imply; add them with " \
               "pin ops (op = \"pin\") before splitting"
        if refc.null_count() < rows.height:
            head_count = st._count[b, np.where(self.compound[b], 0, i)]
            extra = refc.fill_null(0).to_numpy() > head_count
            pins = (f"the dataset's refcount exceeds what the mappings imply on {int(extra.sum())} "
                    f"mapped pages (pins or transient references): not reconstructed; add pin ops")
        thps = int(self.compound.sum())
        small = np.unique(self.row_pfn[~self.compound[b]]) if rows.height else []
        self.state.capture_report = {
            "path": str(self.ds.path), "source": self.ds.meta.get("vmstate.source", "simulator"),
            "processes": {n: len(m.vmas) for n, m in st.mms.items()},
            "thps": thps, "pmd_mapped": int(rows["pmd"].sum()) // N,
            "small_pages": len(small),
            "pins": pins, "notes": self.notes + self.ds.meta_json("vmstate.notes", []),
        }
        self.state.capture_pfn = self.captured  # engine pfn -> captured pfn, per mapped page
