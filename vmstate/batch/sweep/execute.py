"""Where the shards run: in this process, in local worker processes, or on a Dask cluster. Each
executor yields ``(task, (summary, frame))`` or ``(task, exception)`` as shards finish; closing
the generator stops the workers."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os

from vmstate.errors import BadInput, CorruptState
from vmstate.engine.population import parse_population, population_bytes
from vmstate.batch.sweep.worker import init_worker, run_shard, warm, warm_dask_worker

__all__ = ["execute", "default_workers"]

# What a shard may fail with and the sweep goes on (recorded in SweepReport.errors)
SHARD_ERRORS = (BadInput, CorruptState, MemoryError)


def execute(tasks, workers, scheduler, bar):
    """Yield ``(task, (summary, frame))`` or ``(task, exception)`` as shards finish.

    ``scheduler``: a Dask scheduler (address or client); else ``workers`` local processes (None:
    :func:`default_workers`; 0: in this process)."""
    if not tasks:
        return
    if scheduler is not None:
        yield from _execute_dask(tasks, scheduler, bar)
        return
    if workers is None:
        workers = default_workers(tasks)
    if workers == 0:
        yield from _execute_here(tasks, bar)
    else:
        yield from _execute_local(tasks, workers, bar)


def _execute_here(tasks, bar):
    threads = warm()
    bar.note(f"in this process, {threads} numba threads")
    for t in tasks:
        try:
            yield t, run_shard(t)
        except SHARD_ERRORS as e:
            yield t, e


def _execute_local(tasks, workers, bar):
    threads = max(1, (os.cpu_count() or 1) // workers)
    bar.note(f"{workers} local worker process(es), {threads} numba thread(s) each")
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=init_worker, initargs=(threads,))
    futures = {}
    try:
        futures = {pool.submit(run_shard, t): t for t in tasks}
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


def _execute_dask(tasks, scheduler, bar):
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
    futures = {}
    try:
        threads = client.run(warm_dask_worker)
        bar.note(f"Dask scheduler {client.scheduler.address}: {len(threads)} worker(s), "
                 f"{sum(threads.values())} numba thread(s) in all")
        futures = {client.submit(run_shard, t, pure=False): t for t in tasks}
        for fut in as_completed(futures):
            try:
                yield futures[fut], fut.result()
            except SHARD_ERRORS as e:
                yield futures[fut], e
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
        if own:
            client.close()


def default_workers(tasks) -> int:
    """As many processes as CPUs, fewer where the largest shard's state (twice, for the split's
    temporaries) would not fit in the memory available to them all."""
    from vmstate.engine.state import available_memory
    need = max(population_bytes(parse_population(t.table)) for t in tasks) * 2
    return max(1, min(os.cpu_count() or 1, available_memory() // max(need, 1), len(tasks)))
