"""The records of ``include/linux/mm_types.h`` the engine keeps as Python objects (processes and
VMAs: few, and looked up by name), and the growable structured array the page records, PMD entries
and PTE tables live in."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class Vma:
    """``struct vm_area_struct`` (the fields vmstate needs)."""
    mm: "Mm"
    vm_start: int
    vm_end: int
    vm_pgoff: int
    vm_flags: int
    anon_vma: int

    def as_tuple(self):
        return (self.vm_start, self.vm_end, self.vm_pgoff, self.vm_flags, self.anon_vma)


@dataclass(eq=False)
class Mm:
    """``struct mm_struct``: VMAs sorted by ``vm_start``, and the page table's PMD level as two
    sorted arrays (``haddrs``: the 2 MiB slots this process has a PMD entry for, ascending;
    ``rows``: each one's row in the state's PMD entries), looked up many addresses at a time."""
    name: str
    id: int
    vmas: list = field(default_factory=list)
    alive: bool = True
    nonlinear: bool = False  # mremap moved pages here (or in the parent before fork): two slots may
                             # map pages of one block
    haddrs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def add_pmd_rows(self, haddrs, rows):
        """Enter PMD rows for slots that have none yet (any order)."""
        haddrs = np.asarray(haddrs, np.int64)
        rows = np.asarray(rows, np.int64)
        if not len(haddrs):
            return
        if not len(self.haddrs) or (haddrs[0] > self.haddrs[-1] and np.all(np.diff(haddrs) > 0)):
            self.haddrs = np.concatenate([self.haddrs, haddrs])
            self.rows = np.concatenate([self.rows, rows])
            return
        h = np.concatenate([self.haddrs, haddrs])
        order = np.argsort(h, kind="stable")
        self.haddrs, self.rows = h[order], np.concatenate([self.rows, rows])[order]

    def lookup_pmds(self, haddrs):
        """PMD row of each address in ``haddrs`` (-1 where this process has none)."""
        h = self.haddrs
        if not len(h):
            return np.full(len(haddrs), -1, np.int64)
        i = np.minimum(np.searchsorted(h, haddrs), len(h) - 1)
        return np.where(h[i] == haddrs, self.rows[i], -1)

    def pmd_row(self, haddr: int):
        """The PMD row at slot ``haddr``, or None."""
        i = int(np.searchsorted(self.haddrs, haddr))
        if i < len(self.haddrs) and self.haddrs[i] == haddr:
            return int(self.rows[i])
        return None


class Grow:
    """A structured array with amortised appends; ``a`` is the live prefix.

    Buffers come from ``np.empty`` and are zeroed by hand: numpy madvises large ``empty`` buffers
    MADV_HUGEPAGE, so first touch costs one fault per 2 MiB. ``np.zeros`` gets calloc'd 4 KiB pages
    instead: 1.1 s against 0.04 s to fault in 600 MB on this machine.
    """

    def __init__(self, dtype, capacity=16):
        self._buf = np.empty(capacity, dtype)
        self._zeroed = 0  # records [n, _zeroed) are zero already
        self.n = 0

    def append(self, k=1, zero=True):
        """Room for ``k`` records at the end; their index. ``zero=False`` leaves them as they are
        (unwritten memory costs nothing until first touch) for a caller that writes them whole."""
        need = self.n + k
        if need > len(self._buf):
            buf = np.empty(max(need, 2 * len(self._buf)), self._buf.dtype)
            buf[:self.n] = self._buf[:self.n]
            self._buf = buf
            self._zeroed = self.n
        start, self.n = self.n, need
        if zero and self._zeroed < need:
            self._buf[max(start, self._zeroed):need].view(np.uint8).fill(0)
        self._zeroed = max(self._zeroed, need) if zero else self._zeroed
        return start

    def truncate(self, n):
        """Drop the records from ``n`` on, which must be zero (never written since ``append``)."""
        assert n <= self.n
        self.n = n

    def reserve(self, k):
        """Make room for ``k`` more records at once (one allocation, no doubling, nothing touched)."""
        if self.n + k > len(self._buf):
            n = self.n
            self.append(k, zero=False)
            self.n = n

    @property
    def a(self):
        return self._buf[:self.n]


@dataclass(eq=False)
class Pin:
    """Pins held on one range of one process (``get_user_pages()`` references): the pages' pfns,
    taken once per pin, and how many pins of those pages are held (``nr``). Many pins of one range
    cost what one does."""
    pfns: np.ndarray
    nr: int = 1
