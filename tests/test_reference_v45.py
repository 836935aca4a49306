"""The reference model's mainline 4.5 variant alone (``ReferenceState("v4.5")``), with exact numbers.

Each test is a small situation worked out by hand from the v4.5 C (docs/semantics.md "Variant v4.5"):
no permanent offset, PG_double_map on ``page[1]`` while a THP is mapped by PMDs and PTEs at once, a
freeze that drops each mapping's mapcount and reference, tails at ``_count = 1``, PG_dirty carrying the
PMD's dirtiness. Where v5 gives other raw numbers for the same program, the test says so.
"""
import pytest

from vmstate.kernels.constants import (
    _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_VMS_MIGRATION,
    ANON_FAULT_FLAGS, EBUSY, HPAGE_PMD_NR, MAPPING_NULL, PG_dirty, PG_head, PG_hwpoison,
    PG_locked, PG_tail,
    SPLIT_FAIL_ANON_VMA, SPLIT_FAIL_PRECHECK, SPLIT_FAIL_RECHECK, SPLIT_OK, TAIL_MAPPING,
)
from reference import PG_double_map, PageDoubleMap, ReferenceState, page_mapcount, total_mapcount
from vmstate.errors import BadInput, CorruptState
from vmstate.engine.huge_memory import Race
from dump_helpers import costs, events, ptes_of

N = HPAGE_PMD_NR
PAGE = 4096
MB2 = 2 << 20
BASE = 0x7F0000000000
PGOFF = BASE >> 12
HEAD0, HEAD1 = 0x200, 0x400
V = "v4.5"
HUGE_PMD = _PAGE_PRESENT | _PAGE_PSE | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY
HEAD_FLAGS = (1 << PG_head) | ANON_FAULT_FLAGS
DIRTY = 1 << PG_dirty
DOUBLE_MAP = 1 << PG_double_map
TAIL_AFTER_SPLIT = ANON_FAULT_FLAGS | DIRTY   # PG_dirty copied from the head (v5: set)


def thp_state():
    s = ReferenceState(V)
    s.mmap("a", BASE, MB2)
    return s


def test_variant_names():
    assert ReferenceState().variant == "v5" and ReferenceState(V).variant == "v4.5"
    with pytest.raises(BadInput) as e:
        ReferenceState("v4.6")
    assert e.value.field == "variant"
    assert PG_double_map == 12                            # v4.5: PG_double_map = PG_private_2
    assert "atomics" not in ReferenceState(V).dump()


# ---- faults and fork ----------------------------------------------------------------------------

def test_thp_fault():
    s = ReferenceState(V)
    s.mmap("a", BASE, 2 * MB2)
    d = s.dump()
    assert d["pages"][HEAD0] == (HEAD_FLAGS, 1, -1, 0, PGOFF, 1)          # v5: _mapcount 0
    assert d["pages"][HEAD0 + 1] == (1 << PG_tail, 0, -1, TAIL_MAPPING, 0, 1)
    assert d["compound_mapcount"] == {HEAD0: 0, HEAD1: 0}
    assert d["pmds"][("a", BASE)] == (HEAD0 << 12) | HUGE_PMD
    assert d["vm_events"] == events(thp_fault_alloc=2) and d["costs"] == costs()
    assert total_mapcount(s.pages[HEAD0], V) == 1 and page_mapcount(s.pages[HEAD0 + 7], V) == 1
    assert s.atomics == {"mapcount_writes": 2, "refcount_ops": 0}     # v5: 2 * 513
    v5 = ReferenceState()
    v5.mmap("a", BASE, 2 * MB2)
    assert v5.atomics == {"mapcount_writes": 2 * (N + 1), "refcount_ops": 0}


def test_small_page_fault_is_the_same():
    s = ReferenceState(V)
    s.mmap("a", BASE, 2 * PAGE, thp=False)
    assert s.dump()["pages"][HEAD0] == (ANON_FAULT_FLAGS, 1, 0, 0, PGOFF, 1)
    assert s.atomics == {"mapcount_writes": 2, "refcount_ops": 0}


def test_fork_of_a_pmd_mapping():
    s = thp_state()
    s.fork("a", "b")
    d = s.dump()
    assert d["pages"][HEAD0][1:3] == (2, -1) and d["compound_mapcount"] == {HEAD0: 1}
    assert d["pages"][HEAD0 + 3][2] == -1
    assert total_mapcount(s.pages[HEAD0], V) == 2 and page_mapcount(s.pages[HEAD0 + 9], V) == 2
    assert s.atomics == {"mapcount_writes": 1 + 1, "refcount_ops": 1}


