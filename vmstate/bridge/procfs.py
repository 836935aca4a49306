"""Readers for the running kernel's ``/proc`` files that :mod:`vmstate.bridge.capture` and
:mod:`vmstate.bridge.kernel_run` need: ``/proc/PID/maps``, ``/proc/PID/pagemap`` (and its ``PAGEMAP_SCAN``
ioctl), ``/proc/kpageflags``, ``/proc/kpagecount`` and ``/proc/vmstat``.

Bit layouts: ``Documentation/admin-guide/mm/pagemap.rst`` and
``include/uapi/linux/kernel-page-flags.h``, ``include/uapi/linux/fs.h`` (``struct pm_scan_arg``).
"""
from __future__ import annotations

import ctypes
import errno as errno_mod
import fcntl
import os
import re
from dataclasses import dataclass

import numpy as np

from vmstate.errors import BadInput

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT

# /proc/PID/pagemap entry (u64 per virtual page)
PM_PFN_MASK = (1 << 55) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56     # the page is mapped exactly once (page mapcount 1)
PM_UFFD_WP = 1 << 57
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63
SWP_TYPE_BITS = 5               # a swap entry: type in bits 0-4, offset in 5-54
# Special swap types sit at the top of the 5-bit type space (include/linux/swap.h): PTE marker 31,
# then hwpoison (with CONFIG_MEMORY_FAILURE), the three migration types, device-private. Types from
# 27 to 30 are migration entries on every x86-64 configuration; a real swap device is never above
# 26. The offset of a migration entry is the pfn.
SWP_MIGRATION_TYPES = range(27, 31)

# /proc/kpageflags bits beyond those export.py names
KPF_ZERO_PAGE = 24
KPF_IDLE = 25
KPF_PGTABLE = 26
KPF_RESERVED = 32
KPF_MAPPEDTODISK = 34           # PG_anon_exclusive on an anonymous page (it reuses this bit)

# PAGEMAP_SCAN (Linux 6.7+): page categories
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6           # a PMD-mapped THP (or hugetlb): what pagemap itself cannot say


