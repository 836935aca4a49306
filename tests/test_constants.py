"""Every constant of ``kernels/constants.py`` as a literal, beside the header (or vmstate's own rule) it
comes from: a changed value, or a new constant without its row here, fails."""
import types

import pytest

from vmstate.kernels import constants

V4_0 = "Linux v4.0"
PAGE_FLAGS = f"{V4_0} include/linux/page-flags.h enum pageflags"
PGTABLE_TYPES = f"{V4_0} arch/x86/include/asm/pgtable_types.h"
MM_H = f"{V4_0} include/linux/mm.h"
HUGE_MM = f"{V4_0} include/linux/huge_mm.h"
VM_EVENT_ITEM = "Linux v4.5 include/linux/vm_event_item.h (names: mm/vmstat.c vmstat_text)"
VMSTATE = "vmstate's own encoding"

# enum pageflags of v4.0 on x86-64 (x86_64_defconfig): CONFIG_PAGEFLAGS_EXTENDED (PG_head, PG_tail
# instead of PG_compound), CONFIG_MMU (PG_mlocked), CONFIG_ARCH_USES_PG_UNCACHED (arch/x86/Kconfig:
# "select ARCH_USES_PG_UNCACHED if X86_PAT"), CONFIG_MEMORY_FAILURE (PG_hwpoison),
# CONFIG_TRANSPARENT_HUGEPAGE (PG_compound_lock), then __NR_PAGEFLAGS.
PAGEFLAGS_V4_0_X86_64 = (
    "PG_locked", "PG_error", "PG_referenced", "PG_uptodate", "PG_dirty", "PG_lru", "PG_active",
    "PG_slab", "PG_owner_priv_1", "PG_arch_1", "PG_reserved", "PG_private", "PG_private_2",
    "PG_writeback", "PG_head", "PG_tail", "PG_swapcache", "PG_mappedtodisk", "PG_reclaim",
    "PG_swapbacked", "PG_unevictable", "PG_mlocked", "PG_uncached", "PG_hwpoison",
    "PG_compound_lock",
)

