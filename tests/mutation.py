"""The mutation check: single-point mutants of the kernels and the operations, each run against the
oracle (``tests/corners.py``: the corner programs, then random differential programs), which must
kill every one that is not equivalent.

A mutant is ``(id, file, original, mutated)``: ``original`` must occur exactly once in ``file``.
Each runs in a copy of the package (``kernels/`` copied into ``vmstate/kernels``) with
``NUMBA_DISABLE_JIT=1``, so no kernel is compiled and no cache is shared. ``EQUIVALENT`` lists the
mutants that cannot change any reachable state, with the reason.

``python tests/mutation.py [--jobs J] [--fuzz N] [--no-corners] [ID ...]`` prints one line per mutant and the kill
rate, and exits 1 if a non-equivalent mutant survived. ``tests/test_mutation.py`` runs it in CI.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MUTANTS = [
    # ---- mapcount ----
    ("mapcount.total_offset", "kernels/mapcount.py", "        ret -= HPAGE_PMD_NR\n",
     "        ret -= HPAGE_PMD_NR - 1\n"),
    ("mapcount.page_mapcount", "kernels/mapcount.py",
     "return _mapcount[i] + 1 + compound_mapcount_raw + 1 - offset",
     "return _mapcount[i] + compound_mapcount_raw + 1 - offset"),
    ("mapcount.v5_offset", "kernels/v5.py", 'return 1 if page["compound_mapcount"] >= 0 else 0',
     'return 1 if page["compound_mapcount"] > 0 else 0'),
    ("mapcount.v45_offset", "kernels/v4_5.py", 'return 1 if page["flags"][1] & _DOUBLE_MAP else 0',
     "return 0"),
    ("mapcount.v45_offset_for", "kernels/v4_5.py", "    if pmd_maps > 0 and pte_maps > 0:",
     "    if pmd_maps > 0:"),
    # ---- refcount ----
    ("refcount.get_page", "kernels/refcount.py",
     '    page["_count"][compound_head_index(page, i)] += 1', '    page["_count"][i] += 1'),
    ("refcount.compound_head", "kernels/refcount.py", "    if page[\"flags\"][i] & _TAIL:\n        return 0",
     "    if page[\"flags\"][i] & _TAIL:\n        return i"),
    ("refcount.free_leaves_queue", "kernels/refcount.py", '    page["deferred"] = 0\n',
     '    page["deferred"] = page["deferred"]\n'),
    ("refcount.freed_count", "kernels/refcount.py", "        return HPAGE_PMD_NR\n",
     "        return 1\n"),
    ("refcount.put_run", "kernels/refcount.py", '        blocks[b]["_count"][0] -= m - k - 1\n',
     '        blocks[b]["_count"][0] -= m - k - 2 if m > k + 1 else 0\n'),
    ("refcount.get_run", "kernels/refcount.py", '            page["_count"][0] += nr * (m - k)\n',
     '            page["_count"][0] += nr * (m - k - 1)\n'),
    ("refcount.rmap_pte_queue", "kernels/refcount.py",
     'if page["_mapcount"][i] == -1 and page["flags"][0] & _HEAD:',
     'if page["_mapcount"][i] == 0 and page["flags"][0] & _HEAD:'),
    ("refcount.deferred_once", "kernels/refcount.py", "    if not page[\"deferred\"]:\n        page[\"deferred\"] = 1",
     "    if True:\n        page[\"deferred\"] = 1"),
    ("refcount.drop_offset", "kernels/refcount.py", "        mc[i] -= 1\n        if mc[i] == -1:",
     "        mc[i] -= 1\n        if mc[i] == 0:"),
    ("refcount.get_pages", "kernels/refcount.py",
     'page["_count"][compound_head_index(page, pfns[k] % HPAGE_PMD_NR)] += nr',
     'page["_count"][pfns[k] % HPAGE_PMD_NR] += nr'),
    # ---- the PMD split ----
    ("pmd.tlb_flush", "kernels/pmd.py", "    costs[C_TLB_FLUSH] += 1\n    costs[C_PTE_WRITE] += HPAGE_PMD_NR",
     "    costs[C_TLB_FLUSH] += 2\n    costs[C_PTE_WRITE] += HPAGE_PMD_NR"),
    ("pmd.migration_write", "kernels/v5.py", "        return _PAGE_VMS_MIGRATION | write",
     "        return _PAGE_VMS_MIGRATION"),
    ("pmd.young", "kernels/v5.py", "return _PAGE_PRESENT | _PAGE_DIRTY | write | (entry & _PAGE_ACCESSED)",
     "return _PAGE_PRESENT | _PAGE_DIRTY | write"),
    ("pmd.v5_not_last", "kernels/v5.py",
     'if page["compound_mapcount"] >= 0:  # !atomic_add_negative',
     'if page["compound_mapcount"] > 0:  # !atomic_add_negative'),
    ("pmd.v5_count", "kernels/v5.py", '    page["_count"][0] += HPAGE_PMD_NR - 1\n',
     '    page["_count"][0] += HPAGE_PMD_NR\n'),
    ("pmd.v45_double_map", "kernels/v4_5.py", 'if page["compound_mapcount"] + 1 > 1 and not',
     'if page["compound_mapcount"] + 1 > 0 and not'),
    ("pmd.v45_dirty_page", "kernels/v4_5.py", "SPLIT_PMD_SETS_PAGE_DIRTY = True",
     "SPLIT_PMD_SETS_PAGE_DIRTY = False"),
    ("pmd.mmu_notifier", "kernels/pmd.py", "    costs[C_PMD_LOCK] += 1\n    costs[C_MMU_NOTIFIER] += 1\n",
     "    costs[C_PMD_LOCK] += 1\n"),
    # ---- freeze ----
    ("freeze.pmd_lock_none", "kernels/freeze.py", "    costs[C_PMD_LOCK] += 1\n    s = w[WALK_SHIFT]",
     "    costs[C_PMD_LOCK] += 1 if w[0] >= 0 else 0\n    s = w[WALK_SHIFT]"),
    ("freeze.write_bit", "kernels/v5.py", "(pte & (PTE_PFN_MASK | _PAGE_RW | _PAGE_SOFT_DIRTY))",
     "(pte & (PTE_PFN_MASK | _PAGE_SOFT_DIRTY))"),
    ("freeze.pte_lock", "kernels/freeze.py", "        costs[C_PTE_LOCK] += 1\n        if first and",
     "        if first and"),
    ("freeze.mmu_notifier", "kernels/freeze.py", "        costs[C_MMU_NOTIFIER] += 1\n        freeze_page_vma",
     "        freeze_page_vma"),
    ("freeze.v45_from_vm_start", "kernels/v4_5.py", "FREEZE_FROM_VM_START = True",
     "FREEZE_FROM_VM_START = False"),
    ("freeze.v45_put", "kernels/v4_5.py", '    page_remove_rmap_pte(page, i, events)\n    page["_count"][0] -= 1\n',
     '    page_remove_rmap_pte(page, i, events)\n'),
    # ---- unfreeze ----
    ("unfreeze.v5_vma_write", "kernels/v5.py", "        rw = _PAGE_RW if vma_write[v] else 0",
     "        rw = _PAGE_RW"),
    ("unfreeze.v5_no_table_notifier", "kernels/v5.py",
     "                mapped += page_mapcount(_mapcount, i, cmc, offset) != 0",
     "                mapped += 0"),
    ("unfreeze.v5_pte_lock", "kernels/v5.py", "            costs[C_PTE_LOCK] += mapped\n",
     "            costs[C_PTE_LOCK] += written\n"),
    ("unfreeze.v5_mapped_only", "kernels/v5.py",
     "                m = page_mapcount(_mapcount, i, cmc, offset) != 0\n",
     "                m = True\n"),
    ("unfreeze.v5_pfn_check", "kernels/v5.py",
     " & ((e & PTE_PFN_MASK) >> PTE_PFN_SHIFT == pfn0 + i)", ""),
    ("unfreeze.v45_dirty", "kernels/v4_5.py", '        if page["flags"][h] & (1 << PG_dirty):\n            new |= _PAGE_DIRTY',
     '        if False:\n            new |= _PAGE_DIRTY'),
    ("unfreeze.v45_get_page", "kernels/v4_5.py", '        page["_count"][h] += 1     # get_page(page)',
     '        page["_count"][0] += 1     # get_page(page)'),
    ("unfreeze.v45_notifier", "kernels/v4_5.py",
     "    for v in range(v0, v1):\n        costs[C_MMU_NOTIFIER] += 1\n        unfreeze_page_vma(",
     "    for v in range(v0, v1):\n        unfreeze_page_vma("),
    # ---- the tail split and split_huge_page_to_list ----
    ("tail.v5_dirty", "kernels/v5.py", "                   | (1 << PG_dirty) | (1 << PG_lru))",
     "                   | (1 << PG_lru))"),
    ("tail.v5_count", "kernels/v5.py", "    _count[tail] += mapcount + 1\n    # flags",
     "    _count[tail] += mapcount\n    # flags"),
    ("tail.v45_dirty", "kernels/v4_5.py", "| (head_flags & (TAIL_COPY_FLAGS | (1 << PG_dirty))) | (1 << PG_lru))",
     "| (head_flags & TAIL_COPY_FLAGS) | (1 << PG_lru))"),
    ("tail.leaves_queue", "kernels/split.py", "    reset_folio_fields(page)\n    return 0",
     "    d = page[\"deferred\"]\n    reset_folio_fields(page)\n    page[\"deferred\"] = d\n    return 0"),
    ("tail.freed", "kernels/split.py", "        freed += gone\n", "        freed += 0\n"),
    ("tail.hwpoison_kept", "kernels/split.py", "(_HWPOISON if gone else 0xFFFFFFFF)",
     "(0 if gone else 0xFFFFFFFF)"),
    ("tail.bug_check", "kernels/split.py", "        any_count |= _count[i]\n", "        any_count |= 0\n"),
    ("split.anon_vma_lock", "kernels/split.py", "    costs[C_ANON_VMA_LOCK] += 1\n",
     "    costs[C_ANON_VMA_LOCK] += 2\n"),
    ("split.v5_recheck", "kernels/v5.py", "    return mapcount == count - 1\n", "    return mapcount <= count - 1\n"),
    ("split.race_unpin", "kernels/split.py", "if race_unpin[k] == RACE_AFTER_SPLIT and _raced(why):",
     "if race_unpin[k] == RACE_AFTER_SPLIT:"),
    # ---- zap ----
    ("zap.whole_pmd", "kernels/memory.py", "            if lo[r] == 0 and hi[r] == HPAGE_PMD_NR:",
     "            if lo[r] == 0 and hi[r] >= HPAGE_PMD_NR - 1:"),
    ("zap.table_freed", "kernels/pmd.py", '    pmds[row]["pmd"] = 0\n    pmds[row]["pte_table"] = -1\n',
     '    pmds[row]["pmd"] = 0\n'),
    ("zap.v5_compound_last", "kernels/v5.py",
     '    page["compound_mapcount"] -= 1\n    if page["compound_mapcount"] >= 0:\n        return\n    drop',
     '    page["compound_mapcount"] -= 1\n    if page["compound_mapcount"] > 0:\n        return\n    drop'),
    ("zap.v45_queue_whole", "kernels/v4_5.py", "    if not flags[1] & _DOUBLE_MAP:\n        deferred_split_huge_page(page, events)\n        return",
     "    if not flags[1] & _DOUBLE_MAP:\n        return"),
    ("zap.pte_range_end", "kernels/memory.py", "    for i in range(lo, hi):  # tlb_flush_mmu()",
     "    for i in range(lo, hi - 1):  # tlb_flush_mmu()"),
    # ---- fork ----
    ("fork.child_old", "kernels/pmd.py", '    pmds[dst]["pmd"] = entry & _NOT_ACCESSED',
     '    pmds[dst]["pmd"] = entry'),
    ("fork.pte_wrprotect", "kernels/memory.py", "        e &= _NOT_RW\n        src[i] = e",
     "        src[i] = e"),
    ("fork.huge_get_page", "kernels/pmd.py", "    get_page(blocks, b, 0)\n    page_dup_anon_rmap_pmd(",
     "    page_dup_anon_rmap_pmd("),
    ("fork.dup_rmap", "kernels/memory.py", "        page_dup_anon_rmap_pte(blocks[b], j, mm_id)\n", ""),
    ("fork.child_table", "vmstate/engine/memory.py", "    state.table_rows(dst_rows[table])",
     "    state.table_rows(dst_rows[table & (lo == 0)])"),
    # ---- mprotect, VMAs, mmap ----
    ("mprotect.huge_pmd", "kernels/memory.py", 'pmds[row]["pmd"] = (entry | _PAGE_RW) if up else (entry & _NOT_RW)',
     'pmds[row]["pmd"] = (entry | _PAGE_RW) if up else entry'),
    ("mprotect.pte", "kernels/memory.py", "                if e & _PAGE_PRESENT:\n                    up = upgrade",
     "                if e & _PAGE_PRESENT and i:\n                    up = upgrade"),
    ("mprotect.same_flags", "vmstate/engine/mprotect.py", "        if vma.vm_flags & VM_WRITE == want:\n            continue",
     "        if vma.vm_flags & VM_WRITE == want and False:\n            continue"),
    ("vma.split_pgoff", "vmstate/engine/mmap.py", "vma.vm_pgoff + ((at - vma.vm_start) >> PAGE_SHIFT),",
     "vma.vm_pgoff,"),
    ("mmap.partial_thp", "vmstate/engine/memory.py", "huge = (lo == 0) & (hi == N) if thp",
     "huge = (hi == N) if thp"),
    ("fault.small_mapcount", "kernels/memory.py", '            page["_mapcount"][i] = 0\n',
     '            page["_mapcount"][i] = 1\n'),
    ("fault.entry_dirty", "kernels/pmd.py", "FAULT_ENTRY = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY",
     "FAULT_ENTRY = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED"),
    ("fault.v5_offset", "kernels/v5.py", "    for i in range(HPAGE_PMD_NR):\n        mc[i] = 0\n",
     "    for i in range(1, HPAGE_PMD_NR):\n        mc[i] = 0\n"),
    ("rmap.vma_lo", "vmstate/engine/huge_memory.py", "np.maximum(0, v.vm_pgoff - ii)", "np.maximum(1, v.vm_pgoff - ii)"),
    # ---- write faults (kernels/fault.py and each variant's reuse rules) ----
    ("wp.v2015_huge_pinned", "kernels/v2015.py", "            and page[\"_count\"][0] == 1)", ")"),
    ("wp.v2015_thp_subpage", "kernels/v2015.py",
     "    if page[\"flags\"][i] & ((1 << PG_head) | (1 << PG_tail)):\n        return False", ""),
    ("wp.v2015_copies_thp", "kernels/v2015.py", "HUGE_PMD_WP_COPIES_THP = True", "HUGE_PMD_WP_COPIES_THP = False"),
    ("wp.v618_single_pte", "kernels/v6_18.py", "            if (folio_mapcount(page) <= 1 or page[",
     "            if (folio_mapcount(page) < 1 or page["),
    ("wp.v618_shared", "kernels/v6_18.py", 'page["_mm_ids_shared"] != 0\n                    or folio_mapcount',
     'False\n                    or folio_mapcount'),
    ("wp.v618_huge_count", "kernels/v6_18.py", '    if page["_count"][0] != 1:\n        return False\n    page["flags"][0] |= _AE',
     '    if page["_count"][0] > 2:\n        return False\n    page["flags"][0] |= _AE'),
    ("wp.v618_small_count", "kernels/v6_18.py", '        elif page["_count"][i] != 1:', '        elif page["_count"][i] > 2:'),
    ("wp.v618_sets_exclusive", "kernels/v6_18.py", '        page["flags"][i] |= _AE\n    return True', "    return True"),
    ("wp.copy_content", "kernels/fault.py", '        new["data"][w] = old["data"][w]', '        new["data"][w] = 0'),
    ("wp.copy_rmap", "kernels/fault.py", "                        page_remove_rmap_ptes(old, j, j + 1, mm_id, events)\n", ""),
    ("wp.frame_run", "kernels/fault.py", "cursor[C_RUN_PAGE] == i - 1:", "cursor[C_RUN_PAGE] == i - 2:"),
    ("wp.mmu_sets_dirty", "kernels/fault.py", "_YOUNG_DIRTY = _PAGE_ACCESSED | _PAGE_DIRTY", "_YOUNG_DIRTY = _PAGE_ACCESSED"),
    ("wp.written_data", "kernels/fault.py", "set_page_data(blocks[pmd_block(entry)], i, hi[r], True)",
     "set_page_data(blocks[pmd_block(entry)], i, hi[r], False)"),
    ("wp.linear_index", "vmstate/engine/memory.py", "index = v.vm_pgoff + ((haddr - v.vm_start) >> PAGE_SHIFT)",
     "index = haddr >> PAGE_SHIFT"),
    ("wp.thp_where_allowed", "vmstate/engine/memory.py", "(haddr + HPAGE_PMD_SIZE <= v.vm_end)", "(haddr < v.vm_end)"),
    # ---- mremap and the rmap walk after it ----
    ("mremap.pgoff", "vmstate/engine/mremap.py", "pgoff = vma.vm_pgoff + ((addr - vma.vm_start) >> PAGE_SHIFT)",
     "pgoff = addr >> PAGE_SHIFT"),
    ("mremap.normal_pmd", "vmstate/engine/mremap.py", "(huge | state.k.MOVE_NORMAL_PMD)", "huge"),
    ("mremap.new_none", "vmstate/engine/mremap.py", "full = (size == HPAGE_PMD_SIZE) & new_none",
     "full = (size == HPAGE_PMD_SIZE) & new_none & (old & (HPAGE_PMD_SIZE - 1) == 0) & False"),
    ("mremap.flush", "kernels/mremap.py", "    if moved:\n        costs[C_TLB_FLUSH] += 1", "    costs[C_TLB_FLUSH] += 1"),
    ("mremap.merge", "vmstate/engine/mremap.py", "    if state.k.VMA_MERGE:\n        merge_vmas", "    if False:\n        merge_vmas"),
    ("walk.shift", "vmstate/engine/huge_memory.py", "walk[:, WALK_SHIFT] = (address >> PAGE_SHIFT) & (N - 1)",
     "walk[:, WALK_SHIFT] = 0"),
    ("walk.next_row", "vmstate/engine/huge_memory.py", "lookup_pmds(haddr[cross] + HPAGE_PMD_SIZE)",
     "lookup_pmds(haddr[cross])"),
    ("walk.v45_at_address", "kernels/v4_5.py", "FREEZE_AT_VMA_ADDRESS = True", "FREEZE_AT_VMA_ADDRESS = False"),
    ("walk.v45_unfreeze_cross", "kernels/v4_5.py", "        if s + i == HPAGE_PMD_NR:  # \"crossed",
     "        if False:  # \"crossed"),
    ("walk.v45_relock", "kernels/freeze.py", "            costs[C_PTE_LOCK] += 1  # 4.5 starts on the boundary",
     "            pass  # 4.5 starts on the boundary"),
    ("walk.v618_holes", "kernels/v6_18.py", "RMAP_WALK_STEPS_OVER_HOLES = True", "RMAP_WALK_STEPS_OVER_HOLES = False"),
    ("walk.v5_unfreeze_half", "kernels/v5.py", "            row = vma_walk[v, half]\n            mapped = 0",
     "            row = vma_walk[v, 0]\n            mapped = 0"),
    ("walk.v618_unfreeze_half", "kernels/v6_18.py", "            row = vma_walk[v, half]\n            if lo >= hi",
     "            row = vma_walk[v, 0]\n            if lo >= hi"),
    ("pt_reclaim.v618", "kernels/v6_18.py", "PT_RECLAIM = True", "PT_RECLAIM = False"),
    ("pt_reclaim.whole", "vmstate/engine/madvise.py", "haddr[(lo == 0) & (hi == HPAGE_PMD_NR)]", "haddr[(hi == HPAGE_PMD_NR)]"),
    # ---- pin ----
    ("pin.all_pages", "vmstate/engine/gup.py", "    k_refcount.get_pages(state.blocks.a, pfns, 1)",
     "    k_refcount.get_pages(state.blocks.a, pfns[:1], 1)"),
    ("pin.unpin_count", "vmstate/engine/gup.py", "    top.nr -= 1\n", "    top.nr -= 0\n"),
    ("pin.hole", "kernels/memory.py", "            if not pte[i] & _PAGE_PRESENT:\n                hole[0], hole[1] = r, i\n                return -1",
     "            if not pte[i] & _PAGE_PRESENT and i == 0:\n                hole[0], hole[1] = r, i\n                return -1"),
    ("pin.merge", "vmstate/engine/gup.py", "    if stack and np.array_equal(stack[-1].pfns, pfns):",
     "    if stack:"),
    # ---- 6.18 (kernels/v6_18.py, kernels/madvise.py, the engine's madvise and shrink) ----
    ("v618.mm_slot_shared", "kernels/v6_18.py", "        if new != diff - 1:", "        if False:"),
    ("v618.mm_slot_exclusive_again", "kernels/v6_18.py", "    if mc[0] == new or mc[1] == new:",
     "    if mc[0] == new:"),
    ("v618.pmd_unmap_partial", "kernels/v6_18.py", "    if 0 < nr < HPAGE_PMD_NR:",
     "    if 0 < nr <= HPAGE_PMD_NR:"),
    ("v618.pte_unmap_partial", "kernels/v6_18.py", '    if nr and page["_nr_pages_mapped"]:',
     "    if nr:"),
    ("v618.pte_unmap_entire", "kernels/v6_18.py",
     '        if page["_nr_pages_mapped"] < ENTIRELY_MAPPED:\n            nr = last',
     "        nr = last"),
    ("v618.migration_exclusive", "kernels/v6_18.py",
     "            page[\"flags\"][0] &= _NOT_AE\n            bits |= _PAGE_VMS_EXCLUSIVE",
     "            page[\"flags\"][0] &= _NOT_AE"),
    ("v618.split_pmd_exclusive", "kernels/v6_18.py", "                flags[i] |= _AE\n    page_remove",
     "                flags[i] |= 0\n    page_remove"),
    ("v618.zero_page_remap", "kernels/v6_18.py", "            if not compound and not page_has_data(page, i):",
     "            if False:"),
    ("v618.remap_young", "kernels/v6_18.py", "e & np.uint64(_PAGE_ACCESSED | _PAGE_RW | _PAGE_SOFT_DIRTY))",
     "np.uint64(_PAGE_ACCESSED) | e & np.uint64(_PAGE_RW | _PAGE_SOFT_DIRTY))"),
    ("v618.eagain", "kernels/v6_18.py", "SPLIT_PINNED = -EAGAIN", "SPLIT_PINNED = -EAGAIN + 0 * EAGAIN - 5"),
    ("v618.underused", "kernels/v6_18.py", "    if KHUGEPAGED_MAX_PTES_NONE == HPAGE_PMD_NR - 1:\n        return False",
     "    if KHUGEPAGED_MAX_PTES_NONE == HPAGE_PMD_NR:\n        return False"),
    ("v618.requeue", "kernels/v6_18.py", '    return page["partially_mapped"] != 0', "    return True"),
    ("v618.debugfs_skip", "kernels/v6_18.py", '    return folio_mapcount(page) != page["_count"][0]',
     "    return False"),
    ("v618.fork_clears_exclusive", "kernels/v6_18.py",
     '    page["flags"][0] &= _NOT_AE\n    page["compound_mapcount"] += 1',
     '    page["compound_mapcount"] += 1'),
    ("v618.mprotect_upgrade", "kernels/v6_18.py", "MPROTECT_WRITABLE_EXCLUSIVE = True",
     "MPROTECT_WRITABLE_EXCLUSIVE = False"),
    ("v618.mthp_split_failed", "kernels/v6_18.py", "        events[EV_MTHP_SPLIT_FAILED] += 1\n", ""),
    ("v618.freeze_dirty", "kernels/v6_18.py",
     "        page[\"flags\"][0] |= 1 << PG_dirty  # folio_mark_dirty()", "        pass"),
    ("v618.cold_shared", "kernels/madvise.py",
     "            if folio_maybe_mapped_shared(blocks[b]):  # \"Do not interfere",
     "            if False:  # \"Do not interfere"),
    ("v618.cold_batch", "kernels/madvise.py", "            if n < HPAGE_PMD_NR:\n                if not",
     "            if n < HPAGE_PMD_NR - 1:\n                if not"),
    ("v618.pageout_pinned", "vmstate/engine/madvise.py", "    thps = thps[ok]\n", ""),
    ("v618.swpout_partial", "vmstate/engine/madvise.py", "(res.reason == SPLIT_OK) & ~partially",
     "(res.reason == SPLIT_OK)"),
    ("v618.zap_batch", "kernels/memory.py", "                   and _pte_pfn(pte[k]) == pfn + k - i):",
     "                   and _pte_pfn(pte[k]) == pfn + k - i and k < i + 8):"),
]

EQUIVALENT = {
    "v618.freeze_dirty": "a large folio is PTE-mapped only after __split_huge_pmd_locked() of a "
                         "PMD that a write fault made dirty, which set the folio's PG_dirty "
                         "already (folio_set_dirty()): the freeze's folio_mark_dirty() never "
                         "changes it (until write faults or MADV_FREE clean a PMD)",
    "v618.swpout_partial": "a partially mapped THP never has all 512 pages mapped again, nor a PMD "
                           "(no op maps a THP's page anew), so reclaim never gets one whole",
    "v618.requeue": "at max_ptes_none 511 thp_underused() is false, so the shrinker tries only "
                    "partially mapped THPs, which stay queued after a failure either way",
    "split.v5_recheck": "total_mapcount > page_count - 1 is the BUG branch, which no valid state "
                        "reaches (the validators hold after every op): <= and == agree on every "
                        "reachable state",
    "pmd.v45_double_map": "setting PG_double_map when the last PMD is split is undone at once: the "
                          "same call finds compound_mapcount < 0 and clears it with its +1",
    "unfreeze.v5_vma_write": "a migration entry is writable only if its PTE or PMD was, which needs "
                             "VM_WRITE, and VM_WRITE cannot change during a split",
    "unfreeze.v5_pfn_check": "a migration entry at a subpage's vma_address() in a VMA is that "
                             "subpage's: inside one VMA page i sits only there (mremap moves "
                             "vm_pgoff with the pages), and the THPs of one split run one after "
                             "another where this check runs (NUMBA_DISABLE_JIT)",
    "zap.table_freed": "the table deposited under a huge PMD is all zeros until a split fills it, "
                       "which also makes the PMD non-huge; handing it out again when the slot is "
                       "mapped later is invisible in the state (it only keeps the memory)",
}


def _snapshot(dest: Path) -> None:
    """The package (``kernels/`` as ``vmstate/kernels``) and the tests, copied once: every mutant
    starts from the same tree, whatever happens to the checkout meanwhile."""
    shutil.copytree(REPO / "vmstate", dest / "vmstate", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "kernels"))
    shutil.copytree(REPO / "kernels", dest / "vmstate" / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "tests", dest / "tests", ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))


def _tree(dest: Path, mutant, base: Path) -> None:
    _, file, old, new = mutant
    shutil.copytree(base, dest, dirs_exist_ok=True)
    path = dest / ("vmstate/" + file if file.startswith("kernels/") else file)
    if not old:  # the baseline: no mutation
        return
    text = path.read_text()
    if text.count(old) != 1:
        raise ValueError(f"mutant {mutant[0]}: the original occurs {text.count(old)} times in {file}")
    path.write_text(text.replace(old, new))


def run_mutant(mutant, fuzz: int, base: Path, extra=()) -> tuple[str, bool, str, float]:
    """(id, killed, what killed it, seconds)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vmstate-mutant-") as tmp:
        _tree(Path(tmp), mutant, base)
        env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "PYTHONPATH": tmp,
               "HYPOTHESIS_STORAGE_DIRECTORY": str(Path(tmp) / ".hypothesis")}
        r = subprocess.run([sys.executable, str(Path(tmp) / "tests" / "corners.py"), "--fuzz", str(fuzz),
                            *extra],
                           cwd=tmp, env=env, capture_output=True, text=True, timeout=1200)
    why = (r.stdout.strip().splitlines() or r.stderr.strip().splitlines() or [""])[0][:160]
    return mutant[0], r.returncode != 0, why, time.perf_counter() - t0


