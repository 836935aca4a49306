"""The sweep directory: its lock, its ``sweep.json``, which shards are done, and each shard's files,
every one written crash-safely (:mod:`vmstate.io.atomic`) through ``DIR/.tmp``."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

import polars as pl

from vmstate.errors import BadInput
from vmstate.io.atomic import atomic_write, json_writer
from vmstate.batch.sweep.plan import ShardTask
from vmstate.batch.sweep.spec import Sweep

__all__ = ["OutputLock", "done_shards", "check_or_write_spec", "write_shard", "write_file"]


class OutputLock:
    """``out/.lock`` held (flock) for the whole invocation: two sweeps never write one ``out``. The
    holder writes who it is into the file (``{"pid", "host", "since"}``), so a second sweep is
    refused naming it, before it touches anything. The kernel drops the lock of a killed process
    (its stale record is overwritten by the next holder); stale ``out/.tmp`` files are removed on
    entry."""

    def __init__(self, out: Path):
        self.out = out

    def __enter__(self):
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise BadInput(f"--out {self.out}: {e.strerror}", field="out") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(self.fd, 4096, 0))
            os.close(self.fd)
            raise BadInput(f"--out {self.out}: another vmstate sweep is writing it ({holder})",
                           field="out") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(me).encode() + b"\n", 0)
        shutil.rmtree(self.out / ".tmp", ignore_errors=True)
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.out / ".tmp", ignore_errors=True)
        os.ftruncate(self.fd, 0)
        os.close(self.fd)


def _holder(record: bytes) -> str:
    """The lock holder's record as words (it may be caught between truncate and write: empty)."""
    try:
        h = json.loads(record)
        return f"pid {h['pid']} on {h['host']} since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder not recorded yet"


def write_file(out: Path, path: Path, write):
    """Write ``path`` crash-safely, its temporary file under ``out/.tmp`` (which the lock clears)."""
    atomic_write(path, write, tmp_dir=out / ".tmp")


def done_shards(out: Path) -> set:
    """(run key, shard) of every shard whose summary is on disk."""
    done = set()
    for p in (out / "summaries").rglob("shard-*.json"):
        key = p.parent.relative_to(out / "summaries").as_posix()
        done.add((key, int(p.stem.split("-", 1)[1])))
    return done


def check_or_write_spec(sweep: Sweep, out: Path):
    """Write ``out/sweep.json``, or check that the one there is this sweep's (a resume)."""
    spec = json.loads(json.dumps(sweep.as_json()))
    path = out / "sweep.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != spec:
            diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
            raise BadInput(f"{out} holds another sweep ({path} differs in: {', '.join(diff)}): "
                           f"give a new --out, or the same sweep file to resume", field="out")
    else:
        write_file(out, path, json_writer(spec))


def write_shard(out: Path, task: ShardTask, summary: dict, frame: pl.DataFrame):
    """The per-THP part first, the summary last: a summary on disk means a finished shard."""
    write_file(out, out / "thps" / task.run.key / f"part-{task.shard}.parquet", frame.write_parquet)
    write_file(out, out / "summaries" / task.run.key / f"shard-{task.shard}.json",
               json_writer(summary, indent=1))
