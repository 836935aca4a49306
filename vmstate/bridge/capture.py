"""A live process's THP state from ``/proc``, as a state dataset.

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
- the shared zero page (6.18 maps zero-filled subpages of a split THP to it): a present pagemap entry
  without bit 56 (so ``writable`` false), pfn the kernel's zero pfn; its ``pages`` row has
  KPF_ZERO_PAGE | KPF_RESERVED, kpagecount 0, no head_pfn (measured on Linux 6.18.44). Its pfn is
  in ``vmstate.zero_pfn`` when the capture maps it (the simulator writes it as pfn 0).

:func:`vmstate.bridge.load.from_capture` loads such a dataset into the engine.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from vmstate.kernels.constants import HPAGE_PMD_SIZE, PAGE_SHIFT
from vmstate.bridge import procfs
from vmstate.io.atomic import write_tree
from vmstate.io.dataset import PAGEMAP, PAGES, parquet_writer
from vmstate.errors import BadInput
from vmstate.io.export import KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_THP, PAGEMAP_SCHEMA, PAGES_SCHEMA

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
    zero = pages.filter((pl.col("flags") & (1 << procfs.KPF_ZERO_PAGE)) != 0)["pfn"]
    if zero.len():
        pages_meta["vmstate.zero_pfn"] = str(int(zero[0]))
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
    """``out/pagemap.parquet`` and ``out/pages.parquet`` as ``out``'s content in one switch
    (:class:`vmstate.io.atomic.TreeWriter`, ``vmstate run --out``'s scheme): a reused ``out`` holds
    the previous capture or this one, never one file of each."""
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
