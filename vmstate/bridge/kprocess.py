"""The scenario's processes on the running kernel, from the controller's side: one worker
(:mod:`vmstate.bridge.kworker`) per scenario process, spawned, forked for real and ended through its
protocol — one JSON request per ``SOCK_SEQPACKET`` datagram, one JSON reply (``{"ok": ...}``),
file descriptors (a forked child's socket, a pin's pipe) passed with ``SCM_RIGHTS``."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from vmstate.bridge import kworker as _kworker
from vmstate.bridge.capture import Target
from vmstate.errors import BadInput

__all__ = ["REPLY_TIMEOUT", "Proc", "Processes", "recv", "wait_gone"]

REPLY_TIMEOUT = 120.0


@dataclass
class Proc:
    name: str
    pid: int
    sock: socket.socket
    popen: subprocess.Popen | None = None
    alive: bool = True


class Processes:
    """The scenario's processes by name (``mm``), live or exited."""

    def __init__(self):
        self.procs: dict[str, Proc] = {}

    def spawn(self, name) -> Proc:
        """A new worker process for ``name`` (the first ``mmap`` of a name)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        popen = subprocess.Popen([sys.executable, "-S", "-E", _kworker.__file__, str(theirs.fileno())],
                                 pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        ours.settimeout(REPLY_TIMEOUT)
        hello = recv(ours, name)
        proc = Proc(name, hello["pid"], ours, popen)
        self.procs[name] = proc
        return proc

    def get_or_spawn(self, name) -> Proc:
        return self.procs.get(name) or self.spawn(name)

    def live(self, name) -> Proc:
        """The running process ``name``; BadInput when it never ran or has exited."""
        proc = self.procs.get(name)
        if proc is None or not proc.alive:
            raise BadInput(f"process {name!r} is not running", field="mm")
        return proc

    def call(self, proc: Proc, op, want_fds=False, **args):
        """Send ``op`` with ``args``; the reply (and the fds it carries, with ``want_fds``)."""
        if "length" in args:
            args["length"] = int(args["length"])
        proc.sock.send(json.dumps({"op": op, **args}).encode())
        return recv(proc.sock, proc.name, want_fds)

    def fork(self, parent: Proc, child: str):
        """fork() in ``parent``; the child's socket comes back over the parent's."""
        reply, fds = self.call(parent, "fork", want_fds=True)
        sock = socket.socket(fileno=fds[0])
        sock.settimeout(REPLY_TIMEOUT)
        hello = recv(sock, child)
        self.procs[child] = Proc(child, hello["pid"], sock)

    def exit(self, proc: Proc):
        """_exit() in ``proc``, and wait until its mm is gone."""
        self.call(proc, "exit")
        end = time.monotonic() + REPLY_TIMEOUT
        while proc.sock.recv(16):  # EOF once the process is gone (exit_mm() precedes exit_files())
            if time.monotonic() > end:
                raise BadInput(f"process {proc.name!r} did not exit", field="mm")
        proc.sock.close()
        if proc.popen is not None:
            proc.popen.wait(REPLY_TIMEOUT)
        wait_gone(proc.pid)
        proc.alive = False

    def targets(self, proc: Proc | None = None) -> list[Target]:
        """What to capture: ``proc``, or every live process."""
        if proc is not None:
            return [Target(proc.name, proc.pid)]
        return [Target(p.name, p.pid) for p in self.procs.values() if p.alive]

    def pids(self) -> dict:
        return {p.name: p.pid for p in self.procs.values()}

    def close(self):
        """Ask every live process to exit, without waiting on replies; kill one that lingers."""
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


def recv(sock, name, want_fds=False):
    """One reply from process ``name``: BadInput when it is silent for REPLY_TIMEOUT or gone,
    :class:`~vmstate.bridge.kworker.SysError` when the system call failed."""
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


def wait_gone(pid, timeout=REPLY_TIMEOUT):
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
