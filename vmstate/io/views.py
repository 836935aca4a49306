"""What a kernel developer looks at, computed from any state dataset (simulated or captured):

- :func:`thpmaps_text`: ``tools/mm/thpmaps`` (smaps-like THP usage per VMA), its layout and names;
- :func:`page_types_frame` / :func:`page_types_text`: ``tools/mm/page-types -p PID``'s summary table
  (flag combination, symbolic and long names, page count, MB), one table per process;
- :func:`vmstat_text`: the run's ``vm_events`` as ``/proc/vmstat`` lines and its ``mthp_stats`` as
  the ``hugepages-2048kB/stats/<name>`` files;
- :func:`slot_states`: each process's 2 MiB slots classified (PMD-mapped THP, PTE-mapped THP,
  partially mapped, pinned, small pages, split, unmapped), what ``vmstate plot --map`` draws.

Each follows the tool's source (``tools/mm/thpmaps``, ``tools/mm/page-types.c``), rewritten over the
dataset's columns instead of ``/proc``; where the dataset cannot say what the tool prints (a
simulated snapshot has no VMA list, a capture no device or inode) the difference is in
``docs/views.md``. :func:`open_source` reads a run, kernel-run or capture directory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from vmstate.errors import BadInput
from vmstate.io.dataset import PAGEMAP, PAGES, SUMMARY, Dataset, read_dataset
from vmstate.io.export import (
    KPF_ANON, KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_HUGE, KPF_THP, KPF_ZERO_PAGE,
)
from vmstate.kernels.constants import HPAGE_PMD_NR, PAGE_SHIFT

__all__ = ["Source", "open_source", "FORMATS", "thpmaps_text", "page_types_frame",
           "page_types_text", "vmstat_text", "slot_states", "SLOT_STATES", "view_text"]

N = HPAGE_PMD_NR
PMD_ORDER = 9
FORMATS = ("thpmaps", "page-types", "vmstat")


# ---- reading a directory ---------------------------------------------------------------------

@dataclass
class Source:
    """One snapshot of a run directory (``summary.json`` + ``snapshots/<label>/``), or a capture
    (``pages.parquet`` + ``pagemap.parquet`` at the top). ``summary`` is None for a capture."""
    path: Path
    label: str | None
    dataset: Dataset | None
    summary: dict | None
    labels: list[str]


def open_source(path, snapshot: str | None = None, *, need_dataset: bool = True) -> Source:
    """The snapshot ``snapshot`` of the run directory ``path`` (default: its last one), or the
    capture ``path`` (which has no labels). BadInput names the directory or label and what was
    expected."""
    path = Path(path)
    if not path.is_dir():
        raise BadInput(f"{path}: not a directory (expected a run directory with {SUMMARY} and "
                       f"snapshots/, or a capture with {PAGES} and {PAGEMAP})", field="DIR")
    if (path / SUMMARY).is_file():
        summary = json.loads((path / SUMMARY).read_text())
        labels = list(summary.get("snapshots", {}))
        snaps = path / "snapshots"
        labels += sorted(p.name for p in snaps.iterdir() if p.is_dir() and p.name not in labels) \
            if snaps.is_dir() else []
        if snapshot is None and not labels:
            if need_dataset:
                raise BadInput(f"{path}: the run took no snapshot (expected a 'snapshot' op)",
                               field="snapshot")
            return Source(path, None, None, summary, labels)
        label = labels[-1] if snapshot is None else snapshot
        if label not in labels:
            raise BadInput(f"--snapshot {label!r}: no such snapshot in {path} (expected one of "
                           f"{', '.join(labels) or 'none: the run took no snapshot'})",
                           field="snapshot")
        ds = read_dataset(snaps / label) if need_dataset else None
        return Source(path, label, ds, summary, labels)
    if (path / PAGES).is_file() or (path / PAGEMAP).is_file():
        if snapshot is not None:
            raise BadInput(f"--snapshot {snapshot!r}: {path} is a single dataset (a capture or "
                           f"one snapshot), it has no snapshot labels", field="snapshot")
        return Source(path, None, read_dataset(path), None, [])
    raise BadInput(f"{path}: not a run or capture directory (expected {SUMMARY} and snapshots/, "
                   f"or {PAGES} and {PAGEMAP})", field="DIR")


def view_text(src: Source, fmt: str) -> str:
    """``vmstate show``'s output for ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "thpmaps":
        return thpmaps_text(src.dataset)
    if fmt == "page-types":
        return page_types_text(src.dataset)
    if fmt == "vmstat":
        if src.summary is None:
            raise BadInput(f"{src.path}: a capture has no vm_events (expected a run or kernel-run "
                           f"directory with {SUMMARY})", field="format")
        return vmstat_text(src.summary)
    raise BadInput(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}", field="format")


