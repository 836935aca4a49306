"""The mutation check (``tests/mutation.py``): every non-equivalent single-point mutant of the kernels
and the operations is killed by the oracle (the corner programs, then random differential programs).

Each mutant already runs with ``NUMBA_DISABLE_JIT=1`` in its own copy of the package, so the check
runs once, in the jitted pass of the suite; ``VMSTATE_MUTATION_FUZZ`` (default 20) sets the random
programs per variant a mutant that survives the corner programs still has to pass.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1",
                    reason="the mutation check runs once, in the jitted pass (its mutants run unjitted)")
def test_every_non_equivalent_mutant_is_killed():
    fuzz = os.environ.get("VMSTATE_MUTATION_FUZZ", "20")
    r = subprocess.run([sys.executable, str(REPO / "tests" / "mutation.py"), "--jobs",
                        str(os.cpu_count() or 1), "--fuzz", fuzz],
                       capture_output=True, text=True, timeout=1800)
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
