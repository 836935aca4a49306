"""The Python API for scripts: build or load a scenario, run it, get polars frames.

``run()`` applies a scenario exactly as ``vmstate run`` does (the same ``summary``, the same
snapshots) and also keeps what the command line drops: every ``split`` op's per-THP outcome
(:meth:`vmstate.engine.huge_memory.SplitResult.frame`) and how long each op took::

    from vmstate.batch import api

    r = api.run("datasets/scenarios/mix.toml")
    r.splits          # one row per split op: op, mm, attempted, succeeded, failed, fail_* , seconds
    r.thps            # one row per THP per split op: op, head_pfn, ret, reason, costs, thp_split_pmd
    r.counters        # one row per counter: kind ("vm_event" | "cost"), name, value
    r.pages("end")    # the snapshot's pages.parquet frame

    s = api.population(thps=1000, pinned=0.1, shared=0.5, mappers=4, seed=1)
    api.run(s).splits  # split every THP of "parent": 100 fail at the precheck (the pinned ones)
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from vmstate.kernels.constants import COSTS, HPAGE_PMD_SIZE, SPLIT_FAIL_ANON_VMA, SPLIT_FAIL_PRECHECK, \
    SPLIT_FAIL_RECHECK, SPLIT_OK, N_EVENTS, VM_EVENTS
from vmstate.errors import BadInput
from vmstate.batch.runner import run_scenario
from vmstate.io.scenario import Scenario, load_scenario, parse_scenario
from vmstate.engine.huge_memory import SplitResult
from vmstate.engine.state import MemoryState

__all__ = ["Result", "load", "parse", "population", "run"]

DEFAULT_ADDR = 0x7F0000000000
# split_huge_page_to_list() outcomes, as SplitResult.reason codes (kernels/constants.py)
REASONS = {SPLIT_OK: "ok", SPLIT_FAIL_ANON_VMA: "anon_vma", SPLIT_FAIL_PRECHECK: "precheck",
           SPLIT_FAIL_RECHECK: "recheck"}
SPLITS_SCHEMA = {"op": pl.Int64, "mm": pl.String, "attempted": pl.Int64, "succeeded": pl.Int64,
                 "failed": pl.Int64, "fail_anon_vma": pl.Int64, "fail_precheck": pl.Int64,
                 "fail_recheck": pl.Int64, "seconds": pl.Float64}


@dataclass
class Result:
    """What one run produced. ``summary`` is ``vmstate run --json``'s object; ``state`` the final
    :class:`~vmstate.engine.state.MemoryState` (keep poking at it: ``r.state.split(...)``)."""
    summary: dict
    split_results: list[tuple[int, str, SplitResult]]   # (op index, mm, result) per split op
    snapshots: dict[str, tuple[pl.DataFrame, pl.DataFrame]]
    state: MemoryState
    seconds: dict = field(default_factory=dict)  # "population", then "op <index>" per op

    @property
    def vm_events(self) -> dict:
        return self.summary["vm_events"]

    @property
    def costs(self) -> dict:
        return self.summary["costs"]

    @property
    def splits(self) -> pl.DataFrame:
        """One row per ``split`` op: the summary's counts, the failures by reason, wall seconds."""
        rows = [{"op": op, "mm": mm, "attempted": r.attempted, "succeeded": r.succeeded,
                 "failed": r.failed,
                 **{f"fail_{name}": int((r.reason == code).sum())
                    for code, name in REASONS.items() if code != SPLIT_OK},
                 "seconds": self.seconds[f"op {op}"]} for op, mm, r in self.split_results]
        return pl.DataFrame(rows, schema=SPLITS_SCHEMA)

    @property
    def thps(self) -> pl.DataFrame:
        """One row per THP per ``split`` op, in split order: ``op`` and ``SplitResult.frame()``
        (``head_pfn``, ``ret``, ``reason``, every cost counter and ``thp_split_pmd`` that THP's split
        counted)."""
        frames = [r.frame().select(pl.lit(op, pl.Int64).alias("op"), pl.all())
                  for op, _, r in self.split_results]
        if not frames:  # the same columns, no rows
            empty = np.zeros(0, np.int64)
            none = SplitResult(empty, empty, empty, costs=np.zeros((0, len(COSTS)), np.int64),
                               events=np.zeros((0, N_EVENTS), np.int64))
            frames = [none.frame().select(pl.lit(0, pl.Int64).alias("op"), pl.all())]
        return pl.concat(frames)

    @property
    def counters(self) -> pl.DataFrame:
        """The run's totals, long form: ``kind`` (``vm_event`` or ``cost``), ``name``, ``value``."""
        rows = [("vm_event", k, v) for k, v in self.vm_events.items()]
        rows += [("cost", k, v) for k, v in self.costs.items()]
        return pl.DataFrame(rows, schema={"kind": pl.String, "name": pl.String, "value": pl.Int64},
                            orient="row")

    def pages(self, label: str) -> pl.DataFrame:
        """The snapshot's ``pages.parquet`` frame."""
        return self._snapshot(label)[0]

    def pagemap(self, label: str) -> pl.DataFrame:
        """The snapshot's ``pagemap.parquet`` frame."""
        return self._snapshot(label)[1]

    def _snapshot(self, label):
        if label not in self.snapshots:
            msg = f"no snapshot {label!r} (the scenario took: {', '.join(self.snapshots) or 'none'})"
            raise BadInput(msg, field="label")
        return self.snapshots[label]


