"""What runs on a worker: :func:`run_shard` (generate and split one shard, return its summary and
per-THP frame) and the warm-up each kind of worker does first."""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

import numba
import numpy as np
import polars as pl

from vmstate.kernels.constants import COSTS, HPAGE_PMD_NR, PAGE_SHIFT, SPLIT_OK, VM_EVENTS
from vmstate.engine.population import parse_population
from vmstate.batch.sweep.plan import ShardTask
from vmstate.batch.sweep.table import REASON_NAMES

__all__ = ["run_shard", "init_worker", "warm_dask_worker", "warm", "set_threads"]

_KERNEL_LOCK = threading.Lock()  # one split at a time per process (Dask may run tasks in threads)


def run_shard(task: ShardTask, threads: int | None = None) -> tuple[dict, pl.DataFrame]:
    """Generate and split one shard on ``threads`` numba threads; return its summary (JSON-ready,
    its ``threads`` what ``numba.get_num_threads()`` reports in this task) and per-THP frame.

    ``numba.set_num_threads`` holds for the calling thread only, and a Dask worker runs tasks in
    threads of its own, so the count is set here, in the thread that runs the split. ``None``: the
    Dask worker's ``--nthreads`` when on one, else leave the count as it is."""
    from vmstate.batch import api

    set_threads(threads if threads is not None else _dask_worker_threads())
    pop = parse_population(task.table)
    scn = api.population(**task.table, seed=task.seed, race=task.race, variant=task.run.variant,
                         name=f"{task.run.key}#{task.shard}")
    with _KERNEL_LOCK:
        t0 = time.perf_counter()
        r = api.run(scn)
        wall = time.perf_counter() - t0
    (op, _, res), = r.split_results
    return _summary(task, r, op, res, wall), _thp_frame(task, pop, r, res)


def _thp_frame(task: ShardTask, pop, r, res) -> pl.DataFrame:
    """The run's per-THP rows, numbered in the whole run (``thp``), with the population's draw for
    each THP (``thp_*``)."""
    from vmstate.engine.population import draw  # the seed's per-THP choices, for the per-THP columns

    d = draw(pop, task.seed)
    # Population THP j is mapped at addr + j * 2M: page->index of its head is that >> PAGE_SHIFT.
    index = r.state.blocks.a["index"][res.heads // HPAGE_PMD_NR].astype(np.int64)
    local = (index - (pop.addr >> PAGE_SHIFT)) // HPAGE_PMD_NR
    return r.thps.drop("op").select(
        pl.lit(task.shard, pl.Int64).alias("shard"),
        pl.Series("thp", local + task.lo, pl.Int64),
        pl.all(),
        pl.Series("thp_mappers", d.mappers[local], pl.Int64),
        pl.Series("thp_pte_mapped", d.pte[local], pl.Boolean),
        pl.Series("thp_partially_unmapped", d.partial[local], pl.Boolean),
        pl.Series("thp_pinned", d.pinned[local], pl.Boolean),
    )


def _summary(task: ShardTask, r, op, res, wall: float) -> dict:
    """The shard's ``summaries/.../shard-<k>.json``: what it ran, its totals, the sums of the
    per-THP counters over failed and succeeded THPs, its timings and where it ran."""
    failed = res.reason != SPLIT_OK
    per = {name: res.costs[:, i] for i, name in enumerate(COSTS)}
    per["thp_split_pmd"] = res.events[:, VM_EVENTS.index("thp_split_pmd")]
    return {
        "run": task.run.key, "index": task.run.index, "origin": task.run.origin,
        "params": task.run.params, "seed": task.run.seed, "variant": task.run.variant,
        "population": task.run.population,
        "race": task.race, "shard": task.shard, "shards": task.shards, "lo": task.lo,
        "hi": task.hi, "shard_population": task.table, "shard_seed": task.seed,
        "attempted": res.attempted, "succeeded": res.succeeded, "failed": res.failed,
        **{f"fail_{name}": int((res.reason == code).sum())
           for code, name in enumerate(REASON_NAMES, start=1)},
        "vm_events": r.vm_events, "costs": r.costs,
        "sum_failed": {k: int(v[failed].sum()) for k, v in per.items()},
        "sum_succeeded": {k: int(v[~failed].sum()) for k, v in per.items()},
        "generate_us": r.seconds["population"] * 1e6, "split_us": r.seconds[f"op {op}"] * 1e6,
        "wall_us": wall * 1e6, "threads": numba.get_num_threads(),
        "host": f"{socket.gethostname()}:{os.getpid()}",
    }


def init_worker(threads: int | None):
    """A local worker: die with the sweep process, leave Ctrl-C to it, use ``threads`` numba
    threads, and load the kernels once so the first run's timing is not the compile's."""
    if sys.platform.startswith("linux"):
        import ctypes
        try:  # PR_SET_PDEATHSIG: a SIGKILL'd sweep leaves no worker behind
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
        except OSError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warm(threads)


def warm_dask_worker(dask_worker, threads: int | None = None):
    """Compile the kernels on a Dask worker; return the numba threads each of its splits will run
    on: ``threads``, else as many as the worker has task threads (``dask worker --nthreads k``
    gives each split k cores; one split runs at a time, ``_KERNEL_LOCK``). Only the count is
    returned: :func:`run_shard` sets it in the task's own thread. (``Client.run`` passes the
    worker as ``dask_worker``.)"""
    warm()
    return _capped(threads or _nthreads(dask_worker))


def _nthreads(dask_worker) -> int:
    return getattr(dask_worker, "nthreads", None) or dask_worker.state.nthreads


def _dask_worker_threads() -> int | None:
    """``--nthreads`` of the Dask worker running this task; None outside one."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker
    try:
        return _nthreads(get_worker())
    except ValueError:  # not in a worker
        return None


def _capped(threads: int) -> int:
    return max(1, min(threads, numba.config.NUMBA_NUM_THREADS))


def set_threads(threads: int | None):
    """``numba.set_num_threads`` for the calling thread (None: leave it), capped at the threads
    numba started (``NUMBA_NUM_THREADS``, the CPUs by default)."""
    if threads:
        numba.set_num_threads(_capped(threads))


def warm(threads: int | None = None):
    """Set ``threads`` numba threads in this thread (None: leave them) and compile the kernels on
    a tiny run; return the thread count."""
    set_threads(threads)
    from vmstate.batch import api
    api.run(api.population(thps=4, shared=0.5, pinned=0.25, pte_mapped=0.25, seed=0))
    return numba.get_num_threads()
