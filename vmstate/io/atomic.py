"""Crash-safe writes: the one discipline every file vmstate writes goes through.

A file is written under a temporary name on the same file system (beside its final name, or in a
scratch directory the caller owns), flushed and fsync'd, renamed over its final name, and the
directory that holds it fsync'd: after a crash the final name holds the old file or the whole new
one, never a part. Every directory created on the way is fsync'd into its parent, up to one that
existed, so the rename cannot outlive the directory it was made in.

:func:`atomic_write` does this for one file. :class:`TreeWriter` (and :func:`write_tree`) writes a
set of files that are committed together: each is written and fsync'd into a hidden ``out/.tmp-*``
directory as it comes, and :meth:`TreeWriter.commit` renames them into place one by one, the file
added last (a run's ``summary.json``) last of all.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from vmstate.errors import BadInput

__all__ = ["fsync_dir", "makedirs_synced", "write_synced", "publish", "atomic_write", "json_writer",
           "TreeWriter", "write_tree"]


def fsync_dir(path):
    """fsync the directory ``path``: the names created, renamed or removed in it are on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_synced(path):
    """``mkdir -p path``, fsyncing each directory it creates into its parent (parents first)."""
    path = Path(path)
    if path.is_dir():
        return
    makedirs_synced(path.parent)
    path.mkdir(exist_ok=True)
    fsync_dir(path.parent)


def write_synced(path, write):
    """Create ``path``, let ``write(f)`` fill it (a binary file object), flush and fsync it."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def publish(tmp, path):
    """Rename the fsync'd file ``tmp`` over ``path`` (creating its directories) and fsync the
    directory that now names it."""
    path = Path(path)
    makedirs_synced(path.parent)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write(path, write, *, tmp_dir=None) -> Path:
    """Write ``path`` with ``write(f)`` by the module's discipline. The temporary file is
    ``.<name>.tmp-*`` beside ``path``, or in ``tmp_dir`` (on the same file system) when given; it is
    removed if ``write`` or the rename fails."""
    path = Path(path)
    scratch = Path(tmp_dir) if tmp_dir is not None else path.parent
    makedirs_synced(scratch)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=scratch)
    os.close(fd)
    try:
        write_synced(tmp, write)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_writer(obj, *, indent: int = 2):
    """A ``write(f)``: ``obj`` as indented JSON and a newline."""
    data = (json.dumps(obj, indent=indent) + "\n").encode()
    return lambda f: f.write(data)


class TreeWriter:
    """Files written under ``out/.tmp-*`` as they come, renamed into place by :meth:`commit`; a
    writer that is never committed (an error, a kill) leaves only the hidden directory, which
    :meth:`abort` removes. Errors are :class:`~vmstate.errors.BadInput` naming ``--out``."""

    def __init__(self, out):
        self.out = Path(out)
        probe = self.out
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise BadInput(f"--out {out}: {probe} is not a directory (ENOTDIR)", field="out")
        try:
            makedirs_synced(self.out)
            self.tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.out))
        except OSError as e:
            raise BadInput(f"--out {out}: cannot create the directory: {e.strerror}",
                           field="out") from e
        self.files: list[Path] = []

    def add(self, rel, write):
        """Write ``out/rel`` (relative) into the hidden directory now; it appears on commit."""
        rel = Path(rel)
        path = self.tmp / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_synced(path, write)
        except OSError as e:
            raise BadInput(f"--out {self.out}: cannot write {rel}: {e.strerror}", field="out") from e
        self.files.append(rel)

    def commit(self):
        """Rename every file into place in the order added, then remove the hidden directory."""
        try:
            for rel in self.files:
                publish(self.tmp / rel, self.out / rel)
        except OSError as e:
            raise BadInput(f"--out {self.out}: cannot write {e.filename or ''}: {e.strerror}",
                           field="out") from e
        finally:
            self.abort()

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_tree(out, files: list[tuple[str, object]]):
    """Write ``files`` (``(relative path, write(f))``, the last renamed last) atomically under out."""
    w = TreeWriter(out)
    try:
        for rel, write in files:
            w.add(rel, write)
    except BaseException:
        w.abort()
        raise
    w.commit()
