"""``vmstate.batch.api``: the same run as ``vmstate run``, plus per-split and per-THP frames; scenarios
built from Python data are checked like files; the examples in ``docs/api.md`` run."""
import re
from pathlib import Path

import polars as pl
import pytest

from vmstate.batch import api
from vmstate.errors import BadInput
from vmstate.batch.runner import run_scenario

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((REPO / "datasets" / "scenarios").glob("*.toml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_run_is_vmstate_run(path):
    r = api.run(path)
    ref = run_scenario(api.load(path))
    assert r.summary == ref.summary
    assert r.snapshots.keys() == ref.snapshots.keys()
    for label, (pages, pagemap) in ref.snapshots.items():
        assert r.pages(label).equals(pages) and r.pagemap(label).equals(pagemap)
    # The frames say what the summary says.
    splits = r.splits
    assert splits.select("op", "mm", "attempted", "succeeded", "failed").to_dicts() == \
        r.summary["splits"]
    assert (splits["failed"] == splits["fail_anon_vma"] + splits["fail_precheck"]
            + splits["fail_recheck"]).all()
    thps = r.thps
    assert thps.group_by("op", maintain_order=True).len()["len"].to_list() == \
        splits["attempted"].to_list()
    assert thps.filter(pl.col("ret") != 0).height == splits["failed"].sum()
    assert dict(zip(r.counters["name"], r.counters["value"])) == {**r.vm_events, **r.costs}


def test_population_run_and_frames():
    s = api.population(thps=300, shared=0.5, mappers=3, pinned=0.1, pte_mapped=0.2, seed=4)
    assert s.ops[0].fields["len"] == 300 << 21
    r = api.run(s)
    row = r.splits.row(0, named=True)
    assert (row["attempted"], row["failed"], row["fail_precheck"]) == (300, 30, 30)
    thps = r.thps
    assert thps.columns[:4] == ["op", "head_pfn", "ret", "reason"]
    # A failed split at the precheck costs nothing; the split costs are those the state counted.
    assert thps.filter(pl.col("reason") == 2)["pte_write"].sum() == 0
    assert r.seconds["population"] > 0 and r.splits["seconds"][0] > 0
    empty = api.run(api.population(thps=3, split=False))
    assert empty.splits.is_empty() and empty.thps.is_empty()
    assert empty.thps.columns == thps.columns


def test_variant_and_race():
    doc = {"scenario": {"name": "r", "seed": 3, "variant": "v4.5"},
           "op": [{"op": "mmap", "mm": "p", "addr": 0x7F0000000000, "len": "16M"},
                  {"op": "split", "mm": "p", "addr": 0x7F0000000000, "len": "16M",
                   "race": {"pin": "after_precheck", "unpin": "after_split", "fraction": 0.5}}]}
    r = api.run(doc)
    assert r.summary["variant"] == "v4.5"
    assert r.splits["fail_recheck"].to_list() == [4]
    assert api.run(api.population(thps=8, variant="v4.5", seed=1)).summary["variant"] == "v4.5"


def test_parse_checks_like_a_file():
    toml = '[scenario]\nname = "x"\n[[op]]\nop = "mmap"\nmm = "p"\naddr = 0x200000\nlen = "2M"\n'
    s = api.parse(toml)
    assert s.name == "x" and s.ops[0].fields["len"] == 2 << 20
    with pytest.raises(BadInput, match=r"^<api>: op 1: field 'len': expected"):
        api.parse({"scenario": {"name": "x"},
                   "op": [{"op": "mmap", "mm": "p", "addr": 0x200000, "len": 5000}]})
    with pytest.raises(BadInput, match="unknown op 'splt'.*did you mean 'split'"):
        api.parse({"scenario": {"name": "x"}, "op": [{"op": "splt"}]})
    with pytest.raises(BadInput, match="unknown top-level"):
        api.parse({"scenario": {"name": "x"}, "ops": []})
    with pytest.raises(BadInput, match="malformed TOML"):
        api.parse("[scenario")
    with pytest.raises(BadInput, match=r"\[population\].*field 'pinned'"):
        api.run(api.population(thps=4, pinned=2.0))
    with pytest.raises(BadInput, match="no snapshot 'nope'"):
        api.run(api.population(thps=2)).pages("nope")


def test_docs_api_examples_run(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), re.S)
    assert len(blocks) >= 3
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/api.md block {i + 1}", "exec"), {})
    assert "fail_recheck" in capsys.readouterr().out


def test_variant_618_through_the_api_and_a_sweep_population(tmp_path):
    """6.18 as a scenario key, in a population and in a sweep's grid: the summary says so and lists
    the 6.18 counters (mthp_stats)."""
    doc = {"scenario": {"name": "m", "seed": 1, "variant": "6.18"},
           "op": [{"op": "mmap", "mm": "p", "addr": 0x7F0000000000, "len": "4M", "fill": "zero"},
                  {"op": "munmap", "mm": "p", "addr": 0x7F0000001000, "len": "4K"},
                  {"op": "shrink"}]}
    r = api.run(api.parse(doc))
    assert r.summary["variant"] == "6.18"
    assert r.summary["vm_events"]["thp_deferred_split_page"] == 1
    assert r.summary["mthp_stats"]["split"] == 1 and r.summary["shrinks"][0]["succeeded"] == 1
    pop = api.run(api.population(thps=8, variant="6.18", seed=1))
    assert pop.summary["variant"] == "6.18" and "mthp_stats" in pop.summary
