"""One scenario process on the running kernel, driven by ``vmstate kernel-run`` (:mod:`vmstate.bridge.kernel_run`).

The controller starts it as a script (``python -S -E _kworker.py FD``), so it imports nothing but the
standard library and never the vmstate package (numpy, numba and polars would put their own threads
and mappings into the process being measured). It re-executes itself once with ``ADDR_NO_RANDOMIZE``
so that the scenario's addresses (``0x7f0000000000`` …) are far below the mmap base, and then serves
requests on FD, a ``SOCK_SEQPACKET`` Unix socket: one JSON object per message, one reply each.

Requests (``op``): ``mmap`` (MAP_FIXED_NOREPLACE at the scenario's address, MADV_HUGEPAGE, a write into
every page: a non-zero byte with ``fill = "data"``, a zero byte with ``fill = "zero"``), ``write``
(a non-zero byte into every page of the range, in address order: the faults a scenario ``write``
takes), ``mremap`` (MREMAP_MAYMOVE|MREMAP_FIXED to a range with no mapping), ``munmap``, ``madvise``,
``mprotect``, ``split_pmd``, ``fork``, ``pin``, ``exit``. ``fork`` is a real fork(): the child serves a new socket whose other end goes back to the
controller with the reply (SCM_RIGHTS). A vmsplice ``pin`` hands the pipe holding the pages to the
controller and closes its own copies, so the pin outlives the process as a vmstate pin does, and fork
does not copy it. An io_uring instance cannot be passed over SCM_RIGHTS (the kernel refuses): the
process keeps it (``unpin_ring`` releases it), a forked child closes its copies, and the pins end
with the process.

The ctypes bindings follow ``benchmarks/kernel_split.py``.
"""
import ctypes
import json
import os
import signal
import socket
import sys

PAGE = 4096
HPAGE = 2 << 20
PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000
MAP_FAILED = ctypes.c_void_p(-1).value
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
EFAULT, EACCES, EEXIST = 14, 13, 17
MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_COLD, MADV_PAGEOUT = 4, 14, 15, 20, 21
SPLICE_F_NONBLOCK = 0x02
F_SETPIPE_SZ = 1031
SYS_io_uring_setup, SYS_io_uring_register = 425, 427  # x86-64 (and every arch since 5.1)
IORING_REGISTER_BUFFERS, IORING_UNREGISTER_BUFFERS = 0, 1
ADDR_NO_RANDOMIZE = 0x0040000
FILL = 0x5A  # non-zero: a split must not find a zero-filled subpage to map to the zero page
MSG_MAX = 1 << 16


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def libc():
    lib = ctypes.CDLL(None, use_errno=True)
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                         ctypes.c_long]
    for name in ("munmap", "mprotect", "madvise"):
        getattr(lib, name).restype = ctypes.c_int
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.mremap.restype = ctypes.c_void_p  # variadic: new_address is the fifth argument
    lib.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                           ctypes.c_void_p]
    lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.vmsplice.restype = ctypes.c_ssize_t
    lib.vmsplice.argtypes = [ctypes.c_int, ctypes.POINTER(iovec), ctypes.c_size_t, ctypes.c_uint]
    lib.syscall.restype = ctypes.c_long
    lib.personality.restype = ctypes.c_int
    lib.personality.argtypes = [ctypes.c_ulong]
    lib.mount.restype = ctypes.c_int
    lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                          ctypes.c_void_p]
    lib.umount2.restype = ctypes.c_int
    lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return lib


class SysError(Exception):
    def __init__(self, call, errno):
        super().__init__(f"{call}: {os.strerror(errno)} (errno {errno})")
        self.errno = errno


def _check(ret, call):
    if ret == -1 or ret is None or ret == MAP_FAILED:
        raise SysError(call, ctypes.get_errno())
    return ret


def io_uring_unregister(lib, ring_fd):
    """IORING_UNREGISTER_BUFFERS: drops the registered buffers' pins now (closing the ring alone
    tears it down from a workqueue, later)."""
    _check(lib.syscall(SYS_io_uring_register, ctypes.c_int(ring_fd),
                       ctypes.c_uint(IORING_UNREGISTER_BUFFERS), None, ctypes.c_uint(0)),
           "io_uring_register(IORING_UNREGISTER_BUFFERS)")


