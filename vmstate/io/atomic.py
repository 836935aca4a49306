"""Crash-safe writes: the one discipline every file vmstate writes goes through.

A file is written under a temporary name on the same file system (beside its final name, or in a
scratch directory the caller owns), flushed and fsync'd, renamed over its final name, and the
directory that holds it fsync'd: after a crash the final name holds the old file or the whole new
one, never a part. Every directory created on the way is fsync'd into its parent, up to one that
existed, so the rename cannot outlive the directory it was made in. :func:`atomic_write` does this
for one file (a sweep's shards and tables, a plot, ``write_kpage``).

A failed write (a full disk, no permission, a read-only file system) removes its temporary file and
raises :class:`~vmstate.errors.OutputError` naming the final path and the errno (``vmstate: error:
out/runs.parquet: No space left on device (ENOSPC)``, exit 4 on the command line); the error a
writer library wraps (polars' ``ComputeError`` around a failed ``write``) is unwrapped.

The switch of a run directory
-----------------------------
:class:`TreeWriter` (and :func:`write_tree`) writes a directory that holds one run as a whole:
``vmstate run`` and ``kernel-run --out DIR`` (``summary.json`` + ``snapshots/``), ``vmstate capture
--out DIR`` (``pages.parquet`` + ``pagemap.parquet``). At every instant a reader of ``DIR`` sees
the whole previous run or the whole new one, never a mix, and nothing of the previous run survives
the new one (no old snapshot label)::

    DIR/summary.json -> .current/summary.json   one fixed symlink per top-level name
    DIR/snapshots    -> .current/snapshots
    DIR/.current     -> .runs/<id>              the switch
    DIR/.runs/<id>/  summary.json, snapshots/<label>/...: the run's files

The new run is written into ``DIR/.runs/<new>/``, every file and directory fsync'd; then one
rename(2) of a fresh symlink over ``DIR/.current`` switches every visible name from the old tree to
the new one at once, and ``DIR`` is fsync'd. A name the new run adds gets its fixed symlink before
the switch, dangling until then (a dangling symlink is "no such file" to stat and open); a name it
drops dangles after the switch and is removed. The old tree is removed last.

A directory written by an older vmstate (real files under the final names) is first *adopted*
without a visible change: what a reader sees is hard-linked into a tree under ``.runs``,
``.current`` pointed at it, and each real name replaced by its symlink, a file by rename(2), a
directory by renameat2(RENAME_EXCHANGE) (where the file system lacks RENAME_EXCHANGE the directory
is renamed aside first, and for that moment its name is absent).

A writer holds an flock(2) on ``DIR`` itself (no lock file) from before its first temporary file
until it has cleaned up, and the kernel drops the lock of a killed process: so the next writer,
once it holds the lock, knows that every ``DIR/.tmp-*`` and every tree under ``.runs`` other than
the current one belongs to no live process, and removes them. A second writer while ``DIR`` is
locked is refused (bad input).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
from pathlib import Path

from vmstate.errors import BadInput, OutputError

__all__ = ["fsync_dir", "makedirs_synced", "write_synced", "publish", "atomic_write", "json_writer",
           "TreeWriter", "write_tree", "CURRENT", "RUNS"]

CURRENT, RUNS, TMP = ".current", ".runs", ".tmp-"


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


class _Sink:
    """The file as a writer sees it: remembers the OSError of a ``write`` that a library (polars)
    re-raises as an exception of its own."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def write_synced(path, write):
    """Create ``path``, let ``write(f)`` fill it (a binary file object), flush and fsync it. An
    OSError of a ``write`` comes out as that OSError, whatever exception the writer made of it."""
    with open(path, "wb") as f:
        sink = _Sink(f)
        try:
            write(sink)
        except OSError:
            raise
        except Exception as e:
            if sink.error is not None:
                raise sink.error from e
            raise
        f.flush()
        os.fsync(f.fileno())


def publish(tmp, path):
    """Rename the fsync'd file ``tmp`` over ``path`` (creating its directories) and fsync the
    directory that now names it."""
    path = Path(path)
    makedirs_synced(path.parent)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _output_error(e: OSError, final, *private) -> OutputError:
    """``e`` as an OutputError naming the path it failed on, or ``final`` when that path is one of
    the writer's ``private`` temporary names (or inside one) or unknown."""
    where = e.filename
    if where is None or any(_within(where, p) for p in private):
        where = final
    return OutputError(where, e.errno, e.strerror)


