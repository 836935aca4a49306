"""Fixed corner programs: the shapes random programs rarely build, run on the engine and the
reference model in every variant and compared after every step (whole state, pins, split results,
bad input alike).

Each program names what it covers: a row of ``../shared/reference/MODEL.md``'s table, an open point
of ``docs/semantics.md``, or a shape an earlier bug needed (whole-slot dontneed in one mapper then a
split from another, VMA edges at subpages 0, 1 and 511, small pages refilled into a THP's PTE table,
pins across munmap and exit).

``python tests/corners.py [--fuzz N] [--no-corners]`` runs them all (and ``N`` random differential
programs per variant; ``--no-corners``: only those) and exits 1 at the first divergence: the mutation check (``tests/mutation.py``) runs it
against each mutant of the kernels and the operations. ``tests/test_corners.py`` runs them in the
suite.
"""
import sys

from vmstate import BadInput, MemoryState, from_population
from vmstate.engine.compare import diff_dumps
from vmstate.engine.population import parse_population, population_program
from vmstate.kernels.constants import PG_hwpoison
from vmstate.kernels.constants import VARIANTS as _VARIANTS
from vmstate.split import Race

B = 0x7F0000000000
M2 = 2 << 20
P = 4096
VARIANTS = _VARIANTS  # every variant: v5, v4.5, 6.18

