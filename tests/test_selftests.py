"""The kernel's own THP selftests as scenarios (``datasets/selftests/``): each file, in every variant,
passes or fails the check its selftest makes, and leaves the outcome ``EXPECTED`` says; under 6.18
the same file run on the running kernel (``vmstate kernel-run``) diffs empty against the simulation.

The checks read only the snapshots' ``pages``/``pagemap`` frames, which a kernel-run capture has in
the same schema, so they hold for the kernel's capture as well (``test_selftests_on_the_kernel``):

- ``cow.c`` "Basic COW after fork()" (+ the mprotect() optimization): the child's pages are the
  ones it had after fork, and none of them is a page the parent wrote ("Leak from parent into
  child" otherwise);
- ``cow.c`` vmsplice() tests: the frames the R/O pin took are not among the frames the writer maps
  after its write (the pipe would read the write: "Leak from child into parent" / "... parent into
  child");
- ``split_huge_page_test.c``: before the split the range is backed by THPs ("Some THPs are missing
  during mremap"), after it by none ("Still N THPs not split"), and by the same frames (content
  intact).

``python tests/test_selftests.py`` prints the outcome table of ``datasets/selftests/README.md``.
"""
import dataclasses
import sys
from pathlib import Path

import polars as pl
import pytest

from vmstate.batch.runner import run_scenario
from vmstate.io.scenario import load_scenario
from vmstate.kernels.constants import VARIANTS

SELFTESTS = Path(__file__).resolve().parents[1] / "datasets" / "selftests"
FILES = sorted(SELFTESTS.glob("*.toml"))


def _range(scenario):
    """The range the selftest checks: the last write's (cow.c), else the last split's."""
    for op in reversed(scenario.ops):
        if op.op in ("write", "split"):
            return op.fields["addr"], op.fields["addr"] + op.fields["len"]
    raise AssertionError(f"{scenario.name}: no write or split op")


def _mapped(pagemap: pl.DataFrame, mm: str, lo: int, hi: int) -> pl.DataFrame:
    return pagemap.filter((pl.col("mm") == mm) & (pl.col("vaddr") >= lo) & (pl.col("vaddr") < hi)
                          & pl.col("present")).sort("vaddr")


def check(scenario, snapshots) -> tuple[bool, str]:
    """The selftest's own check on a run's or a capture's snapshots ``{label: (pages, pagemap)}``:
    (passed, what it found)."""
    name = scenario.name
    lo, hi = _range(scenario)
    if name.startswith("split_"):
        before, after = (snapshots[k] for k in ("faulted" if "faulted" in snapshots else "moved",
                                                "split"))
        if name == "split_pte_mapped_thp":
            lo = next(op.fields["new_addr"] for op in scenario.ops if op.op == "mremap")
            hi = lo + 4 * 4096

        def thp_backed(snap):
            pages, pagemap = snap
            m = _mapped(pagemap, "p", lo, hi).join(pages, on="pfn", how="left")
            return m, int(m["head_pfn"].is_not_null().sum())
        m0, thp0 = thp_backed(before)
        m1, thp1 = thp_backed(after)
        same = m0["pfn"].to_list() == m1["pfn"].to_list()
        ok = thp0 == len(m0) > 0 and thp1 == 0 and same
        return ok, f"{thp0}/{len(m0)} pages THP-backed before, {thp1} after, frames kept: {same}"
    first = snapshots["forked" if "forked" in snapshots else "pinned"][1]
    last = snapshots["written"][1]
    if name.startswith("cow_in_parent"):
        child0 = _mapped(first, "c", lo, hi)["pfn"].to_list()
        child1 = _mapped(last, "c", lo, hi)["pfn"].to_list()
        parent = set(_mapped(last, "p", lo, hi)["pfn"].to_list())
        leak = len(parent & set(child1))
        ok = child0 == child1 and len(child1) == (hi - lo) // 4096 and not leak
        return ok, f"child kept its {len(child1)} pages: {child0 == child1}; shared with the writer: {leak}"
    pinner, writer = ("c", "p") if name.startswith("vmsplice_in_child") else ("p", "c")
    pinned = set(_mapped(first, pinner, lo, hi)["pfn"].to_list())
    written = set(_mapped(last, writer, lo, hi)["pfn"].to_list())
    leak = len(pinned & written)
    return not leak and len(written) == (hi - lo) // 4096, \
        f"{leak} of {len(pinned)} pinned frames written by {writer}"


