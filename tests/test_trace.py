"""``vmstate run --trace``: the per-op record of one THP from the engine (``Tracer`` reading the
block in place) equals the record the same code builds from the reference model's ``dump()`` after
the same op, on every classic scenario (v5), and on one each in v4.5 and 6.18."""
import dataclasses
import json
from pathlib import Path

import pytest

from tests.reference import ReferenceState
from vmstate.batch.runner import run_scenario
from vmstate.batch.trace import Tracer, locate, trace_lines
from vmstate.cli.commands import main
from vmstate.io.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parent.parent / "datasets" / "scenarios"
CLASSIC = sorted(p.stem for p in SCENARIOS.glob("*.toml"))


def traced_address(scenario) -> tuple[int, str]:
    """The first address an op after the mmaps names (the pinned page, the munmapped range...),
    else the first mmap's."""
    ops = [op for op in scenario.ops if "addr" in op.fields]
    later = [op for op in ops if op.op != "mmap"]
    op = (later or ops)[0]
    return op.fields["addr"], op.fields["mm"]


def reference_records(scenario, addr, mm) -> list[dict]:
    ref, tracer = ReferenceState(scenario.variant), Tracer(addr, mm, scenario.variant)
    for op in scenario.ops:
        f = op.fields
        match op.op:
            case "snapshot":
                pass
            case "mmap":
                ref.mmap(f["mm"], f["addr"], f["len"], thp=f["thp"], fill=f["fill"])
            case "fork":
                ref.fork(f["mm"], f["child"])
            case "exit":
                ref.exit(f["mm"])
            case "mprotect":
                ref.mprotect(f["mm"], f["addr"], f["len"], f["prot"])
            case "split_pmd":
                ref.split_pmd(f["mm"], f["addr"])
            case "shrink":
                ref.shrink()
            case "split" if f.get("race") is not None:
                race = dataclasses.replace(f["race"], seed=[scenario.seed, op.index])
                ref.split(f["mm"], f["addr"], f["len"], race=race)
            case _:
                getattr(ref, op.op)(f["mm"], f["addr"], f["len"])
        dump = ref.dump()
        tracer.record(op, lambda: locate(dump, tracer.mm, addr), lambda b: dump)
    return tracer.records


CASES = [(name, "v5") for name in CLASSIC] + [("gup_pinned", "v4.5"), ("mix", "6.18")]


@pytest.mark.parametrize("name,variant", CASES)
def test_trace_matches_reference(name, variant):
    scenario = dataclasses.replace(load_scenario(SCENARIOS / f"{name}.toml"), variant=variant)
    addr, mm = traced_address(scenario)
    tracer = Tracer(addr, mm, variant)
    run_scenario(scenario, trace=tracer)
    expected = reference_records(scenario, addr, mm)
    assert len(tracer.records) == len(scenario.ops)
    for got, want in zip(tracer.records, expected):
        assert got == want, f"{name} ({variant}) op {got['op']} {got['name']}"
    assert any(r["mapped"] for r in tracer.records)
    lines = trace_lines(tracer.records, addr, mm)
    assert len(lines) == len(scenario.ops) + 1  # the header line, then one per op


def test_trace_cli(capsys):
    path = SCENARIOS / "gup_pinned.toml"
    assert main(["run", str(path), "--trace", "0x7f0000201000@proc"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("trace 0x7f0000201000@proc: frame block pfn")
    assert out[2].split()[2:] == ["pin", "_count[0]", "1->2"]
    assert main(["run", str(path), "--trace", "0x7f0000201000", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in records][:3] == ["mmap", "pin", "split"]
    assert records[1]["_count"][0] == [0, 0, 2]


@pytest.mark.parametrize("arg,expected", [("nonsense", "expected ADDR or ADDR@MM"),
                                          ("0x7f0000000000@nobody", "names process 'nobody'")])
def test_trace_bad_input(capsys, arg, expected):
    assert main(["run", str(SCENARIOS / "gup_pinned.toml"), "--trace", arg]) == 2
    assert expected in capsys.readouterr().err
