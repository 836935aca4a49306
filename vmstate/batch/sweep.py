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
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import fcntl
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import polars as pl

from vmstate.kernels.constants import COSTS, HPAGE_PMD_NR, PAGE_SHIFT, SPLIT_OK, VARIANTS, VM_EVENTS
from vmstate.io.atomic import atomic_write
from vmstate.errors import BadInput, CorruptState
from vmstate.engine.population import DEFAULTS, FRACTIONS, parse_population, population_bytes

__all__ = ["Sweep", "RunSpec", "ShardTask", "load_sweep", "parse_sweep", "shard_tasks", "run_shard",
           "run_sweep", "build_runs_table", "read_thps", "TIMING_COLUMNS", "MEAN_COUNTERS"]

SWEEP_TABLES = ("sweep", "population", "grid", "sample", "split")
SWEEP_KEYS = {"name": None, "seeds": [0], "shards": 1}
INT_KEYS = tuple(k for k in DEFAULTS if k not in FRACTIONS)   # thps, mappers, ... addr
FLOAT_KEYS = FRACTIONS                                           # shared, pte_mapped, ...
# What a run varies: the [population] keys and the refcounting design ([scenario] variant).
PARAM_DEFAULTS = {**DEFAULTS, "variant": "v5"}
MEAN_COUNTERS = (*COSTS, "thp_split_pmd")  # per failed / per succeeded THP means in runs.parquet
# runs.parquet columns that measure the machine, not the simulation: left out of comparisons
TIMING_COLUMNS = ("generate_us", "split_us", "us_per_thp_split", "wall_us", "threads", "host")
REASON_NAMES = ("anon_vma", "precheck", "recheck")  # SPLIT_FAIL_* 1, 2, 3


# ---------------------------------------------------------------------------------------------
# The sweep file


@dataclass(frozen=True)
class RunSpec:
    """One point × seed. ``key`` is its hive path (``pinned=0.1/mappers=4/seed=1``), ``params`` the
    swept keys' values, ``population`` the whole ``[population]`` table of the run, ``variant`` its
    refcounting design."""
    index: int
    key: str
    origin: str          # "grid" or "sample"
    params: dict
    seed: int
    population: dict
    variant: str = "v5"


@dataclass(frozen=True)
class Sweep:
    name: str
    path: Path
    seeds: tuple[int, ...]
    shards: int
    population: dict          # the base table as written
    grid: dict                # key -> list of values
    sample: dict              # {"n": int, "seed": int, "ranges": {key: (lo, hi)}} or {}
    race: dict | None

    @property
    def swept(self) -> tuple[str, ...]:
        """The varied keys: ``[grid]``'s in file order, then ``[sample]``'s."""
        keys = list(self.grid)
        keys += [k for k in self.sample.get("ranges", {}) if k not in keys]
        return tuple(keys)

    def as_json(self) -> dict:
        """The normalised sweep, as ``DIR/sweep.json`` stores it."""
        sample = dict(self.sample)
        if sample:
            sample["ranges"] = {k: list(v) for k, v in sample["ranges"].items()}
        return {"name": self.name, "seeds": list(self.seeds), "shards": self.shards,
                "population": self.population, "grid": self.grid, "sample": sample,
                "race": self.race, "swept": list(self.swept)}

    def points(self) -> list[tuple[str, dict]]:
        """``(origin, params)`` per point: the grid's product, then the sample's draws."""
        pts = []
        if self.grid:
            keys = list(self.grid)
            for values in itertools.product(*(self.grid[k] for k in keys)):
                pts.append(("grid", dict(zip(keys, values))))
        if self.sample:
            rng = np.random.default_rng(self.sample["seed"])
            for _ in range(self.sample["n"]):
                p = {}
                for k, (lo, hi) in self.sample["ranges"].items():
                    p[k] = int(rng.integers(lo, hi + 1)) if k in INT_KEYS \
                        else round(float(rng.uniform(lo, hi)), 4)
                pts.append(("sample", p))
        return pts or [("grid", {})]

    def plan(self) -> list[RunSpec]:
        """Every run, in order (points × seeds); a point drawn twice runs once."""
        swept, runs, seen = self.swept, [], set()
        for origin, params in self.points():
            full = {k: params.get(k, self.population.get(k, PARAM_DEFAULTS[k])) for k in swept}
            for seed in self.seeds:
                key = "/".join([*(f"{k}={_hive(full[k])}" for k in swept), f"seed={seed}"])
                if key in seen:
                    continue
                seen.add(key)
                table = {**self.population, **full}
                variant = table.pop("variant", "v5")
                runs.append(RunSpec(len(runs), key, origin, full, seed, table, variant))
        return runs