TABLE = [
    # arch/x86/include/asm/page_types.h, pgtable_64_types.h, include/linux/huge_mm.h
    ("PAGE_SHIFT", 12, f"{V4_0} arch/x86/include/asm/page_types.h: #define PAGE_SHIFT 12"),
    ("PAGE_SIZE", 0x1000, f"{V4_0} arch/x86/include/asm/page_types.h: PAGE_SIZE (_AC(1,UL) << PAGE_SHIFT)"),
    ("HPAGE_PMD_SHIFT", 21, f"{HUGE_MM}: HPAGE_PMD_SHIFT PMD_SHIFT; pgtable_64_types.h: PMD_SHIFT 21"),
    ("HPAGE_PMD_ORDER", 9, f"{HUGE_MM}: HPAGE_PMD_ORDER (HPAGE_PMD_SHIFT-PAGE_SHIFT)"),
    ("HPAGE_PMD_NR", 512, f"{HUGE_MM}: HPAGE_PMD_NR (1<<HPAGE_PMD_ORDER)"),
    ("HPAGE_PMD_SIZE", 0x200000, f"{HUGE_MM}: HPAGE_PMD_SIZE ((1UL) << HPAGE_PMD_SHIFT)"),
    ("HPAGE_PMD_MASK", -0x200000, f"{HUGE_MM}: HPAGE_PMD_MASK (~(HPAGE_PMD_SIZE - 1)), as a Python int"),
    # include/linux/page-flags.h
    ("PG_locked", 0, f"{PAGE_FLAGS} #0"),
    ("PG_error", 1, f"{PAGE_FLAGS} #1"),
    ("PG_referenced", 2, f"{PAGE_FLAGS} #2"),
    ("PG_uptodate", 3, f"{PAGE_FLAGS} #3"),
    ("PG_dirty", 4, f"{PAGE_FLAGS} #4"),
    ("PG_lru", 5, f"{PAGE_FLAGS} #5"),
    ("PG_active", 6, f"{PAGE_FLAGS} #6"),
    ("PG_slab", 7, f"{PAGE_FLAGS} #7"),
    ("PG_owner_priv_1", 8, f"{PAGE_FLAGS} #8"),
    ("PG_arch_1", 9, f"{PAGE_FLAGS} #9"),
    ("PG_reserved", 10, f"{PAGE_FLAGS} #10"),
    ("PG_private", 11, f"{PAGE_FLAGS} #11"),
    ("PG_private_2", 12, f"{PAGE_FLAGS} #12"),
    ("PG_writeback", 13, f"{PAGE_FLAGS} #13"),
    ("PG_head", 14, f"{PAGE_FLAGS} #14 (CONFIG_PAGEFLAGS_EXTENDED)"),
    ("PG_tail", 15, f"{PAGE_FLAGS} #15 (CONFIG_PAGEFLAGS_EXTENDED)"),
    ("PG_swapcache", 16, f"{PAGE_FLAGS} #16"),
    ("PG_mappedtodisk", 17, f"{PAGE_FLAGS} #17"),
    ("PG_reclaim", 18, f"{PAGE_FLAGS} #18"),
    ("PG_swapbacked", 19, f"{PAGE_FLAGS} #19"),
    ("PG_unevictable", 20, f"{PAGE_FLAGS} #20"),
    ("PG_mlocked", 21, f"{PAGE_FLAGS} #21 (CONFIG_MMU)"),
    ("PG_hwpoison", 23, f"{PAGE_FLAGS} #23 (CONFIG_MEMORY_FAILURE; #22 is PG_uncached with X86_PAT)"),
    ("PG_double_map", 12, "Linux v4.5 include/linux/page-flags.h: PG_double_map = PG_private_2"),
    ("PG_NAMES", {0: "locked", 1: "error", 2: "referenced", 3: "uptodate", 4: "dirty", 5: "lru",
                  6: "active", 7: "slab", 8: "owner_priv_1", 9: "arch_1", 10: "reserved",
                  11: "private", 12: "private_2", 13: "writeback", 14: "head", 15: "tail",
                  16: "swapcache", 17: "mappedtodisk", 18: "reclaim", 19: "swapbacked",
                  20: "unevictable", 21: "mlocked", 23: "hwpoison"},
     f"{V4_0} mm/debug.c pageflag_names (the names of the enum)"),
    ("ANON_FAULT_FLAGS", 0x80068, "PG_uptodate|PG_lru|PG_active|PG_swapbacked: do_anonymous_page()"),
    ("TAIL_COPY_FLAGS", 0x38004D, "Linux v4.5 mm/huge_memory.c __split_huge_page_tail(): referenced, "
                                  "swapbacked, mlocked, uptodate, active, locked, unevictable"),
    ("MAPPING_NULL", -1, f"{VMSTATE}: page->mapping NULL"),
    ("TAIL_MAPPING", -2, f"{VMSTATE}: Linux v4.5 include/linux/poison.h TAIL_MAPPING"),
    # arch/x86/include/asm/pgtable_types.h
    ("_PAGE_BIT_PRESENT", 0, f"{PGTABLE_TYPES}: #define _PAGE_BIT_PRESENT 0"),
    ("_PAGE_BIT_RW", 1, f"{PGTABLE_TYPES}: #define _PAGE_BIT_RW 1"),
    ("_PAGE_BIT_ACCESSED", 5, f"{PGTABLE_TYPES}: #define _PAGE_BIT_ACCESSED 5"),
    ("_PAGE_BIT_DIRTY", 6, f"{PGTABLE_TYPES}: #define _PAGE_BIT_DIRTY 6"),
    ("_PAGE_BIT_PSE", 7, f"{PGTABLE_TYPES}: #define _PAGE_BIT_PSE 7"),
    ("_PAGE_BIT_SOFT_DIRTY", 11, f"{PGTABLE_TYPES}: _PAGE_BIT_SOFT_DIRTY _PAGE_BIT_SOFTW3 (11)"),
    ("_PAGE_BIT_VMS_MIGRATION", 62, f"{VMSTATE}: a migration entry, pfn kept in place"),
    ("_PAGE_PRESENT", 0x1, f"{PGTABLE_TYPES}: _PAGE_PRESENT (_AT(pteval_t, 1) << _PAGE_BIT_PRESENT)"),
    ("_PAGE_RW", 0x2, f"{PGTABLE_TYPES}: _PAGE_RW"),
    ("_PAGE_ACCESSED", 0x20, f"{PGTABLE_TYPES}: _PAGE_ACCESSED"),
    ("_PAGE_DIRTY", 0x40, f"{PGTABLE_TYPES}: _PAGE_DIRTY"),
    ("_PAGE_PSE", 0x80, f"{PGTABLE_TYPES}: _PAGE_PSE"),
    ("_PAGE_SOFT_DIRTY", 0x800, f"{PGTABLE_TYPES}: _PAGE_SOFT_DIRTY (CONFIG_MEM_SOFT_DIRTY)"),
    ("_PAGE_VMS_MIGRATION", 0x4000000000000000, f"{VMSTATE}: 1 << _PAGE_BIT_VMS_MIGRATION"),
    ("PTE_PFN_SHIFT", 12, f"{V4_0} arch/x86/include/asm/pgtable.h pte_pfn(): >> PAGE_SHIFT"),
    ("PTE_PFN_MASK", 0xFFFFFFFFFF000,
     "arch/x86/include/asm/pgtable_types.h PTE_PFN_MASK = PHYSICAL_PAGE_MASK, bits 12..51: "
     "__PHYSICAL_MASK_SHIFT 52 (x86-64 since v4.17; 46 in v4.0)"),
    # include/linux/mm.h
    ("VM_READ", 0x00000001, f"{MM_H}: #define VM_READ 0x00000001"),
    ("VM_WRITE", 0x00000002, f"{MM_H}: #define VM_WRITE 0x00000002"),
    ("VM_EXEC", 0x00000004, f"{MM_H}: #define VM_EXEC 0x00000004"),
    ("VM_MAYREAD", 0x00000010, f"{MM_H}: #define VM_MAYREAD 0x00000010"),
    ("VM_MAYWRITE", 0x00000020, f"{MM_H}: #define VM_MAYWRITE 0x00000020"),
    ("VM_MAYEXEC", 0x00000040, f"{MM_H}: #define VM_MAYEXEC 0x00000040"),
    ("VM_ACCOUNT", 0x00100000, f"{MM_H}: #define VM_ACCOUNT 0x00100000"),
    ("VM_HUGEPAGE", 0x20000000, f"{MM_H}: #define VM_HUGEPAGE 0x20000000"),
    ("VM_ANON_DEFAULT", 0x00100073, f"{VMSTATE}: a private writable anonymous mmap() (VM_ACCOUNT)"),
    # include/uapi/asm-generic/errno-base.h
    ("EBUSY", 16, f"{V4_0} include/uapi/asm-generic/errno-base.h: #define EBUSY 16"),
    # vmstate's enumerations
    ("VARIANTS", ("v5", "v4.5", "6.18"), f"{VMSTATE}: variant names (vmstate.kernels.variants builds each)"),
    ("SPLIT_OK", 0, f"{VMSTATE}: split result"),
    ("SPLIT_FAIL_ANON_VMA", 1, f"{VMSTATE}: split result"),
    ("SPLIT_FAIL_PRECHECK", 2, f"{VMSTATE}: split result"),
    ("SPLIT_FAIL_RECHECK", 3, f"{VMSTATE}: split result"),
    ("SPLIT_BUG", 4, f"{VMSTATE}: split result"),
    ("SPLIT_NOT_TRIED", 5, f"{VMSTATE}: split result"),
    ("RACE_NONE", 0, f"{VMSTATE}: race point"),
    ("RACE_AFTER_PRECHECK", 1, f"{VMSTATE}: race point"),
    ("RACE_AFTER_FREEZE", 2, f"{VMSTATE}: race point"),
    ("RACE_AFTER_SPLIT", 3, f"{VMSTATE}: race point"),
    ("RACE_POINTS", {"after_precheck": 1, "after_freeze": 2, "after_split": 3, "never": 0},
     f"{VMSTATE}: race point names"),
    ("FIRST_BLOCK", 1, f"{VMSTATE}: block 0 never handed out"),
    # include/linux/vm_event_item.h: THP_SPLIT_PMD, THP_SPLIT_PAGE, THP_SPLIT_PAGE_FAILED,
    # THP_FAULT_ALLOC, THP_DEFERRED_SPLIT_PAGE, in vmstate's order
    ("VM_EVENTS", ("thp_split_pmd", "thp_split_page", "thp_split_page_failed", "thp_fault_alloc",
                   "thp_deferred_split_page", "thp_fault_fallback", "thp_underused_split_page",
                   "thp_swpout_fallback"), VM_EVENT_ITEM + " (the last three: v6.18's too)"),
    ("EV_THP_FAULT_FALLBACK", 5, f"{VMSTATE}: index into VM_EVENTS"),
    ("EV_THP_UNDERUSED_SPLIT_PAGE", 6, f"{VMSTATE}: index into VM_EVENTS"),
    ("EV_THP_SWPOUT_FALLBACK", 7, f"{VMSTATE}: index into VM_EVENTS"),
    # v6.18 mm/huge_memory.c: the hugepages-*kB/stats file names (mthp_stats_attrs)
    ("MTHP_STATS", ("anon_fault_alloc", "anon_fault_fallback", "split", "split_failed",
                    "split_deferred", "swpout_fallback", "nr_anon", "nr_anon_partially_mapped"),
     "v6.18 mm/huge_memory.c: DEFINE_MTHP_STAT_ATTR names (those vmstate counts)"),
    ("N_EVENTS", 16, f"{VMSTATE}: VM_EVENTS then MTHP_STATS in one vector"),
    ("EV_MTHP_ANON_FAULT_ALLOC", 8, f"{VMSTATE}: index into the event vector"),
    ("EV_MTHP_ANON_FAULT_FALLBACK", 9, f"{VMSTATE}: index into the event vector"),
    ("EV_MTHP_SPLIT", 10, f"{VMSTATE}: index into the event vector"),
    ("EV_MTHP_SPLIT_FAILED", 11, f"{VMSTATE}: index into the event vector"),
    ("EV_MTHP_SPLIT_DEFERRED", 12, f"{VMSTATE}: index into the event vector"),
    ("EV_MTHP_SWPOUT_FALLBACK", 13, f"{VMSTATE}: index into the event vector"),
    ("EV_MTHP_NR_ANON", 14, f"{VMSTATE}: index into the event vector"),
    ("EV_MTHP_NR_ANON_PARTIALLY_MAPPED", 15, f"{VMSTATE}: index into the event vector"),
    ("VARIANT_VM_EVENTS", {"v5": ("thp_split_pmd", "thp_split_page", "thp_split_page_failed",
                                  "thp_fault_alloc", "thp_deferred_split_page"),
                           "v4.5": ("thp_split_pmd", "thp_split_page", "thp_split_page_failed",
                                    "thp_fault_alloc", "thp_deferred_split_page"),
                           "6.18": ("thp_split_pmd", "thp_split_page", "thp_split_page_failed",
                                    "thp_fault_alloc", "thp_deferred_split_page",
                                    "thp_fault_fallback", "thp_underused_split_page",
                                    "thp_swpout_fallback")},
     f"{VMSTATE}: the counters a variant's summary lists"),
    ("VARIANT_MTHP_STATS", {"v5": (), "v4.5": (), "6.18": ("anon_fault_alloc", "anon_fault_fallback",
                                                           "split", "split_failed", "split_deferred",
                                                           "swpout_fallback", "nr_anon",
                                                           "nr_anon_partially_mapped")},
     f"{VMSTATE}: the mthp_stats a variant's summary lists"),
    ("EAGAIN", 11, f"{V4_0} include/uapi/asm-generic/errno-base.h: #define EAGAIN 11"),
    ("ENTIRELY_MAPPED", 0x800000, "v6.18 mm/internal.h: #define ENTIRELY_MAPPED 0x800000"),
    ("FOLIO_PAGES_MAPPED", 0x7FFFFF, "v6.18 mm/internal.h: #define FOLIO_PAGES_MAPPED (ENTIRELY_MAPPED - 1)"),
    ("MM_ID_DUMMY", 0, "v6.18 include/linux/mm_types.h: #define MM_ID_DUMMY 0"),
    ("KHUGEPAGED_MAX_PTES_NONE", 511, "this machine: /sys/kernel/mm/transparent_hugepage/khugepaged/max_ptes_none"),
    ("PG_anon_exclusive", 17, "v6.18 include/linux/page-flags.h: PG_anon_exclusive = PG_mappedtodisk"),
    ("ZERO_PFN", 0, f"{VMSTATE}: the shared zero page's pfn in the model (block 0 is never handed out)"),
    ("_PAGE_BIT_SPECIAL", 9, "arch/x86/include/asm/pgtable_types.h: _PAGE_BIT_SPECIAL = _PAGE_BIT_SOFTW1"),
    ("_PAGE_SPECIAL", 0x200, "arch/x86/include/asm/pgtable_types.h"),
    ("_PAGE_BIT_VMS_EXCLUSIVE", 61, f"{VMSTATE}: readable-exclusive migration entry"),
    ("_PAGE_VMS_EXCLUSIVE", 1 << 61, f"{VMSTATE}: readable-exclusive migration entry"),
    ("EV_THP_SPLIT_PMD", 0, f"{VMSTATE}: index into VM_EVENTS"),
    ("EV_THP_SPLIT_PAGE", 1, f"{VMSTATE}: index into VM_EVENTS"),
    ("EV_THP_SPLIT_PAGE_FAILED", 2, f"{VMSTATE}: index into VM_EVENTS"),
    ("EV_THP_FAULT_ALLOC", 3, f"{VMSTATE}: index into VM_EVENTS"),
    ("EV_THP_DEFERRED_SPLIT_PAGE", 4, f"{VMSTATE}: index into VM_EVENTS"),
    ("COSTS", ("anon_vma_lock", "pmd_lock", "pte_lock", "lru_lock", "tlb_flush", "mmu_notifier",
               "pte_write", "pages_freed"), f"{VMSTATE}: cost counters"),
    ("C_ANON_VMA_LOCK", 0, f"{VMSTATE}: index into COSTS"),
    ("C_PMD_LOCK", 1, f"{VMSTATE}: index into COSTS"),
    ("C_PTE_LOCK", 2, f"{VMSTATE}: index into COSTS"),
    ("C_LRU_LOCK", 3, f"{VMSTATE}: index into COSTS"),
    ("C_TLB_FLUSH", 4, f"{VMSTATE}: index into COSTS"),
    ("C_MMU_NOTIFIER", 5, f"{VMSTATE}: index into COSTS"),
    ("C_PTE_WRITE", 6, f"{VMSTATE}: index into COSTS"),
    ("C_PAGES_FREED", 7, f"{VMSTATE}: index into COSTS"),
    ("BUG_NONE", 0, f"{VMSTATE}: BUG report kind"),
    ("BUG_RECHECK_MAPCOUNT", 1, f"{VMSTATE}: BUG report kind"),
    ("BUG_COMPOUND_MAPCOUNT", 2, f"{VMSTATE}: BUG report kind"),
    ("BUG_TAIL_COUNT", 3, f"{VMSTATE}: BUG report kind"),
]

