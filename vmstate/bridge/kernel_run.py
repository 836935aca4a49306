"""``vmstate kernel-run SCENARIO --out DIR``: the scenario's operations on the running kernel, in real
processes, with each ``snapshot`` captured from ``/proc`` (:mod:`vmstate.bridge.capture`) and the
``/proc/vmstat`` ``thp_*`` deltas of every operation.

One worker process (:mod:`vmstate.bridge.kworker`, driven through :mod:`vmstate.bridge.kprocess`) per
scenario process: the first ``mmap`` of a name starts one, ``fork`` forks the parent's worker for
real, ``exit`` ends it; ``split`` is :mod:`vmstate.bridge.ksplit`. How each op reaches the kernel:

============== =======================================================================================
op             system calls (in the scenario process)
============== =======================================================================================
mmap           mmap(MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE) at the scenario's address (no
               relocation: the workers run without address randomisation, far below the mmap base);
               madvise(MADV_HUGEPAGE) (``thp = false``: MADV_NOHUGEPAGE); one byte written into
               every page, non-zero (``fill = "data"``) or zero (``fill = "zero"``: a write fault,
               the page stays zero-filled); then MADV_NOHUGEPAGE, so khugepaged leaves split
               ranges alone
fork / exit    fork() / _exit()
munmap         munmap()
madvise_...    madvise(MADV_DONTNEED), madvise(MADV_COLD), madvise(MADV_PAGEOUT) on exactly the range
shrink         ``echo 2 > /proc/sys/vm/drop_caches`` from the controller (drop_slab(): every
               shrinker, the deferred-split one among them, over the whole system)
mprotect       mprotect(PROT_READ) or mprotect(PROT_READ|PROT_WRITE)
write          one non-zero byte stored into every page of the range, in address order (as mmap's
               ``fill = "data"``): the write-protect fault where an entry is write-protected, a
               new fault where it is absent. Refused (bad input) unless writable VMAs cover the
               range: a store there would be SIGSEGV
mremap         mremap(addr, len, len, MREMAP_MAYMOVE|MREMAP_FIXED, new_addr); refused (bad input)
               when the process maps anything in the new range (MREMAP_FIXED would unmap it) or
               the old range has a hole (EFAULT). Captures read the new range from then on, and
               still the old one (another process may map it)
pin / unpin    vmsplice() of the range into a pipe nobody reads (get_user_pages_fast, FOLL_GET: one
               reference per page) / the pipe closed. The controller holds the pipe, so a pin
               outlives munmap and exit and is not copied by fork, as in vmstate.
               ``--pin-method io_uring``: IORING_REGISTER_BUFFERS (FOLL_PIN|FOLL_LONGTERM) /
               IORING_UNREGISTER_BUFFERS; the ring stays in the process (SCM_RIGHTS refuses it),
               so these pins end when the process exits
split_pmd      mprotect of one page of the slot to another protection and back (the VMA splits —
               which splits the PMD — and merges again)
split          debugfs ``split_huge_pages`` "<pid>,0x<start>,0x<end>" when writable; else, per THP
               mapped in the range, madvise(MADV_COLD) on one 4 KiB page of it (6.x splits an
               exclusively mapped large folio that the advice covers only part of), then
               MADV_PAGEOUT for an exclusive one MADV_COLD left whole. The trigger is recorded
snapshot       capture of every live process over the scenario's ranges into
               ``DIR/snapshots/<label>/``, listing every frame the run's processes ever mapped
============== =======================================================================================

Per op the summary records the deltas of every ``/proc/vmstat`` name of ``VM_EVENTS`` (``vm_events``) and
of every ``hugepages-2048kB/stats`` file of ``MTHP_STATS`` (``mthp_stats``; the gauges ``nr_anon`` and
``nr_anon_partially_mapped`` as changes too), and the raw system-wide windows (``vmstat``, ``mthp``).
``thp_fault_alloc`` / ``anon_fault_alloc`` are the run's own (the PMD-mapped THPs an mmap left, the
THPs a write newly PMD-mapped) and
``nr_anon`` the change in the run's own live THPs (every compound frame its processes map or a pin
holds); the others are the op's window deltas.

Per THP of a ``split`` the outcome comes from the ``thp_split_page``/``thp_split_page_failed`` delta
around its madvise: ``split`` (0), ``failed`` (the kernel's -EAGAIN: an extra reference), or
``skipped`` (neither counter moved: MADV_COLD passes over folios that may be mapped by several
processes). ``/proc/vmstat`` is system-wide: another process splitting THPs at the same moment shows
in the deltas.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from vmstate.kernels.constants import HPAGE_PMD_SIZE, MTHP_STATS, VARIANTS, VM_EVENTS
from vmstate.bridge import kworker as _kworker, procfs
from vmstate.bridge.capture import capture
from vmstate.bridge.kprocess import Processes
from vmstate.bridge.ksplit import probe_debugfs, split, unmount_debugfs
from vmstate.io.atomic import TreeWriter, json_writer
from vmstate.io.dataset import PAGEMAP, PAGES, freed_frames, parquet_writer, snapshot_totals
from vmstate.errors import BadInput
from vmstate.io.export import KPF_ANON
from vmstate.io.scenario import Op, Scenario, where

__all__ = ["kernel_run", "KernelRun", "program", "prerequisites", "probe_debugfs", "unmount_debugfs",
           "PIN_METHODS", "KERNEL_VARIANTS"]

THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
PIN_METHODS = ("vmsplice", "io_uring")
# The variants a kernel-run scenario may name: the ops run literally whatever the variant (6.18 is
# the running kernel's own; it is accepted here before the engine has it).
KERNEL_VARIANTS = tuple(dict.fromkeys((*VARIANTS, "6.18")))
MADVICE = {"madvise_dontneed": _kworker.MADV_DONTNEED, "madvise_cold": _kworker.MADV_COLD,
           "madvise_pageout": _kworker.MADV_PAGEOUT}


def prerequisites() -> str | None:
    """Why kernel-run cannot work here, or None."""
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    if platform.machine() != "x86_64":
        return f"not x86-64 ({platform.machine()}): the system call numbers are x86-64's"
    if os.geteuid() != 0:
        return f"not root (euid {os.geteuid()}): /proc/kpageflags and pagemap pfns need CAP_SYS_ADMIN"
    try:
        with open(THP_ENABLED) as f:
            mode = f.read().strip()
    except OSError as e:
        return f"cannot read {THP_ENABLED}: {e.strerror} (no CONFIG_TRANSPARENT_HUGEPAGE?)"
    if "[never]" in mode:
        return f"THP disabled ({THP_ENABLED}: {mode})"
    for path in ("/proc/kpageflags", "/proc/kpagecount"):
        if not os.access(path, os.R_OK):
            return f"{path} is not readable"
    if "thp_split_page" not in procfs.read_vmstat():
        return "/proc/vmstat has no thp_split_page"
    return None


def program(scenario: Scenario) -> list[Op]:
    """The scenario's ops, after its ``[population]`` as the op program that generates it."""
    ops = list(scenario.ops)
    for op in ops:
        if op.op == "split" and op.fields.get("race") is not None:
            raise BadInput(f"{where(scenario.path, op.index, op.line)}: field 'race': a "
                           f"pin racing a split cannot be placed on the running kernel (no "
                           f"hook between the precheck and the freeze); simulator only",
                           field="race")
    if scenario.population is None:
        return ops
    from vmstate.engine.population import parse_population, population_program
    pop = parse_population(scenario.population)
    need = pop.thps * HPAGE_PMD_SIZE
    from vmstate.engine.state import available_memory
    if need > available_memory() // 2:
        raise BadInput(f"{where(scenario.path, table='population')}: {pop.thps} THPs are "
                       f"{need / 2**30:.1f} GiB of real memory; at most half of MemAvailable "
                       f"is used", field="thps")
    fields = {"mmap": ("mm", "addr", "len"), "fork": ("mm", "child"), "split_pmd": ("mm", "addr"),
              "madvise_dontneed": ("mm", "addr", "len"), "pin": ("mm", "addr", "len")}
    gen = []
    for k, (name, *args) in enumerate(population_program(pop, scenario.seed)):
        f = dict(zip(fields[name], args))
        if name == "mmap":
            f["thp"] = True
        gen.append(Op(index=-(k + 1), line=None, op=name, fields=f))
    return gen + ops


