"""How fast does vmstate split THPs, against the roofline, the reference model and the real kernel?

Usage::

    python benchmarks/split_bench.py --thps 1000000 --config pmd shared pte mixed [--json]

One JSON line (or a readable block) per configuration, each run in its own subprocess so that
``peak_rss_bytes`` is that configuration's. Per configuration:

- a ``[population]`` of ``--thps`` THPs is generated (``population_s``) and split end to end with
  the ``split`` op (page walk, rmap arrays, fused prange kernel): ``split_s``, ``us_per_thp``;
- ``bytes_per_thp``: bytes the split reads and writes per THP (page records and PTE tables), and
  ``roofline_us_per_thp`` = that / the streaming copy bandwidth measured in the same run;
- ``reference_us_per_thp``: the pure-Python reference model (tests/reference/) on ``--ref-thps``;
- ``kernel_us_per_thp``: the running kernel's own split (benchmarks/kernel_split.py), when root.

Configurations: ``pmd`` (PMD-mapped, exclusive), ``shared`` (every THP mapped by 2 processes after
fork), ``pte`` (every THP PTE-mapped), ``mixed`` (20% shared, 10% PTE-mapped, 5% partially
unmapped, 5% pinned).

``--prefault`` (default on) touches the memory the run will need (1.5x the state) once before timing:
on this VM the first touch of guest memory the host has not backed yet costs 1.3-2.3 s/GB, a
hypervisor artifact that a second touch does not pay (0.07 s/GB); ``prefault_s`` reports what it
cost.
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from benchmarks._machine import machine, peak_rss_bytes, reset_peak_rss, stream_bandwidth  # noqa: E402

CONFIGS = {
    "pmd": {},
    "shared": {"shared": 1.0, "mappers": 2},
    "pte": {"pte_mapped": 1.0},
    "mixed": {"shared": 0.2, "mappers": 2, "pte_mapped": 0.1, "partially_unmapped": 0.05,
              "pinned": 0.05},
}
ADDR = 0x100000000000  # 16 TiB: room for millions of 2 MiB THPs below the 47-bit limit
BLOCK_RW = 5 * 2048        # flags and _count read and written, _mapcount read (2 KiB each)
TABLE_FROM_PMD = 3 * 4096  # freeze writes the PTE table; unfreeze reads and writes it
TABLE_EXISTING = 4 * 4096  # freeze and unfreeze each read and write an existing PTE table


def run_one(config, thps, ref_thps, kernel_thps, prefault):
    from vmstate import MemoryState, from_population
    from vmstate.engine.population import parse_population, population_bytes
    from vmstate.engine.state import available_memory

    table = {"thps": thps, "addr": ADDR, **CONFIGS[config]}
    out = {"config": config, "thps": thps, **machine()}
    bw = stream_bandwidth()
    out["stream_bandwidth_GBps"] = round(bw / 1e9, 2)
    if prefault:
        t = time.perf_counter()
        # the state plus half again for the generator's temporaries, within what is available
        need = population_bytes(parse_population(table)) * 3 // 2
        buf = np.empty(min(need, int(available_memory() * 0.8)), np.uint8)
        buf.fill(1)
        del buf
        out["prefault_s"] = round(time.perf_counter() - t, 3)
    # warm the compiled kernels on a small population (compile time is reported apart)
    t = time.perf_counter()
    from_population({**table, "thps": 64}, seed=1).split("parent", ADDR, 64 << 21)
    from_population({**table, "thps": 64}, seed=1).split("parent", ADDR, 64 << 21)
    out["warmup_s"] = round(time.perf_counter() - t, 3)
    reset_peak_rss()  # from here on: the population and its splits only

    t = time.perf_counter()
    state = from_population(table, seed=1)
    out["population_s"] = round(time.perf_counter() - t, 3)
    nbytes = _split_bytes(state)
    t = time.perf_counter()
    res = state.split("parent", ADDR, thps << 21)
    split_s = time.perf_counter() - t
    out["split_s"] = round(split_s, 4)
    out["succeeded"], out["failed"] = res.succeeded, res.failed
    out["us_per_thp"] = round(split_s / thps * 1e6, 3)
    out["bytes_per_thp"] = round(nbytes / thps)
    out["roofline_us_per_thp"] = round(nbytes / thps / bw * 1e6, 3)
    out["ratio_to_roofline"] = round(out["us_per_thp"] / out["roofline_us_per_thp"], 2)
    del state, res
    out["peak_rss_bytes"] = peak_rss_bytes()
    out["peak_rss_bytes_per_thp"] = round(out["peak_rss_bytes"] / thps)

    if ref_thps:
        out["reference_us_per_thp"] = round(_reference_us(table, ref_thps), 1)
        out["speedup_vs_reference"] = round(out["reference_us_per_thp"] / out["us_per_thp"])
    if kernel_thps and config == "pmd":
        from benchmarks.kernel_split import measure_kernel_split
        k = measure_kernel_split(kernel_thps)
        if k.get("available"):
            out["kernel_us_per_thp"] = round(k["us_per_thp"], 1)
            out["kernel_trigger"] = k["trigger"]
            out["kernel_release"] = k["kernel"]
            out["speedup_vs_kernel"] = round(out["kernel_us_per_thp"] / out["us_per_thp"], 1)
        else:
            out["kernel_us_per_thp"] = None
            out["kernel_unavailable"] = k.get("reason")
    return out


def _split_bytes(state):
    """Bytes a split of every THP of ``state`` reads and writes (see module docstring)."""
    from vmstate.kernels.constants import _PAGE_PSE
    n = state.blocks.n - 1
    pmd = state.pmd
    huge = int(((pmd & _PAGE_PSE) != 0).sum())
    tables = len(pmd) - huge
    return n * BLOCK_RW + huge * TABLE_FROM_PMD + tables * TABLE_EXISTING


def _reference_us(table, n):
    """µs per THP of the pure-Python reference splitting the same population (built by its program)."""
    from reference import ReferenceState
    from vmstate.engine.population import parse_population, population_program
    ref = ReferenceState()
    for op, *args in population_program(parse_population({**table, "thps": n}), 1):
        getattr(ref, op)(*args)
    t = time.perf_counter()
    ref.split("parent", ADDR, n << 21)
    return (time.perf_counter() - t) / n * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thps", type=int, default=100_000)
    ap.add_argument("--config", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--ref-thps", type=int, default=20, help="THPs for the reference model (0: skip)")
    ap.add_argument("--kernel-thps", type=int, default=256,
                    help="THPs split by the running kernel (0: skip; needs root and THP)")
    ap.add_argument("--no-prefault", dest="prefault", action="store_false")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.config[0], args.thps, args.ref_thps, args.kernel_thps,
                                 args.prefault)))
        return 0
    for config in args.config:
        cmd = [sys.executable, __file__, "--one", "--config", config, "--thps", str(args.thps),
               "--ref-thps", str(args.ref_thps), "--kernel-thps", str(args.kernel_thps)]
        if not args.prefault:
            cmd.append("--no-prefault")
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        if proc.returncode:
            print(f"{config}: failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}",
                  file=sys.stderr)
            return proc.returncode
        line = proc.stdout.strip().splitlines()[-1]
        if args.json:
            print(line, flush=True)
        else:
            print(f"== {config}")
            for k, v in json.loads(line).items():
                print(f"  {k:26s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
