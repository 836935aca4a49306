"""Every record layout's size and field offsets, so a change to one is a visible decision."""
import numpy as np

from vmstate.engine.dtypes import PAGE_BLOCK_DTYPE, PMD_DTYPE, PTE_TABLE_DTYPE


def offsets(dt):
    return {name: dt.fields[name][1] for name in dt.names}


def test_page_block_layout():
    assert offsets(PAGE_BLOCK_DTYPE) == {
        "flags": 0, "_count": 2048, "_mapcount": 4096, "compound_mapcount": 6144, "mapping": 6148,
        "index": 6152, "alloc_start": 6160, "alloc_end": 6162, "deferred": 6164,
        "_large_mapcount": 6168, "_nr_pages_mapped": 6172, "_mm_id": 6176, "_mm_id_mapcount": 6184,
        "_mm_ids_shared": 6192, "partially_mapped": 6193, "data": 6200}
    # 12 bytes a page + 1 bit of content + 24 a THP + 32 of 6.18 folio fields, 8-byte aligned
    assert PAGE_BLOCK_DTYPE.itemsize == 6264
    assert PAGE_BLOCK_DTYPE["_mapcount"].shape == (512,)


def test_pmd_and_pte_layouts():
    assert offsets(PMD_DTYPE) == {"mm": 0, "haddr": 8, "pmd": 16, "pte_table": 24}
    assert PMD_DTYPE.itemsize == 32
    assert PTE_TABLE_DTYPE.itemsize == 4096  # one page of pte_t, as in the kernel
    assert PTE_TABLE_DTYPE["pte"].base == np.dtype(np.uint64)