def _hive(v) -> str:
    if isinstance(v, str):
        return v
    return repr(float(v)) if isinstance(v, float) else str(int(v))


def load_sweep(path) -> Sweep:
    """Read and check a sweep file; BadInput names the file, the table, the key and what was
    expected. Every run's population is checked too (``vmstate.engine.population``'s rules)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{path}: malformed TOML: {e}") from None
    return parse_sweep(doc, path=path)


def parse_sweep(doc: dict, *, path="<sweep>") -> Sweep:
    """A sweep from the TOML document as Python data (see the module docstring)."""
    path = Path(path)

    def fail(table, msg, key=None):
        where = f"{path}: [{table}]" + (f": field '{key}'" if key else "")
        raise BadInput(f"{where}: {msg}", field=key)

    for t in doc:
        if t not in SWEEP_TABLES:
            raise BadInput(f"{path}: unknown table [{t}] (expected {', '.join(SWEEP_TABLES)})")
    for t in SWEEP_TABLES:
        if not isinstance(doc.get(t, {}), dict):
            fail(t, "expected a table")
    head = doc.get("sweep", {})
    for k in head:
        if k not in SWEEP_KEYS:
            fail("sweep", f"unknown key (expected {', '.join(SWEEP_KEYS)})", k)
    name = head.get("name", path.stem)
    if not isinstance(name, str) or not name:
        fail("sweep", f"expected a non-empty string, got {name!r}", "name")
    seeds = head.get("seeds", SWEEP_KEYS["seeds"])
    if type(seeds) is int and seeds >= 1:
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(
            type(s) is int and 0 <= s < 1 << 63 for s in seeds) or len(set(seeds)) != len(seeds):
        fail("sweep", f"expected a count >= 1 or a list of distinct integers in [0, 2**63), "
                      f"got {seeds!r}", "seeds")
    shards = head.get("shards", 1)
    if type(shards) is not int or shards < 1:
        fail("sweep", f"expected an integer >= 1, got {shards!r}", "shards")

    base = dict(doc.get("population", {}))
    for k, v in base.items():
        if k not in PARAM_DEFAULTS:
            fail("population", f"unknown key (expected one of {', '.join(PARAM_DEFAULTS)})", k)
        if k == "variant":
            _typed("population", k, v, fail)
    grid = {}
    for k, values in doc.get("grid", {}).items():
        if k not in PARAM_DEFAULTS:
            fail("grid", f"unknown key (expected one of {', '.join(PARAM_DEFAULTS)})", k)
        if not isinstance(values, list) or not values:
            fail("grid", f"expected a non-empty list of values, got {values!r}", k)
        grid[k] = [_typed("grid", k, v, fail) for v in values]
        if len(set(grid[k])) != len(grid[k]):
            fail("grid", f"expected distinct values, got {values!r}", k)
    sample = {}
    raw = dict(doc.get("sample", {}))
    if raw:
        n, sseed = raw.pop("n", None), raw.pop("seed", 0)
        if type(n) is not int or n < 1:
            fail("sample", f"expected the number of random points (an integer >= 1), got {n!r}", "n")
        if type(sseed) is not int or sseed < 0:
            fail("sample", f"expected an integer >= 0, got {sseed!r}", "seed")
        ranges = {}
        for k, r in raw.items():
            if k not in DEFAULTS:
                fail("sample", f"unknown key (expected n, seed or one of {', '.join(DEFAULTS)}; "
                               f"variant only on the grid)", k)
            if not isinstance(r, list) or len(r) != 2:
                fail("sample", f"expected a range [lo, hi], got {r!r}", k)
            lo, hi = (_typed("sample", k, v, fail) for v in r)
            if lo > hi:
                fail("sample", f"expected lo <= hi, got {r!r}", k)
            ranges[k] = (lo, hi)
        if not ranges:
            fail("sample", "expected at least one key = [lo, hi] to draw")
        sample = {"n": n, "seed": sseed, "ranges": ranges}
    race = None
    split = doc.get("split", {})
    for k in split:
        if k != "race":
            fail("split", "unknown key (expected race)", k)
    if "race" in split:
        race = split["race"]
        from vmstate.batch.api import parse  # the scenario checks, on a one-op program
        try:
            parse({"scenario": {"name": "race"}, "population": {"thps": 1},
                   "op": [{"op": "split", "mm": "parent", "addr": 0x7F0000000000, "len": "2M",
                           "race": race}]}, path=path)
        except BadInput as e:
            fail("split", str(e).split(": ", 2)[-1], "race")
        race = dict(race)
    sweep = Sweep(name, path, tuple(seeds), shards, base, grid, sample, race)
    for run in sweep.plan():
        try:
            pop = parse_population(run.population)
        except BadInput as e:
            point = " ".join(f"{k}={v}" for k, v in run.params.items()) or "the base"
            raise BadInput(f"{path}: run {point}: field '{e.field}': {e}", field=e.field) from None
        if shards > pop.thps:
            fail("sweep", f"expected at most thps = {pop.thps} shards (run {run.key})", "shards")
    return sweep


def _typed(table, key, v, fail):
    if key == "variant":
        if v not in VARIANTS:
            fail(table, f"expected one of {', '.join(repr(x) for x in VARIANTS)}, got {v!r}", key)
        return v
    if key in FLOAT_KEYS:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(table, f"expected fractions, got {v!r}", key)
        return float(v)
    if isinstance(v, bool) or not isinstance(v, int):
        fail(table, f"expected integers, got {v!r}", key)
    return v


# ---------------------------------------------------------------------------------------------
# Shards


@dataclass(frozen=True)
class ShardTask:
    """What one worker computes: shard ``shard`` of ``shards`` of a run, the run's THPs
    ``[lo, hi)``, generated as the population ``table`` from ``seed``."""
    run: RunSpec
    shard: int
    shards: int
    lo: int
    hi: int
    table: dict
    seed: int
    race: dict | None


def shard_seed(seed: int, shard: int, shards: int) -> int:
    """The seed shard ``shard`` generates its THPs from: the run's own seed when unsharded (so a
    one-shard run is exactly ``vmstate run`` of the same population), else an independent stream
    ``SeedSequence([seed, shard])`` — the shards' draws do not overlap and do not depend on which
    worker runs them or in what order."""
    if shards == 1:
        return seed
    return int(np.random.SeedSequence([seed, shard]).generate_state(1, np.uint64)[0])


def shard_tasks(run: RunSpec, shards: int, race: dict | None = None) -> list[ShardTask]:
    """Cut a run into ``shards`` THP ranges ``[k*n//K, (k+1)*n//K)``. Each shard is a population of
    its own, generated from :func:`shard_seed`. The exact counts the run asks for are kept: the
    run's ``round(f * thps)`` THPs of each fraction ``f`` (shared, pte_mapped, partially_unmapped,
    pinned) are dealt to the shards in proportion to their size, each shard's fraction set to its
    count / its THPs — so the merged run has exactly the unsharded run's number of shared,
    PTE-mapped, partially unmapped and pinned THPs. Which THPs, zap offsets and pinned subpages
    differ from the unsharded draw (another random stream), as do sums that depend on how the
    properties overlap; everything a THP's split costs depends only on that THP, so merged totals
    are sums of independent shards."""
    pop = parse_population(run.population)
    n, tasks = pop.thps, []
    for k in range(shards):
        lo, hi = k * n // shards, (k + 1) * n // shards
        table = {**dataclasses.asdict(pop), "thps": hi - lo}
        if shards > 1:
            for f in FLOAT_KEYS:
                c = round(getattr(pop, f) * n)
                ck = c * hi // n - c * lo // n
                table[f] = ck / (hi - lo)
                assert round(table[f] * (hi - lo)) == ck, (f, ck, hi - lo)
        tasks.append(ShardTask(run, k, shards, lo, hi, table, shard_seed(run.seed, k, shards), race))
    return tasks


# ---------------------------------------------------------------------------------------------
# One shard (runs on a worker)

_KERNEL_LOCK = threading.Lock()  # one split at a time per process (Dask may run tasks in threads)


def run_shard(task: ShardTask) -> tuple[dict, pl.DataFrame]:
    """Generate and split one shard; return its summary (JSON-ready) and per-THP frame."""
    from vmstate.batch import api
    from vmstate.engine.population import draw  # the seed's per-THP choices, for the per-THP columns

    pop = parse_population(task.table)
    scn = api.population(**task.table, seed=task.seed, race=task.race, variant=task.run.variant,
                         name=f"{task.run.key}#{task.shard}")
    with _KERNEL_LOCK:
        t0 = time.perf_counter()
        r = api.run(scn)
        wall = time.perf_counter() - t0
    (op, _, res), = r.split_results
    d = draw(pop, task.seed)
    # Population THP j is mapped at addr + j * 2M: page->index of its head is that >> PAGE_SHIFT.
    index = r.state.blocks.a["index"][res.heads // HPAGE_PMD_NR].astype(np.int64)
    local = (index - (pop.addr >> PAGE_SHIFT)) // HPAGE_PMD_NR
    frame = r.thps.drop("op").select(
        pl.lit(task.shard, pl.Int64).alias("shard"),
        pl.Series("thp", local + task.lo, pl.Int64),
        pl.all(),
        pl.Series("thp_mappers", d.mappers[local], pl.Int64),
        pl.Series("thp_pte_mapped", d.pte[local], pl.Boolean),
        pl.Series("thp_partially_unmapped", d.partial[local], pl.Boolean),
        pl.Series("thp_pinned", d.pinned[local], pl.Boolean),
    )
    failed = res.reason != SPLIT_OK
    per = {name: res.costs[:, i] for i, name in enumerate(COSTS)}
    per["thp_split_pmd"] = res.events[:, VM_EVENTS.index("thp_split_pmd")]
    summary = {
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
    return summary, frame


def _init_worker(threads: int | None):
    """A local worker: die with the sweep process, leave Ctrl-C to it, use ``threads`` numba
    threads, and load the kernels once so the first run's timing is not the compile's."""
    if sys.platform.startswith("linux"):
        import ctypes
        try:  # PR_SET_PDEATHSIG: a SIGKILL'd sweep leaves no worker behind
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
        except OSError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _warm(threads)


def _warm_dask_worker(dask_worker):
    """A Dask worker runs one split at a time (``_KERNEL_LOCK``) on as many numba threads as the
    worker has task threads: ``dask worker --nthreads k`` gives each split k cores. (``Client.run``
    passes the worker as ``dask_worker``.)"""
    return _warm(getattr(dask_worker, "nthreads", None) or dask_worker.state.nthreads)


def _warm(threads: int | None = None):
    if threads:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    from vmstate.batch import api
    api.run(api.population(thps=4, shared=0.5, pinned=0.25, pte_mapped=0.25, seed=0))
    return numba.get_num_threads()


# ---------------------------------------------------------------------------------------------
# The driver: plan, skip what is done, run the rest, write every file atomically


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
              scheduler: str | None = None, progress: str = "auto", stream=None) -> SweepReport:
    """Run every shard of ``sweep`` that ``out`` does not hold yet and rebuild ``out/runs.parquet``.

    ``workers``: local processes (``None``: as many as CPUs and memory allow; ``0``: in this
    process). ``scheduler``: a Dask scheduler address (``tcp://host:8786``) or a
    ``distributed.Client``; the runs go to its workers instead. ``progress``: ``"bar"`` (tqdm),
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
    with _Lock(out):
        _check_or_write_spec(sweep, out)
        done = _done(out)
        todo = [t for t in tasks if (t.run.key, t.shard) not in done]
        report = SweepReport(len(plan), len(tasks), len(tasks) - len(todo), 0, [])
        bar = _Progress(progress, stream, len(tasks), report.skipped, sweep.name)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) \
            if threading.current_thread() is threading.main_thread() else None
        results = _execute(todo, sweep, workers, scheduler, bar)
        try:
            for task, result in results:
                if isinstance(result, BaseException):
                    report.errors.append((task.run.key, task.shard, result))
                    bar.error(task, result)
                    continue
                summary, frame = result
                _write_shard(out, task, summary, frame)
                report.done += 1
                bar.update(task, summary)
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            results.close()  # stops the workers now, also when the interrupt hit outside it
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            bar.close()
            build_runs_table(out, sweep)
        report.seconds = time.perf_counter() - t_start
    return report


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _execute(tasks, sweep, workers, scheduler, bar):
    """Yield ``(task, (summary, frame))`` or ``(task, exception)`` as shards finish."""
    if not tasks:
        return
    if scheduler is not None:
        yield from _execute_dask(tasks, scheduler, bar)
        return
    if workers is None:
        workers = default_workers(tasks)
    if workers == 0:
        threads = _warm()
        bar.note(f"in this process, {threads} numba threads")
        for t in tasks:
            try:
                yield t, run_shard(t)
            except (BadInput, CorruptState, MemoryError) as e:
                yield t, e
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    bar.note(f"{workers} local worker process(es), {threads} numba thread(s) each")
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_worker, initargs=(threads,))
    futures = {}
    try:
        futures = {pool.submit(run_shard, t): t for t in tasks}
        for fut in cf.as_completed(futures):
            try:
                yield futures[fut], fut.result()
            except (BadInput, CorruptState, MemoryError, cf.process.BrokenProcessPool) as e:
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
        threads = client.run(_warm_dask_worker)
        bar.note(f"Dask scheduler {client.scheduler.address}: {len(threads)} worker(s), "
                 f"{sum(threads.values())} numba thread(s) in all")
        futures = {client.submit(run_shard, t, pure=False): t for t in tasks}
        for fut in as_completed(futures):
            try:
                yield futures[fut], fut.result()
            except (BadInput, CorruptState, MemoryError) as e:
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


