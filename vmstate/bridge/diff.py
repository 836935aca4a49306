"""``vmstate diff A B [--json]``: two state datasets compared by process and virtual address.

A and B are each a run directory (``summary.json`` + ``snapshots/<label>/``, from ``vmstate run --out``
or ``vmstate kernel-run --out``) or one dataset directory (``pages.parquet`` + ``pagemap.parquet``, e.g.
``vmstate capture --out``). Page frame numbers differ between a simulation and the kernel, so pages
are matched by ``(mm, vaddr)`` and THPs by ``(mm, 2 MiB slot)``:

- per slot: its status on each side — ``thp-pmd`` (compound, PMD-mapped), ``thp-pte`` (compound,
  PTE-mapped), ``small`` (no compound page: split, or never a THP), ``mixed``, ``none``;
- per page: mapped on both sides, ``present``, ``migration``, ``mapcount``, ``pmd``, ``writable``,
  still ``compound``;
- per snapshot: the number of freed frames;
- with both ``summary.json``: the ``vm_events`` totals (the names both list), the ``mthp_stats``
  totals (where both have them) and each ``split`` op's outcome counts.

Where exactly one side is a capture of the running kernel, a difference that one of the documented
divergences (:mod:`vmstate.bridge.divergences`) explains is reported under its name and not counted. A THP
counts as left whole by MADV_COLD (``shared_folio_not_split``) when the capture shows it mapped by
several processes, or the kernel-run summary records its split as skipped, and the split trigger (from
the summary or the snapshot's metadata; unknown for a plain capture) was not debugfs.

When the simulated side's summary says ``"variant": "6.18"`` (the running kernel's own design) no
model divergence is allowed: only what ``/proc`` cannot show (``refcount_not_exported``,
``writable_upper_bound``) and ``split_trigger``, which then also explains what MADV_COLD, kernel-run's
split trigger, does differently from the simulated debugfs split: a THP it skipped as maybe mapped
shared (the simulator splits it), and a pinned THP's split_folio() attempt that MADV_COLD counts in
``thp_split_page_failed`` / ``split_failed`` (debugfs skips it uncounted). Exit status: 0 no other
difference, 1 differences, 2 bad input.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from vmstate.kernels.constants import HPAGE_PMD_SIZE, VM_EVENTS
from vmstate.bridge import procfs
from vmstate.io.dataset import PAGEMAP, PAGES, SUMMARY, Dataset, freed_frames, read_dataset
from vmstate.io.export import KPF_ZERO_PAGE
from vmstate.bridge.divergences import DIVERGENCES
from vmstate.errors import BadInput

FIELDS = ("mapped", "present", "migration", "mapcount", "pmd", "writable", "compound")
MADVISE_TRIGGERS = (None, "madv_cold", "madv_pageout")
MODERN = "6.18"
# A 6.18 simulation models the kernel itself: only what /proc cannot show and the split trigger.
# What a 6.18 simulation may differ in from the running kernel: what /proc cannot show, what the
# split trigger (debugfs locked) changes, and the shrinker's repeated passes (kernel nondeterminism).
MODERN_ALLOWED = ("refcount_not_exported", "writable_upper_bound", "split_trigger",
                  "shrinker_passes")


@dataclass
class Side:
    path: Path
    datasets: dict[str, Dataset]
    summary: dict | None

    @property
    def captured(self) -> bool:
        if self.summary is not None and self.summary.get("source") == "kernel-run":
            return True
        return any(d.captured for d in self.datasets.values())

    @property
    def trigger(self):
        if self.summary is not None:
            return self.summary.get("split_trigger")
        for d in self.datasets.values():
            if "vmstate.split_trigger" in d.meta:
                return d.meta["vmstate.split_trigger"]
        return None


def load_side(path) -> Side:
    path = Path(path)
    summary = None
    if (path / SUMMARY).is_file():
        try:
            summary = json.loads((path / SUMMARY).read_text())
        except (OSError, ValueError) as e:
            raise BadInput(f"{path / SUMMARY}: not a readable summary ({e})", field="summary") from None
        if not isinstance(summary, dict):
            raise BadInput(f"{path / SUMMARY}: expected a JSON object", field="summary")
    if (path / "snapshots").is_dir():
        labels = sorted(p.name for p in (path / "snapshots").iterdir() if p.is_dir())
        return Side(path, {lb: read_dataset(path / "snapshots" / lb) for lb in labels}, summary)
    if (path / PAGES).exists() or (path / PAGEMAP).exists():
        return Side(path, {".": read_dataset(path)}, summary)
    if summary is not None:
        return Side(path, {}, summary)
    raise BadInput(f"{path}: expected a run directory (summary.json, snapshots/) or a state dataset "
                   f"({PAGES}, {PAGEMAP})", field="dataset")


@dataclass
class DiffResult:
    a: Side
    b: Side
    sim: str | None                      # "a" or "b": the simulated side when the other is captured
    snapshots: dict = field(default_factory=dict)
    vm_events: dict = field(default_factory=dict)
    splits: list = field(default_factory=list)
    divergences: dict = field(default_factory=dict)  # name -> what it explained
    differences: int = 0
    variant: str | None = None           # the simulated side's summary "variant"
    mthp_stats: dict = field(default_factory=dict)
    shrink_excess: int = 0               # failed splits the kernel's repeated shrinker passes add

    @property
    def modern(self) -> bool:
        return self.variant == MODERN

    @property
    def not_split(self) -> str:
        """The name under which a THP the kernel-run split left whole (shared) is explained."""
        return "split_trigger" if self.modern else "shared_folio_not_split"

    def note(self, name, what, n=1):
        d = self.divergences.setdefault(name, {})
        d[what] = d.get(what, 0) + n

    def as_json(self) -> dict:
        return {"a": str(self.a.path), "b": str(self.b.path),
                "captured": {"a": self.a.captured, "b": self.b.captured},
                "variant": self.variant, "snapshots": self.snapshots, "vm_events": self.vm_events,
                "mthp_stats": self.mthp_stats, "splits": self.splits,
                "divergences": {k: {"explained": v, "kernel": DIVERGENCES[k].kernel}
                                for k, v in self.divergences.items()},
                "differences": self.differences, "equal": self.differences == 0}


def diff(a, b, *, disallow=()) -> DiffResult:
    """Compare ``a`` and ``b`` (paths); ``disallow``: divergence names to count as differences."""
    unknown = [n for n in disallow if n not in DIVERGENCES]
    if unknown:
        raise BadInput(f"unknown divergence {unknown[0]!r} (expected one of "
                       f"{', '.join(DIVERGENCES)})", field="disallow")
    A, B = load_side(a), load_side(b)
    sim = "a" if B.captured and not A.captured else "b" if A.captured and not B.captured else None
    res = DiffResult(A, B, sim)
    sim_side = (A if sim == "a" else B) if sim else None
    if sim_side is not None and sim_side.summary is not None:
        res.variant = sim_side.summary.get("variant")
    names = MODERN_ALLOWED if res.modern else tuple(DIVERGENCES)
    allowed = {n for n in names if n not in disallow} if sim else set()
    real = (B if sim == "a" else A) if sim else None
    skipped = _skipped_slots(real.summary) if real is not None and real.summary else set()
    for label in sorted(A.datasets.keys() | B.datasets.keys()):
        if label not in A.datasets or label not in B.datasets:
            res.snapshots[label] = {"missing": "a" if label not in A.datasets else "b"}
            res.differences += 1
            continue
        res.snapshots[label] = _diff_snapshot(res, A.datasets[label], B.datasets[label], allowed,
                                              skipped, real.trigger if real else None)
    if A.summary is not None and B.summary is not None:
        res.shrink_excess = _shrinker_excess(res)
        _diff_events(res, allowed)
        _diff_mthp(res, allowed)
        _diff_splits(res, allowed)
    if sim:
        res.note("refcount_not_exported", "datasets without refcount")
        if real.trigger not in (None, "debugfs") and \
                any(s.get("op") for s in (real.summary or {}).get("splits", [])):
            res.note("split_trigger", real.trigger)
        for s in (real.summary or {}).get("splits", []):
            eagain = sum(t.get("ret") == -11 for t in s.get("thps", []))
            if eagain and not res.modern:  # 6.18's split fails with -EAGAIN too
                res.note("split_eagain", "THP splits failed with -EAGAIN", eagain)
    for name in DIVERGENCES:
        if name in disallow and name in res.divergences:
            res.differences += sum(res.divergences.pop(name).values())
    return res


def _beyond_hole(summary) -> set:
    """``(mm, haddr)`` of the 2 MiB slots a simulated 6.18 ``split`` op did not reach: its debugfs
    walk ends at the first hole of the range (``walked_to``), the op's range goes on to ``end``."""
    out = set()
    for s in summary.get("splits", []):
        if s.get("walked_to") is None or s["walked_to"] >= s["end"]:
            continue
        h = s["walked_to"] & ~(HPAGE_PMD_SIZE - 1)
        if h < s["walked_to"]:
            h += HPAGE_PMD_SIZE  # the slot of the hole itself was walked up to the hole
        out.update((s["mm"], a) for a in range(h, s["end"], HPAGE_PMD_SIZE))
    return out


