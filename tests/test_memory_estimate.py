"""The one memory estimate (:mod:`vmstate.engine.memory_estimate`) against the peak RSS growth of
populations generated and split in a fresh process, and the one refusal message that ``vmstate
run`` (ops or ``[population]``), ``from_population`` and ``vmstate sweep`` give with it."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vmstate.engine.state
from vmstate import cli
from vmstate.batch.sweep import parse_sweep, run_sweep, shard_tasks
from vmstate.engine.memory_estimate import estimate
from vmstate.engine.population import (
    from_population, parse_population, population_bytes, population_estimate,
)
from vmstate.errors import BadInput

REPO = Path(__file__).resolve().parents[1]
JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0")
REFUSAL = re.compile(r"field '(\w+)': .+ would need about [\d.e+-]+ GiB \(vmstate's memory "
                     r"estimate\); [\d.e+-]+ GiB is available \(MemAvailable\) \(ENOMEM\)$")

# Generate the population, split every THP, print the estimate and the peak RSS growth: the peak
# (VmHWM, restarted after the imports and a warm-up run that loads every kernel) minus the RSS then.
PROBE = """
import gc, json, os, resource, sys
from vmstate.engine.population import from_population, parse_population, population_estimate
table = json.loads(sys.argv[1])
w = from_population({"thps": 8, "shared": 0.5, "pinned": 0.25, "pte_mapped": 0.25,
                     "partially_unmapped": 0.25})
w.split("parent", 0x7F0000000000, 8 << 21)
del w
gc.collect()
with open("/proc/self/statm") as f:
    base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
try:  # restart the peak here (VmHWM), so no earlier peak (a compile, the warm-up) is counted
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
s = from_population(table)
s.split("parent", 0x7F0000000000, table["thps"] << 21)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
print(json.dumps({"estimate": population_estimate(parse_population(table)).total,
                  "growth": peak - base}))