def test_fork_of_pte_mapped_thp_subpages():
    s = thp_state()
    s.split_pmd("a", BASE)
    s.madvise_dontneed("a", BASE + MB2 // 2, MB2 // 2)
    s.fork("a", "b")
    d = s.dump()
    assert d["pages"][HEAD0][1] == 256 + 256
    assert d["pages"][HEAD0 + 5][2] == 1 and d["pages"][HEAD0 + 300][2] == -1
    assert page_mapcount(s.pages[HEAD0 + 5], V) == 2
    # fault 1; split_pmd 512 + 1; zap 256; fork 256
    assert s.atomics["mapcount_writes"] == 1 + 513 + 256 + 256


# ---- split_huge_pmd and PG_double_map -----------------------------------------------------------

def test_split_huge_pmd_not_the_last_sets_double_map():
    s = thp_state()
    s.fork("a", "b")
    s.split_pmd("a", BASE + 5 * PAGE)
    d = s.dump()
    assert d["pages"][HEAD0] == (HEAD_FLAGS | DIRTY, 2 + N - 1, 1, 0, PGOFF, 1)  # PG_dirty from the PMD
    assert d["pages"][HEAD0 + 1] == ((1 << PG_tail) | DOUBLE_MAP, 0, 1, TAIL_MAPPING, 0, 1)
    assert d["compound_mapcount"] == {HEAD0: 0}
    assert {d["pages"][HEAD0 + i][2] for i in range(N)} == {1}    # PTE + PG_double_map's +1
    assert PageDoubleMap(s.pages[HEAD0])
    # no pte_mkdirty in v4.5; fork write-protected the PMD
    assert ptes_of(d, "a")[BASE + 7 * PAGE] == ((HEAD0 + 7) << 12) | _PAGE_PRESENT | _PAGE_ACCESSED
    assert total_mapcount(s.pages[HEAD0], V) == 513 and page_mapcount(s.pages[HEAD0 + 1], V) == 2
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_pmd=1)
    assert d["costs"] == costs(pmd_lock=1, mmu_notifier=1, tlb_flush=1, pte_write=N)
    # fault 1, fork 1; split: 512 PTE incs, 512 PG_double_map incs, 1 compound dec
    assert s.atomics == {"mapcount_writes": 2 + N + N + 1, "refcount_ops": 1 + 1}


def test_split_huge_pmd_the_last():
    s = thp_state()
    s.split_pmd("a", BASE)
    d = s.dump()
    assert d["pages"][HEAD0] == (HEAD_FLAGS | DIRTY, N, 0, 0, PGOFF, 1)
    assert d["pages"][HEAD0 + 1][0] == 1 << PG_tail                 # no PG_double_map
    assert d["compound_mapcount"] == {HEAD0: -1}
    assert {d["pages"][HEAD0 + i][2] for i in range(N)} == {0}
    assert ptes_of(d, "a") == {BASE + i * PAGE: ((HEAD0 + i) << 12) | _PAGE_PRESENT | _PAGE_RW
                               | _PAGE_ACCESSED for i in range(N)}   # v5: dirty as well
    assert d["deferred"] == [] and total_mapcount(s.pages[HEAD0], V) == N
    assert s.atomics == {"mapcount_writes": 1 + N + 1, "refcount_ops": 1}


def test_second_pmd_split_clears_double_map():
    s = thp_state()
    s.fork("a", "b")
    s.split_pmd("a", BASE)
    s.split_pmd("b", BASE)
    d = s.dump()
    assert not d["pages"][HEAD0 + 1][0] & DOUBLE_MAP
    assert d["compound_mapcount"] == {HEAD0: -1}
    assert {d["pages"][HEAD0 + i][2] for i in range(N)} == {1}    # two PTE mappings each
    assert d["pages"][HEAD0][1] == 2 + 2 * (N - 1)
    # b: 512 incs, no set (compound_mapcount 1), 1 dec to -1, 512 decs for PG_double_map
    assert s.atomics["mapcount_writes"] == 2 + (N + N + 1) + (N + 1 + N)


# ---- zap and the deferred queue -----------------------------------------------------------------

def test_zap_last_pmd_queues_deferred_then_frees():
    s = ReferenceState(V)
    s.mmap("a", BASE, 2 * MB2)
    s.pin("a", BASE + 3 * PAGE, PAGE)
    s.madvise_dontneed("a", BASE, 2 * MB2)
    d = s.dump()
    assert d["pages"][HEAD0][1:3] == (1, -1) and d["compound_mapcount"] == {HEAD0: -1}
    assert d["deferred"] == [HEAD0]                       # nr = 512: queued; HEAD1 freed
    assert d["pages"][HEAD1] == (0, 0, -1, MAPPING_NULL, 0, 0)
    assert d["vm_events"] == events(thp_fault_alloc=2, thp_deferred_split_page=2)
    assert s.atomics == {"mapcount_writes": 2 + 2, "refcount_ops": 1 + 2}   # v5: 2 * 513 + 2 * 513


