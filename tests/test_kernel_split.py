"""The running kernel's THP split measurement (benchmarks/kernel_split.py) works where it can run."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.kernel_split import measure_kernel_split  # noqa: E402


def test_measure_kernel_split_small():
    r = measure_kernel_split(8)
    if not r["available"]:
        pytest.skip(r["reason"])
    assert r["trigger"] in ("debugfs", "madv_cold", "madv_pageout")
    assert 1 <= r["thps_mapped"] <= 8
    assert r["thps_split"] >= 1
    assert r["us_per_thp"] > 0
    assert r["data_intact"]
