"""What does copy-on-write cost after fork, per variant? The 5.8 change of anon-THP CoW semantics
("mm: thp: change CoW semantics for anon-THP"), measured: pages copied, THP faults, PMD splits,
PTE writes, TLB flushes, atomics and engine µs per write fault.

Usage::

    python benchmarks/cow_bench.py [--ref-thps 8] [--thps 20000] [--children 4] [--json]
                                   [--plot docs/img/cow.png] [--quick] [--load RUN.json]

The workload, as a forking server or a ``fork()`` + write checkpointer makes it: a parent mmaps N
THPs (PMD-mapped, written), forks K children; then (phase ``children``) each child writes the first
``pages`` pages of every THP (one ``write`` op per THP, in address order), for ``pages`` in 1, 64,
256, 512 (w = 1/512, 1/8, 1/2, all); then (phase ``parent``) the parent writes the same pages.
Case ``all/op`` is w = all with one write op per process over the whole range: the same writes in
the same order, without the per-op cost of K × N ops.

- v5 / v4.5 (2015–5.7): a write fault on a write-protected huge PMD reuses the THP when
  ``page_mapcount() == 1 && page_count() == 1``, else allocates a THP and copies 512 pages
  (``thp_fault_alloc``); the rest of that THP's pages then no longer fault.
- 6.18 (5.8+): a write fault on a non-exclusive huge PMD splits it (``thp_split_pmd``) and copies
  the one 4 KiB page; each further page written is its own fault on a write-protected PTE.

Every count is measured, none computed: ``write faults`` are the writes the kernel takes a fault
for (the reference model's ``handle_mm_fault()`` called on a write-protected PMD or PTE, counted by
wrapping it); ``pages copied`` are the frames allocated (frames in use after − before, plus the
``pages_freed`` cost counter); the rest are the reference model's ``vm_events``, ``costs`` and
``atomics`` (``mapcount_writes`` + ``refcount_ops``) on ``--ref-thps`` THPs. The engine
(``vmstate.MemoryState``) runs the same program on ``--ref-thps`` THPs, where its ``dump()`` must
equal the reference's after each phase, and on ``--thps`` THPs, where it is timed (each op's first
call on a 2-THP program first, so compiling is not timed) and its own counters per THP must equal
the reference's; any difference is printed as a MISMATCH line. ``no-fault µs/THP``: the same write
ops again right after the children phase, when nothing faults (the op's walk and Python overhead);
``net µs/fault`` = (the children's µs − that) / their faults, both measured in the same run.
Per THP = the phase's total / N (the children phase is K children's writes). Each variant runs in
its own subprocess, so its peak RSS (VmHWM) is its own.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks._machine import machine, peak_rss_bytes, reset_peak_rss, stream_bandwidth  # noqa: E402

A = 0x100000000000
M2 = 2 << 20
PAGE = 4096
VARIANTS = ("v5", "v4.5", "6.18")
N_PAGES = 512
PAGES = (1, 64, 256, 512)  # pages written per THP: w = 1/512, 1/8, 1/2, all
#: (pages per THP, bulk): one write op per THP, and w = all as one op per process over the whole range
#: (the same writes in the same order, without the per-op cost of 4 × N ops)
CASES = tuple((p, False) for p in PAGES) + ((512, True),)
PHASES = ("children", "parent")
COUNTS = ("write_faults", "pages_copied", "thp_fault_alloc", "thp_split_pmd", "pte_write",
          "tlb_flush", "mapcount_writes", "refcount_ops", "pages_in_use")
ENGINE_COUNTS = ("pages_copied", "thp_fault_alloc", "thp_split_pmd", "pte_write", "tlb_flush",
                 "pages_in_use")


def setup(s, n, k):
    s.mmap("p", A, n * M2)
    for i in range(k):
        s.fork("p", f"c{i}")


def phase_ops(phase, n, k, pages, bulk=False):
    """The write ops of one phase, as (mm, addr, len)."""
    mms = [f"c{i}" for i in range(k)] if phase == "children" else ["p"]
    if bulk:
        assert pages == 512
        return [(mm, A, n * M2) for mm in mms]
    return [(mm, A + j * M2, pages * PAGE) for mm in mms for j in range(n)]


def reference_pages_in_use(ref):
    """The reference's frames in use: a ``_count`` or a THP tail (``snapshot_summary()``'s rule)."""
    from reference.page import PageTail
    return sum(1 for p in ref.pages.values() if p._count != 0 or PageTail(p))


def snapshot(ref=None, engine=None):
    if ref is not None:
        return {"pages_in_use": reference_pages_in_use(ref), **ref.vm_events, **ref.costs,
                **ref.atomics}
    return {"pages_in_use": engine.snapshot_summary()["pages_in_use"], **engine.vm_events,
            **engine.costs}


def delta(before, after, faults=None):
    d = {k: after[k] - before[k] for k in after if k in before}
    d["pages_copied"] = d["pages_in_use"] + d["pages_freed"]  # frames allocated
    d["pages_in_use"] = after["pages_in_use"]
    if faults is not None:
        d["write_faults"] = faults
    return d


def count_faults(ref):
    """Wrap ``ref.handle_mm_fault`` to count the writes that fault on a write-protected entry."""
    from vmstate.kernels.constants import _PAGE_PRESENT, _PAGE_RW, HPAGE_PMD_MASK
    from reference.page import pmd_trans_huge
    counter = [0]
    inner = ref.handle_mm_fault

    def handle_mm_fault(vma, address):
        pmd = vma.vm_mm.pmd.get(address & HPAGE_PMD_MASK)
        if pmd_trans_huge(pmd):
            counter[0] += not pmd & _PAGE_RW
        elif isinstance(pmd, dict):
            pte = pmd.get(address)
            counter[0] += pte is not None and bool(pte & _PAGE_PRESENT) and not pte & _PAGE_RW
        inner(vma, address)
    ref.handle_mm_fault = handle_mm_fault
    return counter


def run_reference(variant, n, k, pages, bulk=False):
    """Per phase: the reference's counts (totals over ``n`` THPs), and whether the engine on the
    same program has the same ``dump()``."""
    from reference import ReferenceState
    from vmstate import MemoryState
    from vmstate.engine.compare import diff_dumps
    ref, eng = ReferenceState(variant), MemoryState(variant)
    setup(ref, n, k)
    setup(eng, n, k)
    faults = count_faults(ref)
    out = {}
    for phase in PHASES:
        rb, eb, f0 = snapshot(ref=ref), snapshot(engine=eng), faults[0]
        for op in phase_ops(phase, n, k, pages, bulk):
            ref.write(*op)
            eng.write(*op)
        out[phase] = {"ref": delta(rb, snapshot(ref=ref), faults[0] - f0),
                      "engine_small": delta(eb, snapshot(engine=eng)),
                      "dump_diff": diff_dumps(eng.dump(), ref.dump(), limit=3)}
    return out


def run_engine(variant, n, k, pages, bulk=False):
    """Per phase: the engine's counters (totals over ``n`` THPs) and seconds; and the seconds of the
    children's ops run again when nothing faults."""
    from vmstate import MemoryState
    s = MemoryState(variant)
    setup(s, n, k)
    out = {}
    for phase in PHASES:
        ops = phase_ops(phase, n, k, pages, bulk)
        before = snapshot(engine=s)
        reset_peak_rss()
        t = time.perf_counter()
        for op in ops:
            s.write(*op)
        secs = time.perf_counter() - t
        out[phase] = {"engine": delta(before, snapshot(engine=s)), "s": secs,
                      "timed_peak_rss_bytes": peak_rss_bytes()}
        if phase == "children":
            before = snapshot(engine=s)
            t = time.perf_counter()
            for op in ops:
                s.write(*op)
            out["nofault_s"] = time.perf_counter() - t
            d = delta(before, snapshot(engine=s))
            out["nofault_changed"] = {c: d[c] for c in ENGINE_COUNTS if c != "pages_in_use" and d[c]}
    return out