def _done(out: Path) -> set:
    """(run key, shard) of every shard whose summary is on disk."""
    done = set()
    for p in (out / "summaries").rglob("shard-*.json"):
        key = p.parent.relative_to(out / "summaries").as_posix()
        done.add((key, int(p.stem.split("-", 1)[1])))
    return done


def _check_or_write_spec(sweep: Sweep, out: Path):
    spec = json.loads(json.dumps(sweep.as_json()))
    path = out / "sweep.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != spec:
            diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
            raise BadInput(f"{out} holds another sweep ({path} differs in: {', '.join(diff)}): "
                           f"give a new --out, or the same sweep file to resume", field="out")
    else:
        _atomic_write(out, path, lambda f: f.write((json.dumps(spec, indent=2) + "\n").encode()))


def _write_shard(out: Path, task: ShardTask, summary: dict, frame: pl.DataFrame):
    """The per-THP part first, the summary last: a summary on disk means a finished shard."""
    _atomic_write(out, out / "thps" / task.run.key / f"part-{task.shard}.parquet",
                  frame.write_parquet)
    data = (json.dumps(summary, indent=1) + "\n").encode()
    _atomic_write(out, out / "summaries" / task.run.key / f"shard-{task.shard}.json",
                  lambda f: f.write(data))


