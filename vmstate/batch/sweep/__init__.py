"""``vmstate sweep SWEEP.toml --out DIR``: many population runs, one dataset.

A sweep file names a base ``[population]``, the keys to vary (``[grid]``: every combination;
``[sample]``: ``n`` random points) and the seeds. Each point × seed is a *run*: generate the
population from the seed and split every THP the parent maps (what :func:`vmstate.batch.api.population`
builds). A run too large for one machine is cut into ``shards`` THP ranges, each generated and split
on its own (see :func:`shard_tasks`), its results merged.

::

    [sweep]
    name = "pin-vs-sharing"
    seeds = [1, 2, 3]          # or a count: seeds = 3 means 0, 1, 2
    shards = 1                 # THP ranges per run (default 1)

    [population]               # the base: every key of vmstate.engine.population
    thps = 100000
    addr = 0x100000000000
    shared = 0.5

    [grid]                     # every combination, in this key order
    pinned = [0.0, 0.1, 0.2]
    mappers = [2, 4, 8]

    [sample]                   # n random points (from `seed`), uniform in [lo, hi]
    n = 10
    seed = 0
    pte_mapped = [0.0, 0.5]    # fractions are rounded to 4 decimals, integer keys drawn as integers

    [split]                    # optional: racing pins on the split (as a scenario's split op)
    race = { pin = "after_precheck", unpin = "after_split", fraction = 0.1 }

What ``DIR`` holds (schemas in ``datasets/README.md``)::

    DIR/sweep.json                     the checked sweep; a restart must match it
    DIR/runs.parquet                   one row per finished run (rebuilt from DIR/summaries)
    DIR/thps/<key>=<v>/.../seed=<s>/part-<shard>.parquet    per-THP outcomes (hive-partitioned)
    DIR/summaries/<key>=<v>/.../seed=<s>/shard-<shard>.json one per finished shard

Every file is written under ``DIR/.tmp``, fsync'd and renamed into place; a shard's summary is
written after its per-THP part, so a summary on disk means the shard is complete. A sweep that is
interrupted (Ctrl-C, SIGTERM, SIGKILL, a crash) and started again runs only the shards that have no
summary, and ``runs.parquet`` is rebuilt from the summaries at the end of every invocation.

Workers (local processes or Dask) only compute: they return the summary and the per-THP frame, and
this process writes every file, so a cluster needs no shared file system.

The modules, in the order a sweep goes through them: :mod:`.spec` (the file, its plan of runs),
:mod:`.plan` (runs cut into shards), :mod:`.worker` (one shard on a worker), :mod:`.execute`
(local processes or Dask), :mod:`.store` (the directory: lock, ``sweep.json``, shard files),
:mod:`.table` (``runs.parquet``, the per-THP dataset), :mod:`.progress`, and :mod:`.driver`
(:func:`run_sweep`, which ties them together).
"""
from vmstate.batch.sweep.spec import RunSpec, Sweep, load_sweep, parse_sweep
from vmstate.batch.sweep.plan import ShardTask, shard_seed, shard_tasks
from vmstate.batch.sweep.table import (
    MEAN_COUNTERS, TIMING_COLUMNS, build_runs_table, read_thps, runs_schema,
)
from vmstate.batch.sweep.worker import run_shard
from vmstate.batch.sweep.execute import SchedulerLost, default_workers
from vmstate.batch.sweep.driver import SweepReport, run_sweep

__all__ = ["Sweep", "RunSpec", "ShardTask", "load_sweep", "parse_sweep", "shard_seed", "shard_tasks",
           "run_shard", "run_sweep", "SweepReport", "SchedulerLost", "default_workers",
           "build_runs_table",
           "runs_schema", "read_thps", "TIMING_COLUMNS", "MEAN_COUNTERS"]
