"""Each documented divergence of today's kernel from v5 (docs/divergences.md, vmstate.bridge.divergences),
shown on the running kernel: the simulator and ``kernel-run`` disagree in exactly that way, and
``vmstate diff`` names it instead of counting it (``--disallow NAME`` counts it)."""
import dataclasses

import polars as pl
import pytest

from bridge_helpers import SCENARIOS, needs_kernel, run_both
from vmstate.bridge import kworker as _kworker
from vmstate import cli
from vmstate.bridge.diff import diff, render
from vmstate.bridge.divergences import DIVERGENCES
from vmstate.bridge.kernel_run import probe_debugfs
from vmstate.bridge.procfs import KPF_ZERO_PAGE
from vmstate.io.scenario import load_scenario

BASE = 0x7F0000000000


def scenario(tmp_path, name, ops):
    """A scenario file from ``(op, fields)`` pairs."""
    text = f'[scenario]\nname = "{name}"\n'
    for op, fields in ops:
        text += f'\n[[op]]\nop = "{op}"\n' + "".join(
            f"{k} = {v if isinstance(v, int) else repr(v)}\n" for k, v in fields.items())
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace("'", '"'))
    return load_scenario(path)


def both(tmp_path, sc, **kw):
    sim, real = run_both(sc, tmp_path, **kw)
    return sim, real, diff(tmp_path / "sim", tmp_path / "kernel")


def test_every_divergence_names_its_test():
    for d in DIVERGENCES.values():
        file, _, test = d.test.partition("::")
        assert test.split("[")[0] in (SCENARIOS.parents[1] / file).read_text(), d.name


@needs_kernel
def test_shared_folio_not_split(tmp_path, capsys):
    sim, real, res = both(tmp_path, load_scenario(SCENARIOS / "fork_shared.toml"))
    assert sim["splits"][0]["succeeded"] == 32
    assert real["splits"][0]["skipped"] == 32 and real["splits"][0]["succeeded"] == 0
    assert real["snapshots"]["after-split"]["thps"] == 32
    assert res.differences == 0 and "shared_folio_not_split" in res.divergences, render(res)
    assert cli.main(["diff", str(tmp_path / "sim"), str(tmp_path / "kernel")]) == 0
    assert cli.main(["diff", str(tmp_path / "sim"), str(tmp_path / "kernel"),
                     "--disallow", "shared_folio_not_split"]) == 1
    assert "DIFFERS" in capsys.readouterr().out


@needs_kernel
@pytest.mark.parametrize("method", ["vmsplice", "io_uring"])
def test_split_eagain(tmp_path, method):
    """A pinned THP fails to split on both sides; the kernel's code is -EAGAIN, v5's -EBUSY."""
    sc = load_scenario(SCENARIOS / "gup_pinned.toml")
    sim, real, res = both(tmp_path, sc, pin_method=method)
    assert [(s["attempted"], s["succeeded"], s["failed"]) for s in real["splits"]] == \
        [(s["attempted"], s["succeeded"], s["failed"]) for s in sim["splits"]] == [(4, 3, 1), (1, 1, 0)]
    failed = [t for t in real["splits"][0]["thps"] if t["outcome"] == "failed"]
    assert [(t["vaddr"], t["ret"]) for t in failed] == [("0x7f0000200000", -11)]
    from vmstate import MemoryState
    s = MemoryState()
    s.mmap("p", BASE, 4 << 20)
    s.pin("p", BASE + 4096, 4096)
    assert s.split("p", BASE, 4 << 20).ret.tolist() == [-16, 0]
    assert res.differences == 0 and res.divergences["split_eagain"], render(res)


