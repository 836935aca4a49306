"""The reference model alone, against MODEL.md's table and docs/semantics.md, with exact numbers.

Each test is a small kernel situation (a few THPs); counts are worked out by hand in the comments, so
a change of arithmetic in the oracle shows up here before it shows up as an engine divergence.
"""
import pytest

from vmstate.kernels.constants import (
    _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_VMS_MIGRATION,
    ANON_FAULT_FLAGS, EBUSY, HPAGE_PMD_NR, MAPPING_NULL, PG_dirty, PG_head, PG_locked, PG_lru,
    PG_tail, SPLIT_FAIL_ANON_VMA, SPLIT_FAIL_PRECHECK, SPLIT_FAIL_RECHECK, SPLIT_OK, TAIL_MAPPING,
    VM_ANON_DEFAULT, VM_HUGEPAGE, VM_WRITE,
)
from reference import ReferenceState, page_mapcount, total_mapcount
from vmstate.errors import BadInput, CorruptState
from dump_helpers import costs, events, ptes_of

N = HPAGE_PMD_NR
PAGE = 4096
MB2 = 2 << 20
BASE = 0x7F0000000000  # 2 MiB aligned
PGOFF = BASE >> 12
HEAD0, HEAD1, HEAD2 = 0x200, 0x400, 0x600  # blocks 1, 2, 3
HUGE_PMD = _PAGE_PRESENT | _PAGE_PSE | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY
PTE_FAULT = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY
THP_VMA = VM_ANON_DEFAULT | VM_HUGEPAGE
TAIL_AFTER_SPLIT = ANON_FAULT_FLAGS | (1 << PG_dirty)  # copied flags + PG_dirty + PG_lru


def thp_state():
    s = ReferenceState()
    s.mmap("a", BASE, MB2)
    return s


# ---- faults -------------------------------------------------------------------------------------

def test_thp_fault():
    s = ReferenceState()
    s.mmap("a", BASE, 2 * MB2)
    d = s.dump()
    assert len(d["pages"]) == 2 * N
    assert d["pages"][HEAD0] == ((1 << PG_head) | ANON_FAULT_FLAGS, 1, 0, 0, PGOFF, 1)
    assert d["pages"][HEAD0 + 1] == (1 << PG_tail, 0, 0, TAIL_MAPPING, 0, 1)
    assert d["pages"][HEAD1 + N - 1] == (1 << PG_tail, 0, 0, TAIL_MAPPING, 0, 1)
    assert d["pages"][HEAD1][4] == PGOFF + N
    assert d["compound_mapcount"] == {HEAD0: 0, HEAD1: 0}
    assert d["pmds"] == {("a", BASE): (HEAD0 << 12) | HUGE_PMD,
                         ("a", BASE + MB2): (HEAD1 << 12) | HUGE_PMD}
    assert d["ptes"] == {} and d["deferred"] == []
    assert d["vmas"] == {"a": [(BASE, BASE + 2 * MB2, PGOFF, THP_VMA, 0)]}
    assert d["vm_events"] == events(thp_fault_alloc=2)
    assert d["costs"] == costs()
    head = s.pages[HEAD0]
    assert total_mapcount(head) == 1 and page_mapcount(s.pages[HEAD0 + 7]) == 1


def test_small_pages_keep_their_slot_offset():
    s = ReferenceState()
    s.mmap("a", BASE + 510 * PAGE, 4 * PAGE)        # pages 510, 511 of slot 0; 0, 1 of slot 1
    s.mmap("a", BASE + 2 * MB2, MB2, thp=False)     # a whole slot, but not thp
    s.mmap("b", BASE, MB2)                          # another process, its own anon_vma 2
    d = s.dump()
    small = [0x200 + 510, 0x200 + 511, 0x400, 0x401] + list(range(0x600, 0x800))
    assert sorted(d["pages"]) == small + list(range(0x800, 0xA00))
    assert d["pages"][0x401] == (ANON_FAULT_FLAGS, 1, 0, 0, PGOFF + N + 1, 1)
    assert d["pages"][0x600] == (ANON_FAULT_FLAGS, 1, 0, 1, PGOFF + 2 * N, 1)
    assert ptes_of(d, "a")[BASE + 511 * PAGE] == (0x3FF << 12) | PTE_FAULT
    assert len(d["ptes"]) == 4 + N
    assert d["pmds"] == {("b", BASE): (0x800 << 12) | HUGE_PMD}
    assert d["vmas"]["a"][1] == (BASE + 2 * MB2, BASE + 3 * MB2, PGOFF + 2 * N, VM_ANON_DEFAULT, 1)
    assert d["vm_events"] == events(thp_fault_alloc=1)


