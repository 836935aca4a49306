"""What did mainline 4.5's PG_double_map buy over the v5 permanent offset, and what do 6.18's folio
fields cost? Per variant (v5, v4.5, 6.18) and operation: mapcount writes, atomic operations, PTE
writes, and µs per THP.

Usage::

    python benchmarks/variants_bench.py [--ref-thps 16] [--thps 20000] [--json] [--plot FILE.png]

Counts come from the pure-Python reference model (tests/reference/: every write to a
``_mapcount``/compound_mapcount and every atomic on ``_count`` is counted where the kernel C does
it), per THP; PTE writes from its cost counters; µs per THP from the engine on ``--thps`` THPs.
Two workloads:

- ``fork_heavy``: mmap N THPs (THP fault), fork 4 children (fork), split one child's PMDs (PMD
  split), split_huge_page from the parent (split), munmap everything in the parent (full unmap);
- ``partial_unmap``: mmap N THPs, munmap 1 MiB inside each (partial unmap: a PMD split and 256 PTE
  zaps), split_huge_page of each THP's slot (split; one op per slot, since 6.18's debugfs walk ends
  at the first hole), munmap everything (full unmap).
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks._machine import machine  # noqa: E402

A = 0x100000000000
M2 = 2 << 20
VARIANTS = ("v5", "v4.5", "6.18")


def fork_heavy(n):
    """(label, [(op, *args), ...]) steps; each label's numbers are per THP."""
    return [
        ("thp_fault", [("mmap", "p", A, n * M2)]),
        ("fork", [("fork", "p", f"c{i}") for i in range(4)]),
        ("pmd_split", [("split_pmd", "c0", A + j * M2) for j in range(n)]),
        ("split_huge_page", [("split", "p", A, n * M2)]),
        ("full_unmap", [("munmap", "p", A, n * M2)]),
    ]


def partial_unmap(n):
    return [
        ("thp_fault", [("mmap", "p", A, n * M2)]),
        ("partial_unmap", [("munmap", "p", A + j * M2 + (512 << 10), 1 << 20) for j in range(n)]),
        # one split op per THP's slot: 6.18's debugfs walk ends at the first hole of its range
        ("split_huge_page", [("split", "p", A + j * M2, M2) for j in range(n)]),
        ("full_unmap", [("munmap", "p", A, n * M2)]),
    ]


WORKLOADS = {"fork_heavy": fork_heavy, "partial_unmap": partial_unmap}


def count_reference(workload, variant, n):
    """Per step: mapcount writes, refcount atomics, PTE writes per THP, from the reference."""
    from reference import ReferenceState
    ref = ReferenceState(variant)
    out = {}
    for label, ops in WORKLOADS[workload](n):
        before = dict(ref.atomics), ref.costs["pte_write"]
        for op, *args in ops:
            getattr(ref, op)(*args)
        out[label] = {
            "mapcount_writes": (ref.atomics["mapcount_writes"] - before[0]["mapcount_writes"]) / n,
            "refcount_atomics": (ref.atomics["refcount_ops"] - before[0]["refcount_ops"]) / n,
            "pte_writes": (ref.costs["pte_write"] - before[1]) / n,
        }
        out[label]["atomics"] = out[label]["mapcount_writes"] + out[label]["refcount_atomics"]
    return out


def time_engine(workload, variant, n):
    """Per step: µs per THP in the engine (best of 3 fresh runs)."""
    from vmstate import MemoryState
    best = {}
    for _ in range(3):
        s = MemoryState(variant)
        for label, ops in WORKLOADS[workload](n):
            t = time.perf_counter()
            for op, *args in ops:
                getattr(s, op)(*args)
            us = (time.perf_counter() - t) / n * 1e6
            best[label] = min(best.get(label, us), us)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-thps", type=int, default=16)
    ap.add_argument("--thps", type=int, default=20_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", type=Path, help="write a PNG chart here")
    args = ap.parse_args(argv)
    for variant in VARIANTS:  # compile outside the timing
        time_engine("partial_unmap", variant, 8)
        time_engine("fork_heavy", variant, 8)
    rows = []
    for workload in WORKLOADS:
        for variant in VARIANTS:
            counts = count_reference(workload, variant, args.ref_thps)
            times = time_engine(workload, variant, args.thps)
            for label in counts:
                rows.append({"workload": workload, "variant": variant, "op": label, **counts[label],
                             "us_per_thp": round(times[label], 3)})
    if args.json:
        print(json.dumps({**machine(), "ref_thps": args.ref_thps, "thps": args.thps, "rows": rows}))
    else:
        print(f"{'workload':14s} {'op':16s} {'variant':7s} {'mapcount_w':>10s} {'refcount':>9s} "
              f"{'atomics':>8s} {'pte_w':>7s} {'us/THP':>8s}")
        for r in rows:
            print(f"{r['workload']:14s} {r['op']:16s} {r['variant']:7s} {r['mapcount_writes']:10.1f} "
                  f"{r['refcount_atomics']:9.1f} {r['atomics']:8.1f} {r['pte_writes']:7.1f} "
                  f"{r['us_per_thp']:8.3f}")
    if args.plot:
        plot(rows, args.plot)
    return 0


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for col, workload in enumerate(WORKLOADS):
        sub = [r for r in rows if r["workload"] == workload]
        ops = list(dict.fromkeys(r["op"] for r in sub))
        for row, (metric, title) in enumerate((("atomics", "atomic ops per THP (mapcount + refcount)"),
                                               ("us_per_thp", "engine µs per THP"))):
            ax = axes[row, col]
            width = 0.8 / len(VARIANTS)
            for k, variant in enumerate(VARIANTS):
                vals = [next(r[metric] for r in sub if r["op"] == op and r["variant"] == variant)
                        for op in ops]
                ax.bar([i + (k - (len(VARIANTS) - 1) / 2) * width for i in range(len(ops))], vals,
                       width, label=variant)
            ax.set_xticks(range(len(ops)), ops, rotation=20)
            ax.set_title(f"{workload}: {title}")
            ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