def _atomic_write(out: Path, path: Path, write):
    """Write ``path`` crash-safely, its temporary file under ``out/.tmp`` (which the lock clears)."""
    atomic_write(path, write, tmp_dir=out / ".tmp")


class _Lock:
    """``out/.lock`` held (flock) for the whole invocation: two sweeps never write one ``out``. The
    kernel drops the lock of a killed process; stale ``out/.tmp`` files are removed on entry."""

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
            os.close(self.fd)
            raise BadInput(f"--out {self.out}: another vmstate sweep is writing it", field="out") \
                from None
        shutil.rmtree(self.out / ".tmp", ignore_errors=True)
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.out / ".tmp", ignore_errors=True)
        os.close(self.fd)


# ---------------------------------------------------------------------------------------------
# runs.parquet


def runs_schema() -> dict:
    schema = {"run": pl.String, "origin": pl.String, "variant": pl.String}
    schema |= {k: (pl.Float64 if k in FLOAT_KEYS else pl.Int64) for k in DEFAULTS}
    schema |= {"seed": pl.Int64, "shards": pl.Int64, "race_pin": pl.String,
               "race_unpin": pl.String, "race_fraction": pl.Float64}
    schema |= {k: pl.Int64 for k in ("attempted", "succeeded", "failed")}
    schema |= {"failure_rate": pl.Float64}
    schema |= {f"fail_{r}": pl.Int64 for r in REASON_NAMES}
    schema |= {k: pl.Int64 for k in VM_EVENTS}
    schema |= {k: pl.Int64 for k in COSTS}
    for k in MEAN_COUNTERS:
        schema |= {f"{k}_per_failed": pl.Float64, f"{k}_per_succeeded": pl.Float64}
    schema |= {"generate_us": pl.Float64, "split_us": pl.Float64, "us_per_thp_split": pl.Float64,
               "wall_us": pl.Float64, "threads": pl.Int64, "host": pl.String}
    return schema


