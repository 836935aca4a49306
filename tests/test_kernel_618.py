"""kernel-run's 6.18 ops on the running kernel (root, THP; skips otherwise): madvise_cold /
madvise_pageout / shrink, mmap fill = "zero", the per-op vm_events and mthp_stats, and the shared
zero page in a capture (what datasets/scenarios-6.18/ measured: docs/kernel-bridge.md)."""
import json
from pathlib import Path

import polars as pl
import pytest

from bridge_helpers import REPO, needs_kernel
from vmstate.bridge.kernel_run import KERNEL_VARIANTS, kernel_run
from vmstate.bridge.procfs import MTHP_STATS_DIR
from vmstate.io.dataset import read_dataset
from vmstate.io.export import KPF_ZERO_PAGE
from vmstate.io.scenario import load_scenario
from vmstate.kernels.constants import MTHP_STATS, VM_EVENTS

SCENARIOS_618 = REPO / "datasets" / "scenarios-6.18"
needs_mthp = pytest.mark.skipif(not Path(MTHP_STATS_DIR).is_dir(),
                                reason=f"no {MTHP_STATS_DIR} (per-size THP stats: Linux 6.9+)")


def _run(name, out):
    return kernel_run(load_scenario(SCENARIOS_618 / f"{name}.toml", variants=KERNEL_VARIANTS), out)


def test_scenarios_618_parse():
    for path in sorted(SCENARIOS_618.glob("*.toml")):
        sc = load_scenario(path, variants=KERNEL_VARIANTS)
        assert sc.variant == "6.18" and sc.ops, path


@needs_kernel
@needs_mthp
def test_counters_and_shrink(tmp_path):
    s = _run("partial_munmap_shrink", tmp_path)
    assert s["variant"] == "6.18"
    for e in s["ops"]:
        assert list(e["vm_events"]) == list(VM_EVENTS)
        assert list(e["mthp_stats"]) == list(MTHP_STATS)
    ops = {e["name"]: e for e in s["ops"]}
    assert ops["mmap"]["vm_events"]["thp_fault_alloc"] == 4
    assert ops["mmap"]["mthp_stats"]["nr_anon"] == 4
    assert ops["munmap"]["vm_events"]["thp_deferred_split_page"] >= 1  # system-wide: + noise
    assert ops["munmap"]["mthp_stats"]["split_deferred"] >= 1
    assert ops["shrink"]["own"] == {"thps_before": 4, "split": 1}
    assert ops["shrink"]["mthp_stats"]["nr_anon"] == -1
    assert s["snapshots"]["after-shrink"] == {"thps": 3, "pages_in_use": 1792}
    assert set(s["mthp_stats"]) == set(MTHP_STATS)
    assert json.loads((tmp_path / "summary.json").read_text())["mthp_stats"] == s["mthp_stats"]


@needs_kernel
@needs_mthp
def test_pageout_remaps_zero_pages(tmp_path):
    """MADV_PAGEOUT of a whole all-zero PMD-mapped THP with no swap splits it (swpout fallback);
    the split maps every subpage to the shared zero page and frees the frames. The capture shows
    the zero page present, not writable, kpagecount 0, KPF_ZERO_PAGE."""
    s = _run("pageout_exclusive", tmp_path)
    op5 = next(e for e in s["ops"] if e["op"] == 5)
    assert op5["mthp_stats"]["nr_anon"] == -1 and op5["vm_events"]["thp_swpout_fallback"] >= 1
    ds = read_dataset(tmp_path / "snapshots" / "after")
    j = ds.pagemap.join(ds.pages, on="pfn", how="left")
    slot = j.filter((pl.col("vaddr") >= 0x7f0000400000) & (pl.col("vaddr") < 0x7f0000600000))
    assert slot.height == 512 and slot["present"].all() and not slot["writable"].any()
    assert ((slot["flags"] & (1 << KPF_ZERO_PAGE)) != 0).all()
    assert (slot["mapcount"] == 0).all() and slot["head_pfn"].is_null().all()
    assert slot["pfn"].n_unique() == 1
    assert ds.meta["vmstate.zero_pfn"] == str(slot["pfn"][0])
    data = j.filter(pl.col("vaddr") < 0x7f0000200000)  # the data THP: split, all still mapped
    assert data.height == 512 and data["head_pfn"].is_null().all() and (data["mapcount"] == 1).all()
    cold = j.filter((pl.col("vaddr") >= 0x7f0000200000) & (pl.col("vaddr") < 0x7f0000400000))
    assert cold["pmd"].all()  # MADV_COLD of a whole PMD-mapped THP splits nothing