class pm_scan_arg(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


class page_region(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


PAGEMAP_SCAN = (3 << 30) | (ctypes.sizeof(pm_scan_arg) << 16) | (ord("f") << 8) | 16  # _IOWR('f', 16)
_SCAN_VEC = 4096


@dataclass(frozen=True)
class MapsVma:
    """One line of ``/proc/PID/maps``."""
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str

    @property
    def anonymous(self):
        """A private anonymous mapping (the heap and stack included)."""
        return self.inode == 0 and self.perms.endswith("p") and (
            not self.path or self.path in ("[heap]", "[stack]") or self.path.startswith("[anon"))

    def as_json(self):
        return [self.start, self.end, self.perms, self.path]


_SPECIAL = ("[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]", "[uprobes]")
TASK_SIZE = 1 << 47


def _proc_error(path, e: OSError) -> BadInput:
    hint = " (reading another process's page frames needs root: CAP_SYS_ADMIN)" \
        if e.errno in (errno_mod.EACCES, errno_mod.EPERM) else ""
    return BadInput(f"{path}: {e.strerror}{hint}", field="pid")


def read_maps(pid: int) -> list[MapsVma]:
    """The process's VMAs, without the kernel's special mappings ([vdso], [vvar], …)."""
    path = f"/proc/{pid}/maps"
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise _proc_error(path, e) from None
    out = []
    for line in lines:
        parts = line.split(None, 5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        name = parts[5].strip() if len(parts) > 5 else ""
        if name in _SPECIAL or lo >= TASK_SIZE:
            continue
        out.append(MapsVma(lo, hi, parts[1], int(parts[2], 16), int(parts[4]), name))
    return out


def pagemap_scan(fd: int, start: int, end: int):
    """Regions ``(start, end, categories)`` of ``[start, end)`` with present or swapped pages, from
    the ``PAGEMAP_SCAN`` ioctl; ``None`` where the kernel has no such ioctl (before 6.7)."""
    vec = (page_region * _SCAN_VEC)()
    out = []
    at = start
    while at < end:
        arg = pm_scan_arg(size=ctypes.sizeof(pm_scan_arg), start=at, end=end,
                          vec=ctypes.addressof(vec), vec_len=_SCAN_VEC,
                          category_anyof_mask=PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                          return_mask=PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO
                          | PAGE_IS_HUGE)
        try:
            n = fcntl.ioctl(fd, PAGEMAP_SCAN, arg)
        except OSError as e:
            if e.errno in (errno_mod.ENOTTY, errno_mod.EINVAL, errno_mod.EOPNOTSUPP):
                return None
            raise
        out += [(vec[i].start, vec[i].end, vec[i].categories) for i in range(n)]
        if arg.walk_end <= at:
            break
        at = arg.walk_end
    return out


def read_pagemap(fd: int, start: int, end: int) -> np.ndarray:
    """The u64 pagemap entries of ``[start, end)``."""
    n = (end - start) >> PAGE_SHIFT
    data = os.pread(fd, 8 * n, (start >> PAGE_SHIFT) * 8)
    if len(data) != 8 * n:
        raise OSError(errno_mod.EIO, f"short read of pagemap at 0x{start:x}")
    return np.frombuffer(data, np.uint64)


def read_kpage(pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``/proc/kpageflags`` and ``/proc/kpagecount`` of every pfn in ``pfns``: each 512-frame window
    that holds one is read whole (one pread each)."""
    pfns = np.asarray(pfns, np.int64)
    flags = np.zeros(len(pfns), np.uint64)
    counts = np.zeros(len(pfns), np.uint64)
    if not len(pfns):
        return flags, counts
    blocks, inverse = np.unique(pfns >> 9, return_inverse=True)
    for path, out in (("/proc/kpageflags", flags), ("/proc/kpagecount", counts)):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise _proc_error(path, e) from None
        try:
            windows = np.zeros((len(blocks), 512), np.uint64)
            for k, b in enumerate(blocks.tolist()):
                data = os.pread(fd, 512 * 8, b * 512 * 8)
                windows[k, :len(data) // 8] = np.frombuffer(data, np.uint64)
        finally:
            os.close(fd)
        out[:] = windows[inverse, pfns & 511]
    return flags, counts


def read_vmstat() -> dict[str, int]:
    with open("/proc/vmstat") as f:
        return {k: int(v) for k, v in (line.split() for line in f)}


MTHP_STATS_DIR = "/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/stats"
DROP_CACHES = "/proc/sys/vm/drop_caches"


def read_mthp_stats(names) -> dict[str, int]:
    """``hugepages-2048kB/stats/<name>`` for each of ``names`` (a missing file, before 6.9 or without
    that size: left out)."""
    out = {}
    for name in names:
        try:
            with open(os.path.join(MTHP_STATS_DIR, name)) as f:
                out[name] = int(f.read())
        except (OSError, ValueError):
            continue
    return out


def drop_slab():
    """``echo 2 > /proc/sys/vm/drop_caches``: drop_slab() runs every shrinker over all its objects,
    the deferred-split shrinker (``deferred_split_scan()``) among them."""
    with open(DROP_CACHES, "w") as f:
        f.write("2")


def thp_events(before: dict, after: dict) -> dict[str, int]:
    """The ``thp_*`` counters that changed between two ``read_vmstat()`` readings."""
    return {k: after[k] - before.get(k, 0) for k in after
            if k.startswith("thp_") and after[k] != before.get(k, 0)}


def smaps_anon_huge(pid: int) -> dict[tuple[int, int], int]:
    """``AnonHugePages`` (bytes: PMD-mapped THPs) of every VMA, by ``(vm_start, vm_end)``."""
    out, span = {}, None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                span = (int(m[1], 16), int(m[2], 16))
            elif line.startswith("AnonHugePages:"):
                out[span] = int(line.split()[1]) * 1024
    return out
