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


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine():
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}
