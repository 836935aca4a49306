"""A snapshot in the kernel's own binary formats: ``/proc/kpageflags`` and ``/proc/kpagecount``.

Both files are arrays of little-endian ``u64`` indexed by pfn (``fs/proc/page.c``: the entry of
pfn ``p`` is at byte offset ``8 * p``), so tools that read the real files (``page-types`` from
``tools/mm``, ``pread(fd, &v, 8, pfn * 8)`` scripts) read the simulation unchanged:

- ``kpageflags``: the ``KPF_*`` bits of ``include/uapi/linux/kernel-page-flags.h``, exactly the
  ``flags`` column of ``pages.parquet`` (:mod:`vmstate.io.export` builds both from the same bits);
- ``kpagecount``: ``page_mapcount()`` (``kpagecount_read()``), the ``mapcount`` column.

The files cover pfn 0 up to the highest pfn the run allocated; a frame the run never allocated reads
as 0 in both (the kernel would report ``KPF_NOPAGE`` for a hole; vmstate has no holes, only frames it
never touched, and a zero count and zero flags is what such a free page shows).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from vmstate.errors import BadInput
from vmstate.io.atomic import atomic_write

__all__ = ["KPAGEFLAGS", "KPAGECOUNT", "kpage_arrays", "write_u64", "write_kpage", "read_kpageflags",
           "read_kpagecount", "read_kpage"]

KPAGEFLAGS, KPAGECOUNT = "kpageflags", "kpagecount"
_U64 = np.dtype("<u8")


def kpage_arrays(pages: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(kpageflags, kpagecount)`` as ``<u8`` arrays indexed by pfn, from a ``pages`` frame
    (``pages.parquet``'s schema)."""
    pfn = pages["pfn"].to_numpy().astype(np.int64)
    size = int(pfn.max()) + 1 if len(pfn) else 0
    flags = np.zeros(size, _U64)
    count = np.zeros(size, _U64)
    flags[pfn] = pages["flags"].to_numpy()
    mapcount = pages["mapcount"].to_numpy()
    if len(mapcount) and mapcount.min() < 0:
        bad = int(np.argmin(mapcount))
        msg = f"pfn 0x{int(pfn[bad]):x}: mapcount {int(mapcount[bad])} < 0 has no kpagecount value"
        raise BadInput(msg, field="mapcount")
    count[pfn] = mapcount
    return flags, count


def write_u64(f, array: np.ndarray):
    """Write a ``<u8`` array to the binary file object ``f`` (no copy)."""
    f.write(memoryview(np.ascontiguousarray(array, _U64)).cast("B"))


def write_kpage(pages: pl.DataFrame, directory):
    """Write ``directory/kpageflags`` and ``directory/kpagecount`` for a ``pages`` frame, each
    crash-safely (:func:`vmstate.io.atomic.atomic_write`; ``vmstate run --kpage`` writes them inside
    its output transaction instead)."""
    directory = Path(directory)
    for name, array in zip((KPAGEFLAGS, KPAGECOUNT), kpage_arrays(pages)):
        atomic_write(directory / name, lambda f, a=array: write_u64(f, a))


def _read_u64(path) -> np.ndarray:
    path = Path(path)
    size = os.path.getsize(path)
    if size % 8:
        raise BadInput(f"{path}: {size} bytes is not a whole number of u64 entries (8 bytes per pfn)")
    return np.fromfile(path, dtype=_U64)


def read_kpageflags(path) -> np.ndarray:
    """The file's u64 entries (``uint64``), entry ``p`` for pfn ``p``: works on a real
    ``/proc/kpageflags`` too (as root), though that one is as large as the machine's memory map."""
    return _read_u64(path).astype(np.uint64)


def read_kpagecount(path) -> np.ndarray:
    """The file's u64 entries as ``int64`` mapcounts, entry ``p`` for pfn ``p``."""
    return _read_u64(path).astype(np.int64)


def read_kpage(directory, *, nonzero: bool = True) -> pl.DataFrame:
    """``pfn``, ``flags``, ``mapcount`` from ``directory/kpageflags`` and ``directory/kpagecount``
    (both as written by ``vmstate run --kpage``), one row per pfn; ``nonzero``: only pfns whose
    flags or count are not 0 (the frames a tool would see in use or mapped)."""
    directory = Path(directory)
    flags = read_kpageflags(directory / KPAGEFLAGS)
    count = read_kpagecount(directory / KPAGECOUNT)
    if len(flags) != len(count):
        raise BadInput(f"{directory}: kpageflags has {len(flags)} entries, kpagecount {len(count)}")
    pfn = np.arange(len(flags), dtype=np.uint64)
    if nonzero:
        keep = (flags != 0) | (count != 0)
        pfn, flags, count = pfn[keep], flags[keep], count[keep]
    return pl.DataFrame({"pfn": pfn, "flags": flags, "mapcount": count},
                        schema={"pfn": pl.UInt64, "flags": pl.UInt64, "mapcount": pl.Int64})