def outcome(scenario, run) -> dict:
    """What a variant did: the run's THP events, and how the writer (or the split range) is mapped at
    the end: PMD-mapped pages, PTE-mapped pages of THPs, small pages."""
    lo, hi = _range(scenario)
    ev = run.summary["vm_events"]
    pages, pagemap = run.snapshots[list(run.snapshots)[-1]]
    writer = next((op.fields["mm"] for op in reversed(scenario.ops) if op.op == "write"), "p")
    if scenario.name == "split_pte_mapped_thp":
        lo = next(op.fields["new_addr"] for op in scenario.ops if op.op == "mremap")
        hi = lo + 4 * 4096
    m = _mapped(pagemap, writer, lo, hi).join(pages, on="pfn", how="left")
    return {
        "fault_alloc": ev["thp_fault_alloc"], "split_pmd": ev["thp_split_pmd"],
        "split_page": ev["thp_split_page"],
        "pmd": int(m["pmd"].sum()), "pte_thp": int((~m["pmd"] & m["head_pfn"].is_not_null()).sum()),
        "small": int(m["head_pfn"].is_null().sum()),
        "tlb_flush": run.summary["costs"]["tlb_flush"],
    }


def simulate(path, variant):
    scenario = dataclasses.replace(load_scenario(path), variant=variant)
    return scenario, run_scenario(scenario, validate=True)


# (file stem, variant) -> (passes, outcome). Where the variants part: v5/4.5 copy a THP whole on a
# PMD write fault (fault_alloc, still PMD-mapped), never reuse a THP's subpage on a PTE one (small
# copies); 6.18 splits the PMD (split_pmd) and copies 4 KiB pages, or reuses them
# (__wp_can_reuse_large_anon_folio()). Keys of the outcome: see outcome().
def _o(fault_alloc, split_pmd, split_page, pmd, pte_thp, small, tlb_flush):
    return dict(fault_alloc=fault_alloc, split_pmd=split_pmd, split_page=split_page, pmd=pmd,
                pte_thp=pte_thp, small=small, tlb_flush=tlb_flush)