@needs_kernel
def test_deferred_split_accounting(tmp_path):
    """v5 counts a THP whose last mapping goes whole; 6.x does not, but counts one that its own
    split unmaps while PTE-mapped."""
    whole = scenario(tmp_path, "whole", [("mmap", {"mm": "p", "addr": BASE, "len": "4M"}),
                                         ("munmap", {"mm": "p", "addr": BASE, "len": "2M"}),
                                         ("snapshot", {"label": "x"})])
    sim, real, res = both(tmp_path / "whole", whole)
    assert sim["vm_events"]["thp_deferred_split_page"] == 1
    assert real["vm_events"]["thp_deferred_split_page"] == 0
    assert res.differences == 0 and "deferred_split_accounting" in res.divergences, render(res)
    pte = scenario(tmp_path, "pte", [("mmap", {"mm": "p", "addr": BASE, "len": "4M"}),
                                     ("split_pmd", {"mm": "p", "addr": BASE}),
                                     ("split", {"mm": "p", "addr": BASE, "len": "4M"}),
                                     ("snapshot", {"label": "x"})])
    sim, real, res = both(tmp_path / "pte", pte)
    assert sim["vm_events"]["thp_split_pmd"] == real["vm_events"]["thp_split_pmd"] == 2
    assert (sim["vm_events"]["thp_deferred_split_page"],
            real["vm_events"]["thp_deferred_split_page"]) == (0, 1)
    assert res.differences == 0 and "deferred_split_accounting" in res.divergences, render(res)


@needs_kernel
def test_zero_page_remap(tmp_path):
    """Written only in its first page, a split THP's 511 zero-filled subpages are remapped to the
    shared zero page and freed; v5 keeps every subpage."""
    sc = scenario(tmp_path, "zero", [("mmap", {"mm": "p", "addr": BASE, "len": "4M"}),
                                     ("split", {"mm": "p", "addr": BASE, "len": "4M"}),
                                     ("snapshot", {"label": "x"})])
    first = dataclasses.replace(sc.ops[0], fields={**sc.ops[0].fields, "fill": "first"})
    from vmstate.bridge.kernel_run import kernel_run
    from vmstate.cli import write_outputs
    from vmstate.batch.runner import run_scenario
    write_outputs(run_scenario(sc), tmp_path / "sim")
    kernel_run(dataclasses.replace(sc, ops=[first, *sc.ops[1:]]), tmp_path / "kernel")
    pm = pl.read_parquet(tmp_path / "kernel/snapshots/x/pagemap.parquet")
    pages = pl.read_parquet(tmp_path / "kernel/snapshots/x/pages.parquet")
    zero = pm.join(pages, on="pfn").filter((pl.col("flags") & (1 << KPF_ZERO_PAGE)) != 0)
    assert zero.height == 2 * 511 and zero["mapcount"].unique().to_list() == [0]
    res = diff(tmp_path / "sim", tmp_path / "kernel")
    freed = res.snapshots["x"]["freed"]
    assert {k: freed[k] for k in ("a", "b", "divergence")} == {"a": 0, "b": 2 * 511,
                                                               "divergence": "zero_page_remap"}
    assert res.differences == 0 and "zero_page_remap" in res.divergences, render(res)


@needs_kernel
def test_split_trigger(tmp_path):
    path, mount, why = probe_debugfs(_kworker.libc())
    if path is not None:
        pytest.skip("debugfs split_huge_pages is writable here: kernel-run uses it")
    assert "errno" in why or "debugfs" in why
    sim, real, res = both(tmp_path, load_scenario(SCENARIOS / "pmd_mapped.toml"))
    assert real["split_trigger"] == "madv_cold" and real["debugfs"].startswith("refused")
    assert {t["trigger"] for t in real["splits"][0]["thps"]} == {"madv_cold"}
    assert res.divergences["split_trigger"] == {"madv_cold": 1} and res.differences == 0


@needs_kernel
def test_writable_upper_bound(tmp_path):
    """fork write-protects the parent's PMD and it stays so after the child exits; the capture can
    only say the page is exclusive in a writable VMA."""
    sc = scenario(tmp_path, "wp", [("mmap", {"mm": "p", "addr": BASE, "len": "2M"}),
                                   ("fork", {"mm": "p", "child": "c"}), ("exit", {"mm": "c"}),
                                   ("snapshot", {"label": "x"})])
    sim, real, res = both(tmp_path, sc)
    sim_pm = pl.read_parquet(tmp_path / "sim/snapshots/x/pagemap.parquet")
    real_pm = pl.read_parquet(tmp_path / "kernel/snapshots/x/pagemap.parquet")
    assert not sim_pm["writable"].any() and real_pm["writable"].all()
    assert res.differences == 0 and "writable_upper_bound" in res.divergences, render(res)
    assert diff(tmp_path / "sim", tmp_path / "kernel",
                disallow=["writable_upper_bound"]).differences == 1
