"""The one memory estimate: what a state and a split of all its THPs need, in bytes, and the one
budget it is compared with (``MemAvailable``, :func:`vmstate.engine.state.available_memory`).

``vmstate run`` (a scenario's mmaps and forks, or its ``[population]``), :func:`from_population`
and ``vmstate sweep`` (workers × the largest run) all refuse through :func:`check_fits`, with one
message format. ``tests/test_memory_estimate.py`` compares the estimate with the peak RSS growth of
populations split in a fresh process.

Per part (the records of :mod:`vmstate.engine.dtypes`; Python objects as measured with
``tracemalloc`` on CPython 3.11):

- a 2 MiB block of page frames: one ``PAGE_BLOCK_DTYPE`` record (6264 bytes);
- a mapping of a THP (each process that maps it, fork copies included): a ``PMD_DTYPE`` record
  (32), its slot and row in ``Mm.haddrs``/``Mm.rows`` (16), and a ``PTE_TABLE_DTYPE`` table (4096):
  a split PMD's, or the one a split of a huge PMD withdraws (``MemoryState.withdraw_tables``; a
  PMD-mapped THP that is never split has none, so this bounds the state from above until then);
- a held pin: its ``(mm, addr, len)`` key, list, ``Pin`` and pfns array (398), plus 8 per page;
- the split: the per-THP result arrays (ret, reason, the racing pins' points, the BUG() values,
  the ``costs``/``events`` rows) while the kernel runs, or the rmap index arrays
  (:func:`vmstate.engine.huge_memory.rmap_arrays`: per (THP, VMA) entry the VMA order, PMD row,
  subpage range and VM_WRITE, concatenated, sorted and copied at once) while they are built,
  whichever is larger;
- generating a population: the draw and per-THP arrays, gone before the split (the larger of it
  and the split counts).

A state built op by op grows its arrays by doubling (:class:`~vmstate.engine.mm_types.Grow`): while
one grows, the old and the new copy are both resident, so ``grown`` counts the records twice. A
generated population reserves each array once and is counted once.
"""
from __future__ import annotations

from dataclasses import dataclass

from vmstate.engine.dtypes import PAGE_BLOCK_DTYPE, PMD_DTYPE, PTE_TABLE_DTYPE
from vmstate.errors import BadInput
from vmstate.kernels.constants import COSTS, N_EVENTS

__all__ = ["MemoryEstimate", "estimate", "check_fits", "budget"]

BLOCK_BYTES = PAGE_BLOCK_DTYPE.itemsize
PMD_ROWS_BYTES = 16                 # the slot and row in Mm.haddrs, Mm.rows (int64 each)
PIN_BYTES = 398                     # one pin op's Python records, pfns array header included
PIN_PAGE_BYTES = 8                  # a pinned page's pfn in Pin.pfns
# The split's peak is the larger of its two phases. The rmap query (huge_memory.rmap_arrays):
# per THP its mapping, index, ptr and count arrays, per (THP, VMA) entry six int64 columns per
# anon_vma part, concatenated, sorted and copied (measured: 94 and 130.5 bytes). The kernel: per
# THP ret, reason, the racing pins' points, the BUG() values (4), the costs and events rows, the
# THP and ptr arrays; per entry the PMD row, subpage range and VM_WRITE columns.
RMAP_THP_BYTES, RMAP_ENTRY_BYTES = 94, 130.5
KERNEL_THP_BYTES = 8 * (2 + 2 + 4 + len(COSTS) + N_EVENTS + 2)
KERNEL_ENTRY_BYTES = 8 * 4
# Generating a population (population.build_population): the seed's draw and the per-THP arrays
# (152 bytes a THP, tracemalloc). The partially unmapped THPs' zap runs in a kernel
# (kernels.pmd.zap_mapcounts) with no index arrays: nothing per zapped subpage.
GENERATE_THP_BYTES = 152
ZAP_SUBPAGE_BYTES = 0


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by part (``blocks``, ``mappings``, ``pins``, ``temporaries``: the split's result and
    rmap index arrays or the population generation's arrays, whichever peak is higher);
    ``total``."""
    parts: dict

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))


def estimate(*, blocks: int, mappings: int, pins: int = 0, pinned_pages: int = 0,
             split_thps: int = 0, rmap_entries: int = 0, generated_thps: int = 0,
             zapped_subpages: int = 0, grown: bool = False) -> MemoryEstimate:
    """The estimate of a state of ``blocks`` 2 MiB blocks of frames and ``mappings`` PMD entries
    (each with its PTE table), ``pins`` pin records holding ``pinned_pages`` pages, and a split of
    ``split_thps`` THPs whose rmap walks visit ``rmap_entries`` (THP, VMA) pairs. A generated
    population of ``generated_thps`` with ``zapped_subpages`` zapped in all has its generation's
    temporaries, gone before the split: the larger of the two peaks counts. ``grown``: the
    arrays were grown by doubling (count them twice)."""
    twice = 2 if grown else 1
    split = max(split_thps * RMAP_THP_BYTES + rmap_entries * RMAP_ENTRY_BYTES,
                split_thps * KERNEL_THP_BYTES + rmap_entries * KERNEL_ENTRY_BYTES)
    generate = generated_thps * GENERATE_THP_BYTES + zapped_subpages * ZAP_SUBPAGE_BYTES
    return MemoryEstimate({
        "blocks": twice * blocks * BLOCK_BYTES,
        "mappings": twice * mappings * (PMD_DTYPE.itemsize + PTE_TABLE_DTYPE.itemsize)
        + mappings * PMD_ROWS_BYTES,
        "pins": pins * PIN_BYTES + pinned_pages * PIN_PAGE_BYTES,
        "temporaries": max(split, generate),
    })


def check_fits(need: int, *, field: str, what: str, have: int | None = None):
    """Refuse (BadInput naming ``field``) when ``need`` bytes exceed ``have`` (default: the budget,
    MemAvailable). Every refusal reads: ``field 'F': WHAT would need about X GiB (vmstate's memory
    estimate); Y GiB is available (MemAvailable) (ENOMEM)``."""
    if have is None:
        have = budget()
    if need > have:
        raise BadInput(f"field '{field}': {what} would need about {need / 2**30:.3g} GiB "
                       f"(vmstate's memory estimate); {have / 2**30:.3g} GiB is available "
                       f"(MemAvailable) (ENOMEM)", field=field)


def budget() -> int:
    """The one budget: MemAvailable (:func:`vmstate.engine.state.available_memory`)."""
    from vmstate.engine import state
    return state.available_memory()
