"""Huge PMDs (``mm/huge_memory.c``): the fault that installs one, ``copy_huge_pmd()``,
``zap_huge_pmd()`` and ``__split_huge_pmd_locked()``. The counts the PMD split changes are the
variant's (``split_huge_pmd_counts()``, :mod:`vmstate.kernels.per_variant`).

Kernels take the structured arrays themselves (``vmstate.engine.dtypes``) and index one record at a
time: numba types a record's 512-entry field as a contiguous array, which the SIMD loops need (a 2-D
field view of the same memory is strided and ran ~7x slower, ``benchmarks/layout_bench.py``).
"""
from numba import njit, prange

from vmstate.kernels.constants import (
    ANON_FAULT_FLAGS, C_MMU_NOTIFIER, C_PMD_LOCK, C_PTE_WRITE, C_TLB_FLUSH, EV_THP_SPLIT_PMD, HPAGE_PMD_NR, PG_dirty, PG_head, PG_tail, PTE_PFN_MASK, PTE_PFN_SHIFT,
    _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW,
)
from vmstate.kernels.per_variant import (
    SPLIT_PMD_SETS_PAGE_DIRTY, page_add_new_anon_rmap, page_dup_anon_rmap_pmd,
    page_remove_anon_compound_rmap, per_variant, split_huge_pmd_counts, split_pmd_pte_bits,
)
from vmstate.kernels.refcount import get_page, put_page, set_page_data

_NOT_RW = 0xFFFFFFFFFFFFFFFF ^ _PAGE_RW
FAULT_ENTRY = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY  # a write fault's entry
_NOT_ACCESSED = 0xFFFFFFFFFFFFFFFF ^ _PAGE_ACCESSED


@njit(cache=True, inline="always")
def mm_id_of(pmds, row):
    """``mm->mm_id`` of the process owning PMD entry ``row`` (6.15+: IDs from 1, in creation order)."""
    return pmds[row]["mm"] + 1


@njit(cache=True, inline="always")
def pmd_block(entry):
    """The block (THP) a huge PMD entry maps: ``pmd_pfn(entry) / HPAGE_PMD_NR``."""
    return ((entry & PTE_PFN_MASK) >> PTE_PFN_SHIFT) // HPAGE_PMD_NR


@per_variant(parallel=True)
def do_huge_pmd_anonymous_pages(blocks, thps, pmds, rows, data):
    """``do_huge_pmd_anonymous_page()`` for the new THP in block ``thps[k]``, mapped by PMD entry
    ``rows[k]`` (allocated by the caller): ``prep_transhuge_page()``, the fault's flags
    (``__SetPageUptodate``, ``lru_cache_add_active_or_unevictable``), one reference,
    ``page_add_new_anon_rmap(page, compound)``, and the huge PMD, writable, young and dirty (a
    write fault's); every page then written with data (``data``) or zeros. The caller counts the
    faults (``count_thp_faults()``)."""
    for k in prange(thps.shape[0]):
        b = thps[k]
        fault_thp(blocks[b], mm_id_of(pmds, rows[k]))
        set_page_data(blocks[b], 0, HPAGE_PMD_NR, data)
        pmds[rows[k]]["pmd"] = ((b * HPAGE_PMD_NR) << PTE_PFN_SHIFT) | FAULT_ENTRY | _PAGE_PSE


@per_variant()
def fault_thp(page, mm_id):
    """The new THP of a fault in block record ``page`` (``prep_transhuge_page()``, the fault's
    flags, one reference, ``page_add_new_anon_rmap(page, compound)`` for process ``mm_id``); its
    content is the caller's."""
    flags = page["flags"]
    flags[0] = (1 << PG_head) | ANON_FAULT_FLAGS
    for i in range(1, HPAGE_PMD_NR):
        flags[i] = 1 << PG_tail
    page["_count"][0] = 1
    page_add_new_anon_rmap(page, mm_id)


