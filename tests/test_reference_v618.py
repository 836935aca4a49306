"""The 6.18 reference model alone (docs/variant-6.18.md), with numbers worked out by hand.

Folio tuple: (_large_mapcount, _nr_pages_mapped, _mm_id[0], _mm_id[1], _mm_id_mapcount[0],
_mm_id_mapcount[1], _mm_ids_shared, partially_mapped); MM ids are creation order + 1.
"""
import pytest

from vmstate.kernels.constants import (
    _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_SPECIAL,
    _PAGE_VMS_MIGRATION, ANON_FAULT_FLAGS, EAGAIN, ENTIRELY_MAPPED, HPAGE_PMD_NR,
    SPLIT_FAIL_PRECHECK, SPLIT_OK, ZERO_PFN, PG_active, PG_anon_exclusive, PG_dirty,
    PG_head, PG_locked, PG_lru,
)
from reference import ReferenceState
from vmstate.errors import BadInput
from dump_helpers import events, mthp, ptes_of

N = HPAGE_PMD_NR
PAGE = 4096
MB2 = 2 << 20
BASE = 0x7F0000000000
PGOFF = BASE >> 12
HEAD0, HEAD1 = 0x200, 0x400
AE = 1 << PG_anon_exclusive
HUGE_PMD = _PAGE_PRESENT | _PAGE_PSE | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY
PTE_SPLIT = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY
ZERO_PTE = (ZERO_PFN << 12) | _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_SPECIAL
INITIAL = (-1, 0, 0, 0, -1, -1, 0, 0)
V = "6.18"


def thp(fill="data"):
    s = ReferenceState(V)
    s.mmap("a", BASE, MB2, fill=fill)
    return s


def test_fault_fields():
    s = thp()
    d = s.dump()
    assert d["pages"][HEAD0] == ((1 << PG_head) | ANON_FAULT_FLAGS | AE, 1, -1, 0, PGOFF, 1)
    assert d["pages"][HEAD0 + 5][2] == -1 and not d["pages"][HEAD0 + 5][0] & AE  # PMD: no _mapcount
    assert d["compound_mapcount"] == {HEAD0: 0}                       # _entire_mapcount 0
    assert d["folio"] == {HEAD0: (0, ENTIRELY_MAPPED, 1, 0, 0, -1, 0, 0)}
    assert d["deferred"] == [HEAD0]                                   # queued, not flagged
    assert d["vm_events"] == events(thp_fault_alloc=1)
    assert d["mthp_stats"] == mthp(anon_fault_alloc=1, nr_anon=1)
    assert d["pmds"] == {("a", BASE): (HEAD0 << 12) | HUGE_PMD}
    z = ReferenceState(V)
    z.mmap("a", BASE, 2 * PAGE, thp=False, fill="zero")
    dz = z.dump()
    assert dz["pages"][HEAD0] == (ANON_FAULT_FLAGS | AE, 1, 0, 0, PGOFF, 0)  # small: exclusive
    assert dz["folio"] == {} and dz["mthp_stats"] == mthp()


def test_fork_shares_and_clears_exclusive():
    s = thp()
    s.fork("a", "b")
    d = s.dump()
    assert d["pages"][HEAD0][0] & AE == 0 and d["pages"][HEAD0][1] == 2
    assert d["compound_mapcount"] == {HEAD0: 1}
    # two maps (large 1), slot 0 = a (id 1, 1 map: raw 0), slot 1 = b (id 2), shared
    assert d["folio"] == {HEAD0: (1, ENTIRELY_MAPPED, 1, 2, 0, 0, 1, 0)}
    assert d["pmds"][("b", BASE)] == (HEAD0 << 12) | _PAGE_PRESENT | _PAGE_PSE | _PAGE_DIRTY


def test_partial_munmap_marks_partially_mapped():
    s = thp()
    s.munmap("a", BASE, PAGE)
    d = s.dump()
    # split_huge_pmd: 512 PTEs (AE handed to each), PMD map dropped; the zap of page 0: 511 left
    assert d["folio"] == {HEAD0: (510, 511, 1, 0, 510, -1, 0, 1)}
    assert d["compound_mapcount"] == {HEAD0: -1}
    assert d["pages"][HEAD0][1:3] == (N - 1, -1) and d["pages"][HEAD0 + 1][1:3] == (0, 0)
    assert d["pages"][HEAD0 + 1][0] & AE
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_pmd=1, thp_deferred_split_page=1)
    assert d["mthp_stats"] == mthp(anon_fault_alloc=1, nr_anon=1, split_deferred=1,
                                   nr_anon_partially_mapped=1)
    assert d["deferred"] == [HEAD0]
    assert ptes_of(d, "a")[BASE + PAGE] == ((HEAD0 + 1) << 12) | PTE_SPLIT
    # a second partial zap does not count again
    s.madvise_dontneed("a", BASE + PAGE, PAGE)
    assert s.dump()["vm_events"]["thp_deferred_split_page"] == 1


