"""Run a checked scenario on a fresh :class:`~vmstate.engine.state.MemoryState`, op by op, and collect what
the contract's summary and snapshots need. Nothing here touches the file system."""

import dataclasses
import time
from dataclasses import dataclass, field

import polars as pl

from vmstate.kernels.constants import HPAGE_PMD_SIZE, PAGE_SIZE, VARIANT_MTHP_STATS, VARIANT_VM_EVENTS
from vmstate.engine.memory_estimate import check_fits, estimate
from vmstate.errors import BadInput, CorruptState
from vmstate.io.export import pagemap_frame, pages_frame
from vmstate.io.scenario import Op, Scenario, where
from vmstate.engine.population import from_population, parse_population, population_counts
from vmstate.engine.state import MemoryState


@dataclass
class RunResult:
    """``summary`` is the contract's summary object (JSON-ready); ``snapshots`` maps each label to its
    ``(pages, pagemap)`` frames; ``split_results`` the :class:`~vmstate.engine.huge_memory.SplitResult` of each
    split op as ``(op index, mm, result)``; ``state`` the final state; ``seconds`` wall time of the
    initial state ("population") and of each op ("op <index>")."""
    summary: dict
    snapshots: dict[str, tuple[pl.DataFrame, pl.DataFrame]] = field(default_factory=dict)
    split_results: list = field(default_factory=list)
    state: MemoryState | None = None
    seconds: dict = field(default_factory=dict)


def run_scenario(scenario: Scenario, *, validate: bool = False,
                 initial_state: MemoryState | None = None, trace=None) -> RunResult:
    """Apply ``scenario.ops`` in order. A BadInput or CorruptState from the engine comes back with the
    op's file, index and line in front of its message. ``validate`` runs ``MemoryState.validate()``
    after every op (a debug switch: it walks the whole state). ``initial_state``: start from this
    state (``vmstate.bridge.load.from_capture``) instead of an empty one or the ``[population]``.
    ``trace``: a :class:`vmstate.batch.trace.Tracer`, called with the state after each op."""
    _check_fits(scenario)
    if initial_state is not None and scenario.population is not None:
        raise BadInput(f"{where(scenario.path, table='population')}: a run that starts from a "
                       f"capture cannot also generate a [population]", field="population")
    t0 = time.perf_counter()
    state = initial_state if initial_state is not None else _initial_state(scenario, validate)
    seconds = {"population": time.perf_counter() - t0}
    if trace is not None and (initial_state is not None or scenario.population is not None):
        trace.after_op(state, None)
    splits, shrinks, snapshots, summaries, split_results = [], [], {}, {}, []
    for op in scenario.ops:
        t0 = time.perf_counter()
        try:
            if op.op == "snapshot":
                label = op.fields["label"]
                snapshots[label] = (pages_frame(state), pagemap_frame(state))
                summaries[label] = {k: int(v) for k, v in state.snapshot_summary().items()}
            elif op.op == "split":
                res = _apply(state, op, scenario.seed)
                split_results.append((op.index, op.fields["mm"], res))
                splits.append({"op": op.index, "mm": op.fields["mm"], "attempted": int(res.attempted),
                               "succeeded": int(res.succeeded), "failed": int(res.failed),
                               **({"walked_to": res.walked_to,
                                   "end": op.fields["addr"] + op.fields["len"]}
                                  if res.walked_to is not None else {})})
            elif op.op == "shrink":
                res = _apply(state, op)
                shrinks.append({"op": op.index, "queued": int(res.queued),
                                "attempted": int(res.attempted), "succeeded": int(res.succeeded),
                                "failed": int(res.failed)})
            else:
                _apply(state, op)
            seconds[f"op {op.index}"] = time.perf_counter() - t0
            if validate:
                state.validate()
            if trace is not None:
                trace.after_op(state, op)
        except (BadInput, CorruptState, MemoryError) as e:
            raise _with_context(e, where(scenario.path, op.index, op.line)) from e
    summary = {"scenario": scenario.name,
               "variant": scenario.variant,
               "vm_events": {k: state.vm_events[k] for k in VARIANT_VM_EVENTS[scenario.variant]},
               **({"mthp_stats": state.mthp_stats} if VARIANT_MTHP_STATS[scenario.variant] else {}),
               "costs": {k: int(v) for k, v in state.costs.items()},
               "splits": splits,
               **({"shrinks": shrinks} if shrinks else {}),
               "snapshots": summaries}
    if getattr(state, "capture_report", None) is not None:
        summary["from_capture"] = state.capture_report
    return RunResult(summary, snapshots, split_results, state, seconds)