# ---- fork ---------------------------------------------------------------------------------------

def test_fork_of_a_pmd_mapping():
    s = thp_state()
    s.fork("a", "b")
    d = s.dump()
    assert d["pages"][HEAD0][1] == 2 and d["compound_mapcount"] == {HEAD0: 1}
    assert d["pages"][HEAD0 + 3][2] == 0                                   # offset unchanged
    assert d["pmds"] == {("a", BASE): (HEAD0 << 12) | (HUGE_PMD & ~_PAGE_RW),
                         ("b", BASE): (HEAD0 << 12) | (HUGE_PMD & ~_PAGE_RW & ~_PAGE_ACCESSED)}
    assert d["vmas"]["b"] == d["vmas"]["a"] == [(BASE, BASE + MB2, PGOFF, THP_VMA, 0)]
    assert total_mapcount(s.pages[HEAD0]) == 2 and page_mapcount(s.pages[HEAD0 + 9]) == 2


def test_fork_of_pte_mappings():
    s = ReferenceState()
    s.mmap("a", BASE, 2 * PAGE, thp=False)
    s.fork("a", "b")
    d = s.dump()
    assert d["pages"][0x200] == (ANON_FAULT_FLAGS, 2, 1, 0, PGOFF, 1)
    assert ptes_of(d, "a")[BASE + PAGE] == (0x201 << 12) | (PTE_FAULT & ~_PAGE_RW)
    assert ptes_of(d, "b")[BASE + PAGE] == (0x201 << 12) | _PAGE_PRESENT | _PAGE_DIRTY


def test_fork_of_pte_mapped_thp_subpages():
    s = thp_state()
    s.split_pmd("a", BASE)
    s.madvise_dontneed("a", BASE + MB2 // 2, MB2 // 2)   # keep subpages 0..255 mapped
    s.fork("a", "b")
    d = s.dump()
    assert d["pages"][HEAD0][1] == 256 + 256              # per PTE: +1 on the head
    assert d["pages"][HEAD0 + 5][2] == 1 and d["pages"][HEAD0 + 300][2] == -1
    assert len(ptes_of(d, "b")) == 256


# ---- split_huge_pmd -----------------------------------------------------------------------------

def test_split_huge_pmd_not_the_last():
    s = thp_state()
    s.fork("a", "b")
    s.split_pmd("a", BASE + 5 * PAGE)
    d = s.dump()
    assert d["pages"][HEAD0][1] == 2 + N - 1 == 513
    assert d["compound_mapcount"] == {HEAD0: 0}
    assert {d["pages"][HEAD0 + i][2] for i in range(N)} == {1}
    assert ptes_of(d, "a")[BASE + 7 * PAGE] == ((HEAD0 + 7) << 12) | _PAGE_PRESENT \
        | _PAGE_ACCESSED | _PAGE_DIRTY                    # fork write-protected the PMD
    assert d["pmds"] == {("b", BASE): (HEAD0 << 12) | _PAGE_PRESENT | _PAGE_PSE | _PAGE_DIRTY}
    assert total_mapcount(s.pages[HEAD0]) == 513 and page_mapcount(s.pages[HEAD0 + 1]) == 2
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_pmd=1)
    assert d["costs"] == costs(pmd_lock=1, mmu_notifier=1, tlb_flush=1, pte_write=N)


def test_split_huge_pmd_the_last():
    s = thp_state()
    s.split_pmd("a", BASE)
    s.split_pmd("a", BASE)                                # a PTE table now: nothing
    d = s.dump()
    assert d["pages"][HEAD0] == ((1 << PG_head) | ANON_FAULT_FLAGS, N, 0, 0, PGOFF, 1)
    assert d["compound_mapcount"] == {HEAD0: -1}
    assert {d["pages"][HEAD0 + i][2] for i in range(N)} == {0}
    assert ptes_of(d, "a") == {BASE + i * PAGE: ((HEAD0 + i) << 12) | PTE_FAULT for i in range(N)}
    assert d["pmds"] == {} and d["deferred"] == []
    assert total_mapcount(s.pages[HEAD0]) == N
    assert d["vm_events"]["thp_split_pmd"] == 1