def test_zap_whole_pte_mapped_thp_is_one_batch():
    s = thp()
    s.split_pmd("a", BASE)
    s.madvise_dontneed("a", BASE, MB2)  # one batch of 512: never partially mapped; freed
    d = s.dump()
    assert d["vm_events"]["thp_deferred_split_page"] == 0 and d["costs"]["pages_freed"] == N
    assert d["mthp_stats"] == mthp(anon_fault_alloc=1) and d["deferred"] == []


def test_split_zero_page_remap_frees_frames():
    s = ReferenceState(V)
    s.mmap("a", BASE, MB2, fill="zero")
    s.mmap("a", BASE + MB2, MB2)
    assert s.split("a", BASE, 2 * MB2) == [(HEAD0, 0, SPLIT_OK), (HEAD1, 0, SPLIT_OK)]
    d = s.dump()
    a = ptes_of(d, "a")
    assert all(a[BASE + i * PAGE] == ZERO_PTE for i in range(N))      # all zero-filled
    assert all(d["pages"][HEAD0 + i][1] == 0 for i in range(N))       # freed, the head too
    # data pages: a reference, _mapcount 0, PageAnonExclusive back from the entry, writable, dirty
    assert a[BASE + MB2 + 7 * PAGE] == ((HEAD1 + 7) << 12) | PTE_SPLIT
    flags = ANON_FAULT_FLAGS | AE | (1 << PG_dirty)  # PG_dirty: the PMD was dirty (folio_set_dirty)
    assert d["pages"][HEAD1] == (flags, 1, 0, 1, PGOFF + N, 1)
    assert d["pages"][HEAD1 + 7] == (flags, 1, 0, 1, PGOFF + N + 7, 1)
    assert d["folio"] == {} and d["deferred"] == [] and d["pmds"] == {}
    assert d["vm_events"] == events(thp_fault_alloc=2, thp_split_pmd=2, thp_split_page=2)
    assert d["mthp_stats"] == mthp(anon_fault_alloc=2, split=2)
    assert d["costs"]["pages_freed"] == N and d["costs"]["lru_lock"] == 2
    assert d["costs"]["anon_vma_lock"] == 2 and d["costs"]["tlb_flush"] == 2


def test_split_refused_for_a_pin():
    s = thp()
    s.pin("a", BASE + 3 * PAGE, PAGE)
    # debugfs: can_split_folio(folio, 0) fails -> skipped without counting
    assert s.split("a", BASE, MB2) == [(HEAD0, -EAGAIN, SPLIT_FAIL_PRECHECK)]
    assert s.dump()["vm_events"]["thp_split_page_failed"] == 0
    # __folio_split itself: -EAGAIN at the racy check, counted
    head = s.pages[HEAD0]
    s.get_page(head)
    head.flags |= 1 << PG_locked
    assert s.split_huge_page_to_list(HEAD0) == (-EAGAIN, SPLIT_FAIL_PRECHECK)
    head.flags &= ~(1 << PG_locked)
    s.put_page(head)
    d = s.dump()
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_page_failed=1)
    assert d["mthp_stats"] == mthp(anon_fault_alloc=1, nr_anon=1, split_failed=1)
    assert d["pmds"] == {("a", BASE): (HEAD0 << 12) | HUGE_PMD} and d["pages"][HEAD0][1] == 2


def test_madvise_cold_skips_shared_thp():
    s = thp()
    s.fork("a", "b")
    before = s.dump()
    s.madvise_cold("a", BASE, MB2)
    s.madvise_cold("a", BASE, PAGE)  # partly covered: no split either (maybe mapped shared)
    assert s.dump() == before