# name -> (what it covers, [(op, *args)])
PROGRAMS = {
    # ---- MODEL.md, row by row ----
    "thp_fault": ("MODEL.md: THP fault", [("mmap", "a", B, M2, True)]),
    "fork_pmd": ("MODEL.md: fork of a PMD mapping", [("mmap", "a", B, M2, True), ("fork", "a", "b")]),
    "fork_pte": ("MODEL.md: fork of a PTE mapping",
                 [("mmap", "a", B, M2, True), ("split_pmd", "a", B), ("fork", "a", "b")]),
    "split_pmd_not_last": ("MODEL.md: split_huge_pmd, not the last PMD",
                           [("mmap", "a", B, M2, True), ("fork", "a", "b"), ("split_pmd", "a", B)]),
    "split_pmd_last": ("MODEL.md: split_huge_pmd, the last PMD",
                       [("mmap", "a", B, M2, True), ("fork", "a", "b"), ("split_pmd", "a", B),
                        ("split_pmd", "b", B + 511 * P)]),
    "zap_pmd": ("MODEL.md: zap a PMD (munmap, exit), the last one frees",
                [("mmap", "a", B, 2 * M2, True), ("fork", "a", "b"), ("munmap", "a", B, M2),
                 ("exit", "b"), ("munmap", "a", B + M2, M2)]),
    "zap_pte": ("MODEL.md: zap one PTE, reaching -1 queues the THP",
                [("mmap", "a", B, M2, True), ("split_pmd", "a", B),
                 ("madvise_dontneed", "a", B + 7 * P, P), ("munmap", "a", B + 511 * P, P),
                 ("split", "a", B, M2, None)]),
    "gup_pin": ("MODEL.md: GUP pin and unpin; the pinned THP's split fails at the precheck",
                [("mmap", "a", B, 2 * M2, True), ("pin", "a", B + M2 + 5 * P, P),
                 ("split", "a", B, 2 * M2, None), ("unpin", "a", B + M2 + 5 * P, P),
                 ("split", "a", B, 2 * M2, None)]),
    "pin_twice": ("pins as counts: two pins of one range, one unpin, then the split still fails",
                  [("mmap", "a", B, M2, True), ("pin", "a", B, 3 * P), ("pin", "a", B, 3 * P),
                   ("unpin", "a", B, 3 * P), ("split", "a", B, M2, None),
                   ("unpin", "a", B, 3 * P), ("split", "a", B, M2, None)]),
    # ---- docs/semantics.md, open points ----
    "freeze_pmd_lock_none_pmd": ("semantics: PMD lock in freeze also for a none PMD",
                                 [("mmap", "a", B, M2, True), ("fork", "a", "b"),
                                  ("madvise_dontneed", "a", B, M2), ("fork", "a", "c"),
                                  ("split", "b", B, M2, None)]),
    "child_pte_tables": ("semantics: a child's (empty) PTE table wherever the parent has one",
                         [("mmap", "a", B, M2, True), ("split_pmd", "a", B), ("fork", "a", "b"),
                          ("madvise_dontneed", "a", B, M2), ("fork", "a", "c"),
                          ("split", "b", B, M2, None)]),
    "freeze_two_vmas_one_slot": ("semantics: freeze scans all 512 PTEs per VMA (mprotect of half)",
                                 [("mmap", "a", B, M2, True), ("mprotect", "a", B, 256 * P, "r"),
                                  ("split", "a", B, M2, None)]),
    "unfreeze_gone_mapper": ("semantics: unfreeze visits a VMA whose process no longer maps it",
                             [("mmap", "a", B, M2, True), ("fork", "a", "b"), ("split_pmd", "b", B),
                              ("madvise_dontneed", "b", B, 300 * P), ("split", "a", B, M2, None)]),
    "munmap_straddling": ("semantics: munmap splits at addr then at end, each straddling PMD",
                          [("mmap", "a", B, 4 * M2, True), ("munmap", "a", B + M2 // 2, 2 * M2),
                           ("split", "a", B, 4 * M2, None)]),
    "mprotect_back": ("semantics: mprotect flags r then rw; entries stay write-protected",
                      [("mmap", "a", B, 2 * M2, True), ("mprotect", "a", B + P, M2, "r"),
                       ("mprotect", "a", B, 2 * M2, "rw"), ("split", "a", B, 2 * M2, None)]),
    "fork_read_only": ("semantics: fork of a read-only VMA (is_cow_mapping)",
                       [("mmap", "a", B, M2, True), ("mprotect", "a", B, M2, "r"), ("fork", "a", "b"),
                        ("split", "b", B, M2, None)]),
    "queued_and_freed": ("semantics: a THP queued and freed in one op counts once",
                         [("mmap", "a", B, M2, True), ("split_pmd", "a", B), ("munmap", "a", B, M2)]),
    "split_partial_range": ("semantics: split lists a huge PMD the range covers in part",
                            [("mmap", "a", B, 3 * M2, True), ("split", "a", B + M2 + 100 * P, 50 * P, None)]),
    "bad_input_order": ("semantics: bad input checked mm, addr, len, prot, then coverage",
                        [("mmap", "a", B, M2, True), ("munmap", "zz", B + 1, 0),
                         ("mprotect", "a", B + 1, P, "x"), ("mprotect", "a", B, 0, "x"),
                         ("mprotect", "a", B, P, "x"), ("pin", "a", B + M2, P), ("unpin", "a", B, P),
                         ("split", "a", B + 2 * M2, M2, None), ("fork", "a", "a")]),
    # ---- shapes an earlier bug needed ----
    "dontneed_whole_then_split_other": (
        "whole-slot dontneed in one mapper, then a split from another",
        [("mmap", "a", B, 2 * M2, True), ("fork", "a", "b"), ("madvise_dontneed", "a", B, M2),
         ("split", "b", B, 2 * M2, None)]),
    "dontneed_whole_pte_mapped_then_split_other": (
        "whole-slot dontneed of a PTE-mapped THP in one mapper, then a split from another",
        [("mmap", "a", B, M2, True), ("fork", "a", "b"), ("split_pmd", "a", B),
         ("madvise_dontneed", "a", B, M2), ("split", "b", B, M2, None)]),
    "vma_edges_0_1_511": ("VMAs ending at subpages 0, 1 and 511",
                          [("mmap", "a", B, 3 * M2, True), ("mprotect", "a", B, P, "r"),
                           ("mprotect", "a", B + M2 + 511 * P, P, "r"),
                           ("munmap", "a", B + 2 * M2, P), ("split", "a", B, 3 * M2, None)]),
    "dontneed_edges": ("madvise_dontneed of 511 subpages from 0, and of subpage 511 alone",
                       [("mmap", "a", B, 2 * M2, True), ("madvise_dontneed", "a", B, 511 * P),
                        ("madvise_dontneed", "a", B + M2 + 511 * P, P),
                        ("madvise_dontneed", "a", B + M2, P), ("split", "a", B, 2 * M2, None)]),
    "dontneed_edges_shared": ("madvise_dontneed 1..511 subpages of a fork-shared THP",
                              [("mmap", "a", B, M2, True), ("fork", "a", "b"),
                               ("madvise_dontneed", "b", B + P, 511 * P), ("split", "a", B, M2, None)]),
    "small_pages_refill_thp_table": ("small pages refilled into a THP's PTE table",
                                     [("mmap", "a", B, M2, True), ("munmap", "a", B + 256 * P, 256 * P),
                                      ("mmap", "a", B + 256 * P, 256 * P, False), ("fork", "a", "b"),
                                      ("split", "a", B, M2, None), ("munmap", "a", B, M2),
                                      ("exit", "b")]),
    "pins_across_munmap_and_exit": ("pins held across munmap and exit",
                                    [("mmap", "a", B, 2 * M2, True), ("fork", "a", "b"),
                                     ("pin", "b", B + 3 * P, M2), ("munmap", "b", B, 2 * M2),
                                     ("split", "a", B, 2 * M2, None), ("pin", "a", B + M2, P),
                                     ("exit", "a"), ("unpin", "b", B + 3 * P, M2)]),
    "pin_over_a_hole": ("pin of a range with a zapped PTE in it is refused; around it, pinned",
                        [("mmap", "a", B, 2 * M2, True), ("split_pmd", "a", B + M2),
                         ("madvise_dontneed", "a", B + M2 + 9 * P, P), ("pin", "a", B + M2 // 2, M2),
                         ("pin", "a", B + M2 + 10 * P, 5 * P), ("split", "a", B, 2 * M2, None)]),
    "pin_remapped_range": ("two pins of one range holding different pages (munmap and mmap between)",
                           [("mmap", "a", B, M2, True), ("pin", "a", B, 2 * P), ("munmap", "a", B, M2),
                            ("mmap", "a", B, M2, True), ("pin", "a", B, 2 * P), ("unpin", "a", B, 2 * P),
                            ("split", "a", B, M2, None), ("unpin", "a", B, 2 * P)]),
    "race_pinned_unpin_after_split": (
        "a racing pin on a THP whose split fails at the precheck (the race never lands)",
        [("mmap", "a", B, 2 * M2, True), ("pin", "a", B, P),
         ("split", "a", B, 2 * M2, Race(pin="after_precheck", unpin="after_split"))]),
    "race_after_freeze_never": (
        "a racing pin after the freeze that stays: the recheck fails, the pin is held",
        [("mmap", "a", B, 2 * M2, True), ("fork", "a", "b"),
         ("split", "a", B, 2 * M2, Race(pin="after_freeze", unpin="never")),
         ("unpin", "a", B, P), ("split", "b", B, 2 * M2, None)]),
    "hwpoison_tail_kept": ("PG_hwpoison on a tail survives the split and the free of the subpage",
                           [("mmap", "a", B, M2, True), ("hwpoison", 512 + 7), ("hwpoison", 512 + 1),
                            ("madvise_dontneed", "a", B + 7 * P, P), ("split", "a", B, M2, None),
                            ("munmap", "a", B, M2)]),
    "bug_tail_count": ("BUG_ON(tail _count != 0) in __split_huge_page(): a tail referenced (corrupt "
                       "state, planted) stops the split, reported with the pfn and the values",
                       [("mmap", "a", B, 2 * M2, True), ("poke", 512 + 3, "_count", 1),
                        ("expect_bug", "split", "a", B, 2 * M2, None)]),
    "thp_false_partial": ("mmap thp=false and a THP mmap not 2 MiB aligned",
                          [("mmap", "a", B + 5 * P, M2, False), ("mmap", "b", B + 100 * P, 2 * M2, True),
                           ("fork", "b", "c"), ("split", "c", B, 3 * M2, None)]),
    "many_vmas_rmap": ("the rmap query over an anon_vma of many VMAs (one per munmap piece, forked)",
                       [("mmap", "a", B, 8 * M2, True),
                        *[("munmap", "a", B + j * M2 + 100 * P, P) for j in range(8)],
                        ("fork", "a", "b"), ("split_pmd", "b", B + 3 * M2),
                        ("split", "a", B + 2 * M2, 6 * M2, None), ("split", "b", B, 8 * M2, None)]),
    # ---- 6.18 (bad input in v5 and v4.5 where they use MADV_COLD/MADV_PAGEOUT) ----
    "cold_shared_then_exclusive": ("6.18: MADV_COLD passes over a fork-shared THP, splits it once "
                                   "the child exited (the MM slots' shared bit cleared)",
                                   [("mmap", "a", B, 2 * M2, True), ("fork", "a", "b"),
                                    ("madvise_cold", "a", B + P, 3 * P), ("exit", "b"),
                                    ("madvise_cold", "a", B + P, 3 * P)]),
    "cold_after_parent_exit": ("6.18: the parent (slot 0) exits, the child in slot 1 maps it alone",
                               [("mmap", "a", B, M2, True), ("fork", "a", "b"), ("exit", "a"),
                                ("madvise_cold", "b", B + P, 3 * P)]),
    "cold_slot_0_again": ("6.18: a fork child takes the freed slot 0 while the parent maps the THP: "
                          "maybe shared again, MADV_COLD passes over it",
                          [("mmap", "a", B, M2, True), ("fork", "a", "b"), ("exit", "a"),
                           ("fork", "b", "c"), ("madvise_cold", "c", B + P, 3 * P),
                           ("exit", "b"), ("madvise_cold", "c", B + P, 3 * P)]),
    "cold_pinned_partial": ("6.18: MADV_COLD of part of a pinned THP: split_folio() -EAGAIN, counted",
                            [("mmap", "a", B, M2, True), ("pin", "a", B, P),
                             ("madvise_cold", "a", B + P, P), ("unpin", "a", B, P),
                             ("madvise_cold", "a", B + P, P)]),
    "debugfs_skips_pinned": ("6.18: debugfs passes over a pinned THP uncounted (-EAGAIN reported)",
                             [("mmap", "a", B, 2 * M2, True), ("pin", "a", B, P),
                              ("split", "a", B, 2 * M2, None)]),
    "zero_fill_shrink_pageout": ("6.18: all-zero THPs: the shrinker leaves them (max_ptes_none 511), "
                                 "MADV_PAGEOUT splits them onto the zero page",
                                 [("mmap", "a", B, M2, True, "zero"), ("mmap", "a", B + M2, M2, True),
                                  ("shrink",), ("madvise_pageout", "a", B, 2 * M2)]),
    "cold_old_then_split": ("6.18: MADV_COLD makes the PMD old; a later split's PTEs stay old",
                            [("mmap", "a", B, M2, True), ("madvise_cold", "a", B, M2),
                             ("madvise_cold", "a", B, P)]),
    "cold_batch_511": ("6.18: a PTE batch of 511 of 512 pages is split, the full one is not",
                       [("mmap", "a", B, 2 * M2, True), ("split_pmd", "a", B),
                        ("split_pmd", "a", B + M2), ("madvise_dontneed", "a", B + 511 * P, P),
                        ("madvise_cold", "a", B, 2 * M2)]),
    "pageout_pinned_whole": ("6.18: reclaim keeps a pinned THP covered whole (can_split_folio())",
                             [("mmap", "a", B, M2, True), ("pin", "a", B, P),
                              ("madvise_pageout", "a", B, M2), ("unpin", "a", B, P),
                              ("madvise_pageout", "a", B, M2)]),
    "mprotect_rw_exclusive": ("6.18: mprotect back to rw makes an exclusive THP's PMD writable",
                              [("mmap", "a", B, M2, True), ("mprotect", "a", B, M2, "r"),
                               ("mprotect", "a", B, M2, "rw"), ("fork", "a", "b"),
                               ("mprotect", "a", B, M2, "r"), ("mprotect", "a", B, M2, "rw")]),
    "shrink_pinned_partial": ("6.18: a pinned partially mapped THP stays queued through shrinks",
                              [("mmap", "a", B, M2, True), ("pin", "a", B, P),
                               ("munmap", "a", B + P, P), ("shrink",), ("shrink",),
                               ("unpin", "a", B, P), ("shrink",)]),
    # ---- write faults and mremap (issue 14): tools/testing/selftests/mm/cow.c's and
    # split_huge_page_test.c's shapes, and the edges of each variant's rules ----
    "cow_pmd_fork": ("COW of a fork-shared PMD-mapped THP: one page, the same page in the child, "
                     "then everything in both",
                     [("mmap", "a", B, M2, True), ("fork", "a", "b"), ("write", "a", B + 5 * P, P),
                      ("write", "b", B + 5 * P, P), ("write", "b", B, M2), ("write", "a", B, M2)]),
    "cow_reuse_after_exit": ("a write after the child exited: the PMD is reused",
                             [("mmap", "a", B, M2, True), ("fork", "a", "b"), ("exit", "b"),
                              ("write", "a", B + 3 * P, 2 * P)]),
    "cow_pte_mapped": ("COW of a PTE-mapped THP, then reuse once the child is gone",
                       [("mmap", "a", B, M2, True), ("fork", "a", "b"), ("split_pmd", "a", B),
                        ("write", "a", B + 7 * P, P), ("exit", "b"), ("write", "a", B + 9 * P, P),
                        ("write", "a", B, M2)]),
    "cow_single_pte": ("COW of a THP mapped by one PTE: the large folio is freed (6.18)",
                       [("mmap", "a", B, M2, True), ("fork", "a", "b"),
                        ("madvise_dontneed", "a", B, 100 * P),
                        ("madvise_dontneed", "a", B + 101 * P, M2 - 101 * P), ("exit", "b"),
                        ("write", "a", B + 100 * P, P)]),
    "cow_pinned": ("a pinned THP after fork: no reuse while the pin holds",
                   [("mmap", "a", B, M2, True), ("pin", "a", B, P), ("fork", "a", "b"),
                    ("exit", "b"), ("write", "a", B + P, P), ("unpin", "a", B, P),
                    ("write", "a", B + 2 * P, P), ("split", "a", B, M2, None)]),
    "cow_zero_page": ("writes over a split zero-filled THP (6.18 maps the zero page there)",
                      [("mmap", "a", B, M2, True, "zero"), ("split", "a", B, M2, None),
                       ("write", "a", B + 4 * P, 3 * P), ("fork", "a", "b"),
                       ("write", "b", B + 4 * P, 2 * P)]),
    "write_faults_anew": ("writes where nothing is mapped: a THP where the slot is none (after a "
                          "whole DONTNEED; in 6.18 also of a PTE table, PT_RECLAIM), else small",
                          [("mmap", "a", B, 2 * M2, True), ("madvise_dontneed", "a", B, M2),
                           ("write", "a", B + 6 * P, P), ("madvise_dontneed", "a", B + M2, P),
                           ("write", "a", B + M2, 2 * P), ("madvise_dontneed", "a", B + M2, M2),
                           ("write", "a", B + M2 + 511 * P, P), ("mmap", "a", B + 4 * M2, M2, False),
                           ("madvise_dontneed", "a", B + 4 * M2, M2),
                           ("write", "a", B + 4 * M2, 3 * P)]),
    "write_read_only": ("a write to a read-only VMA is bad input; back to rw it faults or not",
                        [("mmap", "a", B, M2, True), ("mprotect", "a", B + M2 // 2, P, "r"),
                         ("write", "a", B, M2), ("mprotect", "a", B + M2 // 2, P, "rw"),
                         ("write", "a", B, M2)]),
    "mremap_pte_mapped_thp": ("split_huge_page_test.c split_pte_mapped_thp: one page of each of "
                              "four THPs moved, then splits through the moved pages",
                              [("mmap", "a", B, 4 * M2, True)]
                              + [("mremap", "a", B + i * M2 + i * P, P, B + 8 * M2 + (2 * i + 1) * P)
                                 for i in range(4)]
                              + [("split", "a", B + 8 * M2, M2, None),
                                 ("split", "a", B, 4 * M2, None)]),
    "mremap_pmd_whole": ("an aligned 2 MiB moves its huge PMD; an unaligned one is split first",
                         [("mmap", "a", B, 2 * M2, True), ("fork", "a", "b"),
                          ("mremap", "a", B, M2, B + 6 * M2),
                          ("mremap", "a", B + M2, M2, B + 9 * M2 + 3 * P),
                          ("split", "a", B + 6 * M2, 4 * M2, None), ("write", "b", B, P),
                          ("split", "b", B, 2 * M2, None)]),
    "mremap_half_cow": ("half a THP moved, then fork, COW in the moved half, splits",
                        [("mmap", "a", B, M2, True), ("mremap", "a", B + 256 * P, 256 * P,
                                                            B + 3 * M2 + 17 * P),
                         ("fork", "a", "b"), ("write", "b", B + 3 * M2 + 20 * P, 2 * P),
                         ("split", "a", B, 4 * M2, None), ("split", "b", B, 4 * M2, None)]),
    "mremap_boundary_start": ("the moved part starts on a PMD boundary: the walk's first table "
                              "is the head's next one (4.5 relocks there)",
                              [("mmap", "a", B, M2, True),
                               ("mremap", "a", B + 256 * P, 256 * P, B + 4 * M2),
                               ("pin", "a", B, P), ("split", "a", B, M2, None),
                               ("unpin", "a", B, P), ("split", "a", B, M2, None)]),
    "mremap_back": ("a moved range moved back where it was: 6.18 merges the VMAs again",
                    [("mmap", "a", B, M2, True), ("mremap", "a", B + 5 * P, 5 * P, B + 2 * M2),
                     ("mremap", "a", B + 2 * M2, 5 * P, B + 5 * P), ("split", "a", B, M2, None)]),
    "mremap_table_whole": ("an aligned 2 MiB of PTEs: 6.18 moves the table itself (move_normal_pmd()), "
                           "v5 and 4.5 move its PTEs",
                           [("mmap", "a", B, 2 * M2, True), ("split_pmd", "a", B),
                            ("mremap", "a", B, 2 * M2, B + 8 * M2), ("write", "a", B + 8 * M2, P),
                            ("split", "a", B + 8 * M2, 2 * M2, None)]),
    "write_partial_slot_none": ("a write where the PMD is none but the VMA covers half the slot: a "
                                "small page, no THP (thp_vma_suitable_order())",
                                [("mmap", "a", B, M2, True), ("madvise_dontneed", "a", B, M2),
                                 ("mremap", "a", B, M2 // 2, B + 4 * M2),
                                 ("write", "a", B + 4 * M2 + P, P), ("write", "a", B + M2 // 2, P)]),
    "write_many_runs": ("a write whose copies alternate with reuses: one block per run, more blocks "
                        "than the engine's first pool holds (it grows and resumes)",
                        [("mmap", "a", B, M2, False), ("fork", "a", "b")]
                        + [("write", "a", B + i * P, P) for i in range(1, 80, 2)]
                        + [("write", "b", B, M2), ("write", "a", B, M2)]),
    "mremap_bad": ("mremap onto a mapping, across VMAs, overlapping itself: bad input",
                   [("mmap", "a", B, M2, True), ("mmap", "a", B + 2 * M2, M2, True),
                    ("mremap", "a", B, P, B + 2 * M2), ("mremap", "a", B, 3 * M2, B + 8 * M2),
                    ("mremap", "a", B, 2 * P, B + P)]),
}


# [population] tables: the generated state against the reference model running its program
POPULATIONS = {
    "pmd": {"thps": 3},
    "shared3": {"thps": 4, "shared": 0.5, "mappers": 3},
    "pte_mapped": {"thps": 4, "pte_mapped": 0.5, "shared": 0.5},
    "partial_shared": {"thps": 4, "shared": 1.0, "partially_unmapped": 0.5, "unmapped_subpages": 511},
    "pinned": {"thps": 4, "pinned": 0.5, "pins": 2, "partially_unmapped": 0.25},
}


def _hwpoison(models, pfn):
    """Set PG_hwpoison on a frame in both models (no operation does: memory_failure() is not modelled)."""
    engine, ref = models
    engine.blocks.a["flags"][pfn // 512, pfn % 512] |= 1 << PG_hwpoison
    ref.pages[pfn].flags |= 1 << PG_hwpoison


def _poke(models, pfn, field, value):
    """Plant a corrupt value in both models (a test of the BUG() paths)."""
    engine, ref = models
    engine.blocks.a[field][pfn // 512, pfn % 512] = value
    setattr(ref.pages[pfn], field, value)


def _expect_bug(models, op, args):
    """The engine reports CorruptState naming the THP; the reference trips its VM_BUG_ON (an
    assert) or reports CorruptState too."""
    from vmstate import CorruptState
    engine, ref = models
    try:
        getattr(engine, op)(*args)
        return f"expected CorruptState from the engine's {op}{args}"
    except CorruptState as e:
        got = e
    try:
        getattr(ref, op)(*args)
        return f"expected the reference's {op}{args} to hit its BUG()"
    except (AssertionError, CorruptState):
        pass
    return None if got.pfn is not None else f"CorruptState without a pfn: {got}"


def _step(models, op, args):
    if op == "hwpoison":
        _hwpoison(models, *args)
        return None
    if op == "poke":
        _poke(models, *args)
        return None
    if op == "expect_bug":
        return _expect_bug(models, args[0], args[1:])
    errors, results = [], []
    for m in models:
        try:
            results.append(getattr(m, op)(*args))
            errors.append(None)
        except BadInput as e:
            results.append(None)
            errors.append(e)
    if (errors[0] is None) != (errors[1] is None) or (
            errors[0] is not None and errors[0].field != errors[1].field):
        return f"{op}{args}: engine {errors[0]!r}, reference {errors[1]!r}"
    rows = []
    for r in results:
        if r is None:
            rows.append([])
        elif isinstance(r, list):
            rows.append([tuple(x) for x in r])
        else:
            rows.append(list(zip(r.heads.tolist(), r.ret.tolist(), r.reason.tolist())))
    if rows[0] != rows[1]:
        return f"{op}{args}: split results {rows[0]} vs {rows[1]}"
    return None


def _compare(engine, ref, where):
    a, b = engine.dump(), ref.dump()
    if a != b:
        return f"{where}:\n  " + "\n  ".join(diff_dumps(a, b))
    pins_ref = {k: [[int(x) for x in p] for p in v] for k, v in ref.pins.items() if v}
    if engine.held_pins() != pins_ref:
        return f"{where}: pins {engine.held_pins()} vs {pins_ref}"
    engine.validate()
    return None


def run_program(name, variant):
    """Run one program on both models; the first divergence as a message, or None."""
    from reference import ReferenceState
    engine, ref = MemoryState(variant), ReferenceState(variant)
    for op, *args in PROGRAMS[name][1]:
        bad = _step((engine, ref), op, tuple(args))
        if not bad and op not in ("poke", "expect_bug"):  # corrupt state does not validate
            bad = _compare(engine, ref, f"{name} ({variant}) after {op}{tuple(args)}")
        if bad:
            return f"{name} ({variant}): {bad}" if not bad.startswith(name) else bad
    return None


def run_population(name, variant, seed=7):
    """A generated ``[population]`` against the reference running its program, then a split of
    everything; the first divergence as a message, or None."""
    from reference import ReferenceState
    table = POPULATIONS[name]
    engine, ref = from_population(table, seed=seed, variant=variant), ReferenceState(variant)
    for op, *args in population_program(parse_population(table), seed):
        getattr(ref, op)(*args)
    where = f"population {name} ({variant})"
    return _compare(engine, ref, where) or _step(
        (engine, ref), "split", ("parent", B, table["thps"] * M2, None)) or _compare(
        engine, ref, where + " after the split")


def main(argv):
    fuzz = int(argv[argv.index("--fuzz") + 1]) if "--fuzz" in argv else 0
    for variant in (() if "--no-corners" in argv else VARIANTS):
        for name in PROGRAMS:
            bad = run_program(name, variant)
            if bad:
                print(bad)
                return 1
        for name in POPULATIONS:
            bad = run_population(name, variant)
            if bad:
                print(bad)
                return 1
    if fuzz:
        from hypothesis.stateful import run_state_machine_as_test

        from programs import machine_settings
        from test_differential import Differential, DifferentialV45, DifferentialV618
        for machine in (Differential, DifferentialV45, DifferentialV618):
            try:
                run_state_machine_as_test(machine, settings=machine_settings(fuzz, 25))
            except Exception as e:  # noqa: BLE001 - any divergence kills the mutant
                print(f"{machine.__name__}: {type(e).__name__}: {str(e)[:500]}")
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