# ---- shared per-page columns -------------------------------------------------------------------

def _joined(ds: Dataset) -> pl.DataFrame:
    """pagemap rows with their frame's flags, kpagecount, refcount and head pfn (null: no row)."""
    return ds.pagemap.join(ds.pages.select("pfn", "flags", "mapcount", "refcount", "head_pfn"),
                           on="pfn", how="left", maintain_order="left")


def _zero_pfn(ds: Dataset) -> int | None:
    z = ds.pages.filter((pl.col("flags") & (1 << KPF_ZERO_PAGE)) != 0)["pfn"]
    return int(z[0]) if z.len() else None


def _processes(ds: Dataset) -> list[tuple[str, int]]:
    """``(mm, pid)`` in pagemap order: a capture's pids (``vmstate.processes``); a simulation's
    processes numbered from 1 in the order they appear."""
    pids = ds.meta_json("vmstate.processes", {}) or {}
    names = ds.pagemap["mm"].unique(maintain_order=True).to_list()
    for n in pids:
        if n not in names:
            names.append(n)
    return [(n, int(pids.get(n, i + 1))) for i, n in enumerate(names)]


# ---- thpmaps -----------------------------------------------------------------------------------

THPMAPS_HEADER = ("       PID             START              END PROT   OFFSET   DEV    INODE "
                  "OBJECT")


def _vmas(ds: Dataset, mm: str) -> list[tuple[int, int, str, str]]:
    """``(start, end, perms, path)``: a capture's VMAs (``vmstate.vmas``); for a simulated snapshot,
    which records none, one per run of adjacent 2 MiB slots that map something (``rw-p``)."""
    declared = ds.meta_json("vmstate.vmas", None)
    if declared is not None and mm in declared:
        return [(int(v[0]), int(v[1]), str(v[2]), str(v[3]) if len(v) > 3 else "")
                for v in declared[mm]]
    slots = np.unique(ds.pagemap.filter(pl.col("mm") == mm)["vaddr"].to_numpy() >> np.uint64(21))
    out = []
    if len(slots):
        breaks = np.flatnonzero(np.diff(slots.astype(np.int64)) != 1) + 1
        for run in np.split(slots.astype(np.int64), breaks):
            out.append((int(run[0]) << 21, (int(run[-1]) + 1) << 21, "rw-p", ""))
    return out