@per_variant()
def copy_huge_pmd(pmds, src, dst, blocks):
    """Mirror of ``copy_huge_pmd()`` from PMD entry ``src`` to ``dst`` (the child's, its table
    deposited by the caller): get_page + ``page_dup_rmap(page, compound)``; both entries
    write-protected (``pmdp_set_wrprotect``), the child's old (``pmd_mkold``)."""
    entry = pmds[src]["pmd"] & _NOT_RW
    b = pmd_block(entry)
    get_page(blocks, b, 0)
    page_dup_anon_rmap_pmd(blocks[b], mm_id_of(pmds, dst))
    pmds[src]["pmd"] = entry
    pmds[dst]["pmd"] = entry & _NOT_ACCESSED


@per_variant()
def zap_huge_pmd(pmds, row, blocks, costs, events):
    """Mirror of ``zap_huge_pmd()``: clear the entry (its deposited table is freed with it),
    ``page_remove_rmap(page, compound)``, then the TLB gather's ``put_page()``."""
    b = pmd_block(pmds[row]["pmd"])
    pmds[row]["pmd"] = 0
    pmds[row]["pte_table"] = -1
    page_remove_anon_compound_rmap(blocks[b], mm_id_of(pmds, row), events)
    put_page(blocks, b, 0, costs)


@per_variant()
def _split_huge_pmd_locked(pmds, tables, row, blocks, b, freeze, costs, events):
    """Mirror of ``__split_huge_pmd_locked(vma, pmd, haddr, freeze)`` for PMD entry ``pmds[row]``
    mapping the THP in block ``b``; ``pte_table`` must name a table (the deposited one)."""
    entry = pmds[row]["pmd"]
    pfn = (entry & PTE_PFN_MASK) >> PTE_PFN_SHIFT
    pte = tables[pmds[row]["pte_table"]]["pte"]
    page = blocks[b]
    bits = split_pmd_pte_bits(page, entry, freeze)
    for i in range(HPAGE_PMD_NR):
        pte[i] = ((pfn + i) << PTE_PFN_SHIFT) | bits
    if SPLIT_PMD_SETS_PAGE_DIRTY and entry & _PAGE_DIRTY:
        page["flags"][0] |= 1 << PG_dirty  # SetPageDirty(page + i): PG_dirty is per THP, the head's
    split_huge_pmd_counts(page, freeze, mm_id_of(pmds, row), events)
    pmds[row]["pmd"] = _PAGE_PRESENT  # pmd_populate(): now points at the table
    events[EV_THP_SPLIT_PMD] += 1
    costs[C_TLB_FLUSH] += 1
    costs[C_PTE_WRITE] += HPAGE_PMD_NR


@per_variant()
def split_huge_pmd(pmds, tables, row, blocks, costs, events):
    """Mirror of ``split_huge_pmd()`` (not freeze) on the huge PMD entry ``row``: under the PMD lock
    and one mmu-notifier range."""
    costs[C_PMD_LOCK] += 1
    costs[C_MMU_NOTIFIER] += 1
    _split_huge_pmd_locked(pmds, tables, row, blocks, pmd_block(pmds[row]["pmd"]), False, costs,
                           events)


@njit(cache=True, parallel=True)
def zap_mapcounts(blocks, bs, offsets, k):
    """The PTE mappings a generated partial zap removed (``vmstate.engine.population``): subpages
    ``[offsets[r], offsets[r] + k)`` of block ``bs[r]`` lose one (``page_remove_rmap()``; the
    caller sets the deferred queue). No index arrays, so no temporaries per zapped subpage."""
    for r in prange(bs.shape[0]):
        mc = blocks[bs[r]]["_mapcount"]
        for i in range(offsets[r], offsets[r] + k):
            mc[i] -= 1


@njit(cache=True, parallel=True)
def populate_pte_tables(tables, t0, heads, bits, zap_lo, zap_hi):
    """The PTE tables of generated split PMD mappings (``vmstate.engine.population``): table
    ``t0 + r`` gets the 512 entries ``__split_huge_pmd_locked()`` writes for the THP at pfn
    ``heads[r]`` (``bits[r]``: present, dirty, and the PMD's write and young), with PTEs
    ``[zap_lo[r], zap_hi[r])`` zapped again."""
    for r in prange(heads.shape[0]):
        pte = tables[t0 + r]["pte"]
        for i in range(HPAGE_PMD_NR):
            pte[i] = ((heads[r] + i) << PTE_PFN_SHIFT) | bits[r]
        for i in range(zap_lo[r], zap_hi[r]):
            pte[i] = 0
