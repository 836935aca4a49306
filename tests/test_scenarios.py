"""The named scenarios in datasets/scenarios/ give the outcomes written at the top of each file."""
from pathlib import Path

import polars as pl
import pytest

from vmstate.batch.runner import run_scenario
from vmstate.io.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "datasets" / "scenarios"


def run(name):
    return run_scenario(load_scenario(SCENARIOS / f"{name}.toml"), validate=True)


def splits(result):
    return [(s["op"], s["attempted"], s["succeeded"], s["failed"]) for s in result.summary["splits"]]


def test_pmd_mapped():
    r = run("pmd_mapped")
    assert splits(r) == [(3, 32, 32, 0)]
    ev = r.summary["vm_events"]
    assert (ev["thp_fault_alloc"], ev["thp_split_page"], ev["thp_split_pmd"]) == (32, 32, 32)
    before, _ = r.snapshots["before-split"]
    assert before["head_pfn"].null_count() == 0 and before["refcount"].unique().to_list() == [1]
    assert before["mapcount"].unique().to_list() == [1]  # the PMD mapping, on every subpage
    pages, pagemap = r.snapshots["after-split"]
    assert pages["mapcount"].unique().to_list() == [1]
    assert pages["refcount"].unique().to_list() == [1]
    assert pages["head_pfn"].null_count() == 16384
    assert pagemap.height == 16384 and not pagemap["pmd"].any() and pagemap["writable"].all()
    assert r.summary["snapshots"]["after-split"] == {"thps": 0, "pages_in_use": 16384}


def test_fork_shared():
    r = run("fork_shared")
    assert splits(r) == [(3, 32, 32, 0)]
    assert r.summary["vm_events"]["thp_split_pmd"] == 64
    pages, pagemap = r.snapshots["after-split"]
    assert pages["mapcount"].unique().to_list() == [2]
    assert pages["refcount"].unique().to_list() == [2]
    assert pagemap.group_by("mm").len().sort("mm").rows() == [("child", 16384), ("parent", 16384)]
    assert not pagemap["writable"].any()  # copy_huge_pmd write-protected both PMDs


def test_partial_munmap():
    r = run("partial_munmap")
    assert splits(r) == [(4, 4, 4, 0)]
    ev, costs = r.summary["vm_events"], r.summary["costs"]
    assert ev["thp_split_pmd"] == 4 and ev["thp_deferred_split_page"] == 1
    assert costs["pages_freed"] == 256
    pages, _ = r.snapshots["after-split"]
    freed = pages.filter(pl.col("refcount") == 0)
    assert freed.height == 256 and freed["pfn"].min() == 512 + 128
    assert r.summary["snapshots"]["after-split"]["pages_in_use"] == 1792


def test_mprotect():
    r = run("mprotect")
    assert splits(r) == [(4, 4, 4, 0)]
    assert r.summary["vm_events"]["thp_split_pmd"] == 4
    _, pagemap = r.snapshots["after-split"]
    base = 0x7F0000000000
    ro = pagemap.filter((pl.col("vaddr") >= base + (1 << 20)) & (pl.col("vaddr") < base + (3 << 20)))
    assert ro.height == 512 and not ro["writable"].any()
    assert pagemap.filter(~pl.col("writable")).height == 512


def test_gup_pinned_fails_then_succeeds():
    r = run("gup_pinned")
    assert splits(r) == [(3, 4, 3, 1), (6, 1, 1, 0)]
    ev = r.summary["vm_events"]
    assert (ev["thp_split_page"], ev["thp_split_page_failed"], ev["thp_split_pmd"]) == (4, 1, 4)
    pages, pagemap = r.snapshots["pinned"]
    pinned = pages.filter(pl.col("head_pfn") == 1024)
    assert pinned.height == 512 and pinned["refcount"].unique().to_list() == [2]  # map + pin
    assert pagemap.filter(pl.col("pmd")).height == 512  # its PMD was not split (precheck)


def test_mix():
    r = run("mix")
    assert splits(r) == [(7, 8, 7, 1), (11, 1, 1, 0)]
    assert r.summary["snapshots"]["after-first-split"]["thps"] == 1
    assert r.summary["vm_events"]["thp_deferred_split_page"] == 0
    assert r.summary["snapshots"]["end"] == {"thps": 0, "pages_in_use": 4352}


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_scenario_validates(path):
    run_scenario(load_scenario(path), validate=True)


def test_racing_pin():
    r = run("racing_pin")
    assert splits(r) == [(2, 4, 2, 2), (3, 2, 2, 0)]
    ev = r.summary["vm_events"]
    assert (ev["thp_split_pmd"], ev["thp_split_page"], ev["thp_split_page_failed"]) == (4, 4, 2)
    assert r.summary["snapshots"]["end"] == {"thps": 0, "pages_in_use": 2048}