# /proc/vmstat names of v4.5 (mm/vmstat.c vmstat_text under CONFIG_TRANSPARENT_HUGEPAGE), in its
# order: the source of VM_EVENTS' names.
VMSTAT_TEXT_THP_V4_5 = ("thp_fault_alloc", "thp_fault_fallback", "thp_collapse_alloc",
                        "thp_collapse_alloc_failed", "thp_split_page", "thp_split_page_failed",
                        "thp_deferred_split_page", "thp_split_pmd", "thp_zero_page_alloc",
                        "thp_zero_page_alloc_failed")


def _module_constants():
    return {k: v for k, v in vars(constants).items()
            if not k.startswith("__") and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


@pytest.mark.parametrize(("name", "value", "source"), TABLE, ids=[row[0] for row in TABLE])
def test_constant_has_its_literal_value(name, value, source):
    assert hasattr(constants, name), f"{name} ({source}) is gone from kernels/constants.py"
    got = getattr(constants, name)
    assert type(got) is type(value) and got == value, f"{name} = {got!r}, expected {value!r} ({source})"


def test_every_constant_has_a_row():
    names = [row[0] for row in TABLE]
    assert len(names) == len(set(names))
    missing = sorted(set(_module_constants()) - set(names))
    assert not missing, f"constants without a literal-value row in tests/test_constants.py: {missing}"


def test_pg_bits_are_positions_in_the_v4_0_x86_64_enum():
    for name, value, _ in TABLE:
        if name.startswith("PG_") and name not in ("PG_NAMES", "PG_double_map", "PG_anon_exclusive"):
            assert PAGEFLAGS_V4_0_X86_64.index(name) == value, name
    assert constants.PG_NAMES == {PAGEFLAGS_V4_0_X86_64.index("PG_" + n): n
                                  for n in constants.PG_NAMES.values()}
    assert PAGEFLAGS_V4_0_X86_64.index("PG_compound_lock") < 32  # page->flags fits vmstate's uint32


def test_derived_values_agree_with_the_kernel_formulas():
    c = constants
    assert c.HPAGE_PMD_MASK & (2**64 - 1) == 0xFFFFFFFFFFE00000  # ~(HPAGE_PMD_SIZE - 1), unsigned long
    assert c.ANON_FAULT_FLAGS == sum(1 << b for b in (3, 5, 6, 19))
    assert c.TAIL_COPY_FLAGS == sum(1 << b for b in (2, 19, 21, 3, 6, 0, 20))
    assert c.VM_ANON_DEFAULT == 0x1 | 0x2 | 0x10 | 0x20 | 0x40 | 0x00100000
    assert set(c.VM_EVENTS[:6]) <= set(VMSTAT_TEXT_THP_V4_5)
    assert [c.VM_EVENTS[i] for i in (c.EV_THP_SPLIT_PMD, c.EV_THP_SPLIT_PAGE, c.EV_THP_SPLIT_PAGE_FAILED,
                                     c.EV_THP_FAULT_ALLOC, c.EV_THP_DEFERRED_SPLIT_PAGE)] == \
        ["thp_split_pmd", "thp_split_page", "thp_split_page_failed", "thp_fault_alloc",
         "thp_deferred_split_page"]
