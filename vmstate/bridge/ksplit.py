"""``split`` on the running kernel: debugfs ``split_huge_pages`` where it is writable, else
madvise on one page of each THP (MADV_COLD, then MADV_PAGEOUT), and the outcome of each THP."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import polars as pl

from vmstate.bridge import kworker as _kworker, procfs
from vmstate.bridge.capture import capture
from vmstate.bridge.kprocess import Proc, Processes
from vmstate.io.export import KPF_COMPOUND_HEAD
from vmstate.io.scenario import Op

__all__ = ["DEBUGFS", "SPLIT_FILE", "probe_debugfs", "unmount_debugfs", "split", "thps_in"]

DEBUGFS = "/sys/kernel/debug"
SPLIT_FILE = "split_huge_pages"


def probe_debugfs(libc) -> tuple[str | None, str | None, str]:
    """``(path of split_huge_pages, temporary mount point or None, why not)``: the path when a write
    of an empty range of this process is accepted (it is refused under kernel lockdown: EPERM)."""
    path, tmp = os.path.join(DEBUGFS, SPLIT_FILE), None
    if not os.path.exists(path):
        tmp = tempfile.mkdtemp(prefix="vmstate-debugfs-")
        if libc.mount(b"none", tmp.encode(), b"debugfs", 0, None) != 0:
            os.rmdir(tmp)
            return None, None, "debugfs is not mounted and cannot be"
        path = os.path.join(tmp, SPLIT_FILE)
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, f"{os.getpid()},0x1000,0x2000".encode())
        finally:
            os.close(fd)
        return path, tmp, ""
    except OSError as e:
        unmount_debugfs(libc, tmp)
        return None, None, f"{SPLIT_FILE}: {e.strerror} (errno {e.errno})"


def unmount_debugfs(libc, tmp):
    """Undo a temporary debugfs mount of :func:`probe_debugfs` (``tmp`` None: nothing to do)."""
    if tmp is not None:
        libc.umount2(tmp.encode(), 0)
        try:
            os.rmdir(tmp)
        except OSError:
            pass


def thps_in(procs: Processes, proc: Proc, start, end):
    """``(head pfn, lowest address mapping it in [start, end), PMD-mapped there)`` of each THP,
    by address."""
    c = capture(procs.targets(proc), [(start, end)])
    m = c.pagemap.filter(pl.col("present")).join(c.pages.select("pfn", "head_pfn"), on="pfn")
    m = m.filter(pl.col("head_pfn").is_not_null()).group_by("head_pfn").agg(
        pl.col("vaddr").min(), pl.col("pmd").any()).sort("vaddr")
    return list(zip(m["head_pfn"].to_list(), m["vaddr"].to_list(), m["pmd"].to_list()))


def split(procs: Processes, op: Op, proc: Proc, split_file: str | None) -> dict:
    """Split every THP ``proc`` maps in the op's range; the summary's ``splits`` entry."""
    f = op.fields
    start, end = f["addr"], f["addr"] + f["len"]
    thps = thps_in(procs, proc, start, end)
    rec = {"op": op.index, "mm": proc.name, "attempted": len(thps), "succeeded": 0, "failed": 0,
           "skipped": 0, "trigger": "debugfs" if split_file else "madv_cold", "thps": []}
    if split_file:
        rec["thps"] = _split_debugfs(procs, proc, start, end, thps, split_file)
    else:
        rec["thps"] = [_split_madvise(procs, proc, head, va, pmd) for head, va, pmd in thps]
    outcomes = [t["outcome"] for t in rec["thps"]]
    rec["succeeded"] = outcomes.count("split")
    rec["failed"] = len(outcomes) - rec["succeeded"]  # as the simulator counts: not split
    rec["skipped"] = outcomes.count("skipped") + outcomes.count("untried")
    return rec


def _split_debugfs(procs, proc, start, end, thps, split_file) -> list[dict]:
    """One write of ``<pid>,0x<start>,0x<end>``; a THP still there after it failed."""
    fd = os.open(split_file, os.O_WRONLY)
    try:
        os.write(fd, f"{proc.pid},0x{start:x},0x{end:x}".encode())
    finally:
        os.close(fd)
    left = {h for h, _, _ in thps_in(procs, proc, start, end)}
    out = []
    for head, va, pmd in thps:
        ok = head not in left
        out.append({"vaddr": f"0x{va:x}", "pmd_mapped": pmd, "ret": 0 if ok else None,
                    "outcome": "split" if ok else "failed", "trigger": "debugfs"})
    return out


def _split_madvise(procs, proc, head, va, pmd) -> dict:
    """MADV_COLD on the THP's page at ``va``; MADV_PAGEOUT where that left it untried."""
    outcome, ret, trigger = _madvise_split(procs, proc, head, va, "madv_cold", _kworker.MADV_COLD)
    if outcome == "untried":
        outcome, ret, trigger = _madvise_split(procs, proc, head, va, "madv_pageout",
                                               _kworker.MADV_PAGEOUT)
    return {"vaddr": f"0x{va:x}", "pmd_mapped": pmd, "ret": ret, "outcome": outcome,
            "trigger": trigger}


def _madvise_split(procs, proc, head, va, name, advice):
    """madvise ``advice`` on the page at ``va``; the THP at ``head`` is then ``split`` (its
    head is no longer a compound head), ``failed`` (still whole, thp_split_page_failed moved:
    split_folio() returned -EAGAIN for an extra reference), ``skipped`` (still whole and
    mapped twice: madvise passes over a shared folio) or ``untried`` (exclusive, yet no split
    was tried: the folio lock was contended)."""
    v0 = procfs.read_vmstat()
    procs.call(proc, "madvise", addr=va, length=procfs.PAGE, advice=advice)
    failed = procfs.read_vmstat()["thp_split_page_failed"] > v0["thp_split_page_failed"]
    flags, counts = procfs.read_kpage(np.arange(head, head + 512))
    if not flags[0] >> np.uint64(KPF_COMPOUND_HEAD) & np.uint64(1):
        return "split", 0, name
    if counts.max() > 1:
        return "skipped", None, name
    return ("failed", -11, name) if failed else ("untried", None, name)