def test_old_pmd_gives_old_ptes():
    s = thp_state()
    s.fork("a", "b")
    s.split_pmd("b", BASE)
    assert set(ptes_of(s.dump(), "b").values()) >= {((HEAD0 + 3) << 12) | _PAGE_PRESENT | _PAGE_DIRTY}


# ---- zap and the deferred queue -----------------------------------------------------------------

def test_zap_last_pmd_queues_deferred_then_frees():
    s = ReferenceState()
    s.mmap("a", BASE, 2 * MB2)
    s.pin("a", BASE + 3 * PAGE, PAGE)
    s.madvise_dontneed("a", BASE, 2 * MB2)
    d = s.dump()
    assert d["pmds"] == {} and d["vmas"]["a"] == [(BASE, BASE + 2 * MB2, PGOFF, THP_VMA, 0)]
    assert d["pages"][HEAD0][1:3] == (1, -1)              # the pin alone
    assert d["compound_mapcount"] == {HEAD0: -1}
    assert {d["pages"][HEAD0 + i][2] for i in range(N)} == {-1}
    assert d["deferred"] == [HEAD0]                       # HEAD1 was queued, then freed
    assert d["pages"][HEAD1] == (0, 0, -1, MAPPING_NULL, 0, 0)
    assert d["pages"][HEAD1 + 1] == (0, 0, -1, MAPPING_NULL, 0, 0)
    assert d["vm_events"] == events(thp_fault_alloc=2, thp_deferred_split_page=2)
    assert d["costs"] == costs(pages_freed=N)
    s.unpin("a", BASE + 3 * PAGE, PAGE)
    d = s.dump()
    assert d["deferred"] == [] and d["compound_mapcount"] == {}
    assert d["costs"] == costs(pages_freed=2 * N)
    assert d["vm_events"]["thp_deferred_split_page"] == 2


def test_zap_pmd_not_last_keeps_offset():
    s = thp_state()
    s.fork("a", "b")
    s.munmap("b", BASE, MB2)
    d = s.dump()
    assert d["pages"][HEAD0][1] == 1 and d["compound_mapcount"] == {HEAD0: 0}
    assert d["pages"][HEAD0 + 9][2] == 0 and d["deferred"] == []
    assert d["vmas"]["b"] == []


def test_zap_one_pte_queues_deferred():
    s = thp_state()
    s.split_pmd("a", BASE)
    s.madvise_dontneed("a", BASE + 10 * PAGE, PAGE)
    d = s.dump()
    assert d["pages"][HEAD0 + 10][2] == -1 and d["pages"][HEAD0][1] == N - 1
    assert d["deferred"] == [HEAD0]
    assert d["vm_events"]["thp_deferred_split_page"] == 1


def test_partial_madvise_of_a_huge_pmd_splits_it():
    s = thp_state()
    s.madvise_dontneed("a", BASE + PAGE, PAGE)
    d = s.dump()
    assert d["pmds"] == {} and len(d["ptes"]) == N - 1
    assert d["vm_events"]["thp_split_pmd"] == 1 and d["deferred"] == [HEAD0]


# ---- split_huge_page ----------------------------------------------------------------------------

def test_pinned_thp_fails_precheck_without_pmd_split():
    s = thp_state()
    s.pin("a", BASE + 5 * PAGE, PAGE)
    assert s.split("a", BASE, MB2) == [(HEAD0, -EBUSY, SPLIT_FAIL_PRECHECK)]
    d = s.dump()
    assert d["pmds"] == {("a", BASE): (HEAD0 << 12) | HUGE_PMD}
    assert d["pages"][HEAD0] == ((1 << PG_head) | ANON_FAULT_FLAGS, 2, 0, 0, PGOFF, 1)
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_page_failed=1)
    assert d["costs"] == costs(anon_vma_lock=1)


