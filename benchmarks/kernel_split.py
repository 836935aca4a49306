"""What does the RUNNING kernel pay per THP split? A yardstick for vmstate's split_huge_page() model.

``measure_kernel_split(thps)`` maps ``thps`` PMD-sized (2 MiB) anonymous THPs in this process, dirties
one byte in every 4 KiB subpage (non-zero, so no subpage is zero-filled), checks how many THPs it got,
then splits each of them and times only the splitting calls. Triggers, best first:

1. ``debugfs``: one write of ``"<pid>,0x<start>,0x<end>"`` to ``split_huge_pages`` (debugfs is mounted
   on a temporary directory if ``/sys/kernel/debug`` is not mounted, and unmounted after). Refused
   under kernel lockdown (EPERM), in which case:
2. ``madv_cold``: ``madvise(MADV_COLD)`` on ONE 4 KiB page of each THP. On 6.x,
   ``madvise_cold_or_pageout_pte_range()`` splits an exclusively mapped, PMD-mapped large folio when
   the advised range covers only part of it, then deactivates just that 4 KiB page (the memory stays
   mapped and resident; the function checks Rss, AnonHugePages and the data afterwards).
3. ``madv_pageout``: ``madvise(MADV_PAGEOUT)`` likewise, if MADV_COLD split nothing.

The split count is the ``/proc/vmstat`` delta of ``thp_split_page`` (and ``thp_split_pmd``); these are
system-wide counters. ``us_per_thp`` is the timed loop divided by that count. ``baseline_us_per_call``
is the same madvise loop run again over the already split range (syscall + ctypes + deactivation
cost, no split) so the caller can subtract it.

Needs Linux, root, THP not ``never``, a readable ``/proc/vmstat``; otherwise returns
``{"available": False, "reason": ...}``. Standard library only (ctypes over libc).

Usage: ``python benchmarks/kernel_split.py [--thps 256] [--repeats 1]`` prints the dict(s) as JSON.
"""
import argparse
import ctypes
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vmstate.bridge.kworker import libc as load_libc  # noqa: E402  (the bindings kernel-run uses)
from vmstate.bridge.kernel_run import prerequisites, unmount_debugfs  # noqa: E402
from vmstate.bridge.procfs import read_vmstat  # noqa: E402

HPAGE = 2 << 20
PAGE = 4096
SUBPAGES = HPAGE // PAGE

PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
MAP_FAILED = ctypes.c_void_p(-1).value
MADV_HUGEPAGE, MADV_COLD, MADV_PAGEOUT = 14, 20, 21

DEBUGFS = "/sys/kernel/debug"
SPLIT_FILE = "split_huge_pages"
FILL = 0x5A

_WATCHED = ("thp_split_page", "thp_split_pmd", "thp_split_page_failed", "thp_fault_alloc",
            "thp_fault_fallback", "thp_deferred_split_page", "pswpout", "pgsteal_direct",
            "pgsteal_kswapd", "thp_swpout", "pgdeactivate")


def _delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in _WATCHED if k in before or k in after}


def _range_smaps(start, end):
    """Sum Rss and AnonHugePages (kB) over the VMAs of this process overlapping [start, end)."""
    rss = ahp = 0
    exact = True
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo < end and hi > start
                if inside and (lo < start or hi > end):
                    exact = False  # a VMA sticks out of the range: its figures count more than ours
            elif inside and head == "Rss:":
                rss += int(line.split()[1])
            elif inside and head == "AnonHugePages:":
                ahp += int(line.split()[1])
    return {"rss_kb": rss, "anon_huge_kb": ahp, "vma_exact": exact}


def _debugfs_split(libc, start, end):
    """Try the debugfs trigger; return (seconds, None) or (None, why it could not be used)."""
    path = os.path.join(DEBUGFS, SPLIT_FILE)
    tmp = None
    try:
        if not os.path.exists(path):
            tmp = tempfile.mkdtemp(prefix="kernel_split_debugfs_")
            if libc.mount(b"none", tmp.encode(), b"debugfs", 0, None) != 0:
                err = ctypes.get_errno()
                os.rmdir(tmp)
                tmp = None
                return None, f"debugfs not mounted and mount failed: {os.strerror(err)}"
            path = os.path.join(tmp, SPLIT_FILE)
            if not os.path.exists(path):
                return None, f"{SPLIT_FILE} not in debugfs (kernel without it)"
        cmd = f"{os.getpid()},0x{start:x},0x{end:x}".encode()
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as e:
            return None, f"open {SPLIT_FILE}: {e.strerror} (errno {e.errno})"
        try:
            t = time.perf_counter()
            os.write(fd, cmd)
            seconds = time.perf_counter() - t
        except OSError as e:
            return None, f"write {SPLIT_FILE}: {e.strerror} (errno {e.errno})"
        finally:
            os.close(fd)
        return seconds, None
    finally:
        unmount_debugfs(libc, tmp)


def _madvise_loop(libc, start, thps, advice):
    """madvise(advice) on the first 4 KiB page of each 2 MiB slot.

    Returns (seconds for the whole loop, failed calls, per-call seconds sorted)."""
    madvise = libc.madvise
    clock = time.perf_counter
    addrs = [start + i * HPAGE for i in range(thps)]
    calls = [0.0] * thps
    fails = 0
    t = clock()
    for i, a in enumerate(addrs):
        c = clock()
        if madvise(a, PAGE, advice):
            fails += 1
        calls[i] = clock() - c
    seconds = clock() - t
    calls.sort()
    return seconds, fails, calls