def build_runs_table(out, sweep: Sweep | None = None) -> pl.DataFrame:
    """Merge the shard summaries under ``out/summaries`` into ``out/runs.parquet`` (written
    atomically), one row per run all of whose shards are done, in plan order."""
    out = Path(out)
    by_run: dict[str, list] = {}
    for p in sorted((out / "summaries").rglob("shard-*.json")):
        s = json.loads(p.read_text())
        by_run.setdefault(s["run"], []).append(s)
    rows = []
    for key, parts in by_run.items():
        parts.sort(key=lambda s: s["shard"])
        if len(parts) != parts[0]["shards"]:
            continue  # a run still missing shards
        rows.append(_merge(parts))
    rows.sort(key=lambda r: r.pop("_index"))
    table = pl.DataFrame(rows, schema=runs_schema(), orient="row") if rows \
        else pl.DataFrame(schema=runs_schema())
    if (out / "summaries").exists() or rows:
        _atomic_write(out, out / "runs.parquet", table.write_parquet)
    return table


def _merge(parts: list[dict]) -> dict:
    s0 = parts[0]

    def total(k):
        return sum(p[k] for p in parts)

    def total_of(group, k):
        return sum(p[group][k] for p in parts)

    race = s0["race"] or {}
    row = {"_index": s0["index"], "run": s0["run"], "origin": s0["origin"],
           "variant": s0["variant"],
           **{k: s0["population"].get(k, DEFAULTS[k]) for k in DEFAULTS},
           "seed": s0["seed"], "shards": s0["shards"], "race_pin": race.get("pin"),
           "race_unpin": race.get("unpin"), "race_fraction": race.get("fraction")}
    for k in ("attempted", "succeeded", "failed"):
        row[k] = total(k)
    row["failure_rate"] = row["failed"] / row["attempted"] if row["attempted"] else None
    row |= {f"fail_{r}": total(f"fail_{r}") for r in REASON_NAMES}
    row |= {k: total_of("vm_events", k) for k in VM_EVENTS}
    row |= {k: total_of("costs", k) for k in COSTS}
    for k in MEAN_COUNTERS:
        row[f"{k}_per_failed"] = total_of("sum_failed", k) / row["failed"] if row["failed"] else None
        row[f"{k}_per_succeeded"] = (total_of("sum_succeeded", k) / row["succeeded"]
                                     if row["succeeded"] else None)
    row |= {"generate_us": total("generate_us"), "split_us": total("split_us")}
    row["us_per_thp_split"] = row["split_us"] / row["attempted"] if row["attempted"] else None
    row |= {"wall_us": total("wall_us"), "threads": max(p["threads"] for p in parts),
            "host": ",".join(sorted({p["host"] for p in parts}))}
    return row


