"""``vmstate diff`` on simulated datasets (no root needed): equal runs, real differences, the table,
--json and the exit statuses."""
import json

import polars as pl
import pytest

from bridge_helpers import SCENARIOS
from vmstate import cli
from vmstate.cli import write_outputs
from vmstate.bridge.diff import diff, render
from vmstate.errors import BadInput
from vmstate.batch.runner import run_scenario
from vmstate.io.scenario import load_scenario


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name in ("pmd_mapped", "gup_pinned", "mprotect"):
        d = tmp_path_factory.mktemp(name)
        write_outputs(run_scenario(load_scenario(SCENARIOS / f"{name}.toml")), d)
        out[name] = d
    return out


def test_a_run_equals_itself(runs, capsys):
    res = diff(runs["pmd_mapped"], runs["pmd_mapped"])
    assert res.differences == 0 and res.sim is None and not res.divergences
    assert "every slot and page agrees" in render(res)
    assert cli.main(["diff", str(runs["pmd_mapped"]), str(runs["pmd_mapped"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["equal"] and out["differences"] == 0


def test_different_runs_differ(runs, capsys):
    """Two simulations: no divergence applies, every difference counts."""
    a = runs["mprotect"] / "snapshots" / "after-mprotect"
    b = runs["mprotect"] / "snapshots" / "after-split"
    res = diff(a, b)
    rows = res.snapshots["."]["slot_rows"]
    assert [(r["a"], r["b"]) for r in rows] == [("thp-pte", "small"), ("thp-pte", "small"),
                                               ("thp-pmd", "small"), ("thp-pmd", "small")]
    assert res.differences == 4
    assert cli.main(["diff", str(a), str(b)]) == 1
    assert "DIFFERS" in capsys.readouterr().out


def test_summaries_compared(runs):
    res = diff(runs["gup_pinned"], runs["pmd_mapped"])
    assert res.vm_events["thp_fault_alloc"] == {"a": 4, "b": 32, "differs": True}
    assert any(s.get("differs") for s in res.splits)
    assert res.snapshots["pinned"] == {"missing": "b"}


def test_mapcount_difference_found(runs, tmp_path):
    src = runs["pmd_mapped"] / "snapshots" / "before-split"
    d = tmp_path / "x"
    d.mkdir()
    (d / "pagemap.parquet").write_bytes((src / "pagemap.parquet").read_bytes())
    pages = pl.read_parquet(src / "pages.parquet")
    pages.with_columns(pl.when(pl.col("pfn") == 600).then(2).otherwise(pl.col("mapcount"))
                       .alias("mapcount")).write_parquet(d / "pages.parquet")
    res = diff(src, d)
    (row,) = res.snapshots["."]["slot_rows"]
    assert row["differs"] == {"mapcount": 1} and res.differences == 1


def test_bad_inputs(runs, tmp_path):
    with pytest.raises(BadInput, match="expected a run directory"):
        diff(tmp_path, runs["pmd_mapped"])
    with pytest.raises(BadInput, match="unknown divergence"):
        diff(runs["pmd_mapped"], runs["pmd_mapped"], disallow=["nope"])
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "summary.json").write_text("{not json")
    with pytest.raises(BadInput, match="summary.json"):
        diff(tmp_path / "s", runs["pmd_mapped"])
