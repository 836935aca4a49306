"""``vmstate capture`` and ``MemoryState.from_capture``: a live process's THPs as a state dataset, that
dataset (or a simulator snapshot) loaded into the engine, validated and split; bad datasets refused
naming the file and column."""
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bridge_helpers import SCENARIOS, live_thp_process, needs_kernel
from vmstate import MemoryState, cli
from vmstate.bridge.capture import REFCOUNT_REASON, Target, capture, write_capture
from vmstate.bridge.load import from_capture
from vmstate.cli import write_outputs
from vmstate.errors import BadInput
from vmstate.io.export import PAGEMAP_SCHEMA, PAGES_SCHEMA, pagemap_frame, pages_frame
from vmstate.batch.runner import run_scenario
from vmstate.io.scenario import load_scenario

N = 512
TWO_M = 2 << 20


@pytest.fixture(scope="module")
def sim_runs(tmp_path_factory):
    """Every named scenario's ``vmstate run --out`` directory (no root needed)."""
    out = {}
    for path in sorted(SCENARIOS.glob("*.toml")):
        d = tmp_path_factory.mktemp(path.stem)
        result = run_scenario(load_scenario(path))
        write_outputs(result, d)
        out[path.stem] = (d, result)
    return out


# ---- a live process ---------------------------------------------------------------------------
@needs_kernel
def test_capture_schema_and_metadata(tmp_path):
    with live_thp_process(4) as (pid, addr):
        c = capture([Target("app", pid)], [(addr, addr + 4 * TWO_M)])
        write_capture(c, tmp_path)
    pages = pl.read_parquet(tmp_path / "pages.parquet")
    pagemap = pl.read_parquet(tmp_path / "pagemap.parquet")
    assert dict(pages.schema) == PAGES_SCHEMA and dict(pagemap.schema) == PAGEMAP_SCHEMA
    assert pages["refcount"].null_count() == pages.height == 4 * N
    meta = pl.read_parquet_metadata(tmp_path / "pages.parquet")
    assert meta["vmstate.refcount"] == REFCOUNT_REASON and meta["vmstate.source"] == "capture"
    pm_meta = pl.read_parquet_metadata(tmp_path / "pagemap.parquet")
    assert "PAGEMAP_SCAN" in pm_meta["vmstate.pmd"] or "heuristic" in pm_meta["vmstate.pmd"]
    assert "upper bound" in pm_meta["vmstate.writable"]
    assert json.loads(pm_meta["vmstate.processes"]) == {"app": pid}
    # every page PMD-mapped, mapcount 1, writable; 4 THPs of 512 frames with a 512-aligned head
    assert pagemap.height == 4 * N and pagemap["pmd"].all() and pagemap["writable"].all()
    assert pagemap["present"].all() and not pagemap["migration"].any()
    assert pages["mapcount"].unique().to_list() == [1]
    groups = pages.group_by("head_pfn").len()
    assert groups.height == 4 and groups["len"].unique().to_list() == [N]
    assert (groups["head_pfn"] % N == 0).all()
    j = pagemap.join(pages, on="pfn")
    assert ((j["pfn"] - j["head_pfn"]) == (j["vaddr"] - addr) % TWO_M // 4096).all()


@needs_kernel
def test_live_capture_loads_validates_and_splits(tmp_path):
    with live_thp_process(4) as (pid, addr):
        assert cli.main(["capture", "--pid", f"app={pid}", "--range",
                         f"0x{addr:x}-0x{addr + 4 * TWO_M:x}", "--out", str(tmp_path)]) == 0
    s = from_capture(tmp_path)
    s.validate()
    report = s.capture_report
    assert report["thps"] == 4 and report["pmd_mapped"] == 4 and report["source"] == "capture"
    assert "pins are invisible" in report["pins"]
    assert s.snapshot_summary() == {"thps": 4, "pages_in_use": 4 * N}
    # pins are the user's to add: one on the second THP makes its split fail (-EBUSY, precheck)
    s.pin("app", addr + TWO_M + 4096, 4096)
    r = s.split("app", addr, 4 * TWO_M)
    s.validate()
    assert (r.attempted, r.succeeded, r.failed) == (4, 3, 1)
    assert s.vm_events["thp_split_page"] == 3 and s.vm_events["thp_split_pmd"] == 3
    pm = pagemap_frame(s)
    assert pm.height == 4 * N and pm["pmd"].sum() == N  # the pinned THP's PMD was not split
    s.unpin("app", addr + TWO_M + 4096, 4096)
    assert s.split("app", addr, 4 * TWO_M).succeeded == 1
    s.validate()
    assert s.snapshot_summary() == {"thps": 0, "pages_in_use": 4 * N}


@needs_kernel
def test_capture_whole_process_and_run_from_it(tmp_path, capsys):
    """Without --range every VMA is captured; loading keeps the anonymous pages and says what it
    left out; ``vmstate run --from-capture`` splits the THPs there."""
    with live_thp_process(2) as (pid, addr):
        assert cli.main(["capture", "--pid", str(pid), "--out", str(tmp_path / "cap")]) == 0
    scenario = tmp_path / "split.toml"
    scenario.write_text(f'[scenario]\nname = "s"\n[[op]]\nop = "split"\nmm = "{pid}"\n'
                        f'addr = {addr}\nlen = "4M"\n[[op]]\nop = "snapshot"\nlabel = "x"\n')
    capsys.readouterr()
    assert cli.main(["run", str(scenario), "--from-capture", str(tmp_path / "cap"),
                     "--rename", f"{pid}=app", "--json"]) == 2  # the ops still say the pid
    assert "process" in capsys.readouterr().err
    assert cli.main(["run", str(scenario), "--from-capture", str(tmp_path / "cap"), "--json",
                     "--validate"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"][0]["succeeded"] == 2
    assert summary["from_capture"]["thps"] == 2
    assert any("non-anonymous" in n for n in summary["from_capture"]["notes"])


def test_capture_of_missing_process_is_bad_input(capsys, tmp_path):
    assert cli.main(["capture", "--pid", "999999999", "--out", str(tmp_path / "x")]) == 2
    assert "/proc/999999999/maps" in capsys.readouterr().err
    assert not (tmp_path / "x" / "pages.parquet").exists()


# ---- simulator snapshots: loading is exact -------------------------------------------------------
def test_simulator_snapshots_load_back_exactly(sim_runs):
    """Every snapshot of every named scenario, loaded into a fresh engine, exports the same pagemap
    (the same pfn offsets in their blocks; the pfns themselves too unless a split left holes in a
    block) and the same flags and mapcounts; refcounts differ only by the pins."""
    for name, (d, result) in sim_runs.items():
        for label, (pages, pagemap) in result.snapshots.items():
            s = from_capture(d / "snapshots" / label)
            p2, m2 = pages_frame(s), pagemap_frame(s)
            assert m2.drop("pfn").equals(pagemap.drop("pfn")), (name, label)
            assert (m2["pfn"] % N).equals(pagemap["pfn"] % N)
            if (name, label) != ("partial_munmap", "after-split"):
                assert m2["pfn"].equals(pagemap["pfn"]), (name, label)
            cols = ["mm", "vaddr", "flags", "mapcount", "head_pfn"]
            a = pagemap.join(pages, on="pfn").select(cols).sort("mm", "vaddr")
            b = m2.join(p2, on="pfn").select(cols).sort("mm", "vaddr")
            assert a.equals(b), (name, label)
            if name == "gup_pinned" and label == "pinned":
                assert "exceeds" in s.capture_report["pins"]


def test_loaded_state_runs_the_rest_of_a_scenario(sim_runs, tmp_path, capsys):
    """fork_shared's after-split state (all split) and a scenario that goes on from it."""
    d, _ = sim_runs["mix"]
    scenario = tmp_path / "more.toml"
    scenario.write_text('[scenario]\nname = "more"\n[[op]]\nop = "fork"\nmm = "parent"\n'
                        'child = "c2"\n[[op]]\nop = "snapshot"\nlabel = "forked"\n')
    assert cli.main(["run", str(scenario), "--from-capture", str(d / "snapshots" / "end"),
                     "--validate"]) == 0
    out = capsys.readouterr().out
    assert "from capture" in out and "pages_in_use 4352" in out


def test_v45_variant_loads(sim_runs):
    d, _ = sim_runs["mprotect"]
    s = from_capture(d / "snapshots" / "after-mprotect", variant="v4.5")
    s.validate()
    assert s.split("proc", 0x7F0000000000, 8 << 20).succeeded == 4
    s.validate()


# ---- bad datasets ----------------------------------------------------------------------------------
def _copy(src: Path, dst: Path):
    dst.mkdir()
    for f in ("pages.parquet", "pagemap.parquet"):
        (dst / f).write_bytes((src / f).read_bytes())
    return dst


@pytest.mark.parametrize("damage, file, column", [
    ("truncate", "pages.parquet", None),
    ("drop:mapcount", "pages.parquet", "mapcount"),
    ("cast:vaddr", "pagemap.parquet", "vaddr"),
    ("null:pfn", "pagemap.parquet", "pfn"),
    ("extra:x", "pages.parquet", "x"),
    ("missing", "pagemap.parquet", None),
])
def test_bad_dataset_is_bad_input(sim_runs, tmp_path, capsys, damage, file, column):
    d = _copy(sim_runs["pmd_mapped"][0] / "snapshots" / "before-split", tmp_path / "bad")
    f = d / file
    kind, _, col = damage.partition(":")
    if kind == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "missing":
        f.unlink()
    else:
        frame = pl.read_parquet(f)
        if kind == "drop":
            frame = frame.drop(col)
        elif kind == "cast":
            frame = frame.with_columns(pl.col(col).cast(pl.Int64))
        elif kind == "null":
            frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(None)
                                       .otherwise(pl.col(col)).alias(col))
        elif kind == "extra":
            frame = frame.with_columns(pl.lit(1).alias(col))
        frame.write_parquet(f)
    with pytest.raises(BadInput) as e:
        from_capture(d)
    assert str(f) in str(e.value)
    if column is not None:
        assert f"column '{column}'" in str(e.value)
    scenario = tmp_path / "s.toml"
    scenario.write_text('[scenario]\nname = "s"\n[[op]]\nop = "snapshot"\nlabel = "x"\n')
    capsys.readouterr()
    assert cli.main(["run", str(scenario), "--from-capture", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(f) in err
    assert cli.main(["diff", str(d), str(d)]) == 2


def test_inconsistent_dataset_is_bad_input(sim_runs, tmp_path):
    """A pmd flag on part of a THP and a pagemap row whose pfn pages.parquet lacks."""
    src = sim_runs["partial_munmap"][0] / "snapshots" / "after-munmap"
    d = _copy(src, tmp_path / "a")
    pm = pl.read_parquet(d / "pagemap.parquet")
    pm.with_columns(pl.when(pl.int_range(pl.len()) < 3).then(True).otherwise(pl.col("pmd"))
                    .alias("pmd")).write_parquet(d / "pagemap.parquet")
    with pytest.raises(BadInput, match="column 'pmd'"):
        from_capture(d)
    d = _copy(src, tmp_path / "b")
    pm.with_columns(pl.col("pfn") + np.uint64(1 << 40)).write_parquet(d / "pagemap.parquet")
    with pytest.raises(BadInput, match="column 'pfn'.*no row in pages.parquet"):
        from_capture(d)


@needs_kernel
def test_pmd_heuristic_agrees_with_pagemap_scan(monkeypatch, tmp_path):
    """Before Linux 6.7 (no PAGEMAP_SCAN) the pmd column comes from a heuristic; here it gives the
    same column, for PMD-mapped THPs and for one whose PMD MADV_DONTNEED of one page split."""
    from vmstate.bridge import procfs
    from vmstate.bridge.kernel_run import kernel_run
    sc = tmp_path / "s.toml"
    sc.write_text('[scenario]\nname = "s"\n[[op]]\nop = "mmap"\nmm = "p"\naddr = 0x7f0000000000\n'
                  'len = "6M"\n[[op]]\nop = "madvise_dontneed"\nmm = "p"\naddr = 0x7f0000201000\n'
                  'len = "4K"\n[[op]]\nop = "snapshot"\nlabel = "x"\n')
    kernel_run(load_scenario(sc), tmp_path / "exact")
    monkeypatch.setattr(procfs, "pagemap_scan", lambda fd, lo, hi: None)
    kernel_run(load_scenario(sc), tmp_path / "guess")
    exact, guess = (pl.read_parquet(tmp_path / d / "snapshots/x/pagemap.parquet")
                    for d in ("exact", "guess"))
    meta = pl.read_parquet_metadata(tmp_path / "guess/snapshots/x/pagemap.parquet")
    assert meta["vmstate.pmd"].startswith("heuristic") and meta["vmstate.notes"] == "[]"
    assert guess.drop("pfn").equals(exact.drop("pfn"))
    assert exact["pmd"].sum() == 2 * N and exact.height == 3 * N - 1