@dataclass
class KernelRun:
    """Runs one scenario; :meth:`run` returns the summary and writes ``out``."""
    scenario: Scenario
    pin_method: str = "vmsplice"
    procs: Processes = field(default_factory=Processes)
    pins: dict = field(default_factory=dict)
    ranges: list = field(default_factory=list)     # every range a scenario mmap ever mapped
    tracked: set = field(default_factory=set)      # every frame the processes ever mapped

    def run(self, out) -> dict:
        why = prerequisites()
        if why:
            raise BadInput(f"kernel-run needs the running kernel's THP: {why}", field="kernel")
        if self.pin_method not in PIN_METHODS:
            raise BadInput(f"expected a pin method in {PIN_METHODS}, got {self.pin_method!r}",
                           field="pin_method")
        ops = program(self.scenario)
        self.libc = _kworker.libc()
        self.split_file, self.debugfs_mount, debugfs_why = probe_debugfs(self.libc)
        writer = TreeWriter(out, dirs=("snapshots",))  # out switches to this run on commit
        summary = {"scenario": self.scenario.name, "kernel": os.uname().release,
                   "source": "kernel-run", "variant": self.scenario.variant,
                   "split_trigger": "debugfs" if self.split_file else "madv_cold",
                   "debugfs": "writable" if self.split_file else f"refused: {debugfs_why}",
                   "pin_method": self.pin_method, "processes": {}, "ops": [], "splits": [],
                   "snapshots": {}}
        try:
            for op in ops:
                self._op_at(op, summary, writer)
            _add_totals(summary)
            summary["processes"] = self.procs.pids()
            writer.add("summary.json", json_writer(summary))
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            self._cleanup()
        return summary

    # ---- the ops -------------------------------------------------------------------------------
    def _op_at(self, op: Op, summary: dict, writer: TreeWriter):
        """:meth:`_op`, its errors named by the op's place in the scenario file."""
        try:
            self._op(op, summary, writer)
        except _kworker.SysError as e:
            raise BadInput(f"{where(self.scenario.path, op.index, op.line)}: {e}") from e
        except BadInput as e:
            raise BadInput(f"{where(self.scenario.path, op.index, op.line)}: {e}",
                           field=e.field) from e

    def _op(self, op: Op, summary: dict, writer: TreeWriter):
        """Run one op and append its ``ops`` entry: the vmstat window around it, its own events."""
        f = op.fields
        live0 = self._live_thps()
        m0, v0, t0 = procfs.read_mthp_stats(MTHP_STATS), procfs.read_vmstat(), time.perf_counter()
        entry = {"op": op.index, "name": op.op}
        if "mm" in f:
            entry["mm"] = f["mm"]
        own = self._dispatch(op, summary, writer, entry)
        v1, m1 = procfs.read_vmstat(), procfs.read_mthp_stats(MTHP_STATS)
        seconds = time.perf_counter() - t0
        live1 = self._live_thps()
        entry["vmstat"] = procfs.thp_events(v0, v1)
        entry["mthp"] = {k: m1[k] - m0[k] for k in m1 if k in m0 and m1[k] != m0[k]}
        # other processes fault THPs all the time (numpy madvises large arrays): this run's own
        # faults are the THPs its mmap mapped, its own nr_anon the change in its live THPs; the
        # rarer split counters are the window's deltas
        faults = own.get("thp_fault_alloc", 0)
        entry["vm_events"] = {k: v1.get(k, 0) - v0.get(k, 0) for k in VM_EVENTS}
        entry["vm_events"]["thp_fault_alloc"] = faults
        if m1:
            entry["mthp_stats"] = {k: m1[k] - m0[k] for k in MTHP_STATS if k in m0 and k in m1}
            entry["mthp_stats"]["anon_fault_alloc"] = faults
            entry["mthp_stats"]["nr_anon"] = live1 - live0
        if op.op == "shrink":
            entry["own"] = own
        entry["seconds"] = round(seconds, 6)
        summary["ops"].append(entry)
        if op.op in ("mmap", "fork", "write"):  # the ops that map new frames: faults (a write's
            self._track()  # copies and new faults too); fork copies a FOLL_PIN-pinned page for the
            # child. mremap moves entries (the frames stay: pages.parquet lists them already)

    def _dispatch(self, op: Op, summary: dict, writer: TreeWriter, entry: dict) -> dict:
        """The op's system calls (the table in the module docstring); the events it counts
        itself (an mmap's THP faults)."""
        f, procs, own = op.fields, self.procs, {}
        match op.op:
            case "mmap":
                proc = procs.get_or_spawn(f["mm"])
                procs.call(proc, "mmap", addr=f["addr"], length=f["len"], thp=f["thp"],
                           fill=f.get("fill", "data"))
                self.ranges.append((f["addr"], f["addr"] + f["len"]))
                c = capture(procs.targets(proc), [self.ranges[-1]])
                own["thp_fault_alloc"] = int(c.pagemap["pmd"].sum()) // 512
            case "fork":
                procs.fork(procs.live(f["mm"]), f["child"])
            case "exit":
                procs.exit(procs.live(f["mm"]))
            case "munmap":
                procs.call(procs.live(f["mm"]), "munmap", addr=f["addr"], length=f["len"])
            case "write":
                own["thp_fault_alloc"] = self._write(procs.live(f["mm"]), f["addr"], f["len"])
            case "mremap":
                proc = procs.live(f["mm"])
                _covered(proc, f["addr"], f["len"], "mremap", write=False)
                _empty(proc, f["new_addr"], f["len"])
                procs.call(proc, "mremap", addr=f["addr"], length=f["len"], new_addr=f["new_addr"])
                # The new range joins the ranges every capture reads. The old one stays: another
                # process (a fork of this one) may still map it, and a later op may map it again; a
                # capture is clipped to the VMAs present, so a range nothing maps costs nothing.
                self.ranges.append((f["new_addr"], f["new_addr"] + f["len"]))
            case "madvise_dontneed" | "madvise_cold" | "madvise_pageout":
                procs.call(procs.live(f["mm"]), "madvise", addr=f["addr"], length=f["len"],
                           advice=MADVICE[op.op])
            case "shrink":
                before = self._own_thps()
                procfs.drop_slab()
                after = self._own_thps()
                # drop_slab() shrinks every process's deferred queue: which of the run's THPs it split
                own.update(thps_before=len(before), split=len(before - after))
            case "mprotect":
                procs.call(procs.live(f["mm"]), "mprotect", addr=f["addr"], length=f["len"],
                           prot=f["prot"])
            case "pin":
                self._pin(f)
            case "unpin":
                self._unpin(self.pins[(f["mm"], f["addr"], f["len"])].pop())
            case "split_pmd":
                procs.call(procs.live(f["mm"]), "split_pmd", addr=f["addr"])
                entry["trigger"] = "mprotect_toggle"
            case "split":
                summary["splits"].append(split(procs, op, procs.live(f["mm"]), self.split_file))
            case "snapshot":
                summary["snapshots"][f["label"]] = self._snapshot(f["label"], writer)
            case _:
                raise BadInput(f"op {op.op!r} has no kernel-run implementation", field="op")
        return own

    def _write(self, proc, addr, length) -> int:
        """The scenario's ``write``: a store into every page of the range; the THPs it newly
        PMD-mapped (its own ``thp_fault_alloc``: a write-protect fault of a PMD never maps a new
        THP on 6.x — do_huge_pmd_wp_page() reuses the folio or splits the PMD — so these are the
        new faults of an unpopulated 2 MiB slot, do_huge_pmd_anonymous_page())."""
        _covered(proc, addr, length, "write", write=True)
        hull = [(addr & ~(HPAGE_PMD_SIZE - 1), -(-(addr + length) // HPAGE_PMD_SIZE) * HPAGE_PMD_SIZE)]
        before = _pmd_heads(capture(self.procs.targets(proc), hull))
        self.procs.call(proc, "write", addr=addr, length=length)
        after = _pmd_heads(capture(self.procs.targets(proc), hull))
        return len(after - before)

    # ---- pins -------------------------------------------------------------------------------------
    def _pin(self, f: dict):
        """A pin is held by the controller: the pipe's fds (vmsplice), or the ring in the process
        (io_uring)."""
        proc = self.procs.live(f["mm"])
        reply, fds = self.procs.call(proc, "pin", addr=f["addr"], length=f["len"],
                                     method=self.pin_method, want_fds=True)
        held = ("ring", proc, reply["ring"]) if "ring" in reply else ("pipe", fds)
        self.pins.setdefault((f["mm"], f["addr"], f["len"]), []).append(held)

    def _unpin(self, held):
        if held[0] == "ring":
            _, proc, ring = held
            if proc.alive:  # else the pins went with the process
                self.procs.call(proc, "unpin_ring", ring=ring)
            return
        for fd in held[1]:
            os.close(fd)

    def _cleanup(self):
        for stack in self.pins.values():
            for held in stack:
                for fd in held[1] if held[0] == "pipe" else ():
                    os.close(fd)
        self.pins.clear()
        self.procs.close()
        unmount_debugfs(self.libc, getattr(self, "debugfs_mount", None))

    # ---- observing -------------------------------------------------------------------------------
    def _track(self):
        """Every frame a scenario process maps now joins the run's frames (``pages.parquet`` lists
        every frame the run allocated, freed ones included, as the simulator does)."""
        live = self.procs.targets()
        if not live or not self.ranges:
            return
        c = capture(live, self.ranges)
        anon = c.pages.filter((pl.col("flags") & (1 << KPF_ANON)) != 0)["pfn"]
        self.tracked.update(anon.to_list())

    def _capture_all(self):
        return capture(self.procs.targets(), self.ranges,
                       extra_pfns=np.fromiter(self.tracked, np.int64, len(self.tracked)))

    def _own_thps(self) -> set:
        """Head pfns of the run's live THPs: compound frames its processes map, or that a pin holds
        (the rules of ``freed_frames``)."""
        if not self.ranges:
            return set()
        c = self._capture_all()
        live = c.pages.filter(~pl.Series(freed_frames(c.pages, c.pagemap)))
        return set(live["head_pfn"].drop_nulls().to_list())

    def _live_thps(self) -> int:
        return len(self._own_thps())

    def _snapshot(self, label, writer: TreeWriter) -> dict:
        lru_add_drain_all()
        c = self._capture_all()
        meta = {"vmstate.split_trigger": "debugfs" if self.split_file else "madv_cold"}
        writer.add(Path("snapshots", label, PAGEMAP), parquet_writer(c.pagemap,
                                                                     {**c.pagemap_meta, **meta}))
        writer.add(Path("snapshots", label, PAGES), parquet_writer(c.pages, {**c.pages_meta, **meta}))
        return snapshot_totals(c.pages, c.pagemap)


def _pmd_heads(c) -> set:
    """``(2 MiB slot, head pfn)`` of every PMD mapping in a capture."""
    pm = c.pagemap.filter(pl.col("pmd"))
    return set(zip((pm["vaddr"] // HPAGE_PMD_SIZE).to_list(),
                   (pm["pfn"] - pm["vaddr"] % HPAGE_PMD_SIZE // 4096).to_list()))


def _covered(proc, addr, length, op, write):
    """BadInput unless VMAs of ``proc`` cover ``[addr, addr + length)`` without a gap (and allow
    writing, for ``write``: a store into a read-only page is SIGSEGV)."""
    at, end = addr, addr + length
    for v in procfs.read_maps(proc.pid):
        if v.end <= at or v.start >= end:
            continue
        if v.start > at:
            break
        if write and "w" not in v.perms:
            raise BadInput(f"{op} 0x{addr:x}+0x{length:x}: the VMA 0x{v.start:x}-0x{v.end:x} of "
                           f"process {proc.name!r} is {v.perms[:3]}, not writable (a write there "
                           f"is SIGSEGV)", field="addr")
        at = v.end
        if at >= end:
            return
    raise BadInput(f"{op} 0x{addr:x}+0x{length:x}: nothing is mapped at 0x{at:x} in process "
                   f"{proc.name!r}" + (" (a write there is SIGSEGV)" if write else
                                       " (mremap answers EFAULT)"),
                   field="addr" if at == addr else "len")


def _empty(proc, new_addr, length):
    """BadInput unless ``[new_addr, new_addr + length)`` holds no mapping of ``proc``: MREMAP_FIXED
    would unmap whatever is there, as MAP_FIXED does."""
    for v in procfs.read_maps(proc.pid):
        if v.start < new_addr + length and new_addr < v.end:
            raise BadInput(f"mremap to 0x{new_addr:x}+0x{length:x}: expected a range with no "
                           f"mapping, but process {proc.name!r} maps 0x{v.start:x}-0x{v.end:x} "
                           f"there (MREMAP_FIXED would unmap it)", field="new_addr")


def lru_add_drain_all() -> bool:
    """Drain every CPU's LRU folio batches before a capture, so that what they still hold (the
    last folios of a reclaim, each with a reference: a frame nothing maps is freed only when its
    batch drains) does not show as a frame the simulation freed and the kernel kept. There is no
    system call for ``lru_add_drain_all()`` itself: ``migrate_pages(0, ..., {0}, {0})`` runs it
    (``do_migrate_pages()``: ``lru_cache_disable()``) and moves nothing, from node 0 to node 0.
    Returns False where the call is refused (no NUMA, or an older kernel)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    nodes = ctypes.c_ulong(1)
    sys_migrate_pages = 256  # x86-64
    ret = libc.syscall(sys_migrate_pages, 0, ctypes.c_ulong(64), ctypes.byref(nodes),
                       ctypes.byref(nodes))
    return ret >= 0


def _add_totals(summary: dict):
    """The run's ``vm_events`` (each op's own) and ``vmstat`` (system-wide, over the op windows)."""
    own, system = {}, {}
    for entry in summary["ops"]:
        for total, part in ((own, entry["vm_events"]), (system, entry["vmstat"])):
            for k, v in part.items():
                total[k] = total.get(k, 0) + v
    summary["vm_events"] = {k: own.get(k, 0) for k in VM_EVENTS}
    summary["vmstat"] = dict(sorted(system.items()))  # system-wide, over the op windows
    parts = [e["mthp_stats"] for e in summary["ops"] if "mthp_stats" in e]
    if parts:
        summary["mthp_stats"] = {k: sum(p.get(k, 0) for p in parts) for k in MTHP_STATS}
        summary["mthp"] = {k: sum(e.get("mthp", {}).get(k, 0) for e in summary["ops"])
                           for k in MTHP_STATS}  # system-wide, over the op windows


def kernel_run(scenario: Scenario, out, *, pin_method="vmsplice") -> dict:
    return KernelRun(scenario, pin_method=pin_method).run(out)