def main(argv) -> int:
    jobs = int(argv[argv.index("--jobs") + 1]) if "--jobs" in argv else os.cpu_count() or 1
    fuzz = int(argv[argv.index("--fuzz") + 1]) if "--fuzz" in argv else 20
    ids = [a for a in argv if not a.startswith("--") and not a.isdigit()]
    chosen = [m for m in MUTANTS if not ids or m[0] in ids]
    for m in chosen:  # every original must still be in the tree, once
        text = (REPO / m[1]).read_text()
        if text.count(m[2]) != 1:
            print(f"{m[0]}: the original occurs {text.count(m[2])} times in {m[1]}: update the mutant")
            return 2
    extra = ["--no-corners"] if "--no-corners" in argv else []
    with tempfile.TemporaryDirectory(prefix="vmstate-mutation-base-") as base, \
            ThreadPoolExecutor(jobs) as pool:
        _snapshot(Path(base))
        # the unmutated tree first: a mutant counts as killed only where the original passes
        _, failed, why, _ = run_mutant(("baseline", "tests/corners.py", "", ""), fuzz, Path(base),
                                       extra)
        if failed:
            print(f"the unmutated tree fails the oracle: {why}")
            return 2
        results = list(pool.map(lambda m: run_mutant(m, fuzz, Path(base), extra), chosen))
    survivors = []
    for mid, killed, why, secs in results:
        if killed:
            print(f"killed    {mid:34s} {secs:5.1f} s  {why}")
        elif mid in EQUIVALENT:
            print(f"equivalent {mid:33s} {secs:5.1f} s  {EQUIVALENT[mid]}")
        else:
            print(f"SURVIVED  {mid:34s} {secs:5.1f} s")
            survivors.append(mid)
    scored = [r for r in results if r[0] not in EQUIVALENT]
    killed = sum(r[1] for r in scored)
    print(f"{killed}/{len(scored)} non-equivalent mutants killed "
          f"({len(results) - len(scored)} equivalent, {len(results)} in all)")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