def test_zap_last_pmd_with_double_map_leaves_pte_mappings():
    s = thp_state()
    s.fork("a", "b")
    s.split_pmd("a", BASE)
    s.munmap("b", BASE, MB2)
    d = s.dump()
    assert d["compound_mapcount"] == {HEAD0: -1} and not PageDoubleMap(s.pages[HEAD0])
    assert {d["pages"][HEAD0 + i][2] for i in range(N)} == {0}
    assert d["deferred"] == []                            # nr = 0: every subpage still mapped
    assert page_mapcount(s.pages[HEAD0 + 3], V) == 1 and d["pages"][HEAD0][1] == N


def test_zap_one_pte_while_double_mapped_does_not_queue():
    s = thp_state()
    s.fork("a", "b")
    s.split_pmd("a", BASE)
    s.madvise_dontneed("a", BASE + 10 * PAGE, PAGE)
    d = s.dump()
    assert d["pages"][HEAD0 + 10][2] == 0 and page_mapcount(s.pages[HEAD0 + 10], V) == 1
    assert d["deferred"] == [] and d["pages"][HEAD0][1] == 2 + N - 1 - 1


def test_zap_one_pte_queues_deferred():
    s = thp_state()
    s.split_pmd("a", BASE)
    s.madvise_dontneed("a", BASE + 10 * PAGE, PAGE)
    d = s.dump()
    assert d["pages"][HEAD0 + 10][2] == -1 and d["pages"][HEAD0][1] == N - 1
    assert d["deferred"] == [HEAD0] and d["vm_events"]["thp_deferred_split_page"] == 1


# ---- split_huge_page ----------------------------------------------------------------------------

def test_split_of_a_pmd_mapped_thp():
    s = thp_state()
    assert s.split("a", BASE + 100 * PAGE, PAGE) == [(HEAD0, 0, SPLIT_OK)]
    d = s.dump()
    assert d["pages"][HEAD0] == (ANON_FAULT_FLAGS | DIRTY, 1, 0, 0, PGOFF, 1)   # v5: not PG_dirty
    for i in range(1, N):
        assert d["pages"][HEAD0 + i] == (TAIL_AFTER_SPLIT, 1, 0, 0, PGOFF + i, 1)
    assert d["compound_mapcount"] == {} and d["pmds"] == {} and d["deferred"] == []
    # unfreeze: pte_mkold(mk_pte()), writable again, dirty from PG_dirty (v5: not dirty)
    assert ptes_of(d, "a") == {BASE + i * PAGE: ((HEAD0 + i) << 12) | _PAGE_PRESENT | _PAGE_RW
                               | _PAGE_DIRTY for i in range(N)}
    # the freeze's page_remove_rmap() queued the THP, the split took it off
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_pmd=1, thp_split_page=1,
                                    thp_deferred_split_page=1)
    # freeze: 1 VMA (notifier, PMD lock, PMD split); unfreeze: 1 VMA (notifier, PTE lock, 512 writes)
    assert d["costs"] == costs(anon_vma_lock=1, pmd_lock=1, pte_lock=1, lru_lock=1, tlb_flush=1,
                               mmu_notifier=2, pte_write=2 * N)
    # mapcount: fault 1; freeze 512 incs + 1 compound dec + 512 page_remove_rmap; unfreeze 512
    # refcount: get 1; freeze add 1 + 512 puts; tails 511 + head atomic_sub 1; unfreeze 512 gets;
    # puts 511; the caller's put 1
    assert s.atomics == {"mapcount_writes": 1 + N + 1 + N + N,
                         "refcount_ops": 1 + 1 + N + (N - 1) + 1 + N + (N - 1) + 1}


