"""Where today's kernel differs from the v5 design vmstate simulates: the allow-list of ``vmstate diff``.

Each entry names the divergence, what v5 (vmstate) does, what the running kernel does, which fields,
counters or split outcomes it may change, and the test that shows it on this machine. ``vmstate diff``
reports a difference it can attribute to one of these under that name and does not count it;
``--disallow NAME`` counts it again. Against a ``"variant": "6.18"`` simulation only
``refcount_not_exported``, ``writable_upper_bound`` and ``split_trigger`` apply. Three only ever annotate a diff (``split_eagain``,
``split_trigger``, ``refcount_not_exported``: nothing compared changes). ``docs/divergences.md`` is
this table in prose, with the measurements.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Divergence:
    name: str
    v5: str
    kernel: str
    changes: str
    test: str


DIVERGENCES = {d.name: d for d in [
    Divergence(
        "shared_folio_not_split",
        v5="split_huge_page() splits a THP mapped by several processes (freeze walks every VMA)",
        kernel="MADV_COLD/MADV_PAGEOUT leave a folio that may be mapped by several processes alone "
               "(folio_maybe_mapped_shared() in madvise_cold_or_pageout_pte_range()), so a "
               "fork-shared THP stays compound; only debugfs split_huge_pages would split it",
        changes="slot status, pmd, writable of that THP's pages in every process mapping it; "
                "thp_split_page, thp_split_pmd, thp_split_page_failed; split op outcomes (skipped)",
        test="tests/test_conformance.py::test_conformance[fork_shared]"),
    Divergence(
        "split_eagain",
        v5="a pinned THP fails to split with -EBUSY (the racy precheck)",
        kernel="-EAGAIN (can_split_folio() in __folio_split()); madvise() hides it, kernel-run "
               "records ret -11 from thp_split_page_failed",
        changes="the error code only: which splits fail is the same",
        test="tests/test_divergences.py::test_split_eagain"),
    Divergence(
        "deferred_split_accounting",
        v5="thp_deferred_split_page counts a THP when a subpage's mapcount first drops to -1 "
           "(26/28) — also when its last PMD mapping goes — and never during its own freeze "
           "(migration entries keep the counts)",
        kernel="counts a THP when it first becomes partially mapped (folio_set_partially_mapped) — "
               "not when it is unmapped whole, but also while split_folio() unmaps a PTE-mapped "
               "THP page by page",
        changes="thp_deferred_split_page: lower by the whole-THP unmaps, higher by at most the THPs "
                "split while PTE-mapped",
        test="tests/test_divergences.py::test_deferred_split_accounting"),
    Divergence(
        "zero_page_remap",
        v5="after a split every subpage that was mapped stays mapped to its own frame",
        kernel="a split remaps zero-filled subpages to the shared zero page and frees them "
               "(try_to_map_unused_to_zeropage(), 6.12+)",
        changes="those pages' pfn (the zero page), mapcount (0), writable; freed frames",
        test="tests/test_divergences.py::test_zero_page_remap"),
    Divergence(
        "split_trigger",
        v5="the split op is debugfs split_huge_pages on the range",
        kernel="debugfs is refused under lockdown (EPERM): kernel-run splits with MADV_COLD on one "
               "4 KiB page of each THP (and deactivates that page)",
        changes="v5/v4.5: nothing compared by itself (page flags are not compared); see "
                "shared_folio_not_split for what MADV_COLD does not split. A 6.18 simulation "
                "(whose split op is debugfs split_huge_pages_pid()) allows no model divergence, so "
                "here split_trigger explains what MADV_COLD does differently: a THP maybe mapped "
                "shared is skipped (slot status, pmd, writable, freed frames, thp_split_page, "
                "thp_split_pmd, split, nr_anon, split op outcomes), and a pinned THP's failed "
                "split_folio() is counted (thp_split_page_failed, split_failed)",
        test="tests/test_divergences.py::test_split_trigger"),
    Divergence(
        "shrinker_passes",
        v5="a shrink op is one pass of the variant's deferred_split_scan() over its queue: a THP "
           "that fails to split is tried, and counted in thp_split_page_failed, once",
        kernel="echo 2 > drop_caches runs drop_slab(), which repeats its pass over every shrinker "
               "while other caches still free objects (while (freed >> shift++) > 1): a pinned, "
               "partially mapped THP is tried once per pass, 2-5 times per echo measured here, "
               "a number the kernel does not repeat (kernel nondeterminism, not a model "
               "divergence: every other count and the state agree)",
        changes="thp_split_page_failed and mthp split_failed of shrink ops: a positive multiple of "
                "the simulated count per op, the splits done equal",
        test="tests/test_conformance.py::test_conformance_618[pinned_shrink]"),
    Divergence(
        "refcount_not_exported",
        v5="page_count() of every frame is in pages.parquet",
        kernel="/proc exports no refcount (kpagecount is the mapcount): null in a capture; pins are "
               "invisible",
        changes="refcount is never compared",
        test="tests/test_capture.py::test_capture_schema_and_metadata"),
    Divergence(
        "writable_upper_bound",
        v5="writable is the PTE/PMD write bit",
        kernel="no interface exports the write bit: a capture's writable is 'VMA writable and "
               "mapped exclusively', an upper bound (fork's write-protection outlives the child)",
        changes="writable, where the capture says true and the simulator false",
        test="tests/test_divergences.py::test_writable_upper_bound"),
]}