def _check_fits(scenario: Scenario):
    """Refuse up front, naming the op (or the ``[population]``), a scenario whose state would not
    fit in the memory available (:mod:`vmstate.engine.memory_estimate`), rather than be OOM-killed
    half-way. The ops are counted as they go: each mmap adds its 2 MiB blocks and a PMD entry and
    PTE table per slot (frames are never reused, records never dropped), each fork copies its
    parent's entries, each pin a record; a scenario that splits counts a split of every THP.
    Arrays that grow op by op double, so their records count twice. A ``[population]`` alone is
    checked by :func:`from_population`, with the same estimate."""
    counts = {"blocks": 0, "mappings": 0, "pins": 0, "pinned_pages": 0}
    slots: dict[str, int] = {}  # PMD slots each process maps
    if scenario.population is not None:
        try:
            pop = parse_population(scenario.population)
        except BadInput as e:
            raise _with_context(e, where(scenario.path, table="population")) from e
        counts = population_counts(pop)
        slots["parent"] = pop.thps
        slots |= {f"child{c}": pop.nshared for c in range(1, pop.mappers) if pop.nshared}
    splits = any(op.op == "split" for op in scenario.ops)
    grown = scenario.population is None  # a population reserves its arrays; an mmap grows them
    for op in scenario.ops:
        f = op.fields
        if op.op == "mmap":
            n = (f["addr"] + f["len"] - 1) // HPAGE_PMD_SIZE - f["addr"] // HPAGE_PMD_SIZE + 1
            counts["blocks"] += n
            counts["mappings"] += n
            slots[f["mm"]] = slots.get(f["mm"], 0) + n
            what, field, grown = "the mmaps up to here", "len", True
        elif op.op == "fork":
            slots[f["child"]] = slots.get(f["mm"], 0)
            counts["mappings"] += slots[f["child"]]
            what, field, grown = "the mmaps and forks up to here", "child", True
        elif op.op == "pin":
            counts["pins"] += 1
            counts["pinned_pages"] += f["len"] // PAGE_SIZE
            what, field = "the state and pins up to here", "len"
        else:
            continue
        if splits:
            counts |= {"split_thps": counts["blocks"], "rmap_entries": counts["mappings"]}
        est = estimate(**counts, grown=grown)
        try:
            check_fits(est.total, field=field, what=what + (" and a split" if splits else ""))
        except BadInput as e:
            raise _with_context(e, where(scenario.path, op.index, op.line)) from e


def _initial_state(scenario: Scenario, validate: bool):
    if scenario.population is None:
        return MemoryState(scenario.variant)
    try:
        state = from_population(scenario.population, seed=scenario.seed, variant=scenario.variant)
        if validate:
            state.validate()
    except (BadInput, CorruptState, MemoryError) as e:
        raise _with_context(e, where(scenario.path, table="population")) from e
    return state


def _apply(state, op: Op, seed: int = 0):
    """The op as a MemoryState call; the file says ``len``, the API ``length``."""
    f = op.fields
    match op.op:
        case "mmap":
            return state.mmap(f["mm"], f["addr"], f["len"], thp=f["thp"], fill=f["fill"])
        case "fork":
            return state.fork(f["mm"], f["child"])
        case "exit":
            return state.exit(f["mm"])
        case "mprotect":
            return state.mprotect(f["mm"], f["addr"], f["len"], f["prot"])
        case "split_pmd":
            return state.split_pmd(f["mm"], f["addr"])
        case "split" if f.get("race") is not None:
            # the racing pins' THPs come from the scenario's seed and this op's index
            race = dataclasses.replace(f["race"], seed=[seed, op.index])
            return state.split(f["mm"], f["addr"], f["len"], race=race)
        case "shrink":
            return state.shrink()
        case "mremap":
            return state.mremap(f["mm"], f["addr"], f["len"], f["new_addr"])
        case ("munmap" | "madvise_dontneed" | "madvise_cold" | "madvise_pageout" | "pin" | "unpin"
              | "split" | "write"):
            return getattr(state, op.op)(f["mm"], f["addr"], f["len"])
    raise AssertionError(f"op {op.op!r} passed load_scenario() but has no MemoryState call")


def _with_context(e: Exception, prefix: str) -> Exception:
    """The same error, its message led by the file/op context and the field the engine named."""
    if isinstance(e, MemoryError):
        return BadInput(f"{prefix}: the machine cannot hold this state (ENOMEM)")
    if isinstance(e, CorruptState):
        return CorruptState(f"{prefix}: {e}", pfn=e.pfn, rule=e.rule)
    fld = {"length": "len"}.get(e.field, e.field)  # the API's name for the file's field
    msg = str(e)
    if fld is not None and not msg.startswith("field '"):
        msg = f"field '{fld}': {msg}"
    return BadInput(f"{prefix}: {msg}", field=fld)