@pytest.mark.parametrize("variant", ["v5", V])
def test_split_keeps_pg_hwpoison_on_tails(variant):
    """``__split_huge_page_tail()`` clears ``~PAGE_FLAGS_CHECK_AT_PREP``, which leaves __PG_HWPOISON
    in both variants (v4.5 as v5: ``&= ~PAGE_FLAGS_CHECK_AT_PREP`` excludes it since commit
    f4c18e6f7b5b); page[1], which holds PG_double_map in 4.5, keeps it too."""
    s = ReferenceState(variant)
    s.mmap("a", BASE, MB2)
    s.fork("a", "b")
    s.split_pmd("b", BASE)                                # 4.5: PG_double_map on page[1]
    hwpoison = 1 << PG_hwpoison
    for i in (1, 5):
        s.pages[HEAD0 + i].flags |= hwpoison
    assert s.split("a", BASE, MB2) == [(HEAD0, 0, SPLIT_OK)]
    d = s.dump()
    assert d["pages"][HEAD0 + 1][0] == TAIL_AFTER_SPLIT | hwpoison   # PG_double_map cleared
    assert d["pages"][HEAD0 + 5][0] == TAIL_AFTER_SPLIT | hwpoison
    assert d["pages"][HEAD0 + 6][0] == TAIL_AFTER_SPLIT
    assert not d["pages"][HEAD0][0] & hwpoison


def test_split_of_a_pmd_mapped_thp_v5_atomics():
    s = ReferenceState()
    s.mmap("a", BASE, MB2)
    s.split("a", BASE, MB2)
    # mapcount: fault 513; freeze 512 incs + 1 dec + 512 decs (last PMD); nothing after
    # refcount: get 1; PMD split add 1; tails 511 + head atomic_sub 1; puts 511; caller's put 1
    assert s.atomics == {"mapcount_writes": N + 1 + N + 1 + N,
                         "refcount_ops": 1 + 1 + (N - 1) + 1 + (N - 1) + 1}


def test_fork_shared_split():
    s = thp_state()
    s.fork("a", "b")
    assert s.split("a", BASE, MB2) == [(HEAD0, 0, SPLIT_OK)]
    d = s.dump()
    assert d["pages"][HEAD0] == (ANON_FAULT_FLAGS | DIRTY, 2, 1, 0, PGOFF, 1)
    assert d["pages"][HEAD0 + 77] == (TAIL_AFTER_SPLIT, 2, 1, 0, PGOFF + 77, 1)
    for mm in ("a", "b"):
        assert ptes_of(d, mm)[BASE + 77 * PAGE] == ((HEAD0 + 77) << 12) | _PAGE_PRESENT | _PAGE_DIRTY
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_pmd=2, thp_split_page=1,
                                    thp_deferred_split_page=1)
    # unfreeze: one notifier and one PTE lock per VMA (v5: per subpage and VMA)
    assert d["costs"] == costs(anon_vma_lock=1, pmd_lock=2, pte_lock=2, lru_lock=1, tlb_flush=2,
                               mmu_notifier=2 + 2, pte_write=4 * N)
    # freeze a: 512 incs, 512 PG_double_map incs, 1 dec, 512 removes; freeze b: 512 incs, 1 dec,
    # 512 PG_double_map decs, 512 removes; unfreeze 1024
    assert s.atomics["mapcount_writes"] == 2 + (3 * N + 1) + (3 * N + 1) + 2 * N