def load(path) -> Scenario:
    """Read and check a scenario file (``vmstate run``'s checks; BadInput names file, op, field)."""
    return load_scenario(path)


def parse(doc: dict | str, *, path: str | os.PathLike = "<api>") -> Scenario:
    """A scenario from the TOML document as Python data (``{"scenario": {...}, "population":
    {...}, "op": [{...}, ...]}``), checked like a file; ``path`` names it in error messages.
    A ``str`` is parsed as TOML text."""
    if isinstance(doc, str):
        try:
            doc = tomllib.loads(doc)
        except tomllib.TOMLDecodeError as e:
            raise BadInput(f"{path}: malformed TOML: {e}") from None
    return parse_scenario(doc, path)


def population(*, thps: int, seed: int = 0, name: str | None = None, variant: str = "v5",
               split: bool = True, race: dict | None = None, **keys) -> Scenario:
    """A ``[population]`` scenario (keys as in :mod:`vmstate.engine.population`) whose one op splits every
    THP the parent maps — what each run of ``vmstate sweep`` runs. ``split=False``: no op.
    ``race``: racing pins on that split (``{"pin": ..., "unpin": ..., "fraction": ...}``);
    ``variant``: the refcounting design, ``"v5"`` or ``"v4.5"`` (``[scenario] variant``)."""
    table = {"thps": thps, **keys}
    addr = table.get("addr", DEFAULT_ADDR)
    ops = []
    if split:
        op = {"op": "split", "mm": "parent", "addr": addr, "len": thps * HPAGE_PMD_SIZE}
        if race is not None:
            op["race"] = dict(race)
        ops.append(op)
    doc = {"scenario": {"name": name or f"population-{thps}", "seed": seed, "variant": variant},
           "population": table,
           "op": ops}
    return parse(doc, path="<population>")


def run(scenario: Scenario | str | os.PathLike | dict, *, validate: bool = False) -> Result:
    """Run a scenario (a :class:`Scenario`, a file path, or a document dict) on a fresh state, as
    ``vmstate run`` does. Raises BadInput or CorruptState with the file/op context in front;
    failed splits are outcomes (``Result.splits``), not errors."""
    if isinstance(scenario, dict):
        scenario = parse(scenario)
    elif not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    r = run_scenario(scenario, validate=validate)
    return Result(r.summary, r.split_results, r.snapshots, r.state, r.seconds)
