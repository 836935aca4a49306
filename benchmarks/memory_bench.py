"""Bytes per THP of each population shape, measured: the peak RSS a generated ``[population]``
adds, per THP, and the largest population of that shape that fits in 16 GiB.

Usage::

    python benchmarks/memory_bench.py --thps 200000 [--big 2000000] [--json]

Each shape runs in its own subprocess: RSS after importing and warming the kernels, then the
population, then VmHWM (peak RSS) — ``bytes_per_thp`` = (peak - baseline) / thps. ``state_bytes_per_thp`` is the RSS the built state keeps (the generation's temporaries freed);
``fits_16GiB`` = 16 GiB / bytes_per_thp (the peak). ``--big N`` also builds N PMD-mapped THPs and prints that run's peak RSS.
The estimate vmstate refuses with (``vmstate.engine.memory_estimate``) is printed beside it.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._machine import machine, peak_rss_bytes, reset_peak_rss  # noqa: E402

SHAPES = {
    "pmd": {},
    "shared2": {"shared": 1.0, "mappers": 2},
    "pte_mapped": {"pte_mapped": 1.0},
    "mixed": {"shared": 0.2, "mappers": 2, "pte_mapped": 0.1, "partially_unmapped": 0.05,
              "pinned": 0.05},
}
GiB16 = 16 << 30


def _rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def run_one(shape, thps):
    from vmstate import from_population
    from vmstate.engine.population import parse_population, population_estimate
    from_population({**SHAPES[shape], "thps": 64}, seed=1)  # import and compile outside the figure
    base = _rss()
    reset_peak_rss()
    table = {**SHAPES[shape], "thps": thps, "addr": 0x100000000000}
    state = from_population(table, seed=1)
    peak, after = peak_rss_bytes(), _rss()
    est = population_estimate(parse_population(table))
    per = (peak - base) / thps
    del state
    return {"shape": shape, "thps": thps, **machine(), "peak_rss_bytes": peak,
            "bytes_per_thp": round(per), "state_bytes_per_thp": round((after - base) / thps),
            "fits_16GiB": int(GiB16 // per),
            "estimate_bytes_per_thp": round(est.total / thps)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--thps", type=int, default=200000)
    ap.add_argument("--big", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
        return
    runs = [(s, args.thps) for s in SHAPES] + ([("pmd", args.big)] if args.big else [])
    for shape, n in runs:
        r = subprocess.run([sys.executable, __file__, "--one", shape, str(n)], capture_output=True,
                           text=True, check=True)
        line = json.loads(r.stdout.strip().splitlines()[-1])
        if args.json:
            print(json.dumps(line))
        else:
            print(f"{shape:11s} {n:>8d} THPs: {line['bytes_per_thp']:6d} B/THP at the peak, "
                  f"{line['state_bytes_per_thp']:6d} once built "
                  f"(estimate {line['estimate_bytes_per_thp']}), peak RSS "
                  f"{line['peak_rss_bytes'] / 2**30:.2f} GiB, {line['fits_16GiB']:,} fit in 16 GiB")


if __name__ == "__main__":
    main()