class Worker:
    def __init__(self, sock):
        self.sock = sock
        self.lib = libc()
        self.rings = {}  # io_uring instances holding registered-buffer pins
        # [start, end) ranges mapped by an mmap with thp = true (moved by mremap, cut by munmap).
        # Their VMAs carry MADV_NOHUGEPAGE after the mmap (khugepaged), yet a write fault there
        # may map a THP, as in the scenario: op_write lifts the advice for its own faults.
        self.thp = []

    # ---- requests -------------------------------------------------------------------------
    def op_mmap(self, addr, length, thp=True, fill="data"):
        lib = self.lib
        got = lib.mmap(addr, length, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        _check(got, f"mmap(0x{addr:x}, 0x{length:x}, MAP_FIXED_NOREPLACE)")
        if got != addr:  # a kernel before 4.17 ignores MAP_FIXED_NOREPLACE and treats it as a hint
            lib.munmap(got, length)
            raise SysError(f"mmap(0x{addr:x}) placed the mapping at 0x{got:x}", 17)
        _check(lib.madvise(addr, length, MADV_HUGEPAGE if thp else MADV_NOHUGEPAGE),
               "madvise(MADV_HUGEPAGE)" if thp else "madvise(MADV_NOHUGEPAGE)")
        view = memoryview((ctypes.c_char * length).from_address(addr)).cast("B")
        if fill in ("data", "all"):  # one non-zero byte in every 4 KiB page, in address order
            _write_pages(view, length)
        elif fill == "zero":  # a write fault of a zero byte: every page faulted in, zero-filled
            view[::PAGE] = bytes(length // PAGE)
        elif fill == "first":  # one byte in the first page of each 2 MiB slot: a THP fault maps
            for a in range(addr, addr + length, PAGE):  # the whole slot, the rest zero-filled
                if a == addr or a % HPAGE == 0:
                    view[a - addr] = FILL
        view.release()
        if thp:  # keep khugepaged away: it would collapse split ranges back into THPs mid-run
            _check(lib.madvise(addr, length, MADV_NOHUGEPAGE), "madvise(MADV_NOHUGEPAGE)")
            self.thp = _cut(self.thp, addr, addr + length) + [(addr, addr + length)]
        return {}

    def op_write(self, addr, length):
        """A store of a non-zero byte into every 4 KiB page of the range, in address order, as
        mmap's ``fill = "data"`` does: each write-protected entry takes the write-protect fault
        (do_wp_page() / do_huge_pmd_wp_page(): reuse or copy), each absent one a new fault. A page
        outside a writable VMA would be SIGSEGV, so it is refused first (EFAULT: no mapping,
        EACCES: the VMA is not writable)."""
        at = addr
        for lo, hi, perms in _vmas():  # the range must be covered, without a gap, by writable VMAs
            if hi <= at or lo >= addr + length:
                continue
            if lo > at:
                break
            if "w" not in perms:
                raise SysError(f"write(0x{max(lo, addr):x}) into the {perms[:3]} VMA "
                               f"0x{lo:x}-0x{hi:x} (SIGSEGV)", EACCES)
            at = hi
            if at >= addr + length:
                break
        if at < addr + length:
            raise SysError(f"write(0x{at:x}) where nothing is mapped (SIGSEGV)", EFAULT)
        # A scenario's thp = true VMA allows a THP fault (MADV_HUGEPAGE), this process's carries
        # MADV_NOHUGEPAGE since its mmap: lifted for the write, over the 2 MiB slots the range
        # touches (within the thp ranges), and put back. A VMA split at a 2 MiB-aligned boundary
        # splits no PMD, and the pieces merge again when the advice is back.
        lo, hi = addr & ~(HPAGE - 1), -(-(addr + length) // HPAGE) * HPAGE
        lifted = [(max(a, lo), min(b, hi)) for a, b in self.thp if a < hi and lo < b]
        for a, b in lifted:
            _check(self.lib.madvise(a, b - a, MADV_HUGEPAGE), "madvise(MADV_HUGEPAGE)")
        try:
            view = memoryview((ctypes.c_char * length).from_address(addr)).cast("B")
            _write_pages(view, length)
            view.release()
        finally:
            for a, b in lifted:
                _check(self.lib.madvise(a, b - a, MADV_NOHUGEPAGE), "madvise(MADV_NOHUGEPAGE)")
        return {}

    def op_mremap(self, addr, length, new_addr):
        """mremap(addr, len, len, MREMAP_MAYMOVE|MREMAP_FIXED, new_addr). MREMAP_FIXED unmaps what
        the new range holds, as MAP_FIXED does: a new range that is not empty is refused first
        (EEXIST) rather than silently replaced. Error texts carry no colon before the errno's: the
        controller keeps what precedes the first one (:func:`vmstate.bridge.kprocess.recv`)."""
        for lo, hi, _ in _vmas():
            if lo < new_addr + length and new_addr < hi:
                raise SysError(f"mremap(0x{addr:x}, 0x{length:x}) to new_addr 0x{new_addr:x} over "
                               f"the mapping 0x{lo:x}-0x{hi:x} (MREMAP_FIXED would unmap it)",
                               EEXIST)
        got = self.lib.mremap(addr, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, new_addr)
        _check(got, f"mremap(0x{addr:x}, 0x{length:x}, 0x{length:x}, MREMAP_MAYMOVE|MREMAP_FIXED, "
                    f"0x{new_addr:x})")
        if got != new_addr:
            raise SysError(f"mremap(0x{addr:x}) moved the mapping to 0x{got:x}, not 0x{new_addr:x}",
                           EFAULT)
        moved = [(max(a, addr), min(b, addr + length)) for a, b in self.thp
                 if a < addr + length and addr < b]
        self.thp = _cut(self.thp, addr, addr + length) + [
            (a - addr + new_addr, b - addr + new_addr) for a, b in moved]
        return {}

    def op_munmap(self, addr, length):
        _check(self.lib.munmap(addr, length), "munmap")
        self.thp = _cut(self.thp, addr, addr + length)
        return {}

    def op_madvise(self, addr, length, advice):
        _check(self.lib.madvise(addr, length, advice), f"madvise({advice})")
        return {}

    def op_mprotect(self, addr, length, prot):
        bits = PROT_READ | (PROT_WRITE if prot == "rw" else 0)
        _check(self.lib.mprotect(addr, length, bits), "mprotect")
        return {}

    def op_split_pmd(self, addr):
        """split_huge_pmd() alone has no system call: mprotect one page of the slot to another
        protection and back. The VMA splits (__split_vma() splits the PMD) and merges again; the PMD
        stays split."""
        haddr = addr & ~(HPAGE - 1)
        prot = _vma_prot(haddr)
        if prot is None:
            return {"skipped": "no VMA"}
        bits = PROT_READ | (PROT_WRITE if "w" in prot else 0)
        _check(self.lib.mprotect(haddr, PAGE, bits ^ PROT_WRITE), "mprotect")
        _check(self.lib.mprotect(haddr, PAGE, bits), "mprotect")
        return {}

    def op_pin(self, addr, length, method="vmsplice"):
        if method == "io_uring":  # a ring cannot travel over SCM_RIGHTS: this process keeps it
            ring = self._pin_io_uring(addr, length)
            self.rings[ring] = True
            return {"ring": ring}
        return {"_fds": list(self._pin_vmsplice(addr, length))}

    def op_unpin_ring(self, ring):
        io_uring_unregister(self.lib, ring)
        os.close(ring)
        del self.rings[ring]
        return {}

    def _pin_vmsplice(self, addr, length):
        """vmsplice() the range into pipes nobody reads: each page is a pipe buffer holding a
        reference (get_user_pages_fast(), FOLL_GET) until the pipe is released. A pipe holds at most
        /proc/sys/fs/pipe-max-size (F_SETPIPE_SZ refuses more: EPERM), so a long range takes
        several; returns their fds."""
        import fcntl
        try:
            with open("/proc/sys/fs/pipe-max-size") as f:
                most = max(PAGE, int(f.read()) // PAGE * PAGE)
        except (OSError, ValueError):
            most = 1 << 20
        fds = []
        try:
            for start in range(addr, addr + length, most):
                chunk = min(most, addr + length - start)
                r, w = os.pipe()
                fds += [r, w]
                size = 1 << max(12, (chunk - 1).bit_length())  # F_SETPIPE_SZ wants a power of 2
                fcntl.fcntl(w, F_SETPIPE_SZ, min(size, most))
                iov = iovec(start, chunk)
                done = 0
                while done < chunk:
                    iov.iov_base, iov.iov_len = start + done, chunk - done
                    n = _check(self.lib.vmsplice(w, ctypes.byref(iov), 1, SPLICE_F_NONBLOCK),
                               "vmsplice")
                    if n == 0:
                        raise SysError("vmsplice: the pipe is full", 11)
                    done += n
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def _pin_io_uring(self, addr, length):
        """IORING_REGISTER_BUFFERS: pin_user_pages(FOLL_WRITE | FOLL_LONGTERM) on the range."""
        params = (ctypes.c_uint8 * 120)()
        ring = _check(self.lib.syscall(SYS_io_uring_setup, ctypes.c_uint(1), ctypes.byref(params)),
                      "io_uring_setup")
        iov = iovec(addr, length)
        try:
            _check(self.lib.syscall(SYS_io_uring_register, ctypes.c_int(ring),
                                    ctypes.c_uint(IORING_REGISTER_BUFFERS), ctypes.byref(iov),
                                    ctypes.c_uint(1)), "io_uring_register(IORING_REGISTER_BUFFERS)")
        except BaseException:
            os.close(ring)
            raise
        return ring

    def op_fork(self):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the child: serve the new socket; nothing of the parent's channel is kept
            self.sock.close()
            mine.close()
            for ring in self.rings:  # fork does not copy pins
                os.close(ring)
            self.rings = {}
            self.sock = theirs
            self._send({"ok": True, "pid": os.getpid()})
            return None
        theirs.close()
        try:
            return {"pid": pid, "_fds": [mine.fileno()]}
        finally:
            self._after_reply = mine.close

    # ---- the loop -------------------------------------------------------------------------
    def _send(self, reply, fds=()):
        data = json.dumps(reply).encode()
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.send(data)

    def serve(self):
        self._send({"ok": True, "pid": os.getpid()})
        while True:
            data = self.sock.recv(MSG_MAX)
            if not data:  # the controller went away
                os._exit(0)
            req = json.loads(data)
            op = req.pop("op")
            if op == "exit":
                try:
                    self._send({"ok": True})
                except OSError:  # the controller is not waiting for the answer
                    pass
                os._exit(0)
            self._after_reply = None
            try:
                reply = getattr(self, f"op_{op}")(**req)
            except SysError as e:
                self._send({"ok": False, "error": str(e), "errno": e.errno})
                continue
            if reply is None:  # a forked child: it already said hello on its own socket
                continue
            fds = reply.pop("_fds", ())
            self._send({"ok": True, **reply}, fds)
            for fd in fds if op == "pin" else ():
                os.close(fd)  # the controller holds the pin now
            if self._after_reply is not None:
                self._after_reply()


def _write_pages(view, length):
    """One non-zero byte stored into every 4 KiB page of ``view``, in address order (a strided
    memoryview assignment stores element by element, lowest address first)."""
    view[::PAGE] = bytes([FILL]) * (length // PAGE)


def _cut(ranges, lo, hi):
    """``ranges`` without ``[lo, hi)``."""
    out = []
    for a, b in ranges:
        out += [(x, y) for x, y in ((a, min(b, lo)), (max(a, hi), b)) if x < y]
    return out


def _vmas():
    """``(start, end, perms)`` of every VMA, in address order."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            out.append((lo, hi, perms))
    return out


def _vma_prot(addr):
    for lo, hi, perms in _vmas():
        if lo <= addr < hi:
            return perms
    return None


def main(argv):
    fd = int(argv[1])
    lib = libc()
    persona = lib.personality(0xFFFFFFFF)
    if persona != -1 and not persona & ADDR_NO_RANDOMIZE and "--no-reexec" not in argv:
        lib.personality(persona | ADDR_NO_RANDOMIZE)  # kept across execve
        os.set_inheritable(fd, True)
        os.execv(sys.executable, [sys.executable, "-S", "-E", os.path.abspath(__file__), str(fd),
                                  "--no-reexec"])
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked children are reaped by the kernel
    Worker(socket.socket(fileno=fd)).serve()


if __name__ == "__main__":
    main(sys.argv)
