"""Where the shards run: in this process, in local worker processes, or on a Dask cluster. Each
executor yields ``(task, (summary, frame))`` or ``(task, exception)`` as shards finish; closing
the generator stops the workers."""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os

from vmstate.errors import BadInput, CorruptState, VmstateError
from vmstate.engine.memory_estimate import budget, check_fits
from vmstate.engine.population import parse_population, population_bytes
from vmstate.batch.sweep.worker import init_worker, run_shard, warm, warm_dask_worker

__all__ = ["execute", "default_workers", "SchedulerLost"]

# What a shard may fail with and the sweep goes on (recorded in SweepReport.errors)
SHARD_ERRORS = (BadInput, CorruptState, MemoryError)


def execute(tasks, workers, scheduler, bar, threads=None):
    """Yield ``(task, (summary, frame))`` or ``(task, exception)`` as shards finish.

    ``scheduler``: a Dask scheduler (address or client); else ``workers`` local processes (None:
    :func:`default_workers`; 0: in this process). ``threads``: numba threads per shard (None: a
    Dask worker's ``--nthreads``, CPUs / local workers, or as they are in this process); each task
    sets them in the thread it runs in. A Dask scheduler that goes away raises
    :class:`SchedulerLost`."""
    if not tasks:
        return
    if scheduler is not None:
        yield from _execute_dask(tasks, scheduler, bar, threads)
        return
    if workers is None:
        workers = default_workers(tasks)
    else:
        check_workers_fit(tasks, workers)
    if workers == 0:
        yield from _execute_here(tasks, bar, threads)
    else:
        yield from _execute_local(tasks, workers, bar, threads)


def _execute_here(tasks, bar, threads):
    threads = warm(threads)
    bar.note(f"in this process, {threads} numba threads")
    for t in tasks:
        try:
            yield t, run_shard(t, threads)
        except SHARD_ERRORS as e:
            yield t, e


def _execute_local(tasks, workers, bar, threads):
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    bar.note(f"{workers} local worker process(es), {threads} numba thread(s) each")
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=init_worker, initargs=(threads,))
    futures = {}
    try:
        futures = {pool.submit(run_shard, t, threads): t for t in tasks}
        for fut in cf.as_completed(futures):
            try:
                yield futures[fut], fut.result()
            except (*SHARD_ERRORS, cf.process.BrokenProcessPool) as e:
                yield futures[fut], e
    finally:
        for f in futures:
            f.cancel()
        # Stop now rather than after the running shards: terminate the workers (their partial
        # work was never written), then reap them.
        for p in list(getattr(pool, "_processes", {}).values()):
            p.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _execute_dask(tasks, scheduler, bar, threads):
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise BadInput("--scheduler needs dask.distributed: pip install 'vmstate[cluster]'",
                       field="scheduler") from None
    own = not hasattr(scheduler, "submit")
    try:
        client = Client(scheduler, timeout="20s") if own else scheduler
    except (OSError, TimeoutError, ValueError) as e:
        raise BadInput(f"--scheduler {scheduler}: cannot connect: {e}", field="scheduler") from None
    address = client.scheduler.address
    # The loss is reported once, as SchedulerLost; the client's own reconnect log would repeat it.
    quiet = _Quiet("distributed.client") if own else contextlib.nullcontext()
    futures = {}
    with quiet:
        try:
            per_worker = client.run(warm_dask_worker, threads=threads)
            bar.note(f"Dask scheduler {address}: {len(per_worker)} worker(s), "
                     f"{sum(per_worker.values())} numba thread(s) in all")
            futures = {client.submit(run_shard, t, threads, pure=False): t for t in tasks}
            for fut in as_completed(futures):
                try:
                    result = fut.result()
                except SHARD_ERRORS as e:
                    result = e
                yield futures[fut], result
        except Exception as e:
            if _lost(client, e, address):
                raise SchedulerLost(address, getattr(e, "reason", type(e).__name__)) from None
            raise
        finally:
            pending = [f for f in futures if not f.done()]
            if pending and client.status == "running":
                client.cancel(pending)
            if own:
                client.close()


class SchedulerLost(VmstateError):
    """The Dask scheduler went away mid-sweep (killed, its host gone, the network cut): the client
    cancels every future when the connection drops (``scheduler-connection-lost``) or a call
    fails on the closed comm (``CommClosedError``). Every shard written before stays; the same
    command again, on a cluster or on local processes, runs the rest."""

    def __init__(self, address: str, reason: str):
        super().__init__(f"--scheduler {address}: lost the Dask scheduler mid-sweep ({reason})")
        self.address = address
        self.reason = reason


def _lost(client, e: BaseException, address: str) -> bool:
    """Whether ``e`` means the scheduler is gone, not a task's own failure: the client cancelled
    everything, or a call to the scheduler's address failed on a closed comm (which can come
    before the client's status says so: ``ConnectionPool.gather`` of a result, seen in CI)."""
    if getattr(e, "reason", None) == "scheduler-connection-lost":
        return True
    from distributed.comm.core import CommClosedError
    if isinstance(e, CommClosedError) and address.split("://")[-1] in str(e):
        return True
    return client.status != "running" and isinstance(e, (OSError, asyncio.CancelledError,
                                                         TimeoutError))


class _Quiet:
    """Raise a logger's level to CRITICAL while in the block."""

    def __init__(self, name):
        self.logger = logging.getLogger(name)

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def default_workers(tasks) -> int:
    """As many processes as CPUs, fewer where the largest shard's estimate
    (:func:`~vmstate.engine.population.population_bytes`: its state and split) times the workers
    would not exceed the memory available; refused (BadInput, field ``thps``) when even one does
    not fit."""
    need, task = _largest(tasks)
    have = budget()
    if need > have:
        check_fits(need, field="thps", have=have, what=f"run {task.run.key} shard {task.shard}")
    return max(1, min(os.cpu_count() or 1, have // max(need, 1), len(tasks)))


def check_workers_fit(tasks, workers: int):
    """Refuse (BadInput, field ``workers``) ``workers`` local processes (0: this one) that would
    each hold the largest shard at once and together not fit in the memory available."""
    need, task = _largest(tasks)
    n = max(workers, 1)
    check_fits(n * need, field="workers", what=f"{n} worker(s) x run {task.run.key} shard "
               f"{task.shard} ({need / 2**30:.2f} GiB each)")


def _largest(tasks):
    """The largest shard's estimate in bytes, and the shard."""
    return max(((population_bytes(parse_population(t.table)), t) for t in tasks),
               key=lambda x: x[0])
