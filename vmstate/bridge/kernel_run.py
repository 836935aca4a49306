"""``vmstate kernel-run SCENARIO --out DIR``: the scenario's operations on the running kernel, in real
processes, with each ``snapshot`` captured from ``/proc`` (:mod:`vmstate.bridge.capture`) and the
``/proc/vmstat`` ``thp_*`` deltas of every operation.

One worker process (:mod:`vmstate.bridge.kworker`) per scenario process: the first ``mmap`` of a name starts
one, ``fork`` forks the parent's worker for real, ``exit`` ends it. How each op reaches the kernel:

============== =======================================================================================
op             system calls (in the scenario process)
============== =======================================================================================
mmap           mmap(MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE) at the scenario's address (no
               relocation: the workers run without address randomisation, far below the mmap base);
               madvise(MADV_HUGEPAGE) (``thp = false``: MADV_NOHUGEPAGE); one non-zero byte written
               into every page; then MADV_NOHUGEPAGE, so khugepaged leaves split ranges alone
fork / exit    fork() / _exit()
munmap         munmap()
madvise_...    madvise(MADV_DONTNEED)
mprotect       mprotect(PROT_READ) or mprotect(PROT_READ|PROT_WRITE)
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

Per THP of a ``split`` the outcome comes from the ``thp_split_page``/``thp_split_page_failed`` delta
around its madvise: ``split`` (0), ``failed`` (the kernel's -EAGAIN: an extra reference), or
``skipped`` (neither counter moved: MADV_COLD passes over folios that may be mapped by several
processes). ``/proc/vmstat`` is system-wide: another process splitting THPs at the same moment shows
in the deltas.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from vmstate.kernels.constants import HPAGE_PMD_SIZE, VM_EVENTS
from vmstate.bridge import kworker as _kworker, procfs
from vmstate.bridge.capture import Target, capture
from vmstate.io.atomic import TreeWriter, json_writer
from vmstate.io.dataset import PAGEMAP, PAGES, parquet_writer, snapshot_totals
from vmstate.errors import BadInput
from vmstate.io.export import KPF_ANON, KPF_COMPOUND_HEAD
from vmstate.io.scenario import Op, Scenario, where

THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
DEBUGFS = "/sys/kernel/debug"
SPLIT_FILE = "split_huge_pages"
REPLY_TIMEOUT = 120.0
PIN_METHODS = ("vmsplice", "io_uring")


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


@dataclass
class Proc:
    name: str
    pid: int
    sock: socket.socket
    popen: subprocess.Popen | None = None
    alive: bool = True


@dataclass
class KernelRun:
    """Runs one scenario; :meth:`run` returns the summary and writes ``out``."""
    scenario: Scenario
    pin_method: str = "vmsplice"
    procs: dict = field(default_factory=dict)
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
        ops = self._ops()
        self.libc = _kworker.libc()
        self.split_file, self.debugfs_mount, debugfs_why = probe_debugfs(self.libc)
        writer = TreeWriter(out)
        summary = {"scenario": self.scenario.name, "kernel": os.uname().release,
                   "source": "kernel-run",
                   "split_trigger": "debugfs" if self.split_file else "madv_cold",
                   "debugfs": "writable" if self.split_file else f"refused: {debugfs_why}",
                   "pin_method": self.pin_method, "processes": {}, "ops": [], "splits": [],
                   "snapshots": {}}
        try:
            for op in ops:
                try:
                    self._op(op, summary, writer)
                except _kworker.SysError as e:
                    raise BadInput(f"{where(self.scenario.path, op.index, op.line)}: {e}") from e
                except BadInput as e:
                    raise BadInput(f"{where(self.scenario.path, op.index, op.line)}: {e}",
                                   field=e.field) from e
            own, system = {}, {}
            for entry in summary["ops"]:
                for total, part in ((own, entry["vm_events"]), (system, entry["vmstat"])):
                    for k, v in part.items():
                        total[k] = total.get(k, 0) + v
            summary["vm_events"] = {k: own.get(k, 0) for k in VM_EVENTS}
            summary["vmstat"] = dict(sorted(system.items()))  # system-wide, over the op windows
            summary["processes"] = {p.name: p.pid for p in self.procs.values()}
            writer.add("summary.json", json_writer(summary))
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            self._cleanup()
        return summary

    # ---- the program ---------------------------------------------------------------------------
    def _ops(self) -> list[Op]:
        """The scenario's ops, after its ``[population]`` as the op program that generates it."""
        ops = list(self.scenario.ops)
        for op in ops:
            if op.op == "split" and op.fields.get("race") is not None:
                raise BadInput(f"{where(self.scenario.path, op.index, op.line)}: field 'race': a "
                               f"pin racing a split cannot be placed on the running kernel (no "
                               f"hook between the precheck and the freeze); simulator only",
                               field="race")
        if self.scenario.population is None:
            return ops
        from vmstate.engine.population import parse_population, population_program
        pop = parse_population(self.scenario.population)
        need = pop.thps * HPAGE_PMD_SIZE
        from vmstate.engine.state import available_memory
        if need > available_memory() // 2:
            raise BadInput(f"{where(self.scenario.path, table='population')}: {pop.thps} THPs are "
                           f"{need / 2**30:.1f} GiB of real memory; at most half of MemAvailable "
                           f"is used", field="thps")
        fields = {"mmap": ("mm", "addr", "len"), "fork": ("mm", "child"), "split_pmd": ("mm", "addr"),
                  "madvise_dontneed": ("mm", "addr", "len"), "pin": ("mm", "addr", "len")}
        gen = []
        for k, (name, *args) in enumerate(population_program(pop, self.scenario.seed)):
            f = dict(zip(fields[name], args))
            if name == "mmap":
                f["thp"] = True
            gen.append(Op(index=-(k + 1), line=None, op=name, fields=f))
        return gen + ops

    def _op(self, op: Op, summary: dict, writer: TreeWriter):
        f = op.fields
        v0, t0 = procfs.read_vmstat(), time.perf_counter()
        entry, own = {"op": op.index, "name": op.op}, {}
        if "mm" in f:
            entry["mm"] = f["mm"]
        match op.op:
            case "mmap":
                proc = self.procs.get(f["mm"]) or self._spawn(f["mm"])
                self._call(proc, "mmap", addr=f["addr"], length=f["len"], thp=f["thp"],
                           fill=f.get("fill", "all"))
                self.ranges.append((f["addr"], f["addr"] + f["len"]))
                c = capture([Target(proc.name, proc.pid)], [self.ranges[-1]])
                own["thp_fault_alloc"] = int(c.pagemap["pmd"].sum()) // 512
            case "fork":
                self._fork(self._proc(f["mm"]), f["child"])
            case "exit":
                self._exit(self._proc(f["mm"]))
            case "munmap":
                self._call(self._proc(f["mm"]), "munmap", addr=f["addr"], length=f["len"])
            case "madvise_dontneed":
                self._call(self._proc(f["mm"]), "madvise", addr=f["addr"], length=f["len"],
                           advice=_kworker.MADV_DONTNEED)
            case "mprotect":
                self._call(self._proc(f["mm"]), "mprotect", addr=f["addr"], length=f["len"],
                           prot=f["prot"])
            case "pin":
                proc = self._proc(f["mm"])
                reply, fds = self._call(proc, "pin", addr=f["addr"], length=f["len"],
                                        method=self.pin_method, want_fds=True)
                held = ("ring", proc, reply["ring"]) if "ring" in reply else ("pipe", fds)
                self.pins.setdefault((f["mm"], f["addr"], f["len"]), []).append(held)
            case "unpin":
                self._unpin(self.pins[(f["mm"], f["addr"], f["len"])].pop())
            case "split_pmd":
                self._call(self._proc(f["mm"]), "split_pmd", addr=f["addr"])
                entry["trigger"] = "mprotect_toggle"
            case "split":
                summary["splits"].append(self._split(op, self._proc(f["mm"])))
            case "snapshot":
                summary["snapshots"][f["label"]] = self._snapshot(f["label"], writer)
            case _:
                raise BadInput(f"op {op.op!r} has no kernel-run implementation", field="op")
        entry["vmstat"] = procfs.thp_events(v0, procfs.read_vmstat())
        # other processes fault THPs all the time (numpy madvises large arrays): this run's own
        # faults are the THPs its mmap mapped; the rarer split counters are the window's deltas
        entry["vm_events"] = {k: v for k, v in entry["vmstat"].items() if k != "thp_fault_alloc"}
        if op.op == "mmap":
            entry["vm_events"]["thp_fault_alloc"] = own["thp_fault_alloc"]
        entry["seconds"] = round(time.perf_counter() - t0, 6)
        summary["ops"].append(entry)
        if op.op in ("mmap", "fork"):  # the only ops that map new frames (faults; fork copies a
            self._track()               # FOLL_PIN-pinned page for the child)

    # ---- processes --------------------------------------------------------------------------------
    def _spawn(self, name) -> Proc:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        popen = subprocess.Popen([sys.executable, "-S", "-E", _kworker.__file__, str(theirs.fileno())],
                                 pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        ours.settimeout(REPLY_TIMEOUT)
        hello = self._recv(ours, name)
        proc = Proc(name, hello["pid"], ours, popen)
        self.procs[name] = proc
        return proc

    def _proc(self, name) -> Proc:
        proc = self.procs.get(name)
        if proc is None or not proc.alive:
            raise BadInput(f"process {name!r} is not running", field="mm")
        return proc

    def _recv(self, sock, name, want_fds=False):
        try:
            if want_fds:
                data, fds, _, _ = socket.recv_fds(sock, _kworker.MSG_MAX, 4)
            else:
                data, fds = sock.recv(_kworker.MSG_MAX), []
        except socket.timeout:
            raise BadInput(f"process {name!r} did not answer in {REPLY_TIMEOUT:.0f} s",
                           field="mm") from None
        if not data:
            raise BadInput(f"process {name!r} went away", field="mm")
        reply = json.loads(data)
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise _kworker.SysError(reply["error"].split(":")[0], reply["errno"])
        return (reply, fds) if want_fds else reply

    def _call(self, proc: Proc, op, want_fds=False, **args):
        if "length" in args:
            args["length"] = int(args["length"])
        proc.sock.send(json.dumps({"op": op, **args}).encode())
        return self._recv(proc.sock, proc.name, want_fds)

    def _fork(self, parent: Proc, child: str):
        reply, fds = self._call(parent, "fork", want_fds=True)
        sock = socket.socket(fileno=fds[0])
        sock.settimeout(REPLY_TIMEOUT)
        hello = self._recv(sock, child)
        self.procs[child] = Proc(child, hello["pid"], sock)

    def _exit(self, proc: Proc):
        self._call(proc, "exit")
        end = time.monotonic() + REPLY_TIMEOUT
        while proc.sock.recv(16):  # EOF once the process is gone (exit_mm() precedes exit_files())
            if time.monotonic() > end:
                raise BadInput(f"process {proc.name!r} did not exit", field="mm")
        proc.sock.close()
        if proc.popen is not None:
            proc.popen.wait(REPLY_TIMEOUT)
        _wait_gone(proc.pid)
        proc.alive = False

    def _unpin(self, held):
        if held[0] == "ring":
            _, proc, ring = held
            if proc.alive:  # else the pins went with the process
                self._call(proc, "unpin_ring", ring=ring)
            return
        for fd in held[1]:
            os.close(fd)

    def _cleanup(self):
        for stack in self.pins.values():
            for held in stack:
                for fd in held[1] if held[0] == "pipe" else ():
                    os.close(fd)
        self.pins.clear()
        for proc in self.procs.values():
            if not proc.alive:
                continue
            try:
                proc.sock.send(json.dumps({"op": "exit"}).encode())
            except OSError:
                pass
            proc.sock.close()
            if proc.popen is not None:
                try:
                    proc.popen.wait(10)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait()
            proc.alive = False
        unmount_debugfs(self.libc, getattr(self, "debugfs_mount", None))

    def _live_targets(self):
        return [Target(p.name, p.pid) for p in self.procs.values() if p.alive]

    # ---- observing -------------------------------------------------------------------------------
    def _track(self):
        """Every frame a scenario process maps now joins the run's frames (``pages.parquet`` lists
        every frame the run allocated, freed ones included, as the simulator does)."""
        live = self._live_targets()
        if not live or not self.ranges:
            return
        c = capture(live, self.ranges)
        anon = c.pages.filter((pl.col("flags") & (1 << KPF_ANON)) != 0)["pfn"]
        self.tracked.update(anon.to_list())

    def _snapshot(self, label, writer: TreeWriter) -> dict:
        c = capture(self._live_targets(), self.ranges,
                    extra_pfns=np.fromiter(self.tracked, np.int64, len(self.tracked)))
        meta = {"vmstate.split_trigger": "debugfs" if self.split_file else "madv_cold"}
        writer.add(Path("snapshots", label, PAGEMAP), parquet_writer(c.pagemap,
                                                                     {**c.pagemap_meta, **meta}))
        writer.add(Path("snapshots", label, PAGES), parquet_writer(c.pages, {**c.pages_meta, **meta}))
        return snapshot_totals(c.pages, c.pagemap)

    # ---- split -------------------------------------------------------------------------------------
    def _thps_in(self, proc: Proc, start, end):
        """``(head pfn, lowest address mapping it in [start, end), PMD-mapped there)`` of each THP,
        by address."""
        c = capture([Target(proc.name, proc.pid)], [(start, end)])
        m = c.pagemap.filter(pl.col("present")).join(c.pages.select("pfn", "head_pfn"), on="pfn")
        m = m.filter(pl.col("head_pfn").is_not_null()).group_by("head_pfn").agg(
            pl.col("vaddr").min(), pl.col("pmd").any()).sort("vaddr")
        return list(zip(m["head_pfn"].to_list(), m["vaddr"].to_list(), m["pmd"].to_list()))

    def _split(self, op: Op, proc: Proc) -> dict:
        f = op.fields
        start, end = f["addr"], f["addr"] + f["len"]
        thps = self._thps_in(proc, start, end)
        rec = {"op": op.index, "mm": proc.name, "attempted": len(thps), "succeeded": 0, "failed": 0,
               "skipped": 0, "trigger": "debugfs" if self.split_file else "madv_cold", "thps": []}
        if self.split_file:
            fd = os.open(self.split_file, os.O_WRONLY)
            try:
                os.write(fd, f"{proc.pid},0x{start:x},0x{end:x}".encode())
            finally:
                os.close(fd)
            left = {h for h, _, _ in self._thps_in(proc, start, end)}
            for head, va, pmd in thps:
                ok = head not in left
                rec["thps"].append({"vaddr": f"0x{va:x}", "pmd_mapped": pmd, "ret": 0 if ok else None,
                                    "outcome": "split" if ok else "failed", "trigger": "debugfs"})
        else:
            for head, va, pmd in thps:
                outcome, ret, trigger = self._madvise_split(proc, head, va, "madv_cold",
                                                            _kworker.MADV_COLD)
                if outcome == "untried":
                    outcome, ret, trigger = self._madvise_split(proc, head, va, "madv_pageout",
                                                                _kworker.MADV_PAGEOUT)
                rec["thps"].append({"vaddr": f"0x{va:x}", "pmd_mapped": pmd, "ret": ret,
                                    "outcome": outcome, "trigger": trigger})
        outcomes = [t["outcome"] for t in rec["thps"]]
        rec["succeeded"] = outcomes.count("split")
        rec["failed"] = len(outcomes) - rec["succeeded"]  # as the simulator counts: not split
        rec["skipped"] = outcomes.count("skipped") + outcomes.count("untried")
        return rec

    def _madvise_split(self, proc, head, va, name, advice):
        """madvise ``advice`` on the page at ``va``; the THP at ``head`` is then ``split`` (its
        head is no longer a compound head), ``failed`` (still whole, thp_split_page_failed moved:
        split_folio() returned -EAGAIN for an extra reference), ``skipped`` (still whole and
        mapped twice: madvise passes over a shared folio) or ``untried`` (exclusive, yet no split
        was tried: the folio lock was contended)."""
        v0 = procfs.read_vmstat()
        self._call(proc, "madvise", addr=va, length=procfs.PAGE, advice=advice)
        failed = procfs.read_vmstat()["thp_split_page_failed"] > v0["thp_split_page_failed"]
        flags, counts = procfs.read_kpage(np.arange(head, head + 512))
        if not flags[0] >> np.uint64(KPF_COMPOUND_HEAD) & np.uint64(1):
            return "split", 0, name
        if counts.max() > 1:
            return "skipped", None, name
        return ("failed", -11, name) if failed else ("untried", None, name)


def _wait_gone(pid, timeout=REPLY_TIMEOUT):
    """Until ``pid`` is reaped or a zombie (its mm is torn down before it becomes one)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except OSError:
            return
        time.sleep(0.001)


def kernel_run(scenario: Scenario, out, *, pin_method="vmsplice") -> dict:
    return KernelRun(scenario, pin_method=pin_method).run(out)