def _within(path, top) -> bool:
    path, top = os.path.abspath(os.fsdecode(path)), os.path.abspath(os.fsdecode(top))
    return path == top or path.startswith(top + os.sep)


def atomic_write(path, write, *, tmp_dir=None) -> Path:
    """Write ``path`` with ``write(f)`` by the module's discipline. The temporary file is
    ``.<name>.tmp-*`` beside ``path``, or in ``tmp_dir`` (on the same file system) when given; it is
    removed if ``write`` or the rename fails. OSError: :class:`~vmstate.errors.OutputError`."""
    path = Path(path)
    scratch = Path(tmp_dir) if tmp_dir is not None else path.parent
    try:
        makedirs_synced(scratch)
    except OSError as e:
        raise _output_error(e, path, *([scratch] if tmp_dir is not None else [])) from e
    try:
        tmp = _unique(scratch, f".{path.name}.tmp-", _create)
    except OSError as e:
        raise _output_error(e, path, e.filename) from e
    try:
        write_synced(tmp, write)
        publish(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _output_error(e, path, tmp) from e
        raise
    return path


def json_writer(obj, *, indent: int = 2):
    """A ``write(f)``: ``obj`` as indented JSON and a newline."""
    data = (json.dumps(obj, indent=indent) + "\n").encode()
    return lambda f: f.write(data)


class TreeWriter:
    """One run's files, written into ``out/.runs/<new>/`` as they come (:meth:`add`) and made
    ``out``'s visible content in one step by :meth:`commit` (the module's *switch*). A writer that
    is never committed (an error, a kill) leaves only hidden files, which :meth:`abort` or the next
    writer removes. ``out`` is not a directory: BadInput; any other OSError: OutputError."""

    def __init__(self, out, *, dirs=()):
        self.out = Path(out)
        probe = self.out
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise BadInput(f"--out {out}: {probe} is not a directory (ENOTDIR)", field="out")
        self._lock_fd = None
        self._switched = False
        self.tmp = None
        try:
            makedirs_synced(self.out)
            self._lock()
            self._remove_stale()
            makedirs_synced(self.out / RUNS)
            self.tmp = _unique(self.out / RUNS, f"{os.getpid()}-", os.mkdir)
            for d in dirs:
                (self.tmp / d).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.abort()
            raise _output_error(e, self.out, self.out / RUNS) from e
        self.files: list[Path] = []

    def add(self, rel, write):
        """Write ``out/rel`` (relative) into the new tree now; it appears on commit."""
        rel = Path(rel)
        path = self.tmp / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_synced(path, write)
        except OSError as e:
            raise _output_error(e, self.out / rel, self.tmp) from e
        self.files.append(rel)

    def commit(self):
        """Switch ``out`` to the new tree (the module docstring), then remove the old one."""
        try:
            _sync_tree(self.tmp)
            names = sorted(os.listdir(self.tmp))
            self._adopt(names)
            for name in names:
                if not os.path.lexists(self.out / name):
                    os.symlink(f"{CURRENT}/{name}", self.out / name)  # dangling until the switch
            fsync_dir(self.out)
            self._switch(self.tmp.name)
            self._switched = True
        except OSError as e:
            self.abort()
            raise OutputError(self.out, e.errno, e.strerror) from e
        except BaseException:
            self.abort()
            raise
        try:  # the new run is visible and durable: what follows only tidies up
            for p in self.out.iterdir():
                if self._ours(p) and p.name not in names:
                    p.unlink()
            self._remove_stale()
            fsync_dir(self.out)
        except OSError:
            pass  # the next writer removes what is left
        finally:
            self._unlock()

    def abort(self):
        """Remove the new tree (unless committed) and drop the lock."""
        if self.tmp is not None and not self._switched:
            shutil.rmtree(self.tmp, ignore_errors=True)
        for p in self._private():
            _remove(p)
        if self._lock_fd is not None:
            try:
                (self.out / RUNS).rmdir()  # when empty: a failed first write leaves only DIR
            except OSError:
                pass
        self._unlock()

    # ---- the lock and the stale files --------------------------------------------------------
    def _lock(self):
        fd = os.open(self.out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BadInput(f"--out {self.out}: another vmstate process is writing it",
                           field="out") from None
        self._lock_fd = fd

    def _unlock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _remove_stale(self):
        """With the lock held: temporary names and trees no live writer owns, dangling links."""
        current = self._current()
        for p in self.out.iterdir():
            if p.name.startswith(TMP) or (self._ours(p) and not p.exists()):
                _remove(p)
        if (self.out / RUNS).is_dir():
            for p in (self.out / RUNS).iterdir():
                if p.name != current and (self.tmp is None or p != self.tmp):
                    _remove(p)

    def _private(self):
        return [self.out / f"{TMP}{os.getpid()}-{n}" for n in ("current", "link", "aside")]

    # ---- the switch --------------------------------------------------------------------------
    def _current(self) -> str | None:
        """The name under ``.runs`` that ``.current`` points to, if it is one of ours."""
        try:
            target = os.readlink(self.out / CURRENT)
        except OSError:
            return None
        head, _, name = target.partition("/")
        return name if head == RUNS and name and "/" not in name else None

    def _ours(self, p: Path) -> bool:
        """``p`` is a fixed symlink ``name -> .current/name``."""
        try:
            return os.readlink(p) == f"{CURRENT}/{p.name}"
        except OSError:
            return False

    def _switch(self, tree: str):
        """The one step: a symlink to ``.runs/<tree>`` renamed over ``.current``."""
        tmp = self.out / f"{TMP}{os.getpid()}-current"
        _remove(tmp)
        os.symlink(f"{RUNS}/{tree}", tmp)
        os.replace(tmp, self.out / CURRENT)
        fsync_dir(self.out)

    def _adopt(self, names):
        """Make every name of ``out`` that the new run writes, and that is a real file or
        directory (an older vmstate's output) or someone else's symlink, a fixed symlink, with no
        change a reader could see."""
        foreign = [n for n in names if os.path.lexists(self.out / n) and not self._ours(self.out / n)]
        if not foreign:
            return
        tree = _unique(self.out / RUNS, f"{os.getpid()}-", os.mkdir)
        visible = set(foreign) | {p.name for p in self.out.iterdir() if self._ours(p) and p.exists()}
        for name in visible:
            _link_copy(self.out / name, tree / name)
        _sync_tree(tree)
        self._switch(tree.name)
        for name in foreign:
            self._replace_with_link(name)
        fsync_dir(self.out)

    def _replace_with_link(self, name):
        path = self.out / name
        tmp, aside = self.out / f"{TMP}{os.getpid()}-link", self.out / f"{TMP}{os.getpid()}-aside"
        _remove(tmp)
        os.symlink(f"{CURRENT}/{name}", tmp)
        if path.is_dir() and not path.is_symlink():
            try:
                _rename_exchange(tmp, path)  # tmp now names the old directory
                _remove(tmp)
                return
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
            os.rename(path, aside)  # no RENAME_EXCHANGE here: the name is absent for a moment
            _remove(aside)
        os.replace(tmp, path)


def write_tree(out, files: list[tuple[str, object]], *, dirs=()):
    """Write ``files`` (``(relative path, write(f))``) and the directories ``dirs`` as ``out``'s
    whole visible content, in one switch (:class:`TreeWriter`)."""
    w = TreeWriter(out, dirs=dirs)
    try:
        for rel, write in files:
            w.add(rel, write)
    except BaseException:
        w.abort()
        raise
    w.commit()


def _unique(directory, prefix: str, make) -> Path:
    """``make(path)`` (``os.mkdir``, :func:`_create`: failing if the name exists) for a fresh
    ``directory/<prefix><random>``. Unlike ``tempfile``'s, its mode is the umask's (0o666, 0o777)."""
    for _ in range(100):
        path = Path(directory) / f"{prefix}{secrets.token_hex(4)}"
        try:
            make(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))


def _create(path):
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))


def _sync_tree(root: Path):
    """fsync every directory of the tree under ``root`` (bottom-up), then ``root``'s parent."""
    for dirpath, _, _ in os.walk(root, topdown=False):
        fsync_dir(dirpath)
    fsync_dir(root.parent)


def _remove(p: Path):
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _link_copy(src: Path, dst: Path):
    """``cp -al``: ``src`` (followed if a symlink) as hard links under ``dst``; a copy where a hard
    link is not possible (another file system)."""
    def link(s, d):
        try:
            os.link(s, d, follow_symlinks=True)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copy2(s, d)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link)
    elif src.exists():
        link(src, dst)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _rename_exchange(a: Path, b: Path):
    """renameat2(a, b, RENAME_EXCHANGE): ``a`` and ``b`` swap names in one step (Linux 3.15)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        raise OSError(errno.ENOSYS, "renameat2 is not available") from None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))
