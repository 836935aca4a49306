"""Where numba caches the kernels: one directory per version of the kernel sources.

numba keys a cached function on its own source file only, so a kernel that inlines or calls one from
another module (``split.py`` calling ``freeze.py``, every kernel freezing ``constants.py``) would load
stale machine code after that other module changed. Instead of deleting caches (which another
process, another checkout or another installed version may be using), the cache *location* is keyed
by a digest of every kernel source and the numba version: a changed source gets a fresh directory,
an unchanged one finds its old one, and nothing is ever deleted.

numba reads ``numba.core.config.CACHE_DIR`` when a ``@njit(cache=True)`` function is decorated (its
``UserProvidedCacheLocator`` stores the path then), so :func:`kernel_cache` sets it only while the
kernel modules are imported and restores the previous value: other numba users in the process keep
their own cache location. The directory, first usable of:

1. ``$NUMBA_CACHE_DIR/vmstate-kernels-<digest>`` when the user chose a numba cache directory;
2. ``kernels/__pycache__/vmstate-kernels-<digest>`` beside the sources, when writable;
3. ``$XDG_CACHE_HOME/numba/vmstate-kernels-<digest>`` (default ``~/.cache/numba/...``), numba's own
   user-wide fallback, for a read-only install;
4. a private temporary directory of this process (nothing writable: compile, cache for this run only).

(numba itself then adds one subdirectory per source directory, ``kernels_<sha1 of its path>``.)
"""
import atexit
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numba
from numba.core import config

KERNELS_DIR = Path(__file__).parent
PREFIX = "vmstate-kernels-"


def source_digest(kernels_dir=KERNELS_DIR):
    """Hex digest (16 digits) of every ``.py`` under ``kernels_dir``, recursively (path and bytes of
    each, in path order), and of the numba version."""
    kernels_dir = Path(kernels_dir)
    h = hashlib.sha256(f"numba {numba.__version__}\0".encode())
    sources = sorted(p for p in kernels_dir.rglob("*.py") if "__pycache__" not in p.parts)
    for p in sources:
        data = p.read_bytes()
        h.update(f"{p.relative_to(kernels_dir).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def _usable(path):
    """Can numba cache in ``path``? The test numba's locators make: create it, write a file there."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def user_cache_dir():
    """numba's user-wide cache directory (``$XDG_CACHE_HOME/numba``, default ``~/.cache/numba``)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "numba" if xdg else Path.home() / ".cache" / "numba"


def kernel_cache_dir(kernels_dir=KERNELS_DIR, digest=None):
    """The cache directory for the kernels in ``kernels_dir`` (the order in the module docstring)."""
    name = PREFIX + (digest or source_digest(kernels_dir))
    candidates = []
    user_dir = config.CACHE_DIR or os.environ.get("NUMBA_CACHE_DIR", "")
    if user_dir:
        candidates.append(Path(user_dir) / name)
    candidates.append(Path(kernels_dir) / "__pycache__" / name)
    try:
        candidates.append(user_cache_dir() / name)
    except RuntimeError:  # no home directory
        pass
    for path in candidates:
        if _usable(path):
            return path
    private = tempfile.mkdtemp(prefix=name + "-")  # this process's own: removed at exit
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    return Path(private)


@contextmanager
def kernel_cache(kernels_dir=KERNELS_DIR):
    """Decorate (import) kernels inside this block: they cache in :func:`kernel_cache_dir`.
    Yields that directory; ``numba.config.CACHE_DIR`` is restored on exit."""
    path = kernel_cache_dir(kernels_dir)
    previous = config.CACHE_DIR
    config.CACHE_DIR = str(path)
    try:
        yield path
    finally:
        config.CACHE_DIR = previous
