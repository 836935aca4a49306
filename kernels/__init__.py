"""numba kernels of vmstate: plain jitted functions over arrays and scalars, named after the kernel
functions they mirror (``mm/huge_memory.c``, ``mm/rmap.c``). No classes, no argument checking: the
wrappers in :mod:`vmstate` own validation and state.

Compile policy, in one place: every kernel is ``@njit(cache=True)``. numba keys a cached function on
its own file only, so a kernel that inlines one from another module would keep stale code after that
module changed; the check below drops the whole cache when any kernel source changed.
"""
import hashlib
from pathlib import Path


def _drop_stale_cache():
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()
    cache = here / "__pycache__"
    stamp = cache / "vmstate-kernels.sha256"
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    try:
        cache.mkdir(exist_ok=True)
        for f in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
            f.unlink()
        stamp.write_text(digest)
    except OSError:
        pass  # read-only install: numba then compiles in memory


_drop_stale_cache()