def test_madvise_cold_exclusive_thp():
    s = thp()
    s.madvise_cold("a", BASE, MB2)
    d = s.dump()
    assert d["pmds"] == {("a", BASE): (HEAD0 << 12) | (HUGE_PMD & ~_PAGE_ACCESSED)}
    assert d["pages"][HEAD0][0] == (1 << PG_head) | (ANON_FAULT_FLAGS & ~(1 << PG_active)) | AE
    # covered in part: split_folio(), then the PTE loop makes the covered page old and inactive
    s = thp()
    s.madvise_cold("a", BASE, PAGE)
    d = s.dump()
    assert d["vm_events"]["thp_split_page"] == 1 and d["pmds"] == {}
    a = ptes_of(d, "a")
    assert a[BASE] == (HEAD0 << 12) | (PTE_SPLIT & ~_PAGE_ACCESSED)
    assert a[BASE + PAGE] == ((HEAD0 + 1) << 12) | PTE_SPLIT
    assert not d["pages"][HEAD0][0] & (1 << PG_active) and d["pages"][HEAD0 + 1][0] & (1 << PG_active)


def test_madvise_cold_bad_input_before_6_18():
    for variant in ("v5", "v4.5"):
        s = ReferenceState(variant)
        s.mmap("a", BASE, MB2)
        for op in ("madvise_cold", "madvise_pageout"):
            with pytest.raises(BadInput) as e:
                getattr(s, op)("a", BASE, MB2)
            assert e.value.field == "op" and repr(variant) in str(e.value) and op in str(e.value)
    s = thp()
    with pytest.raises(BadInput) as e:
        s.madvise_pageout("a", BASE, 2 * MB2)  # ENOMEM: a hole
    assert e.value.field == "addr"


def test_pageout_swpout_fallback():
    s = thp()
    s.madvise_pageout("a", BASE, MB2)
    d = s.dump()
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_pmd=1, thp_split_page=1,
                                    thp_swpout_fallback=1)
    assert d["mthp_stats"] == mthp(anon_fault_alloc=1, split=1, swpout_fallback=1)
    a = ptes_of(d, "a")
    assert len(a) == N and a[BASE + 9 * PAGE] == ((HEAD0 + 9) << 12) | PTE_SPLIT
    flags = ANON_FAULT_FLAGS | AE | (1 << PG_dirty)  # activated again, back on the LRU
    assert all(d["pages"][HEAD0 + i] == (flags, 1, 0, 0, PGOFF + i, 1) for i in range(N))
    assert d["costs"]["pages_freed"] == 0 and d["deferred"] == []
    # a pinned THP: can_split_folio(folio, 1) refuses; kept, activated, nothing counted
    s = thp()
    s.pin("a", BASE, PAGE)
    s.madvise_pageout("a", BASE, MB2)
    d = s.dump()
    assert d["pages"][HEAD0][0:2] == ((1 << PG_head) | ANON_FAULT_FLAGS | AE, 2)
    assert d["vm_events"] == events(thp_fault_alloc=1)


def test_pageout_zero_filled_pages_are_freed():
    s = ReferenceState(V)
    s.mmap("a", BASE, MB2, fill="zero")
    s.madvise_pageout("a", BASE, MB2)
    d = s.dump()
    assert set(ptes_of(d, "a").values()) == {ZERO_PTE} and d["costs"]["pages_freed"] == N
    assert d["vm_events"]["thp_swpout_fallback"] == 1


def test_shrink_leaves_all_zero_thps_whole_at_max_ptes_none_511():
    """thp_underused() returns false at max_ptes_none 511 on 6.18.44 (measured): an all-zero THP and
    a data THP both leave the queue whole; nothing is counted."""
    s = ReferenceState(V)
    s.mmap("a", BASE, MB2, fill="zero")
    s.mmap("a", BASE + MB2, MB2)
    assert s.shrink() == []
    d = s.dump()
    assert d["vm_events"] == events(thp_fault_alloc=2)
    assert d["mthp_stats"] == mthp(anon_fault_alloc=2, nr_anon=2)
    assert d["deferred"] == [] and len(d["pmds"]) == 2 and d["costs"]["pages_freed"] == 0


def test_pageout_maps_an_all_zero_thp_to_the_zero_page():
    """MADV_PAGEOUT of a whole exclusive all-zero THP: reclaim splits it (thp_swpout_fallback) and
    remap_page() maps every subpage to the shared zero page; all 512 frames are freed."""
    s = ReferenceState(V)
    s.mmap("a", BASE, MB2, fill="zero")
    s.madvise_pageout("a", BASE, MB2)
    d = s.dump()
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_pmd=1, thp_split_page=1,
                                    thp_swpout_fallback=1)
    assert d["mthp_stats"] == mthp(anon_fault_alloc=1, split=1, swpout_fallback=1)
    assert set(ptes_of(d, "a").values()) == {ZERO_PTE} and d["costs"]["pages_freed"] == N