def prefault(thps, k):
    """Touch, once, about what a case will need: on this VM the first touch of guest memory the
    host has not backed costs 1.3-2.3 s/GB, which a second touch does not (split_bench.py)."""
    import numpy as np

    from vmstate.engine.state import available_memory
    need = thps * (k + 1) * (6264 + 32 + 4096) * 3 // 2 + thps * (k + 1) * N_PAGES * 8 * 4
    buf = np.empty(min(need, int(available_memory() * 0.5)), np.uint8)
    buf.fill(1)
    del buf


def run_variant(variant, ref_thps, thps, k):
    """One variant, all fractions: the rows (per THP and per fault) and the mismatches."""
    for pages, bulk in ((1, False), (512, True)):  # compile outside the timing
        run_engine(variant, 2, 1, pages, bulk)
    prefault(thps, k)
    reset_peak_rss()
    rows, mismatches, timed_peak = [], [], 0
    for pages, bulk in CASES:
        ref = run_reference(variant, ref_thps, k, pages, bulk)
        t = time.perf_counter()
        eng = run_engine(variant, thps, k, pages, bulk)
        wall = time.perf_counter() - t
        case = f"{variant} w={label(pages, bulk)}"
        if eng["nofault_changed"]:
            mismatches.append(f"{case}: the no-fault rewrite changed "
                              f"{eng['nofault_changed']}")
        for phase in PHASES:
            r, e = ref[phase]["ref"], eng[phase]["engine"]
            timed_peak = max(timed_peak, eng[phase]["timed_peak_rss_bytes"])
            if ref[phase]["dump_diff"]:
                mismatches.append(f"{case} {phase}: engine dump != reference dump "
                                  f"at {ref_thps} THPs: {ref[phase]['dump_diff']}")
            for c in ENGINE_COUNTS:
                small = ref[phase]["engine_small"][c]
                if small != r[c]:
                    mismatches.append(f"{case} {phase} {c}: engine {small} != "
                                      f"reference {r[c]} at {ref_thps} THPs")
                if e[c] * ref_thps != r[c] * thps:
                    mismatches.append(f"{case} {phase} {c}: engine {e[c] / thps} "
                                      f"per THP at {thps} THPs != reference {r[c] / ref_thps}")
            faults = r["write_faults"]
            per_thp = {c: r[c] / ref_thps for c in COUNTS}
            per_fault = {c: (r[c] / faults if faults else None) for c in COUNTS
                         if c != "pages_in_use"}
            faults_large = faults * thps // ref_thps  # the same program per THP at thps THPs
            rows.append({
                "variant": variant, "pages": pages, "bulk": bulk, "phase": phase, "per_thp": per_thp,
                "per_fault": per_fault,
                "atomics_per_fault": ((r["mapcount_writes"] + r["refcount_ops"]) / faults
                                      if faults else None),
                "mib_per_thp_after": r["pages_in_use"] * PAGE / ref_thps / 2**20,
                "engine_mib_after": e["pages_in_use"] * PAGE / 2**20,
                "engine_us_per_thp": eng[phase]["s"] / thps * 1e6,
                "engine_us_per_fault": (eng[phase]["s"] / faults_large * 1e6 if faults else None),
                "nofault_us_per_thp": (eng["nofault_s"] / thps * 1e6 if phase == "children"
                                       else None),
                # the write ops' µs beyond the same ops when nothing faults, per fault
                "net_us_per_fault": ((eng[phase]["s"] - eng["nofault_s"]) / faults_large * 1e6
                                     if phase == "children" and faults else None),
                "engine_wall_s": round(wall, 2)})
    return {"variant": variant, "rows": rows, "mismatches": mismatches,
            "peak_rss_bytes": max(peak_rss_bytes(), timed_peak), "timed_peak_rss_bytes": timed_peak}


