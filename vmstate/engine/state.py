"""The simulated memory state: page frames, processes, VMAs, anon_vmas and page tables as arrays.

:class:`MemoryState` owns the structured arrays (``vmstate.engine.dtypes``), the counters and the
primitives that allocate frames and page-table entries; ``state.k`` is its variant's kernels
(:mod:`vmstate.kernels.variants`), chosen once here. The operations live where the kernel keeps
them — :mod:`~vmstate.engine.mmap` (mmap, munmap, exit), :mod:`~vmstate.engine.fork`,
:mod:`~vmstate.engine.madvise`, :mod:`~vmstate.engine.mprotect`, :mod:`~vmstate.engine.gup` (pin,
unpin), :mod:`~vmstate.engine.huge_memory` (split_pmd, split), :mod:`~vmstate.engine.memory`
(write), :mod:`~vmstate.engine.mremap` — and the methods below call them.
Every check runs before the first change, so bad input leaves the state untouched; kernel outcomes
(-EBUSY) are result arrays, not exceptions.
"""
from __future__ import annotations

import numpy as np

from vmstate.engine import (
    fork as _fork, gup, huge_memory, madvise, memory as _memory, mmap as _mmap, mprotect as _mprotect,
    mremap as _mremap,
)
from vmstate.engine.compare import dump_state
from vmstate.engine.dtypes import PAGE_BLOCK_DTYPE, PMD_DTYPE, PTE_TABLE_DTYPE
from vmstate.engine.mm_types import Grow, Mm, Vma
from vmstate.engine.validate import validate_state
from vmstate.errors import BadInput
from vmstate.kernels.constants import (
    COSTS, FIRST_BLOCK, HPAGE_PMD_NR, MAPPING_NULL, PG_head, PG_tail, TAIL_MAPPING, VARIANTS,
    MTHP_STATS, N_EVENTS, VM_EVENTS, _PAGE_PRESENT,
)
from vmstate.kernels.variants import KERNELS

N = HPAGE_PMD_NR
_HEAD = 1 << PG_head
_TAIL = 1 << PG_tail