EXPECTED = {
    ('cow_in_parent_base', 'v5'): (True, _o(0, 0, 0, 0, 0, 1, 1)),
    ('cow_in_parent_base', 'v4.5'): (True, _o(0, 0, 0, 0, 0, 1, 1)),
    ('cow_in_parent_base', '6.18'): (True, _o(0, 0, 0, 0, 0, 1, 1)),
    ('cow_in_parent_mprotect_pmd', 'v5'): (True, _o(2, 0, 0, 512, 0, 0, 1)),
    ('cow_in_parent_mprotect_pmd', 'v4.5'): (True, _o(2, 0, 0, 512, 0, 0, 1)),
    ('cow_in_parent_mprotect_pmd', '6.18'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('cow_in_parent_partial_mremap', 'v5'): (True, _o(1, 1, 0, 0, 0, 256, 258)),
    ('cow_in_parent_partial_mremap', 'v4.5'): (True, _o(1, 1, 0, 0, 0, 256, 258)),
    ('cow_in_parent_partial_mremap', '6.18'): (True, _o(1, 1, 0, 0, 0, 256, 258)),
    ('cow_in_parent_pmd', 'v5'): (True, _o(2, 0, 0, 512, 0, 0, 1)),
    ('cow_in_parent_pmd', 'v4.5'): (True, _o(2, 0, 0, 512, 0, 0, 1)),
    ('cow_in_parent_pmd', '6.18'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('cow_in_parent_pte', 'v5'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('cow_in_parent_pte', 'v4.5'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('cow_in_parent_pte', '6.18'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('cow_in_parent_single_pte', 'v5'): (True, _o(1, 1, 0, 0, 0, 1, 2)),
    ('cow_in_parent_single_pte', 'v4.5'): (True, _o(1, 1, 0, 0, 0, 1, 2)),
    ('cow_in_parent_single_pte', '6.18'): (True, _o(1, 1, 0, 0, 0, 1, 2)),
    ('split_pmd_thp', 'v5'): (True, _o(4, 4, 4, 0, 0, 2048, 4)),
    ('split_pmd_thp', 'v4.5'): (True, _o(4, 4, 4, 0, 0, 2048, 4)),
    ('split_pmd_thp', '6.18'): (True, _o(4, 4, 4, 0, 0, 2048, 4)),
    ('split_pte_mapped_thp', 'v5'): (True, _o(4, 4, 4, 0, 0, 4, 2052)),
    ('split_pte_mapped_thp', 'v4.5'): (True, _o(4, 4, 4, 0, 0, 4, 2056)),
    ('split_pte_mapped_thp', '6.18'): (True, _o(4, 4, 4, 0, 0, 4, 2056)),
    ('vmsplice_after_fork_base', 'v5'): (False, _o(0, 0, 0, 0, 0, 1, 0)),
    ('vmsplice_after_fork_base', 'v4.5'): (False, _o(0, 0, 0, 0, 0, 1, 0)),
    ('vmsplice_after_fork_base', '6.18'): (True, _o(0, 0, 0, 0, 0, 1, 1)),
    ('vmsplice_after_fork_partial_mremap', 'v5'): (True, _o(1, 1, 0, 0, 0, 256, 258)),
    ('vmsplice_after_fork_partial_mremap', 'v4.5'): (True, _o(1, 1, 0, 0, 0, 256, 258)),
    ('vmsplice_after_fork_partial_mremap', '6.18'): (True, _o(1, 1, 0, 0, 0, 256, 258)),
    ('vmsplice_after_fork_pmd', 'v5'): (True, _o(2, 0, 0, 512, 0, 0, 1)),
    ('vmsplice_after_fork_pmd', 'v4.5'): (True, _o(2, 0, 0, 512, 0, 0, 1)),
    ('vmsplice_after_fork_pmd', '6.18'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('vmsplice_after_fork_pte', 'v5'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('vmsplice_after_fork_pte', 'v4.5'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('vmsplice_after_fork_pte', '6.18'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('vmsplice_after_fork_single_pte', 'v5'): (True, _o(1, 1, 0, 0, 0, 1, 2)),
    ('vmsplice_after_fork_single_pte', 'v4.5'): (True, _o(1, 1, 0, 0, 0, 1, 2)),
    ('vmsplice_after_fork_single_pte', '6.18'): (True, _o(1, 1, 0, 0, 0, 1, 2)),
    ('vmsplice_before_fork_base', 'v5'): (False, _o(0, 0, 0, 0, 0, 1, 0)),
    ('vmsplice_before_fork_base', 'v4.5'): (False, _o(0, 0, 0, 0, 0, 1, 0)),
    ('vmsplice_before_fork_base', '6.18'): (True, _o(0, 0, 0, 0, 0, 1, 1)),
    ('vmsplice_before_fork_partial_mremap', 'v5'): (True, _o(1, 1, 0, 0, 0, 256, 258)),
    ('vmsplice_before_fork_partial_mremap', 'v4.5'): (True, _o(1, 1, 0, 0, 0, 256, 258)),
    ('vmsplice_before_fork_partial_mremap', '6.18'): (True, _o(1, 1, 0, 0, 0, 256, 258)),
    ('vmsplice_before_fork_pmd', 'v5'): (True, _o(2, 0, 0, 512, 0, 0, 1)),
    ('vmsplice_before_fork_pmd', 'v4.5'): (True, _o(2, 0, 0, 512, 0, 0, 1)),
    ('vmsplice_before_fork_pmd', '6.18'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('vmsplice_before_fork_pte', 'v5'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('vmsplice_before_fork_pte', 'v4.5'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('vmsplice_before_fork_pte', '6.18'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('vmsplice_before_fork_single_pte', 'v5'): (True, _o(1, 1, 0, 0, 0, 1, 2)),
    ('vmsplice_before_fork_single_pte', 'v4.5'): (True, _o(1, 1, 0, 0, 0, 1, 2)),
    ('vmsplice_before_fork_single_pte', '6.18'): (True, _o(1, 1, 0, 0, 0, 1, 2)),
    ('vmsplice_in_child_base', 'v5'): (False, _o(0, 0, 0, 0, 0, 1, 0)),
    ('vmsplice_in_child_base', 'v4.5'): (False, _o(0, 0, 0, 0, 0, 1, 0)),
    ('vmsplice_in_child_base', '6.18'): (True, _o(0, 0, 0, 0, 0, 1, 1)),
    ('vmsplice_in_child_partial_mremap', 'v5'): (True, _o(1, 1, 0, 0, 0, 256, 258)),
    ('vmsplice_in_child_partial_mremap', 'v4.5'): (True, _o(1, 1, 0, 0, 0, 256, 258)),
    ('vmsplice_in_child_partial_mremap', '6.18'): (True, _o(1, 1, 0, 0, 0, 256, 258)),
    ('vmsplice_in_child_pmd', 'v5'): (True, _o(2, 0, 0, 512, 0, 0, 1)),
    ('vmsplice_in_child_pmd', 'v4.5'): (True, _o(2, 0, 0, 512, 0, 0, 1)),
    ('vmsplice_in_child_pmd', '6.18'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('vmsplice_in_child_pte', 'v5'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('vmsplice_in_child_pte', 'v4.5'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('vmsplice_in_child_pte', '6.18'): (True, _o(1, 1, 0, 0, 0, 512, 513)),
    ('vmsplice_in_child_single_pte', 'v5'): (True, _o(1, 1, 0, 0, 0, 1, 2)),
    ('vmsplice_in_child_single_pte', 'v4.5'): (True, _o(1, 1, 0, 0, 0, 1, 2)),
    ('vmsplice_in_child_single_pte', '6.18'): (True, _o(1, 1, 0, 0, 0, 1, 2)),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_selftest_scenarios(path, variant):
    scenario, run = simulate(path, variant)
    ok, why = check(scenario, run.snapshots)
    want_ok, want = EXPECTED[path.stem, variant]
    assert (ok, outcome(scenario, run)) == (want_ok, want), why


def table() -> str:
    rows = ["| selftest scenario | variant | passes | check | THP faults | PMD splits | THP splits "
            "| writer: PMD / PTE-of-THP / small pages | TLB flushes |",
            "|---|---|---|---|---|---|---|---|---|"]
    for path in FILES:
        for variant in VARIANTS:
            scenario, run = simulate(path, variant)
            ok, why = check(scenario, run.snapshots)
            o = outcome(scenario, run)
            rows.append(f"| {path.stem} | {variant} | {'yes' if ok else 'NO'} | {why} | "
                        f"{o['fault_alloc']} | {o['split_pmd']} | {o['split_page']} | "
                        f"{o['pmd']} / {o['pte_thp']} / {o['small']} | {o['tlb_flush']} |")
    return "\n".join(rows)


def expected_source() -> str:
    out = []
    for path in FILES:
        for variant in VARIANTS:
            scenario, run = simulate(path, variant)
            ok, _ = check(scenario, run.snapshots)
            o = outcome(scenario, run)
            out.append(f"    ({path.stem!r}, {variant!r}): ({ok}, _o({', '.join(str(v) for v in o.values())})),")
    return "\n".join(out)


if __name__ == "__main__":
    print(expected_source() if "--expected" in sys.argv else table())