def label(pages, bulk=False):
    return "all/op" if bulk else {1: "1pg", 64: "1/8", 256: "1/2", 512: "all"}.get(pages, str(pages))


def fmt(x, spec):
    return format("-", ">" + spec.split(".")[0]) if x is None else format(x, spec)


def print_table(out):
    print(f"stream copy {out['stream_bandwidth_GBps']} GB/s, {out['cores']} cores, "
          f"reference {out['ref_thps']} THPs, engine {out['thps']} THPs, {out['children']} children")
    print(f"{'variant':7s} {'w':>6s} {'phase':8s} {'faults':>7s} {'copied':>7s} {'copiedKiB':>9s} "
          f"{'thp_flt':>7s} {'splits':>6s} {'pte_w':>7s} {'tlb':>6s} {'atomics':>8s} "
          f"{'MiB/THP':>7s} {'us/flt':>7s} {'us/THP':>8s} {'nofault':>7s} {'net us':>7s}")
    print(f"{'':7s} {'':>6s} {'':8s} {'/THP':>7s} {'pg/THP':>7s} {'/fault':>9s} "
          f"{'/THP':>7s} {'/THP':>6s} {'/fault':>7s} {'/fault':>6s} {'/fault':>8s} "
          f"{'after':>7s} {'engine':>7s} {'engine':>8s} {'us/THP':>7s} {'/fault':>7s}")
    for v in out["variants"]:
        for r in v["rows"]:
            t, f = r["per_thp"], r["per_fault"]
            w = label(r["pages"], r["bulk"])
            kib = None if f["pages_copied"] is None else f["pages_copied"] * PAGE / 1024
            print(f"{r['variant']:7s} {w:>6s} {r['phase']:8s} {t['write_faults']:7.1f} "
                  f"{t['pages_copied']:7.1f} {fmt(kib, '9.1f')} {t['thp_fault_alloc']:7.2f} "
                  f"{t['thp_split_pmd']:6.2f} {fmt(f['pte_write'], '7.2f')} "
                  f"{fmt(f['tlb_flush'], '6.2f')} {fmt(r['atomics_per_fault'], '8.1f')} "
                  f"{r['mib_per_thp_after']:7.3f} {fmt(r['engine_us_per_fault'], '7.3f')} "
                  f"{r['engine_us_per_thp']:8.2f} {fmt(r['nofault_us_per_thp'], '7.2f')} "
                  f"{fmt(r['net_us_per_fault'], '7.3f')}")
        print(f"{v['variant']}: peak RSS {v['peak_rss_bytes'] / 2**30:.2f} GiB (VmHWM after the "
              f"prefault, snapshot_summary()'s arrays included)")
    for v in out["variants"]:
        for m in v["mismatches"]:
            print("MISMATCH", m)


