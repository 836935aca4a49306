"""The simulated memory state: page frames, processes, VMAs, anon_vmas and page tables as arrays.

:class:`MemoryState` owns the structured arrays (``vmstate.engine.dtypes``) and the primitives every operation
is built from — frame allocation, page-table lookups, ``get_page``/``put_page``,
``page_remove_rmap``, zaps and ``split_huge_pmd``. The operations themselves (mmap, fork, …, split)
live in :mod:`vmstate.engine.operations` and are exposed here as methods.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vmstate.kernels import refcount as k_refcount
from vmstate.kernels.constants import (
    COSTS, C_MMU_NOTIFIER, C_PMD_LOCK, EV_THP_DEFERRED_SPLIT_PAGE, FIRST_BLOCK, HPAGE_PMD_NR,
    HPAGE_PMD_SIZE, MAPPING_NULL, PAGE_SHIFT, PG_double_map, PG_head, PG_tail, PTE_PFN_MASK,
    PTE_PFN_SHIFT, TAIL_MAPPING, V4_5, VARIANTS, VM_EVENTS, _PAGE_PRESENT, _PAGE_PSE,
)
from vmstate.kernels.pmd import _split_huge_pmd_locked
from vmstate.engine.dtypes import PAGE_BLOCK_DTYPE, PMD_DTYPE, PTE_TABLE_DTYPE

N = HPAGE_PMD_NR
_HEAD = 1 << PG_head
_TAIL = 1 << PG_tail
_DOUBLE_MAP = 1 << PG_double_map


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
    """``struct mm_struct``: VMAs sorted by ``vm_start`` and the PMD entry rows by slot address."""
    name: str
    id: int
    vmas: list = field(default_factory=list)
    pmd_rows: dict = field(default_factory=dict)
    alive: bool = True
    _sorted: tuple | None = None  # (haddrs, rows) sorted by haddr; None after a new PMD entry

    def sorted_pmds(self, state):
        """This process's PMD entries as ``(haddr, row)`` arrays sorted by address."""
        if self._sorted is None:
            h = np.fromiter(self.pmd_rows.keys(), np.int64, len(self.pmd_rows))
            r = np.fromiter(self.pmd_rows.values(), np.int64, len(self.pmd_rows))
            o = np.argsort(h, kind="stable")
            self._sorted = (h[o], r[o])
        return self._sorted

    def lookup_pmds(self, state, haddrs):
        """PMD row of each address in ``haddrs`` (-1 where this process has none)."""
        h, r = self.sorted_pmds(state)
        i = np.minimum(np.searchsorted(h, haddrs), max(len(h) - 1, 0))
        if not len(h):
            return np.full(len(haddrs), -1, np.int64)
        return np.where(h[i] == haddrs, r[i], -1)


class _Grow:
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

    def reserve(self, k):
        """Make room for ``k`` more records at once (one allocation, no doubling, nothing touched)."""
        if self.n + k > len(self._buf):
            n = self.n
            self.append(k, zero=False)
            self.n = n

    @property
    def a(self):
        return self._buf[:self.n]


