"""Every constant the engine, the kernels and the reference model share, defined once.

numba freezes module globals into compiled (and cached) code, so these never change at run time.
Bit numbers follow Linux v4.0 ``include/linux/page-flags.h`` (x86-64 with CONFIG_PAGEFLAGS_EXTENDED,
CONFIG_MMU, CONFIG_X86_PAT and CONFIG_MEMORY_FAILURE, as in x86_64_defconfig) and
``arch/x86/include/asm/pgtable_types.h``; tests/test_constants.py checks every value against its source.
"""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
HPAGE_PMD_ORDER = 9
HPAGE_PMD_NR = 1 << HPAGE_PMD_ORDER  # 512
HPAGE_PMD_SHIFT = PAGE_SHIFT + HPAGE_PMD_ORDER
HPAGE_PMD_SIZE = 1 << HPAGE_PMD_SHIFT
HPAGE_PMD_MASK = ~(HPAGE_PMD_SIZE - 1)

# enum pageflags (v4.0)
PG_locked = 0
PG_error = 1
PG_referenced = 2
PG_uptodate = 3
PG_dirty = 4
PG_lru = 5
PG_active = 6
PG_slab = 7
PG_owner_priv_1 = 8
PG_arch_1 = 9
PG_reserved = 10
PG_private = 11
PG_private_2 = 12
PG_writeback = 13
PG_head = 14
PG_tail = 15
PG_swapcache = 16
PG_mappedtodisk = 17
PG_reclaim = 18
PG_swapbacked = 19
PG_unevictable = 20
PG_mlocked = 21
# 22 is PG_uncached: CONFIG_ARCH_USES_PG_UNCACHED, which arch/x86/Kconfig selects with X86_PAT.
PG_hwpoison = 23
# Mainline 4.5: PG_double_map is PG_private_2 on the first tail page (PF_SECOND): the THP is mapped by
# PMDs and PTEs at once, and every subpage's raw _mapcount carries +1 for it.
PG_double_map = PG_private_2

PG_NAMES = {
    PG_locked: "locked", PG_error: "error", PG_referenced: "referenced", PG_uptodate: "uptodate",
    PG_dirty: "dirty", PG_lru: "lru", PG_active: "active", PG_slab: "slab",
    PG_owner_priv_1: "owner_priv_1", PG_arch_1: "arch_1", PG_reserved: "reserved",
    PG_private: "private", PG_private_2: "private_2", PG_writeback: "writeback", PG_head: "head",
    PG_tail: "tail", PG_swapcache: "swapcache", PG_mappedtodisk: "mappedtodisk",
    PG_reclaim: "reclaim", PG_swapbacked: "swapbacked", PG_unevictable: "unevictable",
    PG_mlocked: "mlocked", PG_hwpoison: "hwpoison",
}

# Flags a new anonymous page gets: __SetPageUptodate, page_add_new_anon_rmap (__SetPageSwapBacked),
# lru_cache_add_active_or_unevictable (PG_lru, PG_active).
ANON_FAULT_FLAGS = (1 << PG_uptodate) | (1 << PG_lru) | (1 << PG_active) | (1 << PG_swapbacked)
# __split_huge_page_tail(): flags copied from the head to every tail.
TAIL_COPY_FLAGS = ((1 << PG_referenced) | (1 << PG_swapbacked) | (1 << PG_mlocked)
                   | (1 << PG_uptodate) | (1 << PG_active) | (1 << PG_locked)
                   | (1 << PG_unevictable))

# page->mapping as vmstate stores it (an anon_vma id otherwise).
MAPPING_NULL = -1
TAIL_MAPPING = -2

# pte_t / pmd_t bits (x86-64)
_PAGE_BIT_PRESENT = 0
_PAGE_BIT_RW = 1
_PAGE_BIT_ACCESSED = 5
_PAGE_BIT_DIRTY = 6
_PAGE_BIT_PSE = 7
_PAGE_BIT_SPECIAL = 9         # _PAGE_BIT_SOFTW1: pte_special() (the zero page's PTE)
_PAGE_BIT_SOFT_DIRTY = 11
_PAGE_BIT_VMS_EXCLUSIVE = 61  # vmstate: a readable-exclusive migration entry (6.18)
_PAGE_BIT_VMS_MIGRATION = 62  # vmstate's encoding of a migration swap entry (pfn kept in place)
_PAGE_PRESENT = 1 << _PAGE_BIT_PRESENT
_PAGE_RW = 1 << _PAGE_BIT_RW
_PAGE_ACCESSED = 1 << _PAGE_BIT_ACCESSED
_PAGE_DIRTY = 1 << _PAGE_BIT_DIRTY
_PAGE_PSE = 1 << _PAGE_BIT_PSE
_PAGE_SPECIAL = 1 << _PAGE_BIT_SPECIAL
_PAGE_SOFT_DIRTY = 1 << _PAGE_BIT_SOFT_DIRTY
_PAGE_VMS_EXCLUSIVE = 1 << _PAGE_BIT_VMS_EXCLUSIVE
_PAGE_VMS_MIGRATION = 1 << _PAGE_BIT_VMS_MIGRATION
PTE_PFN_SHIFT = 12
PTE_PFN_MASK = ((1 << 52) - 1) & ~((1 << 12) - 1)

# vm_flags (v4.0 include/linux/mm.h)
VM_READ = 0x00000001
VM_WRITE = 0x00000002
VM_EXEC = 0x00000004
VM_MAYREAD = 0x00000010
VM_MAYWRITE = 0x00000020
VM_MAYEXEC = 0x00000040
VM_ACCOUNT = 0x00100000
VM_HUGEPAGE = 0x20000000
VM_ANON_DEFAULT = VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC | VM_ACCOUNT