def _beyond_count(res) -> int:
    sim_summary = (res.a if res.sim == "a" else res.b).summary if res.sim else None
    return len(_beyond_hole(sim_summary)) if res.modern and sim_summary else 0


def _skipped_slots(summary) -> set:
    """``(mm, haddr)`` of every THP a kernel-run split left alone (skipped: mapped by several
    processes then). The other processes mapped it at the same address (fork)."""
    out = set()
    for s in summary.get("splits", []):
        for t in s.get("thps", []):
            if t.get("outcome") == "skipped":
                out.add((s["mm"], int(t["vaddr"], 16) & ~(HPAGE_PMD_SIZE - 1)))
    return out


def _view(ds: Dataset) -> pl.DataFrame:
    j = ds.pagemap.join(ds.pages.select("pfn", "flags", "mapcount", "head_pfn"), on="pfn",
                        how="left")
    j = j.with_columns(pl.col("head_pfn").is_not_null().alias("compound"),
                       ((pl.col("flags") & (1 << procfs.KPF_ZERO_PAGE)) != 0).fill_null(False)
                       .alias("zero"),
                       (pl.col("vaddr") // HPAGE_PMD_SIZE * HPAGE_PMD_SIZE).alias("haddr"),
                       pl.col("mapcount").fill_null(0), pl.lit(True).alias("mapped"))
    mms = j.filter("compound").group_by("head_pfn").agg(pl.col("mm").n_unique().alias("folio_mms"))
    return j.join(mms, on="head_pfn", how="left").with_columns(pl.col("folio_mms").fill_null(1))


def _status(view: pl.DataFrame) -> pl.DataFrame:
    return view.group_by("mm", "haddr").agg(
        pl.when(pl.col("compound").sum() == 0).then(pl.lit("small"))
        .when((pl.col("compound").sum() == pl.len()) & (pl.col("pmd").sum() == pl.len()))
        .then(pl.lit("thp-pmd"))
        .when((pl.col("compound").sum() == pl.len()) & (pl.col("pmd").sum() == 0))
        .then(pl.lit("thp-pte")).otherwise(pl.lit("mixed")).alias("status"),
        (pl.col("folio_mms") > 1).any().alias("shared"))


def _diff_snapshot(res: DiffResult, da: Dataset, db: Dataset, allowed, skipped, trigger) -> dict:
    va, vb = _view(da), _view(db)
    cols = ["mm", "vaddr", "haddr", *FIELDS, "zero"]
    j = va.select(cols).join(vb.select(cols), on=["mm", "vaddr"], how="full", coalesce=True,
                             suffix="_b")
    j = j.with_columns(pl.coalesce("haddr", "haddr_b").alias("haddr"),
                       *(pl.col(c).fill_null(False) for c in ("mapped", "mapped_b", "zero", "zero_b")))
    st = _status(va).join(_status(vb), on=["mm", "haddr"], how="full", coalesce=True, suffix="_b") \
        .with_columns(pl.col("status", "status_b").fill_null("none"),
                      pl.col("shared", "shared_b").fill_null(False))
    real = "_b" if res.sim == "a" else "" if res.sim == "b" else None
    simx = "" if res.sim == "a" else "_b"
    # which (row, field) differ
    diffs = {}
    both = pl.col("mapped") & pl.col("mapped_b")
    diffs["mapped"] = pl.col("mapped") != pl.col("mapped_b")
    for f in FIELDS[1:]:
        diffs[f] = both & (pl.col(f) != pl.col(f"{f}_b")).fill_null(True)
    j = j.with_columns(**{f"d_{f}": e for f, e in diffs.items()})
    # explanations, row by row
    j = j.join(st.select("mm", "haddr", "status", "status_b", "shared", "shared_b"),
               on=["mm", "haddr"], how="left")
    # a THP the kernel-run split skipped (shared at the time), in any process at that address
    haddrs = sorted({h for _, h in skipped})
    j = j.with_columns(pl.col("haddr").is_in(pl.Series(haddrs, dtype=pl.UInt64).implode())
                       .alias("skipped"))
    # 6.18: the slots of a split op's range past the first hole, where debugfs stops
    sim_summary = (res.a if res.sim == "a" else res.b).summary if res.sim else None
    beyond = _beyond_hole(sim_summary) if res.modern and sim_summary else set()
    j = j.with_columns(pl.struct("mm", "haddr").map_elements(
        lambda r: (r["mm"], r["haddr"]) in beyond, return_dtype=pl.Boolean).alias("beyond")
        if beyond else pl.lit(False).alias("beyond"))
    expl = {f: pl.lit(None, pl.String) for f in FIELDS}
    if real is not None:
        shared = pl.col(f"shared{real}") | pl.col("skipped")
        not_split = ((pl.col(f"status{simx}") == "small")
                     & pl.col(f"status{real}").is_in(["thp-pmd", "thp-pte"]) & shared)
        zero = pl.col(f"zero{real}") & ~pl.col(f"zero{simx}")
        wub = pl.col(f"writable{real}").fill_null(False) & ~pl.col(f"writable{simx}").fill_null(True)
        rules = []
        if res.not_split in allowed and trigger in MADVISE_TRIGGERS:
            rules.append((res.not_split, not_split, ("compound", "pmd", "writable")))
        if res.modern and "split_trigger" in allowed and trigger in MADVISE_TRIGGERS:
            # debugfs (simulated) stopped at a hole; the MADV_COLD stand-in split past it
            past = ((pl.col(f"status{real}") == "small")
                    & pl.col(f"status{simx}").is_in(["thp-pmd", "thp-pte"]) & pl.col("beyond"))
            rules.append(("split_trigger", past, ("compound", "pmd", "writable")))
        if "zero_page_remap" in allowed:
            rules.append(("zero_page_remap", zero, ("mapcount", "writable")))
        if "writable_upper_bound" in allowed:
            rules.append(("writable_upper_bound", wub, ("writable",)))
        for name, cond, fields in rules:
            for f in fields:
                expl[f] = pl.when(pl.col(f"d_{f}") & expl[f].is_null() & cond).then(pl.lit(name)) \
                    .otherwise(expl[f])
    j = j.with_columns(**{f"e_{f}": e for f, e in expl.items()})
    # per slot: fields that differ, explained or not
    aggs = []
    for f in FIELDS:
        aggs.append((pl.col(f"d_{f}") & pl.col(f"e_{f}").is_null()).sum().alias(f"u_{f}"))
        aggs.append((pl.col(f"d_{f}") & pl.col(f"e_{f}").is_not_null()).sum().alias(f"x_{f}"))
        aggs.append(pl.col(f"e_{f}").drop_nulls().unique().alias(f"n_{f}"))
    slots = j.group_by("mm", "haddr").agg(*aggs, pl.col("status").first(),
                                          pl.col("status_b").first()).sort("mm", "haddr")
    rows = []
    unexplained = 0
    for s in slots.iter_rows(named=True):
        status_diff = s["status"] != s["status_b"]
        u = {f: s[f"u_{f}"] for f in FIELDS if s[f"u_{f}"]}
        x = {f: s[f"x_{f}"] for f in FIELDS if s[f"x_{f}"]}
        names = sorted({n for f in FIELDS for n in s[f"n_{f}"]})
        if not u and not x and not status_diff:
            continue
        if status_diff and not u and not x:
            u = {"status": 1}
        row = {"mm": s["mm"], "slot": f"0x{s['haddr']:x}", "a": s["status"], "b": s["status_b"],
               "differs": u, "explained": x, "divergences": names}
        rows.append(row)
        if u:
            unexplained += 1
        for n in names:
            res.note(n, "(process, slot) pairs")
    res.differences += unexplained
    out = {"slots": st.height, "pages": {"a": va.height, "b": vb.height}, "slot_rows": rows,
           "unexplained_slots": unexplained}
    out["freed"] = _diff_freed(res, da, db, va, vb, j, allowed)
    return out


def _diff_freed(res, da, db, va, vb, j, allowed) -> dict:
    """Freed frames, compared as the frames still in use (listed, not free): a frame the kernel
    freed and gave the run again (a later fault) is one row in a capture and two in a simulation,
    whose frames are never reused, so the freed counts differ by the reuse and the in-use counts
    do not."""
    fa = int(freed_frames(da.pages, da.pagemap).sum())
    fb = int(freed_frames(db.pages, db.pagemap).sum())
    ua, ub = da.pages.height - fa - _zero_rows(da), db.pages.height - fb - _zero_rows(db)
    out = {"a": fa, "b": fb, "in_use": {"a": ua, "b": ub}}
    if ua == ub:
        return out
    if res.sim is not None:
        # in the frames in use: the simulator's fewer in use is the kernel's more freed
        sim_f, real_f = (-ua, -ub) if res.sim == "a" else (-ub, -ua)
        real_ds, real_v = (db, vb) if res.sim == "a" else (da, va)
        zero = int(real_v["zero"].sum()) if "zero_page_remap" in allowed else 0
        # frames of THPs the kernel left whole that no process maps: the simulator's split freed them
        kept = 0
        if res.not_split in allowed and (j["e_compound"] == res.not_split).any():
            heads = real_v.filter("compound")["head_pfn"].unique().implode()
            kept = real_ds.pages.filter(pl.col("head_pfn").is_in(heads)
                                        & (pl.col("mapcount") == 0)).height
        if -zero <= sim_f - real_f <= kept:
            name = "zero_page_remap" if real_f > sim_f else res.not_split
            out["divergence"] = name
            res.note(name, "freed frames", abs(sim_f - real_f))
            return out
    out["differs"] = True
    res.differences += 1
    return out


def _zero_rows(ds: Dataset) -> int:
    """The shared zero page's row, where a dataset lists it (not a frame of the run)."""
    flags = ds.pages["flags"]
    return int(((flags & (1 << KPF_ZERO_PAGE)) != 0).sum()) if ds.pages.height else 0


def _shrinker_excess(res: DiffResult) -> int:
    """The failed splits a kernel-run's ``shrink`` ops counted beyond the simulated ones, when every
    such op agrees but for whole repeated passes: ``echo 2 > drop_caches`` runs ``drop_slab()``,
    which repeats its pass over the shrinkers while other caches free objects, so a pinned,
    partially mapped THP is tried (and counted) once per pass — a number the kernel does not
    decide the same way twice (measured 2-5). Per op: the splits done equal, and the kernel's
    failures a positive multiple of the simulation's (none where it has none). 0 where any op
    disagrees otherwise, or with no simulated 6.18 side."""
    if not res.sim or not res.modern:
        return 0
    sim, real = (res.a, res.b) if res.sim == "a" else (res.b, res.a)
    shrinks = {s["op"]: s for s in sim.summary.get("shrinks", [])}
    excess = 0
    for op in real.summary.get("ops", []):
        if op.get("name") != "shrink" or op.get("op") not in shrinks:
            continue
        s, ev = shrinks[op["op"]], op.get("vm_events", {})
        k_failed, k_split = ev.get("thp_split_page_failed", 0), ev.get("thp_split_page", 0)
        if k_split != s["succeeded"] or (k_failed == 0) != (s["failed"] == 0) \
                or (s["failed"] and k_failed % s["failed"]):
            return 0
        excess += k_failed - s["failed"]
    return excess


@dataclass(frozen=True)
class _SplitFacts:
    """What the kernel side's split ops explain, for the counters' verdicts: THPs its MADV_COLD
    stand-in skipped (shared), splits past debugfs' first hole (``beyond``), pinned THPs it tried
    (-EAGAIN), and whether a shared THP was left whole."""
    splits: list
    skipped: int
    beyond: int
    shared: bool
    eagain: int


def _split_facts(res: DiffResult) -> _SplitFacts:
    real = (res.b if res.sim == "a" else res.a) if res.sim else None
    splits = real.summary.get("splits", []) if real else []
    skipped = sum(s.get("skipped", 0) for s in splits)
    return _SplitFacts(splits, skipped, _beyond_count(res),
                       res.not_split in res.divergences or skipped > 0,
                       sum(t.get("ret") == -11 for s in splits for t in s.get("thps", [])))


def _verdict_row(res: DiffResult, allowed, row: dict, verdict, what: str, a, b):
    """A differing counter: a documented divergence when ``verdict`` is allowed, else a difference."""
    if verdict in allowed:
        row["divergence"] = verdict
        res.note(verdict, what, abs(a - b))
    else:
        row["differs"] = True
        res.differences += 1


def _diff_events(res: DiffResult, allowed):
    ea, eb = res.a.summary.get("vm_events", {}), res.b.summary.get("vm_events", {})
    f = _split_facts(res)
    splits, skipped, beyond, shared, eagain = f.splits, f.skipped, f.beyond, f.shared, f.eagain
    pte_split = sum(1 for s in splits for t in s.get("thps", [])
                    if t.get("outcome") == "split" and not t.get("pmd_mapped", True))
    for name in VM_EVENTS:
        a, b = ea.get(name), eb.get(name)
        if a is None and b is None:
            continue
        row = {"a": a, "b": b}
        res.vm_events[name] = row
        if a == b or a is None or b is None:  # a counter only one side's variant has
            continue
        verdict = None
        if res.sim:
            sim_v, real_v = (a, b) if res.sim == "a" else (b, a)
            if name in ("thp_split_page", "thp_split_page_failed") and shared and real_v <= sim_v:
                verdict = res.not_split
            elif name == "thp_split_pmd" and shared:
                verdict = res.not_split
            elif name == "thp_split_page_failed" and res.shrink_excess and \
                    real_v - sim_v == res.shrink_excess:
                verdict = "shrinker_passes"
            elif name in ("thp_split_page", "thp_split_pmd") and 0 < real_v - sim_v <= beyond:
                verdict = "split_trigger"  # the stand-in splits past debugfs' first hole
            elif name == "thp_split_page_failed" and res.modern and 0 < real_v - sim_v <= eagain:
                verdict = "split_trigger"  # MADV_COLD's split_folio() of a pinned THP counts
            elif name == "thp_deferred_split_page" and res.modern and shared \
                    and 0 < sim_v - real_v <= skipped:
                # a THP the simulated debugfs split while PTE-mapped was unmapped page by page
                # (counted partially mapped); MADV_COLD left it whole
                verdict = "split_trigger"
            elif name == "thp_deferred_split_page" and real_v - sim_v <= pte_split:
                verdict = "deferred_split_accounting"
        _verdict_row(res, allowed, row, verdict, f"vm_events {name}", a, b)


def _diff_mthp(res: DiffResult, allowed):
    """``mthp_stats`` (hugepages-2048kB/stats totals), where both summaries have them: every name
    either lists; a difference counts, but for what the split trigger explains (MADV_COLD skips
    shared THPs the simulated debugfs split splits, and counts a pinned THP's failed attempt)."""
    ma, mb = res.a.summary.get("mthp_stats"), res.b.summary.get("mthp_stats")
    if not isinstance(ma, dict) or not isinstance(mb, dict):
        return
    f = _split_facts(res)
    skipped, beyond, shared, eagain = f.skipped, f.beyond, f.shared, f.eagain
    for name in dict.fromkeys([*ma, *mb]):
        a, b = ma.get(name), mb.get(name)
        row = {"a": a, "b": b}
        res.mthp_stats[name] = row
        if a == b:
            continue
        verdict = None
        if res.sim and a is not None and b is not None:
            sim_v, real_v = (a, b) if res.sim == "a" else (b, a)
            if name in ("split", "split_failed") and shared and real_v <= sim_v:
                verdict = res.not_split
            elif name == "nr_anon" and shared and real_v >= sim_v:
                verdict = res.not_split  # the THPs left whole are still THPs
            elif name == "split_deferred" and res.modern and shared and 0 < sim_v - real_v <= skipped:
                verdict = "split_trigger"  # as thp_deferred_split_page
            elif name == "split" and 0 < real_v - sim_v <= beyond:
                verdict = "split_trigger"  # the stand-in splits past debugfs' first hole
            elif name == "nr_anon" and 0 < sim_v - real_v <= beyond:
                verdict = "split_trigger"
            elif name == "split_failed" and res.shrink_excess and \
                    real_v - sim_v == res.shrink_excess:
                verdict = "shrinker_passes"
            elif name == "split_failed" and res.modern and 0 < real_v - sim_v <= eagain:
                verdict = "split_trigger"
        _verdict_row(res, allowed, row, verdict, f"mthp_stats {name}", a, b)


def _diff_splits(res: DiffResult, allowed):
    sa = {s["op"]: s for s in res.a.summary.get("splits", [])}
    sb = {s["op"]: s for s in res.b.summary.get("splits", [])}
    real = (sb if res.sim == "a" else sa) if res.sim else {}
    seen_skip = False
    for op in sorted(sa.keys() | sb.keys()):
        x, y = sa.get(op), sb.get(op)
        keys = ("attempted", "succeeded", "failed")
        row = {"op": op, "mm": (x or y)["mm"],
               "a": [x[k] for k in keys] if x else None, "b": [y[k] for k in keys] if y else None}
        sim_rec = (x if res.sim == "a" else y) or {}
        seen_skip = seen_skip or real.get(op, {}).get("skipped", 0) > 0 or (
            res.modern and sim_rec.get("walked_to", 0) < sim_rec.get("end", 0))
        if row["a"] != row["b"]:
            if seen_skip and res.not_split in allowed and x and y:
                row["divergence"] = res.not_split
                res.note(res.not_split, "split ops")
            else:
                row["differs"] = True
                res.differences += 1
        if op in real:
            row["skipped"] = real[op].get("skipped", 0)
        res.splits.append(row)


# ---------------------------------------------------------------------------------------------
# The readable table


def render(res: DiffResult, limit: int = 20) -> str:
    kind = {True: "captured", False: "simulated"}
    lines = [f"a: {res.a.path} ({kind[res.a.captured]})", f"b: {res.b.path} ({kind[res.b.captured]})"]
    for label, snap in res.snapshots.items():
        if "missing" in snap:
            lines.append(f"snapshot {label}: only in {'b' if snap['missing'] == 'a' else 'a'}")
            continue
        lines.append(f"snapshot {label}: {snap['slots']} (process, 2 MiB slot) pairs, pages "
                     f"a {snap['pages']['a']} b {snap['pages']['b']}, freed frames a {snap['freed']['a']} "
                     f"b {snap['freed']['b']}"
                     + (f" ({snap['freed']['divergence']})" if "divergence" in snap["freed"] else "")
                     + (" DIFFERS" if snap["freed"].get("differs") else ""))
        rows = snap["slot_rows"]
        if rows:
            w = max(2, *(len(r["mm"]) for r in rows))
            lines.append(f"  {'mm':<{w}}  {'slot':<16}  {'a':<8}  {'b':<8}  {'differing pages':<28}"
                         f"  verdict")
            for r in rows[:limit]:
                fields = {**r["differs"], **r["explained"]}
                text = ", ".join(f"{k} {v}" for k, v in fields.items())
                verdict = "DIFFERS" if r["differs"] else ", ".join(r["divergences"])
                lines.append(f"  {r['mm']:<{w}}  {r['slot']:<16}  {r['a']:<8}  {r['b']:<8}  "
                             f"{text:<28}  {verdict}")
            if len(rows) > limit:
                lines.append(f"  ... {len(rows) - limit} more slots (--json lists them all)")
        else:
            lines.append("  every slot and page agrees")
    if res.vm_events:
        lines.append(f"vm_events{'':<21}{'a':>8}{'b':>8}  verdict")
        for k, v in res.vm_events.items():
            verdict = "DIFFERS" if v.get("differs") else v.get("divergence", "")
            lines.append(f"  {k:<28}{_s(v['a']):>8}{_s(v['b']):>8}  {verdict}")
    if res.mthp_stats:
        lines.append(f"mthp_stats{'':<20}{'a':>8}{'b':>8}  verdict")
        for k, v in res.mthp_stats.items():
            verdict = "DIFFERS" if v.get("differs") else v.get("divergence", "")
            lines.append(f"  {k:<28}{_s(v['a']):>8}{_s(v['b']):>8}  {verdict}")
    if res.splits:
        lines.append("splits (attempted/succeeded/failed)")
        for s in res.splits:
            a = "/".join(map(str, s["a"])) if s["a"] else "-"
            b = "/".join(map(str, s["b"])) if s["b"] else "-"
            extra = f" ({s['skipped']} skipped)" if s.get("skipped") else ""
            verdict = "DIFFERS" if s.get("differs") else s.get("divergence", "")
            lines.append(f"  op {s['op']:<3} {s['mm']:<10} a {a:<12} b {b + extra:<24} {verdict}")
    if res.divergences:
        lines.append("documented divergences (not counted; docs/divergences.md):")
        for name, what in res.divergences.items():
            lines.append(f"  {name:<27} " + ", ".join(f"{v} {k}" for k, v in what.items()))
    lines.append(f"differences: {res.differences}")
    return "\n".join(lines)


def _s(v):
    return "-" if v is None else str(v)
