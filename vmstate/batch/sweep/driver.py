"""The driver: plan, skip what is done, run the rest, write every file atomically, rebuild
``runs.parquet``."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vmstate.errors import OutputError
from vmstate.batch.sweep.execute import execute
from vmstate.batch.sweep.plan import shard_tasks
from vmstate.batch.sweep.progress import Progress
from vmstate.batch.sweep.spec import Sweep, load_sweep
from vmstate.batch.sweep.store import OutputLock, check_or_write_spec, done_shards, write_shard
from vmstate.batch.sweep.table import build_runs_table

__all__ = ["SweepReport", "run_sweep"]


@dataclass
class SweepReport:
    runs: int                 # in the plan
    shards: int               # shard tasks in the plan
    skipped: int              # shard tasks already done when this invocation started
    done: int                 # shard tasks finished by this invocation
    errors: list              # (run key, shard, exception) of each shard that failed
    interrupted: bool = False
    seconds: float = 0.0


def run_sweep(sweep: Sweep | str | os.PathLike, out, *, workers: int | None = None,
              scheduler: str | None = None, threads: int | None = None, progress: str = "auto",
              stream=None) -> SweepReport:
    """Run every shard of ``sweep`` that ``out`` does not hold yet and rebuild ``out/runs.parquet``.

    ``workers``: local processes (``None``: as many as CPUs and memory allow; ``0``: in this
    process). ``scheduler``: a Dask scheduler address (``tcp://host:8786``) or a
    ``distributed.Client``; the runs go to its workers instead. ``threads``: numba threads per
    shard (default: a Dask worker's ``--nthreads``, else CPUs / local workers). ``progress``: ``"bar"`` (tqdm),
    ``"log"`` (a line per shard), ``"none"``, ``"auto"`` (a bar on a terminal, else lines).
    Ctrl-C or SIGTERM stops the workers, keeps every finished shard, and returns with
    ``interrupted``."""
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep)
    out = Path(out)
    stream = stream or sys.stderr
    plan = sweep.plan()
    tasks = [t for run in plan for t in shard_tasks(run, sweep.shards, sweep.race)]
    t_start = time.perf_counter()
    with OutputLock(out):
        check_or_write_spec(sweep, out)
        done = done_shards(out)
        todo = [t for t in tasks if (t.run.key, t.shard) not in done]
        report = SweepReport(len(plan), len(tasks), len(tasks) - len(todo), 0, [])
        bar = Progress(progress, stream, len(tasks), report.skipped, sweep.name)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) \
            if threading.current_thread() is threading.main_thread() else None
        failed = True
        try:
            _collect(execute(todo, workers, scheduler, bar, threads), out, report, bar)
            failed = False
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            bar.close()
            try:
                build_runs_table(out, sweep)
            except OutputError:
                if not failed:
                    raise  # else the write that failed first (a full disk) is the one reported
        report.seconds = time.perf_counter() - t_start
    return report


def _collect(results, out: Path, report: SweepReport, bar: Progress):
    """Write each finished shard as it comes and count it; a failed one goes to ``report.errors``.
    Ctrl-C (or SIGTERM) ends the collection with ``report.interrupted``."""
    try:
        for task, result in results:
            if isinstance(result, BaseException):
                report.errors.append((task.run.key, task.shard, result))
                bar.error(task, result)
                continue
            summary, frame = result
            write_shard(out, task, summary, frame)
            report.done += 1
            bar.update(task, summary)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        results.close()  # stops the workers now, also when the interrupt hit outside it


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