def test_partial_munmap_then_split_frees_unmapped_subpages():
    s = thp_state()
    s.munmap("a", BASE, MB2 // 2)
    assert s.dump()["pages"][HEAD0][1:3] == (256, -1) and s.dump()["deferred"] == [HEAD0]
    assert s.split("a", BASE, MB2) == [(HEAD0, 0, SPLIT_OK)]
    d = s.dump()
    for i in range(256):
        assert d["pages"][HEAD0 + i] == (0, 0, -1, MAPPING_NULL, 0, 0)
    for i in range(256, N):
        assert d["pages"][HEAD0 + i] == (TAIL_AFTER_SPLIT, 1, 0, 0, PGOFF + i, 1)
    # freeze and unfreeze each skip to vm_start: 256 entries, one PTE lock each
    assert d["costs"] == costs(anon_vma_lock=1, pmd_lock=2, pte_lock=2, lru_lock=1,
                               tlb_flush=1 + 256, mmu_notifier=1 + 1 + 1,
                               pte_write=N + 256 + 256, pages_freed=256)
    assert s.atomics["mapcount_writes"] == 1 + (N + 1) + 256 + 256 + 256


def test_mprotect_lower_half_then_split():
    """v4.5 unfreeze_page_vma() restores the whole THP from the first VMA with that VMA's VM_WRITE:
    the writable upper half comes back read-only (v5: writable)."""
    s = thp_state()
    s.mprotect("a", BASE, MB2 // 2, "r")
    assert s.split("a", BASE, MB2) == [(HEAD0, 0, SPLIT_OK)]
    a = ptes_of(s.dump(), "a")
    assert a[BASE + 255 * PAGE] == ((HEAD0 + 255) << 12) | _PAGE_PRESENT | _PAGE_DIRTY
    assert a[BASE + 256 * PAGE] == ((HEAD0 + 256) << 12) | _PAGE_PRESENT | _PAGE_DIRTY
    # freeze: 2 VMAs, the first converts 512 PTEs; unfreeze: 2 VMAs, the first restores 512
    assert s.costs == costs(anon_vma_lock=1, pmd_lock=1 + 2, pte_lock=2 + 2, lru_lock=1,
                            tlb_flush=1 + N, mmu_notifier=1 + 2 + 2, pte_write=N + N + N)


def test_pinned_thp_fails_precheck_without_pmd_split():
    s = thp_state()
    s.pin("a", BASE + 5 * PAGE, PAGE)
    assert s.split("a", BASE, MB2) == [(HEAD0, -EBUSY, SPLIT_FAIL_PRECHECK)]
    d = s.dump()
    assert d["pmds"] == {("a", BASE): (HEAD0 << 12) | HUGE_PMD}
    assert d["pages"][HEAD0] == (HEAD_FLAGS, 2, -1, 0, PGOFF, 1)
    assert d["costs"] == costs(anon_vma_lock=1)


def test_recheck_failure_unfreezes_with_references():
    s = thp_state()
    race = Race(pin="after_freeze", unpin="after_split")
    assert s.split("a", BASE, MB2, race) == [(HEAD0, -EBUSY, SPLIT_FAIL_RECHECK)]
    d = s.dump()
    assert d["pmds"] == {} and d["compound_mapcount"] == {HEAD0: -1}   # the wasted PMD split
    # unfreeze: get_page() and page_add_anon_rmap() per entry: 1 + 512 references, raw 0 each
    assert d["pages"][HEAD0] == (HEAD_FLAGS | DIRTY, N, 0, 0, PGOFF, 1)
    assert {d["pages"][HEAD0 + i][2] for i in range(N)} == {0}
    assert ptes_of(d, "a")[BASE + 3 * PAGE] == ((HEAD0 + 3) << 12) | _PAGE_PRESENT | _PAGE_RW \
        | _PAGE_DIRTY                                     # PageDirty(tail) reads the head's bit
    assert d["deferred"] == [HEAD0]                       # queued by the freeze, left queued
    assert d["vm_events"] == events(thp_fault_alloc=1, thp_split_pmd=1, thp_split_page_failed=1,
                                    thp_deferred_split_page=1)
    assert d["costs"] == costs(anon_vma_lock=1, pmd_lock=1, pte_lock=1, tlb_flush=1,
                               mmu_notifier=2, pte_write=2 * N)
    assert s.atomics == {"mapcount_writes": 1 + N + 1 + N + N,
                         "refcount_ops": 1 + 1 + N + 1 + N + 1 + 1}


def test_bug_path_reports_the_values_tested(monkeypatch):
    s = thp_state()
    freeze = s.freeze_page

    def corrupting(anon_vma, page):
        freeze(anon_vma, page)
        s.pages[HEAD0 + 4]._mapcount += 1

    monkeypatch.setattr(s, "freeze_page", corrupting)
    with pytest.raises(CorruptState, match=r"total_mapcount: 1, page_count\(\): 1") as e:
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
    assert s.costs["anon_vma_lock"] == 0 and head._count == N + 1


def test_freeze_and_unfreeze_alone():
    s = thp_state()
    s.mprotect("a", BASE, PAGE, "r")                      # PMD split; PTE 0 read-only
    head, anon_vma = s.pages[HEAD0], s.anon_vmas[0]
    s.get_page(head)                                      # the split's caller pin
    s.freeze_page(anon_vma, head)
    a = ptes_of(s.dump(), "a")
    assert a[BASE] == _PAGE_VMS_MIGRATION | (HEAD0 << 12)
    assert a[BASE + PAGE] == _PAGE_VMS_MIGRATION | ((HEAD0 + 1) << 12) | _PAGE_RW
    assert total_mapcount(head, V) == 0 and head._count == 1   # v5: N and N + 1
    assert s.dump()["deferred"] == [HEAD0]
    s.unfreeze_page(anon_vma, head)
    a = ptes_of(s.dump(), "a")
    assert a[BASE] == (HEAD0 << 12) | _PAGE_PRESENT | _PAGE_DIRTY
    # restored by the first VMA ([BASE, BASE + 4K), not VM_WRITE) for the whole THP
    assert a[BASE + PAGE] == ((HEAD0 + 1) << 12) | _PAGE_PRESENT | _PAGE_DIRTY
    assert total_mapcount(head, V) == N and head._count == N + 1
