"""Every operation at scale: one program of N THPs through the ``MemoryState`` ops, timed op by op.

Usage::

    python benchmarks/ops_bench.py --thps 10000 100000 1000000 [--json] [--variant v5]

The program (each size in its own subprocess, so ``peak_rss_bytes`` is that size's):

1. ``mmap`` N THPs in ``parent``; 2. ``fork`` → ``child``; 3. ``mprotect`` of the child's whole
range to "r"; 4. ``pin`` of the parent's whole range; 5. ``unpin``; 6. ``madvise_dontneed`` of the
first half of the child's range (its huge PMDs zapped whole); 7. ``munmap`` of the child's other
half; 8. ``split`` of every THP from the parent; 9. ``exit`` of the child;
10. ``munmap`` of the parent's now-small pages; 11. ``mmap`` of N new THPs (``mmap_w``), 12.
``fork`` → ``child2``, 13. ``write`` of the parent's whole new range (``write_cow``: the variant's
COW of every THP), 14. ``mremap`` of child2's range to an aligned free range (every huge PMD moved
whole), 15. again to an address 5 pages off the alignment (every PMD split, its PTEs moved),
16. ``write`` of child2's whole moved range (``write_after``: PTE-mapped THPs child2 alone maps
now: copied page by page in v5/4.5, reused in 6.18). With ``--variant 6.18`` also, before the split,
``madvise_cold`` of the parent's whole range (exclusive again: every huge PMD made old, no split)
and ``shrink`` (every THP is on the deferred queue since its fault; none is underused: each leaves
the queue), and after the last op an ``mmap`` of N more THPs and their ``madvise_pageout``
(reclaim without swap: every THP split, ``thp_swpout_fallback``).

Per op: ``us_per_thp``, ``bytes_per_thp`` (what the op must read and write per THP at least, by
the record sizes: written out per op below), ``roofline_us_per_thp`` = that / the streaming copy
bandwidth measured in the same run, ``ratio_to_roofline`` and ``ratio_to_split`` (µs/THP over the
split's in the same run). Each op runs once on a warm program of 64 THPs first, so compiling is not
timed. Peak RSS is VmHWM of the run.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._machine import machine, peak_rss_bytes, reset_peak_rss, stream_bandwidth  # noqa: E402

ADDR = 0x100000000000
M2 = 2 << 20
PAGE = 4096
N = 512
BLOCK, PMD, TABLE = 6264, 32, 4096
# Bytes each op must touch per THP, at least (reads + writes of the records it changes).
BYTES = {
    "mmap": BLOCK + PMD,                          # the page records and the PMD entry, written
    "fork": 2 * PMD + PMD + 64,                   # parent's entry read and written, child's written, head line
    "mprotect": 2 * PMD,                          # the child's entry read and written
    "pin": PMD + 8 * N * 2 + 64,                  # the walk, the pfns written and read back, the head's count
    "unpin": 8 * N + 64,                          # the pfns read, the head's count
    "madvise_dontneed": 2 * PMD + 2 * 64,         # the child's PMD cleared, the head's count and
                                                  # compound_mapcount (not the last mapping: no subpage loop)
    "munmap_child_half": 2 * PMD + 2 * 64,        # the same for the other half
    "split": 5 * 2048 + 3 * TABLE,                # split_bench's pmd model: records r/w, the freeze's table
    "exit_child": PMD,                            # nothing mapped is left: the VMAs and their PMD rows
    "munmap_parent_small": 2 * TABLE + 2 * 12 * N,  # 512 PTEs r/w, 512 page records freed (r/w)
    "madvise_cold": 2 * PMD + 64,                 # the entry made old, the head's flags
    "shrink": 64 + 64,                            # the content bits counted, the queue flag
    "mmap_2": BLOCK + PMD,
    "madvise_pageout": 5 * 2048 + 3 * TABLE,      # reclaim splits every THP: as the split
    "mmap_w": BLOCK + PMD,
    "fork_w": 2 * PMD + PMD + 64,
    "write_cow": BLOCK + TABLE + 2 * PMD,         # a new THP's records (v5/4.5) or a PMD split's
                                                  # table and 512 small pages (6.18), the PMD
    "mremap_aligned": 4 * PMD,                    # each huge PMD read, cleared, written anew
    "mremap_unaligned": 4 * TABLE + 2 * PMD,      # each PMD split into a table, 512 PTEs moved
    "write_after": 2 * TABLE + 2 * 4 * N,         # 512 PTEs r/w, the pages' flags (reuse) or more
}


def program(s, n, addr=ADDR):
    """The ops, as (name, callable) in order."""
    if s.k.MADV_COLD_PAGEOUT:
        ops = program_v5(s, n, addr)
        at = [name for name, _ in ops].index("split")
        addr2 = addr + n * M2 + M2
        return (ops[:at] + [("madvise_cold", lambda: s.madvise_cold("parent", addr, n * M2)),
                            ("shrink", lambda: s.shrink())] + ops[at:]
                + [("mmap_2", lambda: s.mmap("parent", addr2, n * M2)),
                   ("madvise_pageout", lambda: s.madvise_pageout("parent", addr2, n * M2))])
    return program_v5(s, n, addr)


def program_v5(s, n, addr):
    half = n // 2 * M2
    addr_w = addr + 3 * (n + 1) * M2      # beyond the 6.18 second mapping
    addr_m = addr_w + 2 * (n + 1) * M2    # aligned, free
    addr_u = addr_m + 2 * (n + 1) * M2 + 5 * PAGE  # free, 5 pages off the PMD alignment
    return [
        ("mmap", lambda: s.mmap("parent", addr, n * M2)),
        ("fork", lambda: s.fork("parent", "child")),
        ("mprotect", lambda: s.mprotect("child", addr, n * M2, "r")),
        ("pin", lambda: s.pin("parent", addr, n * M2)),
        ("unpin", lambda: s.unpin("parent", addr, n * M2)),
        ("madvise_dontneed", lambda: s.madvise_dontneed("child", addr, half)),
        ("munmap_child_half", lambda: s.munmap("child", addr + half, n * M2 - half)),
        ("split", lambda: s.split("parent", addr, n * M2)),
        ("exit_child", lambda: s.exit("child")),
        ("munmap_parent_small", lambda: s.munmap("parent", addr, n * M2)),
        ("mmap_w", lambda: s.mmap("parent", addr_w, n * M2)),
        ("fork_w", lambda: s.fork("parent", "child2")),
        ("write_cow", lambda: s.write("parent", addr_w, n * M2)),
        ("mremap_aligned", lambda: s.mremap("child2", addr_w, n * M2, addr_m)),
        ("mremap_unaligned", lambda: s.mremap("child2", addr_m, n * M2, addr_u)),
        ("write_after", lambda: s.write("child2", addr_u, n * M2)),
    ]


def run_one(thps, variant):
    import numpy as np

    from vmstate import MemoryState
    from vmstate.engine.state import available_memory
    out = {"thps": thps, "variant": variant, **machine()}
    bw = stream_bandwidth()
    out["stream_bandwidth_GBps"] = round(bw / 1e9, 2)
    # First touch of guest memory the host has not backed yet costs 1.3-2.3 s/GB on this VM (a
    # hypervisor artifact a second touch does not pay: benchmarks/split_bench.py): touch what the
    # program will need once, before timing.
    t = time.perf_counter()
    need = thps * (BLOCK + 2 * PMD + 8 * N + 2 * TABLE) * 3 // 2
    need += thps * (2 * BLOCK + 4 * PMD + 4 * TABLE) * 3 // 2  # mmap_w, its COW copies, mremap's tables
    if variant == "6.18":  # the second mapping and its split tables
        need += thps * (BLOCK + PMD + TABLE) * 3 // 2
    buf = np.empty(min(need, int(available_memory() * 0.8)), np.uint8)
    buf.fill(1)
    del buf
    out["prefault_s"] = round(time.perf_counter() - t, 3)
    warm = MemoryState(variant)
    for _, op in program(warm, 64, 0x7F0000000000):
        op()
    del warm
    reset_peak_rss()
    s = MemoryState(variant)
    ops = {}
    for name, op in program(s, thps):
        t = time.perf_counter()
        op()
        ops[name] = time.perf_counter() - t
    split_us = ops["split"] / thps * 1e6
    out["ops"] = {}
    for name, secs in ops.items():
        us = secs / thps * 1e6
        roof = BYTES[name] / bw * 1e6
        out["ops"][name] = {"s": round(secs, 4), "us_per_thp": round(us, 3),
                            "bytes_per_thp": BYTES[name], "roofline_us_per_thp": round(roof, 4),
                            "ratio_to_roofline": round(us / roof, 1),
                            "ratio_to_split": round(us / split_us, 2)}
    out["peak_rss_bytes"] = peak_rss_bytes()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--thps", type=int, nargs="+", default=[10000, 100000, 1000000])
    ap.add_argument("--variant", default="v5")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.variant)))
        return
    for n in args.thps:
        r = subprocess.run([sys.executable, __file__, "--one", str(n), "--variant", args.variant],
                           capture_output=True, text=True, check=True)
        line = json.loads(r.stdout.strip().splitlines()[-1])
        if args.json:
            print(json.dumps(line))
            continue
        print(f"{n} THPs ({line['variant']}), stream {line['stream_bandwidth_GBps']} GB/s, "
              f"peak RSS {line['peak_rss_bytes'] / 2**30:.2f} GiB")
        for name, o in line["ops"].items():
            print(f"  {name:22s} {o['us_per_thp']:8.3f} µs/THP  {o['ratio_to_split']:6.2f}x split  "
                  f"{o['ratio_to_roofline']:7.1f}x roofline ({o['bytes_per_thp']} B)")


if __name__ == "__main__":
    main()