def _percentiles_us(sorted_s):
    n = len(sorted_s)
    return {"min": sorted_s[0] * 1e6, "p50": sorted_s[n // 2] * 1e6,
            "p90": sorted_s[min(n - 1, n * 9 // 10)] * 1e6, "max": sorted_s[-1] * 1e6}


def measure_kernel_split(thps: int = 256) -> dict:
    why = prerequisites()
    if why:
        return {"available": False, "reason": why}
    if thps < 1:
        return {"available": False, "reason": f"thps must be >= 1, got {thps}"}

    libc = load_libc()
    length = thps * HPAGE + HPAGE
    base = libc.mmap(None, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if base is None or base == MAP_FAILED:
        return {"available": False, "reason": f"mmap failed: {os.strerror(ctypes.get_errno())}"}
    try:
        start = (base + HPAGE - 1) & ~(HPAGE - 1)
        end = start + thps * HPAGE
        if libc.madvise(start, end - start, MADV_HUGEPAGE):
            return {"available": False,
                    "reason": f"madvise(MADV_HUGEPAGE): {os.strerror(ctypes.get_errno())}"}

        v0 = read_vmstat()
        view = memoryview((ctypes.c_char * (end - start)).from_address(start)).cast("B")
        t = time.perf_counter()
        view[::PAGE] = bytes([FILL]) * (thps * SUBPAGES)  # one non-zero byte per 4 KiB page
        fault_s = time.perf_counter() - t
        v1 = read_vmstat()
        before = _range_smaps(start, end)
        thps_mapped = before["anon_huge_kb"] * 1024 // HPAGE
        if thps_mapped == 0:
            return {"available": False,
                    "reason": "no THP was mapped (AnonHugePages 0 for the range; thp_fault_alloc +%d, "
                              "thp_fault_fallback +%d)" % (v1["thp_fault_alloc"] - v0["thp_fault_alloc"],
                                                           v1.get("thp_fault_fallback", 0)
                                                           - v0.get("thp_fault_fallback", 0))}

        result = {"available": True, "thps_requested": thps, "thps_mapped": thps_mapped,
                  "thp_fault_alloc": v1["thp_fault_alloc"] - v0["thp_fault_alloc"],
                  # context: first touch (THP fault + 2 MiB clear + 512 byte writes) per 2 MiB slot
                  "fault_us_per_thp": fault_s / thps * 1e6}

        s0 = read_vmstat()
        seconds, debugfs_error = _debugfs_split(libc, start, end)
        s1 = read_vmstat()
        trigger = "debugfs"
        if seconds is None or s1["thp_split_page"] == s0["thp_split_page"]:
            if seconds is not None:
                debugfs_error = "debugfs write split nothing"
            result["debugfs_error"] = debugfs_error
            trigger = None
            for name, advice in (("madv_cold", MADV_COLD), ("madv_pageout", MADV_PAGEOUT)):
                s0 = read_vmstat()
                seconds, fails, calls = _madvise_loop(libc, start, thps, advice)
                s1 = read_vmstat()
                result[f"{name}_failed_calls"] = fails
                if s1["thp_split_page"] > s0["thp_split_page"]:
                    trigger = name
                    result["call_us"] = _percentiles_us(calls)
                    # the same loop again over the now split range: the per-call cost without a split
                    b0 = read_vmstat()
                    base_s, _, _ = _madvise_loop(libc, start, thps, advice)
                    b1 = read_vmstat()
                    result["baseline_us_per_call"] = base_s / thps * 1e6
                    result["baseline_thp_split_page"] = b1["thp_split_page"] - b0["thp_split_page"]
                    break
                result[f"{name}_error"] = "split nothing (thp_split_page +0, %d failed calls%s)" % (
                    fails, f", errno {os.strerror(ctypes.get_errno())}" if fails else "")
            if trigger is None:
                result.update(available=False,
                              reason="no trigger split a THP: " + "; ".join(
                                  f"{k}: {result[k]}" for k in ("debugfs_error", "madv_cold_error",
                                                                "madv_pageout_error") if k in result))
                return result

        after = _range_smaps(start, end)
        split = s1["thp_split_page"] - s0["thp_split_page"]
        intact = bytes(view[::PAGE]) == bytes([FILL]) * (thps * SUBPAGES)
        view.release()
        result.update({
            "trigger": trigger,
            "thps_split": split,
            "thp_split_pmd": s1["thp_split_pmd"] - s0["thp_split_pmd"],
            "seconds": seconds,
            "us_per_thp": seconds / max(split, 1) * 1e6,
            "kernel": os.uname().release,
            # the split kept the memory mapped and resident: same Rss, no huge mappings left, data kept
            "rss_kb_before": before["rss_kb"], "rss_kb_after": after["rss_kb"],
            "anon_huge_kb_before": before["anon_huge_kb"], "anon_huge_kb_after": after["anon_huge_kb"],
            "data_intact": intact,
            "smaps_vma_exact": before["vma_exact"] and after["vma_exact"],
            "vmstat_delta": _delta(s0, s1),
        })
        return result
    finally:
        libc.munmap(base, length)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--thps", type=int, default=256, help="THPs to map and split (default 256)")
    p.add_argument("--repeats", type=int, default=1, help="runs, one JSON object per line")
    args = p.parse_args(argv)
    for _ in range(args.repeats):
        print(json.dumps(measure_kernel_split(args.thps)), flush=True)


if __name__ == "__main__":
    main()
