"""numba kernels of vmstate: plain jitted functions over arrays and scalars, named after the kernel
functions they mirror (``mm/huge_memory.c``, ``mm/rmap.c``). No classes, no argument checking: the
wrappers in :mod:`vmstate` own validation and state.

Compile policy, in one place: every kernel is ``@njit(cache=True)``, and every kernel module (any
depth, so a variant subpackage too) is imported here, inside :func:`~vmstate.kernels._cache.kernel_cache`:
numba then caches them in a directory keyed by the digest of all kernel sources (see ``_cache.py``),
so a change to one module never leaves stale code of another in the cache, and no cache is deleted.
Importing any ``vmstate.kernels.<module>`` runs this first.
"""
import importlib
import pkgutil

from vmstate.kernels._cache import kernel_cache

with kernel_cache() as JIT_CACHE_DIR:
    for _module in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        if not _module.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(_module.name)
    del _module