def read_thps(out) -> pl.LazyFrame:
    """The per-THP dataset of a sweep directory, with the hive columns (swept keys, seed)."""
    return pl.scan_parquet(Path(out) / "thps" / "**" / "*.parquet", hive_partitioning=True)


# ---------------------------------------------------------------------------------------------
# Progress


class _Progress:
    """A tqdm bar with ETA on a terminal; otherwise one plain line per finished shard, with an ETA
    from this invocation's pace."""

    def __init__(self, mode: str, stream, total: int, initial: int, name: str):
        if mode == "auto":
            mode = "bar" if getattr(stream, "isatty", lambda: False)() else "log"
        self.mode, self.stream, self.total, self.count, self.name = mode, stream, total, initial, name
        self.start, self.initial = time.monotonic(), initial
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="shard", file=stream,
                            desc=f"sweep {name}", dynamic_ncols=True, smoothing=0.1)
        self._log(f"{total} shard(s), {initial} already done")

    def _log(self, msg):
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.write(f"vmstate sweep: {msg}", file=self.stream)
        else:
            print(f"vmstate sweep: {msg}", file=self.stream, flush=True)

    def note(self, msg):
        self._log(msg)

    def update(self, task: ShardTask, s: dict):
        self.count += 1
        us = s["split_us"] / s["attempted"] if s["attempted"] else 0.0
        if self.bar is not None:
            self.bar.set_postfix_str(f"{task.run.key} fail {s['failed'] / s['attempted']:.1%}, "
                                     f"{us:.2f} µs/THP", refresh=False)
            self.bar.update(1)
            return
        elapsed = time.monotonic() - self.start
        pace = elapsed / max(1, self.count - self.initial)
        eta = time.strftime("%H:%M:%S", time.gmtime(pace * (self.total - self.count)))
        shard = f" shard {task.shard + 1}/{task.shards}" if task.shards > 1 else ""
        self._log(f"[{self.count}/{self.total}] {task.run.key.replace('/', ' ')}{shard}: "
                  f"{s['attempted']} THPs, {s['failed']} failed, {us:.3f} us/THP split, "
                  f"{s['wall_us'] / 1e6:.2f} s; ETA {eta}")

    def error(self, task: ShardTask, e: BaseException):
        self._log(f"FAILED {task.run.key} shard {task.shard}: {_message(e)}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
