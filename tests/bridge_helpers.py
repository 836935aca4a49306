"""Shared by the real-kernel bridge tests: the skip reason, a live process holding THPs, and runs of a
scenario both ways."""
import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

from vmstate.cli import write_outputs
from vmstate.bridge.kernel_run import kernel_run, prerequisites
from vmstate.batch.runner import run_scenario

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "datasets" / "scenarios"

_WHY = prerequisites()
needs_kernel = pytest.mark.skipif(_WHY is not None, reason=f"needs the running kernel's THP: {_WHY}")

# A process that maps `thps` 2 MiB-aligned THPs (MADV_HUGEPAGE, every page written), runs the
# caller's Python lines on them (`then`), prints their address and waits for stdin to close.
# Standard library only.
_CHILD = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
n = int(sys.argv[1]); L = n << 21
base = libc.mmap(None, L + (2 << 20), 3, 0x22, -1, 0)
a = (base + (2 << 20) - 1) & ~((2 << 20) - 1)
if libc.madvise(a, L, 14):
    sys.exit("madvise(MADV_HUGEPAGE) failed")
view = memoryview((ctypes.c_char * L).from_address(a)).cast("B")
view[::4096] = b"\x5a" * (L // 4096)
if len(sys.argv) > 2:  # the caller's next steps on the mapping (libc, a, L in scope)
    exec(sys.argv[2])
print(hex(a), flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def live_thp_process(thps=4, then=None):
    """``(pid, address)`` of a running process that maps ``thps`` PMD-mapped THPs; ``then``: Python
    lines it runs on them first (``libc``, the address ``a`` and the length ``L`` in scope)."""
    p = subprocess.Popen([sys.executable, "-S", "-c", _CHILD, str(thps)] + ([then] if then else []),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        addr = int(p.stdout.readline(), 16)
        yield p.pid, addr
    finally:
        p.stdin.close()
        p.wait(30)


def run_both(scenario, tmp_path: Path, **kw):
    """The scenario simulated (``tmp_path/sim``, as ``vmstate run --out``) and on the kernel
    (``tmp_path/kernel``, as ``vmstate kernel-run --out``); the two summaries."""
    sim = run_scenario(scenario)
    write_outputs(sim, tmp_path / "sim")
    real = kernel_run(scenario, tmp_path / "kernel", **kw)
    return sim.summary, real
