"""``DIR/runs.parquet``, one row per finished run merged from its shards' summaries, and the
per-THP dataset under ``DIR/thps``."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from vmstate.kernels.constants import COSTS, VM_EVENTS
from vmstate.engine.population import DEFAULTS
from vmstate.batch.sweep.spec import FLOAT_KEYS, Sweep
from vmstate.batch.sweep.store import write_file

__all__ = ["runs_schema", "build_runs_table", "read_thps", "MEAN_COUNTERS", "TIMING_COLUMNS",
           "REASON_NAMES"]

MEAN_COUNTERS = (*COSTS, "thp_split_pmd")  # per failed / per succeeded THP means in runs.parquet
# runs.parquet columns that measure the machine, not the simulation: left out of comparisons
TIMING_COLUMNS = ("generate_us", "split_us", "us_per_thp_split", "wall_us", "threads", "host")
REASON_NAMES = ("anon_vma", "precheck", "recheck")  # SPLIT_FAIL_* 1, 2, 3


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
        write_file(out, out / "runs.parquet", table.write_parquet)
    return table


def _merge(parts: list[dict]) -> dict:
    """One run's row from its shards' summaries (in shard order): sums, then the means and rates
    of the sums."""
    row = _run_columns(parts[0])
    total = _totaller(parts)
    for k in ("attempted", "succeeded", "failed"):
        row[k] = total(k)
    row["failure_rate"] = row["failed"] / row["attempted"] if row["attempted"] else None
    row |= {f"fail_{r}": total(f"fail_{r}") for r in REASON_NAMES}
    # a counter the run's variant does not have (v5 and 4.5 keep five) is null
    row |= {k: total("vm_events", k) if all(k in p["vm_events"] for p in parts) else None
            for k in VM_EVENTS}
    row |= {k: total("costs", k) for k in COSTS}
    for k in MEAN_COUNTERS:
        row[f"{k}_per_failed"] = total("sum_failed", k) / row["failed"] if row["failed"] else None
        row[f"{k}_per_succeeded"] = (total("sum_succeeded", k) / row["succeeded"]
                                     if row["succeeded"] else None)
    row |= {"generate_us": total("generate_us"), "split_us": total("split_us")}
    row["us_per_thp_split"] = row["split_us"] / row["attempted"] if row["attempted"] else None
    row |= {"wall_us": total("wall_us"), "threads": max(p["threads"] for p in parts),
            "host": ",".join(sorted({p["host"] for p in parts}))}
    return row


def _run_columns(s0: dict) -> dict:
    """What names the run: the same in every shard's summary."""
    race = s0["race"] or {}
    return {"_index": s0["index"], "run": s0["run"], "origin": s0["origin"],
            "variant": s0["variant"],
            **{k: s0["population"].get(k, DEFAULTS[k]) for k in DEFAULTS},
            "seed": s0["seed"], "shards": s0["shards"], "race_pin": race.get("pin"),
            "race_unpin": race.get("unpin"), "race_fraction": race.get("fraction")}


def _totaller(parts: list[dict]):
    """``total(k)``: the sum of ``k`` over the shards; ``total(group, k)``: of ``group[k]``."""
    def total(group, k=None):
        return sum(p[group] if k is None else p[group][k] for p in parts)
    return total


def read_thps(out) -> pl.LazyFrame:
    """The per-THP dataset of a sweep directory, with the hive columns (swept keys, seed)."""
    return pl.scan_parquet(Path(out) / "thps" / "**" / "*.parquet", hive_partitioning=True)