EBUSY = 16
EAGAIN = 11

# Refcounting variants: the v5 patch series this project follows (the default), mainline 4.5 and
# mainline 6.18 as configured on this machine (docs/variant-6.18.md). Each is a module of kernels
# (vmstate.kernels.v5, .v4_5, .v6_18) built in vmstate.kernels.variants.
VARIANTS = ("v5", "v4.5", "6.18")

# ---- 6.18 (docs/variant-6.18.md) ----
# include/linux/mm_types.h (v6.18): _nr_pages_mapped counts a PMD mapping as ENTIRELY_MAPPED.
ENTIRELY_MAPPED = 0x800000
FOLIO_PAGES_MAPPED = ENTIRELY_MAPPED - 1
MM_ID_DUMMY = 0        # include/linux/mm_types.h: a free MM slot of the folio's MM-owner tracking
KHUGEPAGED_MAX_PTES_NONE = 511  # /sys/kernel/mm/transparent_hugepage/khugepaged/max_ptes_none here
# include/linux/page-flags.h (v6.18): PG_anon_exclusive = PG_mappedtodisk (anonymous pages only).
PG_anon_exclusive = 17
# The shared zero page: pfn 0 in the model (block 0 is never handed out).
ZERO_PFN = 0

# Why a split failed (per THP result array).
SPLIT_OK = 0
SPLIT_FAIL_ANON_VMA = 1
SPLIT_FAIL_PRECHECK = 2
SPLIT_FAIL_RECHECK = 3
SPLIT_BUG = 4  # total_mapcount > page_count - 1 after the freeze: the kernel's BUG()
SPLIT_NOT_TRIED = 5  # deferred_split_scan() left the THP alone (6.18: neither partially mapped nor underused)

# Where a racing GUP pin (get_page) or its release (put_page) lands in split_huge_page_to_list():
# the precheck is racy on purpose and the recheck after freeze_page() catches what it missed.
RACE_NONE = 0
RACE_AFTER_PRECHECK = 1
RACE_AFTER_FREEZE = 2
RACE_AFTER_SPLIT = 3      # after split_huge_page_to_list() returned, before the caller's put
RACE_POINTS = {"after_precheck": RACE_AFTER_PRECHECK, "after_freeze": RACE_AFTER_FREEZE,
               "after_split": RACE_AFTER_SPLIT, "never": RACE_NONE}

FIRST_BLOCK = 1  # block 0 (pfns 0..511) is never handed out

# /proc/vmstat names; the kernels fill the vector in this order (EV_* below), followed by the
# hugepages-2048kB/stats names (MTHP_STATS, EV_MTHP_*; 6.18 only). A variant's summary lists its own.
VM_EVENTS = ("thp_split_pmd", "thp_split_page", "thp_split_page_failed", "thp_fault_alloc",
             "thp_deferred_split_page", "thp_fault_fallback", "thp_underused_split_page",
             "thp_swpout_fallback")
MTHP_STATS = ("anon_fault_alloc", "anon_fault_fallback", "split", "split_failed", "split_deferred",
              "swpout_fallback", "nr_anon", "nr_anon_partially_mapped")
N_EVENTS = len(VM_EVENTS) + len(MTHP_STATS)
VARIANT_VM_EVENTS = {"v5": VM_EVENTS[:5], "v4.5": VM_EVENTS[:5], "6.18": VM_EVENTS}
VARIANT_MTHP_STATS = {"v5": (), "v4.5": (), "6.18": MTHP_STATS}  # mthp_stats in the summary
COSTS = ("anon_vma_lock", "pmd_lock", "pte_lock", "lru_lock", "tlb_flush", "mmu_notifier",
         "pte_write", "pages_freed")
# Indices into the cost vector the kernels fill (per-thread slabs, reduced serially).
C_ANON_VMA_LOCK, C_PMD_LOCK, C_PTE_LOCK, C_LRU_LOCK, C_TLB_FLUSH, C_MMU_NOTIFIER, C_PTE_WRITE, \
    C_PAGES_FREED = range(len(COSTS))
EV_THP_SPLIT_PMD, EV_THP_SPLIT_PAGE, EV_THP_SPLIT_PAGE_FAILED, EV_THP_FAULT_ALLOC, \
    EV_THP_DEFERRED_SPLIT_PAGE, EV_THP_FAULT_FALLBACK, EV_THP_UNDERUSED_SPLIT_PAGE, \
    EV_THP_SWPOUT_FALLBACK = range(len(VM_EVENTS))
EV_MTHP_ANON_FAULT_ALLOC, EV_MTHP_ANON_FAULT_FALLBACK, EV_MTHP_SPLIT, EV_MTHP_SPLIT_FAILED, \
    EV_MTHP_SPLIT_DEFERRED, EV_MTHP_SWPOUT_FALLBACK, EV_MTHP_NR_ANON, \
    EV_MTHP_NR_ANON_PARTIALLY_MAPPED = range(len(VM_EVENTS), N_EVENTS)
# What a BUG report (kernels' ``bug`` vector: head pfn, kind, value, value) means.
BUG_NONE = 0
BUG_RECHECK_MAPCOUNT = 1   # total_mapcount > page_count - 1 after freeze_page(): values mapcount, count
BUG_COMPOUND_MAPCOUNT = 2  # compound_mapcount != 0 after freeze_page(): values compound_mapcount, 0
BUG_TAIL_COUNT = 3         # tail _count != 0 in __split_huge_page_tail(): values tail index, _count