class MemoryState:
    """The whole simulated machine: frames, processes and the counters of ``/proc/vmstat``.
    ``variant``: the refcounting design, ``"v5"`` (the patch series, default) or ``"v4.5"``."""

    def __init__(self, variant: str = "v5"):
        if variant not in VARIANTS:
            raise BadInput(f"expected one of {', '.join(VARIANTS)}, got {variant!r}", field="variant")
        self.variant = variant
        self.k = KERNELS[variant]
        self.blocks = Grow(PAGE_BLOCK_DTYPE)
        for _ in range(FIRST_BLOCK):  # never handed out: no frame of it is allocated
            self.alloc_block(MAPPING_NULL, 0, 0, 0)
        self.pmds = Grow(PMD_DTYPE)
        self.tables = Grow(PTE_TABLE_DTYPE)
        self.mms: dict[str, Mm] = {}
        self.anon_vmas: list[list[Vma]] = []
        self.pins: dict[tuple, list] = {}  # (mm, addr, len) -> [Pin], latest last
        self.events = np.zeros(N_EVENTS, np.int64)
        self.cost_counters = np.zeros(len(COSTS), np.int64)
        self.validate_after_ops = False

    # ---- the operations (``../shared/spec/SCENARIOS.md``) ----------------------------------------
    def mmap(self, mm, addr, length, thp=True, fill="data"):
        """:func:`vmstate.engine.mmap.mmap`"""
        self._after(_mmap.mmap(self, mm, addr, length, thp, fill))

    def fork(self, mm, child):
        """:func:`vmstate.engine.fork.dup_mmap`"""
        self._after(_fork.dup_mmap(self, mm, child))

    def exit(self, mm):
        """:func:`vmstate.engine.mmap.exit_mmap`"""
        self._after(_mmap.exit_mmap(self, mm))

    def munmap(self, mm, addr, length):
        """:func:`vmstate.engine.mmap.munmap`"""
        self._after(_mmap.munmap(self, mm, addr, length))

    def madvise_dontneed(self, mm, addr, length):
        """:func:`vmstate.engine.madvise.madvise_dontneed`"""
        self._after(madvise.madvise_dontneed(self, mm, addr, length))

    def mprotect(self, mm, addr, length, prot):
        """:func:`vmstate.engine.mprotect.mprotect`"""
        self._after(_mprotect.mprotect(self, mm, addr, length, prot))

    def pin(self, mm, addr, length):
        """:func:`vmstate.engine.gup.pin`"""
        self._after(gup.pin(self, mm, addr, length))

    def unpin(self, mm, addr, length):
        """:func:`vmstate.engine.gup.unpin`"""
        self._after(gup.unpin(self, mm, addr, length))

    def write(self, mm, addr, length):
        """:func:`vmstate.engine.memory.write`"""
        self._after(_memory.write(self, mm, addr, length))

    def mremap(self, mm, addr, length, new_addr):
        """:func:`vmstate.engine.mremap.mremap`"""
        self._after(_mremap.mremap(self, mm, addr, length, new_addr))

    def madvise_cold(self, mm, addr, length):
        """:func:`vmstate.engine.madvise.madvise_cold` (6.18)"""
        self._after(madvise.madvise_cold(self, mm, addr, length))

    def madvise_pageout(self, mm, addr, length):
        """:func:`vmstate.engine.madvise.madvise_pageout` (6.18)"""
        self._after(madvise.madvise_pageout(self, mm, addr, length))

    def shrink(self) -> huge_memory.SplitResult:
        """:func:`vmstate.engine.huge_memory.shrink`"""
        return self._after(huge_memory.shrink(self))

    def split_pmd(self, mm, addr):
        """:func:`vmstate.engine.huge_memory.split_pmd`"""
        self._after(huge_memory.split_pmd(self, mm, addr))

    def split(self, mm, addr, length, race=None) -> huge_memory.SplitResult:
        """:func:`vmstate.engine.huge_memory.split`; ``race``: :class:`~vmstate.split.Race`."""
        return self._after(huge_memory.split(self, mm, addr, length, race))

    def _after(self, result=None):
        if self.validate_after_ops:
            self.validate()
        return result

    # ---- counters -------------------------------------------------------------------------
    @property
    def vm_events(self) -> dict:
        return {name: int(v) for name, v in zip(VM_EVENTS, self.events)}

    @property
    def mthp_stats(self) -> dict:
        """The hugepages-2048kB/stats counters (6.18; zeros in v5 and v4.5). The gauges
        ``nr_anon`` and ``nr_anon_partially_mapped`` are read from the state: the THPs there are,
        and those with PG_partially_mapped."""
        a = self.blocks.a
        out = {name: int(v) for name, v in zip(MTHP_STATS, self.events[len(VM_EVENTS):])}
        if self.k.LARGE_FOLIO_FIELDS:  # the variant that has the stats (6.18)
            out["nr_anon"] = int(((a["flags"][:, 0] & _HEAD) != 0).sum())
            out["nr_anon_partially_mapped"] = int((a["partially_mapped"] != 0).sum())
        return out

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
        return int(self.alloc_blocks(mapping, [index], start, end)[0])

    def alloc_blocks(self, mapping, index, start, end):
        """The next ``len(index)`` blocks at once (``alloc_block`` for each, in order)."""
        n = len(index)
        b0 = self.blocks.append(n)
        rec = self.blocks.a[b0:]
        rec["_mapcount"] = -1
        rec["compound_mapcount"] = -1
        rec["_large_mapcount"] = -1
        rec["_mm_id_mapcount"] = -1
        rec["mapping"] = mapping
        rec["index"] = index
        rec["alloc_start"], rec["alloc_end"] = start, end
        return np.arange(b0, b0 + n, dtype=np.int64)

    # ---- page tables ----------------------------------------------------------------------
    def pmd_row(self, mm: Mm, haddr: int, create=False):
        if create:
            return int(self.pmd_rows(mm, np.array([haddr], np.int64))[0])
        return mm.pmd_row(haddr)

    def pmd_rows(self, mm: Mm, haddrs):
        """The PMD rows of ``mm`` at ``haddrs``, new ones where it has none (``pmd_alloc()``)."""
        rows = mm.lookup_pmds(haddrs)
        new = rows < 0
        if new.any():
            rows[new] = self.new_pmd_rows(mm, haddrs[new])
        return rows

    def new_pmd_rows(self, mm: Mm, haddrs, entries=0, tables=-1):
        """PMD entries of ``mm`` at the slots ``haddrs`` (none has one yet): their rows."""
        r0 = self.pmds.append(len(haddrs))
        rows = np.arange(r0, r0 + len(haddrs), dtype=np.int64)
        rec = self.pmds.a[r0:]
        rec["mm"], rec["haddr"], rec["pmd"], rec["pte_table"] = mm.id, haddrs, entries, tables
        mm.add_pmd_rows(haddrs, rows)
        return rows

    def table_of(self, row):
        """The PTE table under PMD entry ``row``, allocated (``pte_alloc``/deposit) when missing."""
        self.table_rows([row])
        return int(self.pte_table[row])

    def table_rows(self, rows):
        """``table_of()`` for many non-huge PMD entries at once: a (zeroed) PTE table where a row has
        none (``pte_alloc()``), and the entry present."""
        rows = np.asarray(rows, np.int64)
        need = rows[self.pte_table[rows] < 0]
        if len(need):
            t0 = self.tables.append(len(need))
            self.pte_table[need] = t0 + np.arange(len(need))
        pmd = self.pmd
        pmd[rows] = np.where(pmd[rows] & np.uint64(_PAGE_PRESENT), pmd[rows], np.uint64(_PAGE_PRESENT))

    def set_huge_pmd(self, mm: Mm, haddr: int, entry: int):
        """Install huge PMD ``entry`` at ``haddr``. The kernel deposits a PTE table beside it
        (``pte_alloc_one()`` + ``pgtable_trans_huge_deposit()``) that stays empty until
        ``__split_huge_pmd_locked()`` withdraws and fills it; vmstate allocates the model's table
        only then (:meth:`withdraw_tables`), so a PMD-mapped THP costs no 4 KiB table."""
        row = self.pmd_row(mm, haddr, create=True)
        self.pmd[row] = entry
        return row

    def withdraw_tables(self, rows):
        """The tables deposited under the huge PMD entries ``rows``, allocated (zeroed) for the rows
        that have none yet: ``pgtable_trans_huge_withdraw()`` before a kernel may split them."""
        rows = np.asarray(rows, np.int64)
        rows = rows[self.pte_table[rows] < 0]  # a row listed twice gets two: the last is kept
        if len(rows):
            # not zeroed: __split_huge_pmd_locked() writes all 512 entries before anything reads them
            t0 = self.tables.append(len(rows), zero=False)
            self.pte_table[rows] = t0 + np.arange(len(rows))

    # ---- processes, VMAs and pins ---------------------------------------------------------------
    def anon_vma_tree(self, anon_vma: int):
        """The VMAs of ``anon_vma`` in interval-tree order (vm_pgoff, then process, then address);
        the split wrapper queries it for many THPs at once (``vmstate.engine.huge_memory.rmap_arrays``)."""
        return sorted(self.anon_vmas[anon_vma], key=lambda v: (v.vm_pgoff, v.mm.id, v.vm_start))

    def held_pins(self) -> dict:
        """Every pin held, one list of pfns per pin, latest last: ``{(mm, addr, len): [[pfn, ...]]}``."""
        return {key: [p.pfns.tolist() for p in stack for _ in range(p.nr)]
                for key, stack in self.pins.items() if stack}

    def mapcount_offsets(self):
        """Per block, 1 where every subpage's raw ``_mapcount`` carries the variant's offset."""
        out = np.zeros(self.blocks.n, np.int64)
        self.k.mapcount_offsets(self.blocks.a, out)
        return out

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

    def snapshot_summary(self) -> dict:
        a = self.blocks.a
        pfns = self.allocated_pfns()
        b, i = pfns // N, pfns % N
        in_use = (a["_count"][b, i] != 0) | ((a["flags"][b, i] & _TAIL) != 0)
        thps = int(((a["flags"][:, 0] & _HEAD) != 0).sum())
        return {"thps": thps, "pages_in_use": int(in_use.sum())}

    def dump(self) -> dict:
        """The plain-Python comparison format of ``docs/semantics.md``."""
        return dump_state(self)

    def validate(self):
        """Every validator of :mod:`vmstate.engine.validate`; raises CorruptState at the first rule
        broken, with the values tested."""
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