def _thp_counts(vfn, pfn, anon, head, tail_after):
    """thpmaps' ``thp_parse()`` over one VMA's present THP pages (by virtual address): ranges where
    virtual and physical frame numbers both step by one; within a range the pages before its first
    head and after a last folio that runs past its end are ``partial``; each whole folio counts
    ``1 << floor(log2(size))`` pages at that order, ``aligned`` when its virtual frame is a multiple
    of that size. ``tail_after(pfn)``: whether the frame after a range is a compound tail."""
    stats = {t: {"partial": 0, "aligned": [0] * (PMD_ORDER + 1),
                 "unaligned": [0] * (PMD_ORDER + 1)} for t in ("anon", "file")}
    if not len(vfn):
        return stats
    step = (np.diff(vfn) == 1) & (np.diff(pfn) == 1)
    starts = np.concatenate([[0], np.flatnonzero(~step) + 1])
    ends = np.concatenate([starts[1:], [len(vfn)]])
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        folios = lo + np.flatnonzero(head[lo:hi])
        first = int(folios[0]) if len(folios) else hi
        stats["anon" if anon[lo] else "file"]["partial"] += first - lo
        if len(folios) and tail_after(int(pfn[hi - 1]) + 1):
            stats["anon" if anon[hi - 1] else "file"]["partial"] += hi - int(folios[-1])
            hi = int(folios[-1])
            folios = folios[:-1]
        sizes = np.append(np.diff(folios), hi - folios[-1]) if len(folios) else []
        for index, size in zip(folios.tolist(), np.asarray(sizes).tolist()):
            order = int(np.log2(size))
            nr = 1 << order
            kind = "aligned" if int(vfn[index]) % nr == 0 else "unaligned"
            stats["anon" if anon[index] else "file"][kind][order] += nr
    return stats