def test_shrink_pinned_partially_mapped_stays_queued():
    s = thp()
    s.munmap("a", BASE, PAGE)
    s.pin("a", BASE + PAGE, PAGE)
    s.shrink()
    d = s.dump()
    assert d["deferred"] == [HEAD0] and d["folio"][HEAD0][7] == 1
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_pmd=1, thp_deferred_split_page=1,
                                    thp_split_page_failed=1)
    assert d["mthp_stats"] == mthp(anon_fault_alloc=1, nr_anon=1, split_deferred=1,
                                   nr_anon_partially_mapped=1, split_failed=1)
    assert d["pages"][HEAD0][1] == N - 1 + 1  # 511 PTE maps + the pin: the scan's ref is gone
    s.unpin("a", BASE + PAGE, PAGE)
    s.shrink()  # now it splits; page 0 (unmapped) is freed
    d = s.dump()
    assert d["deferred"] == [] and d["vm_events"]["thp_split_page"] == 1
    assert d["mthp_stats"]["nr_anon_partially_mapped"] == 0 and d["pages"][HEAD0][1] == 0


def test_mm_slots_three_processes():
    s = thp()
    s.fork("a", "b")
    s.fork("a", "c")
    d = s.dump()
    # three PMD maps (raw 2); c (id 3) has no slot; the shared bit is set
    assert d["folio"] == {HEAD0: (2, ENTIRELY_MAPPED, 1, 2, 0, 0, 1, 0)}
    s.exit("b")  # slot 1 freed; slot 0 holds 1 of 2 maps: still shared
    assert s.dump()["folio"] == {HEAD0: (1, ENTIRELY_MAPPED, 1, 0, 0, -1, 1, 0)}
    s.exit("c")  # no slot; slot 0 now owns every map: exclusive
    assert s.dump()["folio"] == {HEAD0: (0, ENTIRELY_MAPPED, 1, 0, 0, -1, 0, 0)}
    s.fork("a", "d")  # id 4 takes slot 1
    assert s.dump()["folio"] == {HEAD0: (1, ENTIRELY_MAPPED, 1, 4, 0, 0, 1, 0)}
    s.exit("a")
    s.exit("d")
    assert s.dump()["mthp_stats"]["nr_anon"] == 0 and s.dump()["costs"]["pages_freed"] == N


def test_mprotect_rw_restores_exclusive_entries():
    s = thp()
    s.mprotect("a", BASE, MB2, "r")
    s.mprotect("a", BASE, MB2, "rw")
    assert s.dump()["pmds"] == {("a", BASE): (HEAD0 << 12) | HUGE_PMD}  # PageAnonExclusive
    s.fork("a", "b")
    s.mprotect("a", BASE, MB2, "r")
    s.mprotect("a", BASE, MB2, "rw")
    assert not s.dump()["pmds"][("a", BASE)] & _PAGE_RW  # shared after fork: stays read-only


def test_zero_page_zap_fork_pin():
    s = ReferenceState(V)
    s.mmap("a", BASE, MB2, fill="zero")
    s.split("a", BASE, MB2)
    s.fork("a", "b")  # copied write-protected (already) and old, no reference
    assert ptes_of(s.dump(), "b")[BASE] == ZERO_PTE & ~_PAGE_ACCESSED
    s.pin("a", BASE, PAGE)
    s.unpin("a", BASE, PAGE)
    s.madvise_cold("b", BASE, MB2)  # no folio: nothing
    s.munmap("a", BASE, MB2)
    d = s.dump()
    assert ptes_of(d, "a") == {} and len(ptes_of(d, "b")) == N
    assert not any(m == ZERO_PFN for m in d["pages"])


def test_split_of_shared_pte_and_pmd_mapped_thp():
    s = thp()
    s.fork("a", "b")
    s.split_pmd("b", BASE)
    # the walk: a's PMD frozen (no longer last: b's PTEs), then b's PTEs one at a time; the first
    # makes the folio partially mapped (counted), the freeze takes the flag off again
    assert s.split("a", BASE, MB2) == [(HEAD0, 0, SPLIT_OK)]
    d = s.dump()
    assert d["vm_events"]["thp_deferred_split_page"] == 1
    assert d["mthp_stats"]["nr_anon_partially_mapped"] == 0
    assert d["pages"][HEAD0 + 3][1:3] == (2, 1)                   # two PTE maps, two references
    assert ptes_of(d, "a")[BASE] & _PAGE_RW == 0 and not d["pages"][HEAD0][0] & AE
    assert not any(e & _PAGE_VMS_MIGRATION for e in d["ptes"].values())
    assert d["pages"][HEAD0 + 3][0] & (1 << PG_lru)
