"""The yardstick every benchmark prints beside its figures: this machine's streaming bandwidth."""
import os
import platform
import resource
import time

import numpy as np


def stream_bandwidth(nbytes=1 << 28, repeats=5):
    """Best-of-``repeats`` bytes/s of a numpy copy (read + write counted), like STREAM's Copy."""
    src = np.ones(nbytes // 8, np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def reset_peak_rss():
    """Start peak-RSS accounting afresh (``echo 5 > /proc/self/clear_refs`` resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes():
    """VmHWM (peak resident set since the last reset), or ru_maxrss where /proc lacks it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine():
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}
