"""A run cut into shards: :class:`ShardTask` (what one worker computes), :func:`shard_seed`,
:func:`shard_tasks`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from vmstate.engine.population import parse_population
from vmstate.batch.sweep.spec import FLOAT_KEYS, RunSpec

__all__ = ["ShardTask", "shard_seed", "shard_tasks"]


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
