"""``vmstate diff`` against a 6.18 simulation (no root needed): a simulated run dressed as a kernel-run
(refcount null, ``source: kernel-run``) stands in for the kernel. A ``"variant": "6.18"`` simulation
allows no model divergence; ``mthp_stats`` are compared; a counter only one variant lists is not;
the shared zero page exported as a capture shows it compares equal."""
import json
import shutil

import numpy as np
import polars as pl
import pytest

from bridge_helpers import SCENARIOS
from vmstate.batch.runner import run_scenario
from vmstate.bridge.diff import diff, render
from vmstate.cli import write_outputs
from vmstate.io.export import KPF_ANON, ZERO_PAGE_KPF, pagemap_frame, pages_frame
from vmstate.io.scenario import load_scenario
from vmstate.kernels.constants import (MTHP_STATS, VM_EVENTS, ZERO_PFN, _PAGE_ACCESSED,
                                       _PAGE_PRESENT, _PAGE_PSE, _PAGE_SPECIAL)

KERNEL_ZERO_PFN = 15154  # what this machine's kernel reports; any pfn no THP uses will do


def _summary(d):
    return json.loads((d / "summary.json").read_text())


def _write_summary(d, s):
    (d / ".current" / "summary.json").unlink()
    (d / ".current" / "summary.json").write_text(json.dumps(s))


def _as_kernel(sim, out, zero_vaddrs=()):
    """A copy of the simulated run ``sim`` that reads as a kernel-run: refcount null, the kernel's
    zero pfn for the zero page, the summary's source and counters of a 6.18 kernel-run."""
    shutil.copytree(sim, out, symlinks=True)
    cur = out / ".current"
    for snap in (cur / "snapshots").iterdir():
        pages = pl.read_parquet(snap / "pages.parquet")
        pm = pl.read_parquet(snap / "pagemap.parquet")
        zero_rows = pages.filter(pl.col("pfn") == ZERO_PFN)
        pages = pages.filter(pl.col("pfn") != ZERO_PFN)
        pm = pm.with_columns(pl.when(pl.col("pfn") == ZERO_PFN).then(KERNEL_ZERO_PFN)
                             .otherwise(pl.col("pfn")).cast(pl.UInt64).alias("pfn"))
        if zero_rows.height:
            pages = pl.concat([pages, zero_rows.with_columns(pl.lit(KERNEL_ZERO_PFN, pl.UInt64)
                                                             .alias("pfn"))])
        pages = pages.with_columns(pl.lit(None, pl.Int64).alias("refcount"))
        meta = {"vmstate.source": "capture", "vmstate.split_trigger": "madv_cold"}
        for name, frame in (("pages.parquet", pages), ("pagemap.parquet", pm)):
            (snap / name).unlink()
            frame.write_parquet(snap / name, metadata=meta)
    s = _summary(sim)
    s.update(source="kernel-run", split_trigger="madv_cold",
             vm_events={k: s["vm_events"].get(k, 0) for k in VM_EVENTS},
             mthp_stats=s.get("mthp_stats") or {k: 0 for k in MTHP_STATS})
    s.pop("variant", None)
    _write_summary(out, s)
    return out


def _as_618(d, mthp=None):
    """The simulated run ``d`` labelled a 6.18 simulation (its summary's variant and mthp_stats)."""
    s = _summary(d)
    s["variant"] = "6.18"
    s["vm_events"] = {k: s["vm_events"].get(k, 0) for k in VM_EVENTS}
    s["mthp_stats"] = mthp or {k: 0 for k in MTHP_STATS}
    _write_summary(d, s)
    return d


@pytest.fixture
def partial(tmp_path):
    sim = tmp_path / "sim"
    write_outputs(run_scenario(load_scenario(SCENARIOS / "partial_munmap.toml")), sim)
    return sim


def test_618_allows_only_what_proc_cannot_show(partial, tmp_path):
    real = _as_kernel(partial, tmp_path / "kernel")
    _as_618(partial)
    res = diff(partial, real)
    assert res.variant == "6.18" and res.differences == 0, render(res)
    assert set(res.divergences) <= {"refcount_not_exported", "writable_upper_bound",
                                    "split_trigger"}
    # a model divergence of v5 is not allowed for 6.18
    s = _summary(real)
    s["vm_events"]["thp_deferred_split_page"] += 1  # deferred_split_accounting in v5
    _write_summary(real, s)
    res = diff(partial, real)
    assert res.vm_events["thp_deferred_split_page"].get("differs"), render(res)
    assert "deferred_split_accounting" not in res.divergences


