"""What does the RUNNING kernel do on a write fault of a THP (COW, reuse) and on mremap? The
measurements behind ``docs/kernel-bridge.md`` "Write faults, COW and mremap (measured)", which the
simulator's 6.18 variant follows.

Each case drives kernel-run's worker processes (:mod:`vmstate.bridge.kprocess`, the same syscalls as
``vmstate kernel-run``'s ops) and after every step records, per process and 2 MiB slot, what
``/proc`` shows: PMD-mapped or not (``PAGEMAP_SCAN`` ``PAGE_IS_HUGE``), which pages map a frame of
which THP, small pages, the zero page, kpagecount, and which pages changed pfn since the previous
step; the ``/proc/vmstat`` and ``hugepages-2048kB/stats`` deltas (system-wide); and for mremap the
soft-dirty bit (pagemap bit 55) of the moved entries after ``echo 4 > /proc/PID/clear_refs``.

Needs root and THP (kernel-run's prerequisites). Usage:
``python benchmarks/kernel_cow.py [--case a] [--json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from vmstate.bridge import kworker as kw, procfs
from vmstate.bridge.capture import capture
from vmstate.bridge.kernel_run import prerequisites
from vmstate.bridge.kprocess import Processes

MB = 1 << 20
HP = 2 * MB
A = 0x7f0000000000          # the THPs (2 MiB-aligned)
B = 0x7f0040000000          # an empty, 2 MiB-aligned destination for mremap
COUNTERS = ("thp_fault_alloc", "thp_fault_fallback", "thp_split_pmd", "thp_deferred_split_page",
            "thp_split_page", "thp_split_page_failed", "thp_swpout_fallback")
MTHP = ("anon_fault_alloc", "split", "split_deferred", "nr_anon", "nr_anon_partially_mapped")
KPF_ANON_EXCLUSIVE = procfs.KPF_MAPPEDTODISK


class Run:
    def __init__(self):
        self.procs = Processes()
        self.ranges = []
        self.prev = {}     # (mm, vaddr) -> pfn at the previous step
        self.steps = []

    # ---- ops ------------------------------------------------------------------------------
    def p(self, name):
        return self.procs.live(name)

    def mmap(self, mm, addr, length, fill="data"):
        proc = self.procs.get_or_spawn(mm)
        self.procs.call(proc, "mmap", addr=addr, length=length, thp=True, fill=fill)
        self.ranges.append((addr, addr + length))

    def call(self, mm, op, **kw_):
        self.procs.call(self.p(mm), op, **kw_)
        if op == "mremap":
            self.ranges.append((kw_["new_addr"], kw_["new_addr"] + kw_["length"]))

    def fork(self, mm, child):
        self.procs.fork(self.p(mm), child)

    def exit(self, mm):
        self.procs.exit(self.p(mm))

    def clear_soft_dirty(self, mm):
        with open(f"/proc/{self.p(mm).pid}/clear_refs", "w") as f:
            f.write("4")

    # ---- observing ------------------------------------------------------------------------
    def counters(self):
        v = procfs.read_vmstat()
        m = procfs.read_mthp_stats(MTHP)
        return {**{k: v.get(k, 0) for k in COUNTERS}, **{"mthp_" + k: m[k] for k in m}}

    def step(self, label, fn, *args, **kwargs):
        c0 = self.counters()
        fn(*args, **kwargs)
        c1 = self.counters()
        delta = {k: c1[k] - c0[k] for k in c1 if c1[k] != c0[k]}
        state = self.state()
        self.steps.append({"step": label, "delta": delta, "state": state})
        return state

    def state(self):
        targets = self.procs.targets()
        if not targets:
            self.prev = {}
            return {}
        c = capture(targets, self.ranges)
        j = c.pagemap.join(c.pages, on="pfn", how="left")
        zero = int(c.pages_meta.get("vmstate.zero_pfn", -1))
        out = {}
        cur = {}
        for mm in sorted(set(j["mm"].to_list())):
            pid = next(t.pid for t in targets if t.name == mm)
            m = j.filter(j["mm"] == mm).sort("vaddr")
            va = m["vaddr"].to_numpy().astype(np.int64)
            pfn = m["pfn"].to_numpy().astype(np.int64)
            soft = _soft_dirty(pid, va)
            for slot in np.unique(va // HP):
                sel = va // HP == slot
                s = m.filter(pl_series(sel))
                heads = [h for h in s["head_pfn"].unique().to_list() if h is not None]
                small = s.filter(s["head_pfn"].is_null())
                nzero = int((small["pfn"] == zero).sum()) if zero >= 0 else 0
                changed = [int((v - slot * HP) // 4096) for v, f in zip(va[sel], pfn[sel])
                           if (mm, int(v)) in self.prev and self.prev[(mm, int(v))] != f]
                new = [int((v - slot * HP) // 4096) for v in va[sel] if (mm, int(v)) not in self.prev]
                flags = s["flags"].to_numpy().astype(np.uint64)
                excl = int(((flags >> np.uint64(KPF_ANON_EXCLUSIVE)) & np.uint64(1)).sum())
                out[f"{mm} 0x{int(slot) * HP:x}"] = {
                    "pages": s.height, "pmd": int(s["pmd"].sum()),
                    "thp_heads": [int(h) for h in heads],
                    "thp_pages": s.height - small.height, "small": small.height - nzero,
                    "zero": nzero, "mapcount": sorted(set(s["mapcount"].to_list())),
                    "anon_exclusive_flag": excl,
                    "soft_dirty": int(soft[sel].sum()),
                    "changed_pfn": _spans(changed), "newly_mapped": _spans(new),
                }
            cur.update({(mm, int(v)): int(f) for v, f in zip(va, pfn)})
        self.prev = cur
        return out

    def close(self):
        self.procs.close()


def pl_series(mask):
    import polars as pl
    return pl.Series(mask)


def _soft_dirty(pid, vaddrs):
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        out = np.zeros(len(vaddrs), bool)
        for i, v in enumerate(vaddrs.tolist()):
            e = int(np.frombuffer(os.pread(fd, 8, (v >> 12) * 8), np.uint64)[0])
            out[i] = bool(e & procfs.PM_SOFT_DIRTY)
        return out
    finally:
        os.close(fd)


def _spans(idx):
    """[1, 2, 3, 7] -> "1-3,7"."""
    out, idx = [], sorted(idx)
    for i in idx:
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


# ---- the cases ----------------------------------------------------------------------------
def case_a(r):
    """fork; the parent writes page 1; the child writes page 1; the child writes all 512."""
    r.step("mmap 2M", r.mmap, "p", A, HP)
    r.step("fork", r.fork, "p", "c")
    r.step("p writes page 1", r.call, "p", "write", addr=A + 4096, length=4096)
    r.step("c writes page 1", r.call, "c", "write", addr=A + 4096, length=4096)
    r.step("c writes all 512", r.call, "c", "write", addr=A, length=HP)
    r.step("p writes all 512", r.call, "p", "write", addr=A, length=HP)


def case_b(r):
    """fork, the child exits, the parent writes one page of its PMD-mapped THP."""
    r.step("mmap 2M", r.mmap, "p", A, HP)
    r.step("fork", r.fork, "p", "c")
    r.step("exit c", r.exit, "c")
    r.step("p writes page 1", r.call, "p", "write", addr=A + 4096, length=4096)


def case_c(r):
    """fork; the parent's PMD split (mprotect toggle); the parent writes page 1; the child exits;
    the parent writes page 2 (still write-protected)."""
    r.step("mmap 2M", r.mmap, "p", A, HP)
    r.step("fork", r.fork, "p", "c")
    r.step("p split_pmd (mprotect toggle of page 0)", r.call, "p", "split_pmd", addr=A)
    r.step("p writes page 1", r.call, "p", "write", addr=A + 4096, length=4096)
    r.step("exit c", r.exit, "c")
    r.step("p writes page 2", r.call, "p", "write", addr=A + 2 * 4096, length=4096)
    r.step("p writes all 512", r.call, "p", "write", addr=A, length=HP)


def case_c2(r):
    """As c, the PMD split by MADV_DONTNEED of page 511 instead."""
    r.step("mmap 2M", r.mmap, "p", A, HP)
    r.step("fork", r.fork, "p", "c")
    r.step("p DONTNEED page 511", r.call, "p", "madvise", addr=A + 511 * 4096, length=4096,
           advice=kw.MADV_DONTNEED)
    r.step("p writes page 1", r.call, "p", "write", addr=A + 4096, length=4096)
    r.step("exit c", r.exit, "c")
    r.step("p writes page 2", r.call, "p", "write", addr=A + 2 * 4096, length=4096)


def case_d(r):
    """fork; the parent DONTNEEDs all but page 0; the child exits; the parent writes page 0."""
    r.step("mmap 2M", r.mmap, "p", A, HP)
    r.step("fork", r.fork, "p", "c")
    r.step("p DONTNEED pages 1-511", r.call, "p", "madvise", addr=A + 4096, length=HP - 4096,
           advice=kw.MADV_DONTNEED)
    r.step("exit c", r.exit, "c")
    r.step("p writes page 0", r.call, "p", "write", addr=A, length=4096)


def case_d2(r):
    """As d, the child still alive: the parent writes page 0 while the child PMD-maps the THP."""
    r.step("mmap 2M", r.mmap, "p", A, HP)
    r.step("fork", r.fork, "p", "c")
    r.step("p DONTNEED pages 1-511", r.call, "p", "madvise", addr=A + 4096, length=HP - 4096,
           advice=kw.MADV_DONTNEED)
    r.step("p writes page 0", r.call, "p", "write", addr=A, length=4096)


def case_e(r):
    """mprotect the whole THP r, then rw; write page 1 (no fork). Then the same with page 1 alone
    (a PTE-mapped THP)."""
    r.step("mmap 2M", r.mmap, "p", A, HP)
    r.step("mprotect r 2M", r.call, "p", "mprotect", addr=A, length=HP, prot="r")
    r.step("mprotect rw 2M", r.call, "p", "mprotect", addr=A, length=HP, prot="rw")
    r.step("p writes page 1", r.call, "p", "write", addr=A + 4096, length=4096)
    r.step("mprotect r page 1", r.call, "p", "mprotect", addr=A + 4096, length=4096, prot="r")
    r.step("mprotect rw page 1", r.call, "p", "mprotect", addr=A + 4096, length=4096, prot="rw")
    r.step("p writes page 1 again", r.call, "p", "write", addr=A + 4096, length=4096)


def case_f(r):
    """DONTNEED a whole 2 MiB THP, write one page; DONTNEED one page, write it; a PTE-mapped THP
    DONTNEEDed whole, then one page written (is the empty PTE table reclaimed?)."""
    r.step("mmap 6M", r.mmap, "p", A, 3 * HP)
    r.step("DONTNEED THP 0 whole", r.call, "p", "madvise", addr=A, length=HP,
           advice=kw.MADV_DONTNEED)
    r.step("write page 1 of slot 0", r.call, "p", "write", addr=A + 4096, length=4096)
    r.step("DONTNEED page 5 of THP 1", r.call, "p", "madvise", addr=A + HP + 5 * 4096,
           length=4096, advice=kw.MADV_DONTNEED)
    r.step("write page 5 of THP 1", r.call, "p", "write", addr=A + HP + 5 * 4096, length=4096)
    r.step("split_pmd THP 2", r.call, "p", "split_pmd", addr=A + 2 * HP)
    r.step("DONTNEED slot 2 whole", r.call, "p", "madvise", addr=A + 2 * HP, length=HP,
           advice=kw.MADV_DONTNEED)
    r.step("write page 1 of slot 2", r.call, "p", "write", addr=A + 2 * HP + 4096, length=4096)


def case_f2(r):
    """A PTE-mapped THP emptied by two MADV_DONTNEED calls (each half), then one page written; a
    fork-shared PMD-mapped THP DONTNEEDed whole by the parent, then one page written there."""
    r.step("mmap 4M", r.mmap, "p", A, 2 * HP)
    r.step("split_pmd THP 0", r.call, "p", "split_pmd", addr=A)
    r.step("DONTNEED 1st half", r.call, "p", "madvise", addr=A, length=MB, advice=kw.MADV_DONTNEED)
    r.step("DONTNEED 2nd half", r.call, "p", "madvise", addr=A + MB, length=MB,
           advice=kw.MADV_DONTNEED)
    r.step("write page 1 of slot 0", r.call, "p", "write", addr=A + 4096, length=4096)
    r.step("fork", r.fork, "p", "c")
    r.step("p DONTNEED THP 1 whole (shared)", r.call, "p", "madvise", addr=A + HP, length=HP,
           advice=kw.MADV_DONTNEED)
    r.step("p writes page 1 of slot 1", r.call, "p", "write", addr=A + HP + 4096, length=4096)


def case_g(r):
    """mremap one page of each of 4 THPs (page i of THP i) to B + 0x1000 + i pages, as the
    selftest split_pte_mapped_thp does; then 2 MiB aligned -> aligned; then 2 MiB aligned ->
    unaligned. Soft-dirty cleared before each."""
    r.step("mmap 8M", r.mmap, "p", A, 4 * HP)
    r.clear_soft_dirty("p")
    for i in range(4):
        r.step(f"mremap page {i} of THP {i} -> B+0x{(1 + i) * 4096:x}", r.call, "p", "mremap",
               addr=A + i * HP + i * 4096, length=4096, new_addr=B + (1 + i) * 4096)
    r.step("mmap 8M more", r.mmap, "p", A + 8 * HP, 4 * HP)
    r.clear_soft_dirty("p")
    r.step("mremap THP 4 (2M) aligned -> B+4M aligned", r.call, "p", "mremap", addr=A + 8 * HP,
           length=HP, new_addr=B + 2 * HP)
    r.step("mremap THP 5 (2M) aligned -> B+8M+4K unaligned", r.call, "p", "mremap",
           addr=A + 9 * HP, length=HP, new_addr=B + 4 * HP + 4096)
    r.step("write all of the moved THP 5", r.call, "p", "write", addr=B + 4 * HP + 4096, length=HP)


def case_g2(r):
    """mremap of a shared (fork) PMD-mapped THP aligned -> aligned in the parent; then a write."""
    r.step("mmap 2M", r.mmap, "p", A, HP)
    r.step("fork", r.fork, "p", "c")
    r.step("p mremap 2M aligned -> B", r.call, "p", "mremap", addr=A, length=HP, new_addr=B)
    r.step("p writes page 1 at B", r.call, "p", "write", addr=B + 4096, length=4096)


def case_h(r):
    """The zero page: an all-zero THP paged out (split, subpages remapped to the zero page), then
    one page written; a fork-shared THP whose two processes both write every page."""
    r.step("mmap 2M zero", r.mmap, "p", A, HP, fill="zero")
    r.step("PAGEOUT 2M", r.call, "p", "madvise", addr=A, length=HP, advice=kw.MADV_PAGEOUT)
    r.step("write page 1", r.call, "p", "write", addr=A + 4096, length=4096)
    r.step("write all 512", r.call, "p", "write", addr=A, length=HP)


def case_h2(r):
    """A write of a whole unpopulated 2 MiB slot (a new THP fault) and of a slot half populated."""
    r.step("mmap 4M zero-filled", r.mmap, "p", A, 2 * HP, fill="zero")
    r.step("DONTNEED slot 0 whole", r.call, "p", "madvise", addr=A, length=HP,
           advice=kw.MADV_DONTNEED)
    r.step("write slot 0 whole", r.call, "p", "write", addr=A, length=HP)
    r.step("split_pmd slot 1, DONTNEED its 2nd half", lambda: (
        r.call("p", "split_pmd", addr=A + HP),
        r.call("p", "madvise", addr=A + HP + MB, length=MB, advice=kw.MADV_DONTNEED)))
    r.step("write slot 1 whole", r.call, "p", "write", addr=A + HP, length=HP)


def case_h3(r):
    """A pin (vmsplice, one reference on page 5) on a THP whose PageAnonExclusive fork cleared:
    after the child exits, the parent writes page 1 (PMD-mapped), then page 2 (PTE-mapped)."""
    r.step("mmap 2M", r.mmap, "p", A, HP)
    r.step("fork", r.fork, "p", "c")
    r.step("exit c", r.exit, "c")
    reply, fds = r.procs.call(r.p("p"), "pin", addr=A + 5 * 4096, length=4096, method="vmsplice",
                              want_fds=True)
    r.step("p writes page 1 (pinned)", r.call, "p", "write", addr=A + 4096, length=4096)
    r.step("p writes page 2 (pinned)", r.call, "p", "write", addr=A + 2 * 4096, length=4096)
    for fd in fds:
        os.close(fd)
    r.step("unpin; p writes page 3", r.call, "p", "write", addr=A + 3 * 4096, length=4096)


CASES = {k[5:]: v for k, v in globals().items() if k.startswith("case_")}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append", choices=sorted(CASES))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    why = prerequisites()
    if why:
        sys.exit(f"needs the running kernel's THP: {why}")
    results = {}
    for name in args.case or sorted(CASES):
        r = Run()
        try:
            CASES[name](r)
        finally:
            r.close()
        results[name] = {"doc": CASES[name].__doc__, "steps": r.steps}
        if not args.json:
            print(f"== case {name}: {CASES[name].__doc__}")
            for s in r.steps:
                print(f"  -- {s['step']}: {s['delta']}")
                for k, v in s["state"].items():
                    v = {a: b for a, b in v.items() if b not in ("", [], 0) or a in ("pmd",)}
                    print(f"       {k}: {v}")
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