def thpmaps_stats(ds: Dataset) -> list[dict]:
    """Per VMA of each process: ``mm``, ``pid``, ``start``, ``end``, ``perms``, ``path``, the smaps
    values thpmaps reads (``Rss``, ``Anonymous``, ``AnonHugePages``, kB) and ``stats``: the
    thpmaps counters in its order (``{name: (type, kB)}``; empty where thpmaps skips the VMA)."""
    j = _joined(ds)
    zero = _zero_pfn(ds)
    flags_of = dict(zip(ds.pages["pfn"].to_list(), ds.pages["flags"].to_list()))
    kb = 1 << (PAGE_SHIFT - 10)
    out = []
    for mm, pid in _processes(ds):
        rows = j.filter((pl.col("mm") == mm) & pl.col("present")).sort("vaddr")
        if zero is not None:
            rows = rows.filter(pl.col("pfn") != zero)  # smaps counts no zero-page PTE in Rss
        vaddr = rows["vaddr"].to_numpy().astype(np.int64)
        flags = rows["flags"].fill_null(0).to_numpy().astype(np.uint64)
        pmd = rows["pmd"].to_numpy()
        for start, end, perms, path in _vmas(ds, mm):
            lo, hi = np.searchsorted(vaddr, [start, end])
            f, v = flags[lo:hi], vaddr[lo:hi]
            bit = (lambda k: ((f >> np.uint64(k)) & np.uint64(1)) == 1)
            anon = bit(KPF_ANON)
            smaps = {"Rss": (hi - lo) * kb, "Anonymous": int(anon.sum()) * kb,
                     "AnonHugePages": int((pmd[lo:hi] & anon).sum()) * kb}
            stats = {}
            if perms[:3] != "---" and smaps["Rss"] > 0:
                thp = bit(KPF_THP)
                pfn = rows["pfn"].to_numpy().astype(np.int64)[lo:hi][thp]
                tail = (lambda p: bool(flags_of.get(p, 0) >> KPF_COMPOUND_TAIL & 1))
                c = _thp_counts(v[thp] >> PAGE_SHIFT, pfn, anon[thp], bit(KPF_COMPOUND_HEAD)[thp],
                                tail)
                pmd_kb = {"anon": smaps["AnonHugePages"], "file": 0}
                for t in ("anon", "file"):  # PMD-mapped THPs are counted apart (from smaps)
                    c[t]["aligned"][PMD_ORDER] = max(0, c[t]["aligned"][PMD_ORDER]
                                                     - pmd_kb[t] // kb)
                size = (lambda order: (1 << order) * kb)
                stats = {f"{t}-thp-pmd-aligned-{size(PMD_ORDER)}kB": (t, pmd_kb[t])
                         for t in ("anon", "file")}
                for t in ("anon", "file"):
                    for kind in ("aligned", "unaligned"):
                        for order in range(2, PMD_ORDER + 1):
                            stats[f"{t}-thp-pte-{kind}-{size(order)}kB"] = (
                                t, c[t][kind][order] * kb)
                    stats[f"{t}-thp-pte-partial"] = (t, c[t]["partial"] * kb)
            out.append({"mm": mm, "pid": pid, "start": start, "end": end, "perms": perms,
                        "path": path, **smaps, "stats": stats})
    return out


def thpmaps_text(ds: Dataset, *, inc_empty: bool = False) -> str:
    """``thpmaps --pid PID ...``'s output: the header, each VMA as thpmaps prints it (pid first,
    smaps' line), then each non-zero counter with its share of the VMA's anonymous (or file)
    memory."""
    lines = [THPMAPS_HEADER]
    for v in thpmaps_stats(ds):
        lines.append(f"{v['pid']:010d}: {v['start']:016x}-{v['end']:016x} {v['perms']} "
                     f"{0:08x} {0:02x}:{0:02x} {0:08x} {v['path']}")
        tot = {"anon": v["Anonymous"], "file": v["Rss"] - v["Anonymous"]}
        for label, (t, value) in v["stats"].items():
            if value or inc_empty:
                percent = f" ({value / tot[t]:3.0%})" if tot[t] > 0 else ""
                pad = " " * max(0, 32 - len(label) - 1)
                lines.append(f"{label}:{pad}{value:8} kB{percent}")
    return "\n".join(lines)


# ---- page-types --------------------------------------------------------------------------------

# tools/mm/page-types.c page_flag_names[] (mainline, Linux 6.18), by KPF bit number
# (include/uapi/linux/kernel-page-flags.h): "<symbolic letter>:<long name>".
PAGE_FLAG_NAMES = {
    0: "L:locked", 1: "E:error", 2: "R:referenced", 3: "U:uptodate", 4: "D:dirty", 5: "l:lru",
    6: "A:active", 7: "S:slab", 8: "W:writeback", 9: "I:reclaim", 10: "B:buddy",
    11: "M:mmap", 12: "a:anonymous", 13: "s:swapcache", 14: "b:swapbacked",
    15: "H:compound_head", 16: "T:compound_tail", 17: "G:huge", 18: "u:unevictable",
    19: "X:hwpoison", 20: "n:nopage", 21: "x:ksm", 22: "t:thp", 23: "o:offline",
    24: "z:zero_page", 25: "i:idle_page", 26: "g:pgtable",
    32: "r:reserved", 33: "m:mlocked", 34: "d:owner_2", 35: "P:private", 36: "p:private_2",
    37: "O:owner_private", 38: "h:arch", 39: "c:uncached", 40: "f:softdirty", 41: "H:arch_2",
    47: "d:anon_exclusive", 48: "I:readahead", 50: "A:slub_frozen", 51: "E:slub_debug",
    61: "F:file", 62: "w:swap", 63: "1:mmap_exclusive",
}
_NAMED = sorted(PAGE_FLAG_NAMES)
KPF_HACKERS_BITS = 0xFFFF << 32
BITS_COMPOUND = (1 << KPF_COMPOUND_HEAD) | (1 << KPF_COMPOUND_TAIL)
HASH_SIZE = 1 << 13


def well_known_flags(flags: int) -> int:
    """page-types' default (not ``-r``) view of a page's flags: the kernel-hacker bits hidden, and
    the compound bits of a non-hugetlb compound page (a THP) hidden."""
    flags &= ~KPF_HACKERS_BITS
    if flags & BITS_COMPOUND and not flags & (1 << KPF_HUGE):
        flags &= ~BITS_COMPOUND
    return flags


def _well_known(flags: np.ndarray) -> np.ndarray:
    """:func:`well_known_flags` over an array."""
    flags = flags & np.uint64(~KPF_HACKERS_BITS & (2**64 - 1))
    compound = ((flags & np.uint64(BITS_COMPOUND)) != 0) & ((flags >> np.uint64(KPF_HUGE)) & np.uint64(1) == 0)
    return np.where(compound, flags & np.uint64(~BITS_COMPOUND & (2**64 - 1)), flags)


def page_flag_name(flags: int) -> str:
    return "".join(PAGE_FLAG_NAMES[b][0] if flags >> b & 1 else "_" for b in _NAMED)


def page_flag_longname(flags: int) -> str:
    return ",".join(PAGE_FLAG_NAMES[b][2:] for b in _NAMED if flags >> b & 1)


def page_types_frame(ds: Dataset, mm: str) -> pl.DataFrame:
    """``page-types -p PID``'s summary of process ``mm``: each present page (and each migration
    entry, counted as a swap entry with flags 0) by its well-known flags, in page-types' order (its
    hash table's slots: ``flags & 0x1fff``, linear probing in the order pages are walked)."""
    rows = _joined(ds).filter(pl.col("mm") == mm).sort("vaddr")
    present = rows["present"].to_numpy()
    flags = np.where(present, rows["flags"].fill_null(0).to_numpy(), 0).astype(np.uint64)
    well = _well_known(flags)
    uniq, first, count = np.unique(well, return_index=True, return_counts=True)
    slot, taken = {}, set()
    for i in np.argsort(first).tolist():  # hash_slot() in the order page-types walks the pages
        w = int(uniq[i])
        k = 0 if w == 0 else w & (HASH_SIZE - 1)
        while w != 0:
            if not k or k >= HASH_SIZE:
                k = 1
            if k not in taken:
                break
            k += 1
        taken.add(k)
        slot[i] = k
    by_slot = sorted(slot, key=slot.get)
    table = [int(uniq[i]) for i in by_slot]
    n = [int(count[i]) for i in by_slot]
    return pl.DataFrame({
        "flags": pl.Series(table, dtype=pl.UInt64),
        "page_count": pl.Series(n, dtype=pl.Int64),
        "MB": pl.Series([(x << PAGE_SHIFT) >> 20 for x in n], dtype=pl.Int64),
        "symbolic_flags": [page_flag_name(w) for w in table],
        "long_symbolic_flags": [page_flag_longname(w) for w in table],
    })


def page_types_text(ds: Dataset) -> str:
    """page-types' summary table for each process (``page-types -p PID`` run once per process),
    each preceded by a ``# mm NAME (pid PID)`` line."""
    out = []
    for mm, pid in _processes(ds):
        t = page_types_frame(ds, mm)
        out.append(f"# mm {mm} (pid {pid})")
        out.append("             flags\tpage-count       MB  symbolic-flags\t\t\t"
                   "long-symbolic-flags")
        for f, n, mb, s, long in t.iter_rows():
            out.append(f"0x{f:016x}\t{n:10d} {mb:8d}  {s}\t{long}")
        total = int(t["page_count"].sum())
        out.append(f"             total\t{total:10d} {(total << PAGE_SHIFT) >> 20:8d}")
    return "\n".join(out)


# ---- vmstat ------------------------------------------------------------------------------------

MTHP_STATS_DIR = "/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/stats"


def vmstat_text(summary: dict) -> str:
    """The run's ``vm_events`` as ``/proc/vmstat`` lines (``name value``), then its ``mthp_stats``
    (6.18) as ``grep . DIR/*`` prints the per-size stats files (``path:value``)."""
    lines = [f"{k} {v}" for k, v in summary.get("vm_events", {}).items()]
    lines += [f"{MTHP_STATS_DIR}/{k}:{v}" for k, v in summary.get("mthp_stats", {}).items()]
    return "\n".join(lines)


# ---- the address-space map ---------------------------------------------------------------------

SLOT_STATES = ("PMD-mapped THP", "PTE-mapped THP", "partially mapped THP", "pinned THP",
               "small pages", "split THP", "unmapped")


def slot_states(ds: Dataset) -> pl.DataFrame:
    """One row per process and 2 MiB slot it maps anything in: ``mm``, ``slot`` (vaddr >> 21),
    ``state`` (an index into :data:`SLOT_STATES`). In order of precedence:

    - pinned THP: a THP whose page_count exceeds its total mapcount (a GUP pin, the split's
      ``total_mapcount != page_count - 1`` without the caller's reference; simulated datasets only:
      a capture has no refcount);
    - PMD-mapped THP: the slot is a huge PMD;
    - PTE-mapped THP: all 512 pages mapped by PTEs, in order, to one THP;
    - partially mapped THP: some pages map a THP, not as the whole of one;
    - split THP: small pages only, all 512-aligned frames at their virtual offset in one frame
      block whose 512 frames the dataset lists (what a split leaves; a never-huge mapping of a
      whole 2 MiB slot in the simulator, whose allocator lays frames out alike, draws the same);
    - small pages: otherwise.

    Unmapped slots have no row (the map draws them as gaps)."""
    j = _joined(ds).with_columns(
        slot=(pl.col("vaddr") // (1 << 21)).cast(pl.Int64),
        off=((pl.col("vaddr") // 4096) % N).cast(pl.Int64),
        poff=(pl.col("pfn") % N).cast(pl.Int64),
        block=(pl.col("pfn") // N).cast(pl.Int64),
        thp=pl.col("head_pfn").is_not_null())
    # total mapcount of each THP: PTE maps + PMD maps = sum(kpagecount) - 511 * PMD maps
    pages = ds.pages.filter(pl.col("head_pfn").is_not_null())
    pmd_maps = j.filter(pl.col("pmd") & pl.col("thp")).group_by("head_pfn").agg(
        (pl.len() // N).alias("pmds"))
    thps = pages.group_by("head_pfn").agg(pl.col("mapcount").sum().alias("sum"),
                                          pl.col("refcount").max().alias("ref")).join(
        pmd_maps, on="head_pfn", how="left").with_columns(
        pinned=(pl.col("ref") > pl.col("sum") - (N - 1) * pl.col("pmds").fill_null(0))
        .fill_null(False))
    block_frames = ds.pages.group_by((pl.col("pfn") // N).cast(pl.Int64).alias("block")).agg(
        pl.len().alias("frames"))
    j = j.join(thps.select("head_pfn", "pinned"), on="head_pfn", how="left")
    agg = j.group_by("mm", "slot").agg(
        pl.len().alias("n"), pl.col("pmd").any().alias("pmd"),
        pl.col("thp").all().alias("all_thp"), pl.col("thp").any().alias("any_thp"),
        pl.col("head_pfn").n_unique().alias("heads"),
        (pl.col("off") == pl.col("poff")).all().alias("in_place"),
        pl.col("present").all().alias("present"),
        pl.col("pinned").fill_null(False).any().alias("pinned"),
        pl.col("block").n_unique().alias("blocks"), pl.col("block").first().alias("block"),
    ).join(block_frames, on="block", how="left")
    state = (pl.when(pl.col("pinned")).then(3)
             .when(pl.col("pmd")).then(0)
             .when(pl.col("all_thp") & (pl.col("n") == N) & (pl.col("heads") == 1)
                   & pl.col("in_place") & pl.col("present")).then(1)
             .when(pl.col("any_thp")).then(2)
             .when((pl.col("blocks") == 1) & pl.col("in_place")
                   & ((pl.col("frames") == N) | (pl.col("n") == N))).then(5)
             .otherwise(4))
    return agg.select("mm", "slot", state.cast(pl.Int8).alias("state")).sort("mm", "slot")