def test_mthp_stats_compared(partial, tmp_path):
    real = _as_kernel(partial, tmp_path / "kernel")
    _as_618(partial, {k: 0 for k in MTHP_STATS})
    s = _summary(real)
    s["mthp_stats"]["split_deferred"] = 1
    _write_summary(real, s)
    res = diff(partial, real)
    assert res.mthp_stats["split_deferred"] == {"a": 0, "b": 1, "differs": True}
    assert res.differences == 1 and "mthp_stats" in render(res)


def test_counters_only_one_variant_lists(partial, tmp_path):
    """A v5 simulation lists five vm_events, a kernel-run eight and mthp_stats: not differences."""
    real = _as_kernel(partial, tmp_path / "kernel")
    assert "thp_swpout_fallback" not in _summary(partial)["vm_events"]
    res = diff(partial, real)
    assert res.differences == 0, render(res)
    assert res.vm_events["thp_swpout_fallback"] == {"a": None, "b": 0}
    assert not res.mthp_stats


def _map_zero_page(state, count=3):
    """The first ``count`` PTEs of the first PTE table of a live process become zero-page PTEs
    (as 6.18's split remaps zero-filled subpages)."""
    mm = next(m for m in state.mms.values() if m.alive)
    for row in mm.rows.tolist():
        e = int(state.pmd[row])
        if e & _PAGE_PRESENT and not e & _PAGE_PSE:
            t = int(state.pte_table[row])
            k = np.flatnonzero(state.ptes[t])[:count]
            old = (state.ptes[t, k] >> np.uint64(12)).astype(np.int64).tolist()
            state.ptes[t, k] = np.uint64(ZERO_PFN << 12 | _PAGE_PRESENT | _PAGE_ACCESSED
                                         | _PAGE_SPECIAL)
            return old
    raise AssertionError("no PTE table")


def test_export_writes_the_zero_page_as_the_kernel_shows_it():
    r = run_scenario(load_scenario(SCENARIOS / "partial_munmap.toml"))
    assert pages_frame(r.state).filter(pl.col("pfn") == ZERO_PFN).height == 0
    _map_zero_page(r.state)
    pages, pm = pages_frame(r.state), pagemap_frame(r.state)
    (row,) = pages.filter(pl.col("pfn") == ZERO_PFN).iter_rows(named=True)
    assert row == {"pfn": ZERO_PFN, "flags": ZERO_PAGE_KPF, "mapcount": 0, "refcount": None,
                   "head_pfn": None}
    assert not row["flags"] & (1 << KPF_ANON)
    z = pm.filter(pl.col("pfn") == ZERO_PFN)
    assert z.height == 3 and z["present"].all() and not z["writable"].any() and not z["pmd"].any()


def test_zero_page_equal_on_both_sides(tmp_path):
    """Both sides map the zero page at the same addresses: equal for 6.18. Only the kernel side
    maps it: a difference for 6.18, zero_page_remap for v5."""
    sc = load_scenario(SCENARIOS / "partial_munmap.toml")
    r = run_scenario(sc)
    write_outputs(r, tmp_path / "plain")
    # rerun and remap before the snapshots are written: patch the written datasets instead
    r2 = run_scenario(sc)
    freed = _map_zero_page(r2.state)  # their frames are freed (as the kernel's remap frees them)
    pages = pages_frame(r2.state).with_columns(
        *(pl.when(pl.col("pfn").is_in(freed)).then(0).otherwise(pl.col(c)).alias(c)
          for c in ("refcount", "mapcount", "flags")))
    snaps = {lb: (pages, pagemap_frame(r2.state)) for lb in r2.snapshots}
    r2.snapshots.update(snaps)
    write_outputs(r2, tmp_path / "zero")
    real = _as_kernel(tmp_path / "zero", tmp_path / "kernel")
    snap = next((real / "snapshots").iterdir())
    assert pl.read_parquet(snap / "pages.parquet").filter(
        pl.col("pfn") == KERNEL_ZERO_PFN)["flags"].to_list() == [ZERO_PAGE_KPF]
    _as_618(tmp_path / "zero")
    res = diff(tmp_path / "zero", real)
    assert res.differences == 0, render(res)
    _as_618(tmp_path / "plain")
    res = diff(tmp_path / "plain", real)
    assert res.differences > 0 and "zero_page_remap" not in res.divergences, render(res)
    s = _summary(tmp_path / "plain")
    s["variant"] = "v5"
    _write_summary(tmp_path / "plain", s)
    res = diff(tmp_path / "plain", real, disallow=())
    assert "zero_page_remap" in res.divergences, render(res)