def test_split_of_a_pmd_mapped_thp():
    s = thp_state()
    assert s.split("a", BASE + 100 * PAGE, PAGE) == [(HEAD0, 0, SPLIT_OK)]
    d = s.dump()
    assert d["pages"][HEAD0] == (ANON_FAULT_FLAGS, 1, 0, 0, PGOFF, 1)
    for i in range(1, N):
        assert d["pages"][HEAD0 + i] == (TAIL_AFTER_SPLIT, 1, 0, 0, PGOFF + i, 1)
    assert TAIL_AFTER_SPLIT & (1 << PG_lru) and not TAIL_AFTER_SPLIT & (1 << PG_locked)
    assert d["compound_mapcount"] == {} and d["pmds"] == {}
    # unfreeze: pte_mkold(mk_pte()), writable again, not dirty
    assert ptes_of(d, "a") == {BASE + i * PAGE: ((HEAD0 + i) << 12) | _PAGE_PRESENT | _PAGE_RW
                               for i in range(N)}
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_pmd=1, thp_split_page=1)
    # freeze: 1 VMA (notifier, PMD lock, PMD split: 1 flush, 512 writes); unfreeze: per subpage
    # one notifier, one PTE lock, one write.
    assert d["costs"] == costs(anon_vma_lock=1, pmd_lock=1, pte_lock=N, lru_lock=1, tlb_flush=1,
                               mmu_notifier=1 + N, pte_write=2 * N)