"""

SHAPES = {
    "pmd": {"thps": 50000},
    "shared_by_2": {"thps": 40000, "shared": 1.0, "mappers": 2},
    "shared_by_3": {"thps": 30000, "shared": 1.0, "mappers": 3},
    "pte_mapped": {"thps": 30000, "pte_mapped": 1.0},
    "partially_unmapped": {"thps": 30000, "partially_unmapped": 1.0},
    "partially_unmapped_384": {"thps": 20000, "partially_unmapped": 1.0, "unmapped_subpages": 384},
    "pinned": {"thps": 30000, "pinned": 0.5, "pins": 3},
    "mixed": {"thps": 40000, "shared": 0.3, "mappers": 3, "pte_mapped": 0.2,
              "partially_unmapped": 0.1, "pinned": 0.1},
}


@pytest.fixture(scope="module")
def warm_cache():
    """Compile (or load) every kernel once, so no probe's peak is the compiler's."""
    subprocess.run([sys.executable, "-c", PROBE, json.dumps({"thps": 8, "shared": 0.5, "pinned": 0.25,
                                                             "pte_mapped": 0.25,
                                                             "partially_unmapped": 0.25})], cwd=REPO,
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.skipif(not JIT, reason="splits 20k-50k THPs: needs the jitted kernels")
@pytest.mark.parametrize("shape", SHAPES)
def test_estimate_is_within_25_percent_of_peak_rss(shape, warm_cache, record_property):
    table = SHAPES[shape]
    if vmstate.engine.state.available_memory() < 4 * population_bytes(parse_population(table)):
        pytest.skip("not enough memory available to measure")
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(table)], cwd=REPO, check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    m = json.loads(out.stdout)
    ratio = m["estimate"] / m["growth"]
    record_property("estimate_over_rss", round(ratio, 3))
    print(f"{shape}: estimate {m['estimate'] / 2**20:.1f} MiB, peak RSS growth "
          f"{m['growth'] / 2**20:.1f} MiB, ratio {ratio:.3f}")
    assert 0.75 <= ratio <= 1.25, m


def test_every_mapping_and_pin_counts():
    one = population_estimate(parse_population({"thps": 1000}))
    shared = population_estimate(parse_population({"thps": 1000, "shared": 1.0, "mappers": 3}))
    pinned = population_estimate(parse_population({"thps": 1000, "pinned": 1.0}))
    assert shared.parts["mappings"] == 3 * one.parts["mappings"]  # every mapper: PMD + PTE table
    assert shared.parts["blocks"] == one.parts["blocks"] == 1000 * 6264
    assert pinned.parts["pins"] > 0 == one.parts["pins"]
    grown = estimate(blocks=1000, mappings=1000, grown=True)
    assert grown.parts["blocks"] == 2 * one.parts["blocks"]


def test_from_population_refuses_with_the_estimate(monkeypatch):
    table = {"thps": 1000, "pinned": 0.5}
    need = population_bytes(parse_population(table))
    monkeypatch.setattr(vmstate.engine.state, "available_memory", lambda: need - 1)
    with pytest.raises(BadInput) as e:
        from_population(table)
    assert e.value.field == "thps" and REFUSAL.match(str(e.value)), str(e.value)
    assert "a population of 1000 THPs and its split" in str(e.value)
    monkeypatch.setattr(vmstate.engine.state, "available_memory", lambda: need)
    from_population(table)


def test_vmstate_run_refuses_ops_and_populations_alike(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vmstate.engine.state, "available_memory", lambda: 64 << 20)
    ops = tmp_path / "ops.toml"
    ops.write_text('[scenario]\nname = "o"\n[[op]]\nop = "mmap"\nmm = "a"\naddr = 0x7f0000000000\n'
                   'len = "8M"\n[[op]]\nop = "fork"\nmm = "a"\nchild = "b"\n'
                   '[[op]]\nop = "mmap"\nmm = "a"\naddr = 0x7f4000000000\nlen = "8G"\n'
                   '[[op]]\nop = "split"\nmm = "a"\naddr = 0x7f0000000000\nlen = "8M"\n')
    pop = tmp_path / "pop.toml"
    pop.write_text('[scenario]\nname = "p"\n[population]\nthps = 20000\n')
    assert cli.main(["run", str(ops)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vmstate: error: {ops}: op 3 (line 12): field 'len': the mmaps up to "
                          f"here and a split would need about ")
    assert REFUSAL.search(err)
    assert cli.main(["run", str(pop)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vmstate: error: {pop}: [population]: field 'thps': a population of "
                          f"20000 THPs and its split would need about "), err
    assert REFUSAL.search(err)


def test_sweep_refuses_workers_times_the_largest_run(tmp_path, monkeypatch):
    doc = {"sweep": {"name": "m", "seeds": [1]}, "population": {"thps": 64},
           "grid": {"shared": [0.0, 1.0], "mappers": [4]}}
    sweep = parse_sweep(doc)
    largest = max(population_bytes(parse_population(t.table))
                  for r in sweep.plan() for t in shard_tasks(r, 1))
    monkeypatch.setattr(vmstate.engine.state, "available_memory", lambda: largest * 3 // 2)
    with pytest.raises(BadInput) as e:
        run_sweep(sweep, tmp_path / "a", workers=2, progress="none")
    assert e.value.field == "workers" and REFUSAL.match(str(e.value)), str(e.value)
    assert str(e.value).startswith("field 'workers': 2 worker(s) x run shared=1.0/mappers=4/seed=1")
    assert not list((tmp_path / "a").glob("summaries"))
    assert run_sweep(sweep, tmp_path / "b", workers=0, progress="none").done == 2
    monkeypatch.setattr(vmstate.engine.state, "available_memory", lambda: largest - 1)
    with pytest.raises(BadInput) as e:
        run_sweep(sweep, tmp_path / "c", progress="none")  # default workers: not even one fits
    assert e.value.field == "thps" and REFUSAL.match(str(e.value)), str(e.value)
