"""The sweep file: ``[sweep]``, ``[population]``, ``[grid]``, ``[sample]``, ``[split]`` checked into a
:class:`Sweep`, and its plan of runs (:class:`RunSpec`, one per point × seed)."""
from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmstate.kernels.constants import VARIANTS
from vmstate.errors import BadInput
from vmstate.engine.population import DEFAULTS, FRACTIONS, parse_population

__all__ = ["Sweep", "RunSpec", "load_sweep", "parse_sweep", "SWEEP_TABLES", "SWEEP_KEYS", "INT_KEYS",
           "FLOAT_KEYS", "PARAM_DEFAULTS"]

SWEEP_TABLES = ("sweep", "population", "grid", "sample", "split")
SWEEP_KEYS = {"name": None, "seeds": [0], "shards": 1}
INT_KEYS = tuple(k for k in DEFAULTS if k not in FRACTIONS)   # thps, mappers, ... addr
FLOAT_KEYS = FRACTIONS                                           # shared, pte_mapped, ...
# What a run varies: the [population] keys and the refcounting design ([scenario] variant).
PARAM_DEFAULTS = {**DEFAULTS, "variant": "v5"}


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
    """A sweep from the TOML document as Python data (see :mod:`vmstate.batch.sweep`)."""
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
    name, seeds, shards = _parse_head(doc.get("sweep", {}), path, fail)
    base = _parse_base(doc.get("population", {}), fail)
    grid = _parse_grid(doc.get("grid", {}), fail)
    sample = _parse_sample(dict(doc.get("sample", {})), fail)
    race = _parse_race(doc.get("split", {}), path, fail)
    sweep = Sweep(name, path, tuple(seeds), shards, base, grid, sample, race)
    _check_runs(sweep, path, fail)
    return sweep


def _parse_head(head: dict, path: Path, fail) -> tuple[str, list, int]:
    """``[sweep]``: name (default: the file's stem), seeds (a count or a list), shards."""
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
    return name, seeds, shards


def _parse_base(table: dict, fail) -> dict:
    """``[population]``: the base every run starts from (checked per run by :func:`_check_runs`)."""
    base = dict(table)
    for k, v in base.items():
        if k not in PARAM_DEFAULTS:
            fail("population", f"unknown key (expected one of {', '.join(PARAM_DEFAULTS)})", k)
        if k == "variant":
            _typed("population", k, v, fail)
    return base


def _parse_grid(table: dict, fail) -> dict:
    """``[grid]``: key -> a non-empty list of distinct values."""
    grid = {}
    for k, values in table.items():
        if k not in PARAM_DEFAULTS:
            fail("grid", f"unknown key (expected one of {', '.join(PARAM_DEFAULTS)})", k)
        if not isinstance(values, list) or not values:
            fail("grid", f"expected a non-empty list of values, got {values!r}", k)
        grid[k] = [_typed("grid", k, v, fail) for v in values]
        if len(set(grid[k])) != len(grid[k]):
            fail("grid", f"expected distinct values, got {values!r}", k)
    return grid


def _parse_sample(raw: dict, fail) -> dict:
    """``[sample]``: ``n`` points drawn from ``seed``, each key uniform in its ``[lo, hi]``."""
    if not raw:
        return {}
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
    return {"n": n, "seed": sseed, "ranges": ranges}


def _parse_race(split: dict, path: Path, fail) -> dict | None:
    """``[split] race``: checked by the scenario parser, on a one-op program."""
    for k in split:
        if k != "race":
            fail("split", "unknown key (expected race)", k)
    if "race" not in split:
        return None
    race = split["race"]
    from vmstate.batch.api import parse  # the scenario checks, on a one-op program
    try:
        parse({"scenario": {"name": "race"}, "population": {"thps": 1},
               "op": [{"op": "split", "mm": "parent", "addr": 0x7F0000000000, "len": "2M",
                       "race": race}]}, path=path)
    except BadInput as e:
        fail("split", str(e).split(": ", 2)[-1], "race")
    return dict(race)


def _check_runs(sweep: Sweep, path: Path, fail):
    """Every run's population by ``vmstate.engine.population``'s rules, and no more shards than
    THPs."""
    for run in sweep.plan():
        try:
            pop = parse_population(run.population)
        except BadInput as e:
            point = " ".join(f"{k}={v}" for k, v in run.params.items()) or "the base"
            raise BadInput(f"{path}: run {point}: field '{e.field}': {e}", field=e.field) from None
        if sweep.shards > pop.thps:
            fail("sweep", f"expected at most thps = {pop.thps} shards (run {run.key})", "shards")


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
