"""Which page-record layout should the kernels walk? ``total_mapcount()`` over N THPs, three ways.

1. per-page records ``[(flags u4, _count i4, _mapcount i4)] * 512N`` (12-byte structs);
2. vmstate's layout: one record per 2 MiB block with field-major 512-entry subarrays
   (``vmstate.engine.dtypes.PAGE_BLOCK_DTYPE``), walked two ways: record by record (what the kernels do) and
   through the strided 2-D field view ``blocks["_mapcount"]``;
3. a bare contiguous ``int32[N, 512]`` column (the lower bound).

Usage: ``python benchmarks/layout_bench.py [--thps 100000] [--json]``. Prints ns per THP and the
bandwidth each reaches, with the machine's streaming bandwidth measured in the same run.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._machine import machine, peak_rss_bytes, stream_bandwidth  # noqa: E402
from vmstate.kernels.mapcount import total_mapcount  # noqa: E402
from vmstate.engine.dtypes import PAGE_BLOCK_DTYPE  # noqa: E402

N = 512
PER_PAGE = np.dtype([("flags", np.uint32), ("_count", np.int32), ("_mapcount", np.int32)])


@njit(cache=True)
def _sum_rows(mapcount2d, cmc):
    s = 0
    for b in range(mapcount2d.shape[0]):
        s += total_mapcount(mapcount2d[b], cmc[b])
    return s


@njit(cache=True)
def _sum_blocks(blocks):
    # vmstate's kernels: one record per THP, its _mapcount field typed as a contiguous array
    s = 0
    for b in range(blocks.shape[0]):
        s += total_mapcount(blocks[b]._mapcount, blocks[b].compound_mapcount)
    return s


@njit(cache=True)
def _sum_records(pages, cmc):
    # total_mapcount() over 512 consecutive 12-byte records
    s = 0
    for b in range(cmc.shape[0]):
        c = cmc[b] + 1
        r = c + N
        for i in range(N):
            r += pages[b * N + i]._mapcount
        if c:
            r -= N
        s += r
    return s


def _time(fn, *args, repeats=5):
    fn(*args)  # compile / warm
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thps", type=int, default=100_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    n = args.thps
    bw = stream_bandwidth()
    cmc = np.zeros(n, np.int32)
    rows = {}
    recs = np.zeros(n * N, PER_PAGE)
    recs["_mapcount"] = -1  # write every byte: np.zeros pages are shared zero pages until touched
    rows["per_page_12B_records"] = _time(_sum_records, recs, cmc)
    del recs
    blocks = np.zeros(n, PAGE_BLOCK_DTYPE)
    blocks.view(np.uint8)[:] = 0xff
    rows["block_record_field_major"] = _time(_sum_blocks, blocks)
    rows["block_2d_field_view"] = _time(_sum_rows, blocks["_mapcount"], cmc)
    del blocks
    col = np.full((n, N), -1, np.int32)
    rows["contiguous_int32_column"] = _time(_sum_rows, col, cmc)
    out = {"thps": n, "stream_bandwidth_GBps": round(bw / 1e9, 2), **machine(),
           "peak_rss_bytes": peak_rss_bytes()}
    for name, sec in rows.items():
        out[f"{name}_ns_per_thp"] = round(sec / n * 1e9, 1)
    out["roofline_ns_per_thp"] = round(N * 4 / bw * 1e9, 1)  # 2 KiB of _mapcount per THP
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:40s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