def plot(out, path):
    """2 x 2 panels over the pages each child writes per THP, children phase, one line per variant;
    the all/op case (one op per process) as a hollow marker at 512."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    style = {"v5": ("o", "-", 9), "v4.5": ("s", "--", 6), "6.18": ("^", "-", 7)}
    panels = (
        (lambda r: r["per_thp"]["pages_copied"] * PAGE / 2**20,
         f"frames copied per THP ({out['children']} children), MiB"),
        (lambda r: r["per_thp"]["write_faults"], "write faults per THP"),
        (lambda r: r["per_thp"]["mapcount_writes"] + r["per_thp"]["refcount_ops"],
         "atomics per THP (mapcount + refcount, reference)"),
        (lambda r: r["engine_us_per_fault"],
         f"engine µs per write fault ({out['thps']} THPs; hollow: one op per process)"),
    )
    for v in out["variants"]:
        rows = [r for r in v["rows"] if r["phase"] == "children" and not r["bulk"]]
        bulk = [r for r in v["rows"] if r["phase"] == "children" and r["bulk"]]
        marker, ls, size = style.get(v["variant"], ("x", "-", 6))
        for ax, (metric, _) in zip(axes.flat, panels):
            line, = ax.plot([r["pages"] for r in rows], [metric(r) for r in rows], marker=marker,
                            linestyle=ls, markersize=size, label=v["variant"])
            if ax is axes.flat[3]:
                ax.plot([r["pages"] for r in bulk], [metric(r) for r in bulk], marker=marker,
                        markersize=size + 2, linestyle="none", markerfacecolor="none",
                        color=line.get_color())
    for ax, (_, title) in zip(axes.flat, panels):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(PAGES, ["1 page", "64\n(1/8)", "256\n(1/2)", "512\n(all)"])
        ax.set_xlabel("pages each child writes per THP")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"COW after fork, the children's writes ({out['cores']} cores, stream copy "
                 f"{out['stream_bandwidth_GBps']} GB/s)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-thps", type=int, default=8)
    ap.add_argument("--thps", type=int, default=20_000)
    ap.add_argument("--children", type=int, default=4)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="2 THPs for both, 2 children, in-process")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", type=Path, help="write a PNG chart here")
    ap.add_argument("--load", type=Path, help="print (and --plot) the --json output of an earlier run")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.ref_thps, args.thps, args.children = 2, 2, 2
    if args.one:
        print(json.dumps(run_variant(args.one, args.ref_thps, args.thps, args.children)))
        return 0
    if args.load:
        out = json.loads(args.load.read_text())
        print_table(out)
        if args.plot:
            plot(out, args.plot)
        return 0
    out = {**machine(), "stream_bandwidth_GBps": round(stream_bandwidth() / 1e9, 2),
           "ref_thps": args.ref_thps, "thps": args.thps, "children": args.children,
           "variants": []}
    for variant in args.variants:
        if args.quick:
            out["variants"].append(run_variant(variant, args.ref_thps, args.thps, args.children))
            continue
        r = subprocess.run([sys.executable, __file__, "--one", variant, "--ref-thps",
                            str(args.ref_thps), "--thps", str(args.thps), "--children",
                            str(args.children)], capture_output=True, text=True, check=True)
        out["variants"].append(json.loads(r.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(out))
    else:
        print_table(out)
    if args.plot:
        plot(out, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