class MemoryState:
    """The whole simulated machine: frames, processes and the counters of ``/proc/vmstat``."""

    def __init__(self, variant: str = "v5"):
        from vmstate.errors import BadInput
        if variant not in VARIANTS:
            raise BadInput(f"expected one of {', '.join(VARIANTS)}, got {variant!r}", field="variant")
        self.variant_name = variant
        self.variant = VARIANTS[variant]  # what the kernels get: V5 or V4_5
        self.blocks = _Grow(PAGE_BLOCK_DTYPE)
        for _ in range(FIRST_BLOCK):  # never handed out: no frame of it is allocated
            self.alloc_block(MAPPING_NULL, 0, 0, 0)
        self.pmds = _Grow(PMD_DTYPE)
        self.tables = _Grow(PTE_TABLE_DTYPE)
        self.mms: dict[str, Mm] = {}
        self.anon_vmas: list[list[Vma]] = []
        self.pins: dict[tuple, list[np.ndarray]] = {}
        self.events = np.zeros(len(VM_EVENTS), np.int64)
        self.cost_counters = np.zeros(len(COSTS), np.int64)
        self.validate_after_ops = False

    # ---- counters -------------------------------------------------------------------------
    @property
    def vm_events(self) -> dict:
        return {name: int(v) for name, v in zip(VM_EVENTS, self.events)}

    @property
    def costs(self) -> dict:
        return {name: int(v) for name, v in zip(COSTS, self.cost_counters)}

    # ---- field views (re-read after every allocation: arrays grow) ----------------------------
    @property
    def flags(self):
        return self.blocks.a["flags"]

    @property
    def _count(self):
        return self.blocks.a["_count"]

    @property
    def _mapcount(self):
        return self.blocks.a["_mapcount"]

    @property
    def compound_mapcount_raw(self):
        return self.blocks.a["compound_mapcount"]

    @property
    def deferred(self):
        return self.blocks.a["deferred"]

    @property
    def pmd(self):
        return self.pmds.a["pmd"]

    @property
    def pte_table(self):
        return self.pmds.a["pte_table"]

    @property
    def ptes(self):
        return self.tables.a["pte"]

    # ---- frames ---------------------------------------------------------------------------
    def alloc_block(self, mapping, index, start=0, end=N):
        """Hand out the next block of 512 frames; frames ``[start, end)`` become allocated."""
        b = self.blocks.append()
        rec = self.blocks.a[b]
        rec["_mapcount"][:] = -1
        rec["compound_mapcount"] = -1
        rec["mapping"] = mapping
        rec["index"] = index
        rec["alloc_start"], rec["alloc_end"] = start, end
        return b

    def get_pages(self, pfns):
        """``get_page()`` on each pfn (to the head for a THP subpage)."""
        b, i = pfns // N, pfns % N
        h = np.where(self.flags[b, i] & _TAIL, 0, i)
        np.add.at(self._count, (b, h), 1)

    def put_pages(self, pfns):
        k_refcount.put_pages(self.blocks.a, np.ascontiguousarray(pfns, np.int64), self.cost_counters)

    def deferred_split_huge_page(self, b):
        """Mirror of v5 ``deferred_split_huge_page()``; counted once per THP (MODEL.md)."""
        if not self.deferred[b]:
            self.deferred[b] = 1
            self.events[EV_THP_DEFERRED_SPLIT_PAGE] += 1

    def page_remove_rmap_ptes(self, pfns):
        """``page_remove_rmap(page)`` (PTE mappings): a subpage reaching -1 queues its THP."""
        b, i = pfns // N, pfns % N
        np.add.at(self._mapcount, (b, i), -1)
        gone = self._mapcount[b, i] == -1
        compound = (self.flags[b, 0] & _HEAD) != 0
        for blk in np.unique(b[gone & compound]):
            self.deferred_split_huge_page(int(blk))

    def page_remove_rmap_compound(self, b):
        """``page_remove_rmap(page, compound)`` for a PMD mapping. v5: the last one drops the offset
        and a subpage reaching -1 queues the THP. 4.5 (``page_remove_anon_compound_rmap``): the last
        one clears PG_double_map (dropping its +1: queued if a subpage reaches -1), or, with no PTE
        mapping possible, queues the THP for deferred split whole (nr = HPAGE_PMD_NR)."""
        cmc = self.compound_mapcount_raw
        cmc[b] -= 1
        if cmc[b] >= 0:
            return
        flags = self.flags[b]
        if self.variant == V4_5 and not flags[1] & _DOUBLE_MAP:
            self.deferred_split_huge_page(b)
            return
        flags[1] &= ~np.uint32(_DOUBLE_MAP)
        row = self._mapcount[b]
        row -= 1
        if (row == -1).any():
            self.deferred_split_huge_page(b)

    # ---- page tables ----------------------------------------------------------------------
    def pmd_row(self, mm: Mm, haddr: int, create=False):
        row = mm.pmd_rows.get(haddr)
        if row is None and create:
            row = self.pmds.append()
            rec = self.pmds.a[row]
            rec["mm"], rec["haddr"], rec["pmd"], rec["pte_table"] = mm.id, haddr, 0, -1
            mm.pmd_rows[haddr] = row
            mm._sorted = None
        return row

    def table_of(self, row):
        """The PTE table under PMD entry ``row``, allocated (``pte_alloc``/deposit) when missing."""
        t = int(self.pte_table[row])
        if t < 0:
            t = self.tables.append()
            self.pte_table[row] = t
        if not self.pmd[row] & _PAGE_PRESENT:
            self.pmd[row] = _PAGE_PRESENT
        return t

    def split_huge_pmd(self, row):
        """Mirror of v5 ``split_huge_pmd()`` (not freeze) on the huge PMD entry ``row``."""
        b = int((int(self.pmd[row]) & PTE_PFN_MASK) >> PTE_PFN_SHIFT) // N
        self.cost_counters[C_PMD_LOCK] += 1
        self.cost_counters[C_MMU_NOTIFIER] += 1
        _split_huge_pmd_locked(self.pmds.a, self.tables.a, row, self.blocks.a, b, False, self.cost_counters,
                               self.events, self.variant)

    def set_huge_pmd(self, mm: Mm, haddr: int, entry: int):
        """Install huge PMD ``entry`` at ``haddr`` with its PTE table deposited beside it
        (``pte_alloc_one()`` + ``pgtable_trans_huge_deposit()``: the table split_huge_pmd and the
        freeze later fill). Every huge PMD is installed here, or built with its table by
        ``vmstate.engine.population``."""
        row = self.pmd_row(mm, haddr, create=True)
        self.pmd[row] = entry
        if self.pte_table[row] < 0:
            self.pte_table[row] = self.tables.append()
        return row

    def split_huge_pmd_address(self, mm: Mm, address: int):
        """Mirror of ``split_huge_pmd_address()``: split a huge PMD that straddles ``address``."""
        if address % HPAGE_PMD_SIZE == 0:
            return
        row = mm.pmd_rows.get(address & ~(HPAGE_PMD_SIZE - 1))
        if row is not None and self.pmd[row] & _PAGE_PSE:
            self.split_huge_pmd(row)

    def zap_huge_pmd(self, row):
        """Mirror of ``zap_huge_pmd()``: clear the entry, page_remove_rmap(compound), put_page."""
        b = int((int(self.pmd[row]) & PTE_PFN_MASK) >> PTE_PFN_SHIFT) // N
        self.pmd[row] = 0
        self.pte_table[row] = -1  # the deposited table is freed with the entry
        self.page_remove_rmap_compound(b)
        self.put_pages(np.array([b * N], np.int64))

    def zap_pte_range(self, mm: Mm, start: int, end: int):
        """Mirror of ``zap_pmd_range()``/``zap_pte_range()`` over ``[start, end)`` of one process."""
        for haddr in range(start & ~(HPAGE_PMD_SIZE - 1), end, HPAGE_PMD_SIZE):
            row = mm.pmd_rows.get(haddr)
            if row is None:
                continue
            if self.pmd[row] & _PAGE_PSE:
                if start <= haddr and haddr + HPAGE_PMD_SIZE <= end:
                    self.zap_huge_pmd(row)
                    continue
                self.split_huge_pmd(row)  # a partly covered PMD is split, then its PTEs zapped
            if not self.pmd[row] & _PAGE_PRESENT:
                continue
            lo = max(start, haddr) - haddr >> PAGE_SHIFT
            hi = min(end, haddr + HPAGE_PMD_SIZE) - haddr >> PAGE_SHIFT
            seg = self.ptes[int(self.pte_table[row]), lo:hi]
            present = (seg & _PAGE_PRESENT) != 0
            pfns = ((seg[present] & PTE_PFN_MASK) >> PTE_PFN_SHIFT).astype(np.int64)
            seg[present] = 0
            if len(pfns):
                self.page_remove_rmap_ptes(pfns)
                self.put_pages(pfns)

    # ---- processes and VMAs -------------------------------------------------------------------
    def anon_vma_tree(self, anon_vma: int):
        """The VMAs of ``anon_vma`` in interval-tree order (vm_pgoff, then process, then address);
        the split wrapper queries it for many THPs at once (``vmstate.engine.huge_memory.rmap_arrays``)."""
        return sorted(self.anon_vmas[anon_vma], key=lambda v: (v.vm_pgoff, v.mm.id, v.vm_start))

    # ---- views for comparison and export --------------------------------------------------------
    def page_mapping_index(self):
        """Derived ``page->mapping`` and ``page->index`` of every frame: ``[block, 512]`` arrays."""
        a = self.blocks.a
        free = (a["_count"] == 0) & ((a["flags"] & _TAIL) == 0)
        tail = (a["flags"] & _TAIL) != 0
        mapping = np.where(free, MAPPING_NULL, np.where(tail, TAIL_MAPPING, a["mapping"][:, None]))
        index = a["index"][:, None] + np.arange(N, dtype=np.uint64)[None, :]
        index = np.where(free | tail, np.uint64(0), index)
        return mapping, index

    def allocated_pfns(self):
        """Every pfn ever allocated, ascending."""
        a = self.blocks.a
        i = np.arange(N)[None, :]
        mask = (i >= a["alloc_start"][:, None]) & (i < a["alloc_end"][:, None])
        return np.flatnonzero(mask.ravel()).astype(np.int64)

    def dump(self) -> dict:
        """The plain-Python comparison format of ``docs/semantics.md``."""
        from vmstate.engine.compare import dump_state
        return dump_state(self)

    def snapshot_summary(self) -> dict:
        a = self.blocks.a
        pfns = self.allocated_pfns()
        b, i = pfns // N, pfns % N
        in_use = (a["_count"][b, i] != 0) | ((a["flags"][b, i] & _TAIL) != 0)
        thps = int(((a["flags"][:, 0] & _HEAD) != 0).sum())
        return {"thps": thps, "pages_in_use": int(in_use.sum())}

    def validate(self):
        from vmstate.engine.validate import validate_state
        validate_state(self)


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, in bytes (physical memory where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _install_operations():
    from vmstate.engine import operations
    for name in operations.__all__:
        setattr(MemoryState, name, getattr(operations, name))


_install_operations()