def test_partial_munmap_then_split_frees_unmapped_subpages():
    s = thp_state()
    s.munmap("a", BASE, MB2 // 2)                       # __vma_adjust_trans_huge splits the PMD
    d = s.dump()
    assert d["vmas"]["a"] == [(BASE + MB2 // 2, BASE + MB2, PGOFF + 256, THP_VMA, 0)]
    assert d["pages"][HEAD0][1:3] == (256, -1) and d["deferred"] == [HEAD0]
    assert d["costs"] == costs(pmd_lock=1, mmu_notifier=1, tlb_flush=1, pte_write=N)
    assert s.split("a", BASE, MB2) == [(HEAD0, 0, SPLIT_OK)]
    d = s.dump()
    for i in range(256):                                 # the head too, at the caller's put
        assert d["pages"][HEAD0 + i] == (0, 0, -1, MAPPING_NULL, 0, 0)
    for i in range(256, N):
        assert d["pages"][HEAD0 + i] == (TAIL_AFTER_SPLIT, 1, 0, 0, PGOFF + i, 1)
    assert d["deferred"] == [] and d["compound_mapcount"] == {}
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_pmd=1, thp_split_page=1,
                                    thp_deferred_split_page=1)
    # split: freeze 1 VMA (1 PTE lock, 256 migration entries), unfreeze 256 subpages.
    assert d["costs"] == costs(anon_vma_lock=1, pmd_lock=2, pte_lock=1 + 256, lru_lock=1,
                               tlb_flush=1 + 256, mmu_notifier=1 + 1 + 256,
                               pte_write=N + 256 + 256, pages_freed=256)


def test_fork_shared_split():
    s = thp_state()
    s.fork("a", "b")
    assert s.split("a", BASE, MB2) == [(HEAD0, 0, SPLIT_OK)]
    d = s.dump()
    assert d["pages"][HEAD0] == (ANON_FAULT_FLAGS, 2, 1, 0, PGOFF, 1)
    assert d["pages"][HEAD0 + 77] == (TAIL_AFTER_SPLIT, 2, 1, 0, PGOFF + 77, 1)
    for mm in ("a", "b"):                                # read-only migration entries since fork
        assert ptes_of(d, mm)[BASE + 77 * PAGE] == ((HEAD0 + 77) << 12) | _PAGE_PRESENT
    assert d["vm_events"]["thp_split_pmd"] == 2
    assert d["costs"] == costs(anon_vma_lock=1, pmd_lock=2, pte_lock=2 * N, lru_lock=1,
                               tlb_flush=2, mmu_notifier=2 + 2 * N, pte_write=4 * N)


def test_mprotect_then_split():
    s = thp_state()
    s.mprotect("a", BASE, MB2 // 2, "r")
    d = s.dump()
    assert d["vmas"]["a"] == [(BASE, BASE + MB2 // 2, PGOFF, THP_VMA & ~VM_WRITE, 0),
                              (BASE + MB2 // 2, BASE + MB2, PGOFF + 256, THP_VMA, 0)]
    a = ptes_of(d, "a")
    assert a[BASE] == (HEAD0 << 12) | _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_DIRTY
    assert a[BASE + 256 * PAGE] == ((HEAD0 + 256) << 12) | PTE_FAULT
    assert d["compound_mapcount"] == {HEAD0: -1}          # the THP stays compound
    assert s.split("a", BASE, MB2) == [(HEAD0, 0, SPLIT_OK)]
    a = ptes_of(s.dump(), "a")
    assert a[BASE + 255 * PAGE] == ((HEAD0 + 255) << 12) | _PAGE_PRESENT
    assert a[BASE + 256 * PAGE] == ((HEAD0 + 256) << 12) | _PAGE_PRESENT | _PAGE_RW
    # freeze visits both VMAs of the slot: the first converts all 512 PTEs, the second none.
    assert s.costs == costs(anon_vma_lock=1, pmd_lock=1 + 2, pte_lock=2 + N, lru_lock=1,
                            tlb_flush=1 + N, mmu_notifier=1 + 2 + N, pte_write=N + N + N)


def test_mprotect_same_protection_changes_nothing():
    s = thp_state()
    before = s.dump()
    s.mprotect("a", BASE + PAGE, PAGE, "rw")
    assert s.dump() == before


def test_mprotect_rw_does_not_make_entries_writable():
    s = thp_state()
    s.mprotect("a", BASE, MB2, "r")
    s.mprotect("a", BASE, MB2, "rw")
    d = s.dump()
    assert d["vmas"]["a"] == [(BASE, BASE + MB2, PGOFF, THP_VMA, 0)]
    assert d["pmds"] == {("a", BASE): (HEAD0 << 12) | (HUGE_PMD & ~_PAGE_RW)}
    assert d["vm_events"]["thp_split_pmd"] == 0


def test_recheck_failure_leaves_the_pmd_split(monkeypatch):
    s = thp_state()
    freeze = s.freeze_page

    def racing_gup(anon_vma, page):                     # a GUP pin lands during the freeze
        freeze(anon_vma, page)
        s.get_page(page)

    monkeypatch.setattr(s, "freeze_page", racing_gup)
    assert s.split("a", BASE, MB2) == [(HEAD0, -EBUSY, SPLIT_FAIL_RECHECK)]
    d = s.dump()
    assert d["pmds"] == {} and d["compound_mapcount"] == {HEAD0: -1}   # the wasted PMD split
    assert d["pages"][HEAD0] == ((1 << PG_head) | ANON_FAULT_FLAGS, N + 1, 0, 0, PGOFF, 1)
    assert ptes_of(d, "a")[BASE + 3 * PAGE] == ((HEAD0 + 3) << 12) | _PAGE_PRESENT | _PAGE_RW
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_pmd=1, thp_split_page_failed=1)
    assert d["costs"] == costs(anon_vma_lock=1, pmd_lock=1, pte_lock=N, tlb_flush=1,
                               mmu_notifier=1 + N, pte_write=2 * N)


def test_bug_path_reports_the_values_tested(monkeypatch):
    s = thp_state()
    freeze = s.freeze_page

    def corrupting(anon_vma, page):
        freeze(anon_vma, page)
        s.pages[HEAD0 + 4]._mapcount += 1

    monkeypatch.setattr(s, "freeze_page", corrupting)
    with pytest.raises(CorruptState, match=r"total_mapcount: 513, page_count\(\): 513") as e:
        s.split("a", BASE, MB2)
    assert e.value.pfn == HEAD0


def test_unmapped_pinned_thp_fails_page_get_anon_vma():
    s = thp_state()
    s.pin("a", BASE, MB2)
    s.munmap("a", BASE, MB2)
    head = s.pages[HEAD0]
    s.get_page(head)
    head.flags |= 1 << PG_locked
    assert s.split_huge_page_to_list(HEAD0) == (-EBUSY, SPLIT_FAIL_ANON_VMA)
    assert s.vm_events["thp_split_page_failed"] == 1 and s.costs["anon_vma_lock"] == 0
    assert head._count == N + 1


def test_split_lists_each_thp_once_in_address_order():
    s = ReferenceState()
    s.mmap("a", BASE, 3 * MB2)
    s.mmap("a", BASE + 3 * MB2, PAGE, thp=False)
    s.split_pmd("a", BASE + MB2)
    s.pin("a", BASE + 2 * MB2, PAGE)
    res = s.split("a", BASE + 100 * PAGE, 4 * MB2)       # holes after the second VMA are fine
    assert res == [(HEAD0, 0, SPLIT_OK), (HEAD1, 0, SPLIT_OK),
                   (HEAD2, -EBUSY, SPLIT_FAIL_PRECHECK)]
    assert s.split("a", BASE + 3 * MB2, PAGE) == []      # small pages only


def test_split_of_pte_mapped_thp_after_fork_and_zap():
    """The child keeps a PTE table with no entry (copy_pte_range() allocates it first) and the parent
    a none PMD: freeze still takes the PMD lock there, unfreeze a PTE lock where a table exists."""
    s = thp_state()
    s.split_pmd("a", BASE)
    s.fork("a", "b")
    s.madvise_dontneed("a", BASE, MB2)
    s.fork("a", "c")                                     # "a" has an empty table: "c" gets one too
    assert s.split("b", BASE, MB2) == [(HEAD0, 0, SPLIT_OK)]
    d = s.dump()
    assert d["pages"][HEAD0 + 1] == (TAIL_AFTER_SPLIT, 1, 0, 0, PGOFF + 1, 1)
    assert ptes_of(d, "a") == ptes_of(d, "c") == {}
    # freeze: 3 VMAs, 3 PMD locks, 3 PTE locks; unfreeze: 512 subpages x 3 VMAs, 1 write each.
    assert d["costs"] == costs(anon_vma_lock=1, pmd_lock=1 + 3, pte_lock=3 + 3 * N, lru_lock=1,
                               tlb_flush=1 + N, mmu_notifier=1 + 3 + 3 * N,
                               pte_write=N + N + N)
    s = thp_state()
    s.fork("a", "b")
    s.madvise_dontneed("a", BASE, MB2)                   # "a": none PMD, VMA still there
    assert s.split("b", BASE, MB2) == [(HEAD0, 0, SPLIT_OK)]
    assert s.costs == costs(anon_vma_lock=1, pmd_lock=2, pte_lock=N, lru_lock=1, tlb_flush=1,
                            mmu_notifier=2 + 2 * N, pte_write=2 * N)


def test_interval_query_order():
    s = thp_state()
    s.fork("a", "b")
    s.mprotect("b", BASE + MB2 // 2, MB2 // 2, "r")
    s.fork("b", "c")
    got = [(v.vm_mm.name, v.vm_start) for v in s.anon_vmas[0].interval_tree_foreach(PGOFF, PGOFF)]
    assert got == [("a", BASE), ("b", BASE), ("c", BASE)]
    got = [(v.vm_mm.name, v.vm_pgoff) for v in s.anon_vmas[0].interval_tree_foreach(0, 1 << 40)]
    assert got == [("a", PGOFF), ("b", PGOFF), ("c", PGOFF), ("b", PGOFF + 256),
                   ("c", PGOFF + 256)]


# ---- VMAs, pins, exit ---------------------------------------------------------------------------

def test_munmap_middle_splits_vma_and_two_pmds():
    s = ReferenceState()
    s.mmap("a", BASE, 2 * MB2)
    s.munmap("a", BASE + MB2 - PAGE, 2 * PAGE)           # straddles the two THPs
    d = s.dump()
    assert d["vmas"]["a"] == [(BASE, BASE + MB2 - PAGE, PGOFF, THP_VMA, 0),
                              (BASE + MB2 + PAGE, BASE + 2 * MB2, PGOFF + N + 1, THP_VMA, 0)]
    assert d["vm_events"]["thp_split_pmd"] == 2 and d["deferred"] == [HEAD0, HEAD1]
    assert len(d["ptes"]) == 2 * N - 2
    s.munmap("a", BASE - MB2, 8 * MB2)                    # holes are allowed
    assert s.dump()["vmas"] == {"a": []} and s.costs["pages_freed"] == 2 * N


def test_exit_keeps_pins_and_retires_the_name():
    s = thp_state()
    s.fork("a", "b")
    s.pin("b", BASE, PAGE)
    s.exit("b")
    d = s.dump()
    assert "b" not in d["vmas"] and d["pages"][HEAD0][1] == 2 and d["compound_mapcount"] == {HEAD0: 0}
    for call in (lambda: s.mmap("b", BASE, MB2), lambda: s.fork("a", "b"),
                 lambda: s.unpin("b", BASE, PAGE), lambda: s.exit("b")):
        with pytest.raises(BadInput):
            call()


def test_unpin_after_munmap_frees_the_page():
    s = ReferenceState()
    s.mmap("a", BASE, PAGE, thp=False)
    s.pin("a", BASE, PAGE)
    s.pin("a", BASE, PAGE)
    s.munmap("a", BASE, PAGE)
    assert s.dump()["pages"][0x200] == (ANON_FAULT_FLAGS, 2, -1, 0, PGOFF, 1)
    s.unpin("a", BASE, PAGE)
    s.unpin("a", BASE, PAGE)
    assert s.dump()["pages"][0x200] == (0, 0, -1, MAPPING_NULL, 0, 0)
    assert s.costs["pages_freed"] == 1
    with pytest.raises(BadInput):
        s.unpin("a", BASE, PAGE)


@pytest.mark.parametrize("call, field", [
    (lambda s: s.mmap("zz", BASE + 1, PAGE), "addr"),
    (lambda s: s.mmap("a", BASE, 0), "len"),
    (lambda s: s.mmap("a", BASE, PAGE + 1), "len"),
    (lambda s: s.mmap("a", BASE + MB2 - PAGE, 2 * PAGE), "addr"),       # overlaps
    (lambda s: s.fork("nobody", "x"), "mm"),
    (lambda s: s.fork("a", "a"), "child"),
    (lambda s: s.munmap("a", BASE, -PAGE), "len"),
    (lambda s: s.madvise_dontneed("a", BASE, 2 * MB2), "addr"),        # runs past the VMA
    (lambda s: s.mprotect("a", BASE, PAGE, "rwx"), "prot"),
    (lambda s: s.mprotect("a", BASE - PAGE, 2 * PAGE, "r"), "addr"),
    (lambda s: s.pin("a", BASE, MB2 + 9 * PAGE), "addr"),          # runs past the VMA
    (lambda s: s.pin("a", BASE + MB2 + 5 * PAGE, PAGE), "addr"),       # VMA, but no present page
    (lambda s: s.unpin("a", BASE, PAGE), "addr"),
    (lambda s: s.split("a", BASE + 4 * MB2, PAGE), "addr"),
    (lambda s: s.split_pmd("a", BASE + 4 * MB2), "addr"),
    (lambda s: s.split_pmd("a", BASE + 1), "addr"),
    (lambda s: s.exit("nobody"), "mm"),
])
def test_bad_input_changes_nothing(call, field):
    s = thp_state()
    s.mmap("a", BASE + MB2, 8 * PAGE, thp=False)
    s.madvise_dontneed("a", BASE + MB2 + 5 * PAGE, PAGE)
    before = s.dump()
    with pytest.raises(BadInput) as e:
        call(s)
    assert e.value.field == field
    assert s.dump() == before


def test_freeze_and_unfreeze_alone():
    s = thp_state()
    s.mprotect("a", BASE, PAGE, "r")                     # PMD split; PTE 0 read-only
    head, anon_vma = s.pages[HEAD0], s.anon_vmas[0]
    s.freeze_page(anon_vma, head)
    a = ptes_of(s.dump(), "a")
    assert a[BASE] == _PAGE_VMS_MIGRATION | (HEAD0 << 12)
    assert a[BASE + PAGE] == _PAGE_VMS_MIGRATION | ((HEAD0 + 1) << 12) | _PAGE_RW
    assert total_mapcount(head) == N and head._count == N  # no counter changes in v5
    s.unfreeze_page(anon_vma, head)
    a = ptes_of(s.dump(), "a")
    assert a[BASE] == (HEAD0 << 12) | _PAGE_PRESENT
    assert a[BASE + PAGE] == ((HEAD0 + 1) << 12) | _PAGE_PRESENT | _PAGE_RW
