"""Every record layout of the simulated state, defined once (sizes and offsets are tested).

Pages are stored one record per 2 MiB block of page frames with field-major 512-entry subarrays: a
kernel that walks one THP reads three contiguous 2 KiB columns (flags, ``_count``, ``_mapcount``)
instead of 512 interleaved 12-byte records (measured in ``benchmarks/layout_bench.py``).
"""
import numpy as np

from vmstate.kernels.constants import HPAGE_PMD_NR

N = HPAGE_PMD_NR

PAGE_BLOCK_DTYPE = np.dtype([
    ("flags", np.uint32, (N,)),          # PG_* bits of each page
    ("_count", np.int32, (N,)),          # page->_count; a THP keeps it on the head, tails hold 0
    ("_mapcount", np.int32, (N,)),       # page->_mapcount, biased: -1 = unmapped
    ("compound_mapcount", np.int32),     # THP's PMD mappings, raw (-1 = none); v5 keeps it in page[1]
    ("mapping", np.int32),               # anon_vma id of every in-use non-tail page of the block
    ("index", np.uint64),                # page->index of frame 0 (frame i: index + i, tails: 0)
    ("alloc_start", np.uint16),          # frames [alloc_start, alloc_end) were ever allocated
    ("alloc_end", np.uint16),
    ("deferred", np.uint8),              # on the deferred split queue (v5 26/28; 6.18 _deferred_list)
    # 6.18 folio fields (docs/variant-6.18.md), raw; initial values in v5 and v4.5
    ("_large_mapcount", np.int32),       # every mapping of the folio, -1 based
    ("_nr_pages_mapped", np.int32),      # pages mapped by PTEs + ENTIRELY_MAPPED while PMD-mapped
    ("_mm_id", np.int32, (2,)),          # the two MM slots (MM_ID_DUMMY = free)
    ("_mm_id_mapcount", np.int32, (2,)), # each slot's mappings, -1 based
    ("_mm_ids_shared", np.uint8),        # FOLIO_MM_IDS_SHARED_BIT
    ("partially_mapped", np.uint8),      # PG_partially_mapped
    ("data", np.uint64, (N // 64,)),     # page content, every variant: bit i = page i holds data
], align=True)

PMD_DTYPE = np.dtype([
    ("mm", np.int32),                    # process id (creation order)
    ("haddr", np.uint64),                # virtual address of the 2 MiB slot
    ("pmd", np.uint64),                  # pmd_t: _PAGE_PSE set = huge entry with the head's pfn
    ("pte_table", np.int64),             # row in the PTE tables, -1 = none
], align=True)

PTE_TABLE_DTYPE = np.dtype([
    ("pte", np.uint64, (N,)),            # pte_t of each 4 KiB slot
], align=True)
