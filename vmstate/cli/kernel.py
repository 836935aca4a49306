"""The real-kernel bridge on the command line (installed into ``vmstate.cli``):

- ``vmstate capture --pid [NAME=]PID ... [--range START-END ...] --out DIR``: a live process's state
  dataset (:mod:`vmstate.bridge.capture`);
- ``vmstate kernel-run SCENARIO --out DIR [--pin-method vmsplice|io_uring]``: the scenario on the
  running kernel (:mod:`vmstate.bridge.kernel_run`);
- ``vmstate diff A B [--json] [--disallow NAME]``: two datasets compared (:mod:`vmstate.bridge.diff`);
- ``vmstate run SCENARIO --from-capture DIR [--rename OLD=NEW]``: the scenario from a captured
  state (``vmstate.bridge.load.from_capture``).

Exit status: 0 done (``diff``: no difference beyond the documented divergences), 1 ``diff`` found
differences, 2 bad input (one line on stderr naming the file and field), 3 corrupt state, 4
``capture``/``kernel-run`` could not write ``--out`` (one line naming the path and the errno; the
previous content of DIR stays). ``diff --json`` writes only to stdout.
"""
import argparse
import json
import sys
from pathlib import Path

COMMANDS = ("capture", "kernel-run", "diff")
EXIT_DIFFERS = 1


def add_parsers(commands, output_help: str):
    """The three subcommands' parsers, under ``commands`` (the ``add_subparsers()`` object);
    ``output_help`` is the epilogs' text for exit status 4."""
    cap = commands.add_parser(
        "capture", help="capture a live process's THP state from /proc (root)",
        description="Read /proc/PID/maps and pagemap, then /proc/kpageflags and /proc/kpagecount of "
                    "every frame mapped, and write DIR/pages.parquet and DIR/pagemap.parquet in the "
                    "simulator's schema (refcount null: the kernel exports none).",
        epilog="exit status: 0 written, 2 bad input (no such process, not root, bad range), "
               + output_help)
    cap.add_argument("--pid", metavar="[NAME=]PID", action="append", required=True, type=_pid,
                     help="a process to capture (repeat for more); its mm name is NAME, else PID")
    cap.add_argument("--range", metavar="START-END", action="append", dest="ranges",
                     help="only [START, END) (hex with 0x; repeat for more; default every VMA)")
    cap.add_argument("--out", metavar="DIR", type=Path, required=True, help="dataset directory")
    cap.add_argument("--json", action="store_true", help="print the totals as JSON")

    kr = commands.add_parser(
        "kernel-run", help="run a scenario on the running kernel in real processes (root)",
        description="Execute the scenario's ops in real processes (mmap + MADV_HUGEPAGE + touch, "
                    "fork, exit, munmap, MADV_DONTNEED, mprotect, pin/unpin with vmsplice or "
                    "io_uring, split with debugfs or MADV_COLD), capture every snapshot from /proc "
                    "and record the /proc/vmstat thp_* deltas of each op.",
        epilog="exit status: 0 the scenario ran, 2 bad input (also: no root/THP here), "
               + output_help)
    kr.add_argument("scenario", metavar="SCENARIO", type=Path, help="scenario file (TOML)")
    kr.add_argument("--out", metavar="DIR", type=Path, required=True,
                    help="DIR/summary.json + DIR/snapshots/<label>/{pages,pagemap}.parquet")
    kr.add_argument("--pin-method", choices=("vmsplice", "io_uring"), default="vmsplice",
                    help="how pin ops hold pages: vmsplice into an unread pipe (FOLL_GET, default) "
                         "or io_uring registered buffers (FOLL_PIN|FOLL_LONGTERM; breaks COW "
                         "sharing of a forked page first)")
    kr.add_argument("--json", action="store_true", help="print only the summary JSON on stdout")

    d = commands.add_parser(
        "diff", help="compare two state datasets (simulated vs captured)",
        description="Compare two run directories (summary.json + snapshots/) or two dataset "
                    "directories by process and virtual address: per THP slot compound or split, "
                    "per page mapcount, present/migration, pmd, writable; freed frames; vm_events "
                    "and split outcomes. Documented divergences of today's kernel from v5 are "
                    "reported apart and not counted (docs/divergences.md).",
        epilog="exit status: 0 no difference beyond the documented divergences, 1 differences, "
               "2 bad input")
    d.add_argument("a", metavar="A", type=Path)
    d.add_argument("b", metavar="B", type=Path)
    d.add_argument("--json", action="store_true", help="the comparison as JSON on stdout")
    d.add_argument("--disallow", metavar="NAME", action="append", default=[],
                   help="count this documented divergence as a difference (repeat for more)")
    d.add_argument("--limit", metavar="N", type=int, default=20,
                   help="slots listed per snapshot in the table (default 20)")


def add_run_options(run):
    """``vmstate run`` options for starting from a capture."""
    run.add_argument("--from-capture", metavar="DIR", type=Path,
                     help="start from the state dataset in DIR (vmstate capture, kernel-run or run "
                          "--out snapshots/<label>) instead of an empty machine")
    run.add_argument("--rename", metavar="OLD=NEW", action="append", default=[],
                     help="with --from-capture: call the captured process OLD (e.g. its pid) NEW")


def main(args) -> int:
    """Run ``capture``, ``kernel-run`` or ``diff``; BadInput propagates to ``vmstate.cli.main``."""
    if args.command == "capture":
        return _capture(args)
    if args.command == "kernel-run":
        return _kernel_run(args)
    return _diff(args)


def initial_state(args, scenario):
    """The state ``vmstate run --from-capture`` starts from, or None."""
    if getattr(args, "from_capture", None) is None:
        if getattr(args, "rename", None):
            from vmstate.errors import BadInput
            raise BadInput("--rename needs --from-capture", field="rename")
        return None
    from vmstate.bridge.load import from_capture
    names = dict(_rename(r) for r in args.rename)
    return from_capture(args.from_capture, names=names, variant=scenario.variant)


def capture_lines(report: dict) -> list[str]:
    """What ``vmstate run --from-capture`` prints about the loaded state."""
    lines = [f"from capture {report['path']} ({report['source']}): "
             + ", ".join(f"{n} ({k} VMAs)" for n, k in report["processes"].items())
             + f"; {report['thps']} THPs ({report['pmd_mapped']} PMD-mapped), "
               f"{report['small_pages']} small pages",
             f"  {report['pins']}"]
    lines += [f"  {n}" for n in report["notes"]]
    return lines


def _pid(text):
    name, _, pid = text.rpartition("=")
    try:
        value = int(pid)
    except ValueError:
        value = -1
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected PID or NAME=PID, got {text!r}")
    return (name or pid, value)


def _rename(text):
    old, sep, new = text.partition("=")
    if not sep or not old or not new:
        from vmstate.errors import BadInput
        raise BadInput(f"--rename {text!r}: expected OLD=NEW", field="rename")
    return old, new


def _capture(args) -> int:
    from vmstate.bridge.capture import Target, capture, parse_range, write_capture
    targets = [Target(name, pid) for name, pid in args.pid]
    ranges = [parse_range(r) for r in args.ranges] if args.ranges else None
    c = capture(targets, ranges)
    write_capture(c, args.out)
    totals = {"processes": {t.name: t.pid for t in targets}, "pages": c.pages.height,
              "mapped_pages": c.pagemap.height,
              "thps": int(c.pages["head_pfn"].drop_nulls().n_unique()),
              "pmd_mapped_thps": int(c.pagemap["pmd"].sum()) // 512,
              "pmd": c.pagemap_meta["vmstate.pmd"], "notes": c.notes, "out": str(args.out)}
    if args.json:
        print(json.dumps(totals, indent=2))
    else:
        print(f"captured {', '.join(f'{n} (pid {p})' for n, p in totals['processes'].items())}: "
              f"{totals['mapped_pages']} mapped pages, {totals['thps']} THPs "
              f"({totals['pmd_mapped_thps']} PMD-mapped), {totals['pages']} frames; "
              f"wrote {args.out}/pages.parquet and pagemap.parquet")
        for note in c.notes:
            print(f"  {note}")
    return 0


def _kernel_run(args) -> int:
    from vmstate.bridge.kernel_run import KERNEL_VARIANTS, kernel_run
    from vmstate.io.scenario import load_scenario
    summary = kernel_run(load_scenario(args.scenario, variants=KERNEL_VARIANTS), args.out,
                         pin_method=args.pin_method)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"scenario {summary['scenario']} on Linux {summary['kernel']} (split trigger "
          f"{summary['split_trigger']}; debugfs {summary['debugfs']}; pins by {summary['pin_method']})")
    print("vm_events (this run's THP faults; split counters: /proc/vmstat deltas over its ops):")
    print("\n".join(f"  {k:<28}{v:>12}" for k, v in summary["vm_events"].items()))
    if "mthp_stats" in summary:
        print("mthp_stats (hugepages-2048kB/stats; anon_fault_alloc, nr_anon: this run's own):")
        print("\n".join(f"  {k:<28}{v:>12}" for k, v in summary["mthp_stats"].items()))
    for s in summary["splits"]:
        print(f"  split op {s['op']} {s['mm']}: {s['attempted']} attempted, {s['succeeded']} "
              f"succeeded, {s['failed']} failed ({s['skipped']} skipped: shared)")
    for label, snap in summary["snapshots"].items():
        print(f"  snapshot {label}: " + ", ".join(f"{k} {v}" for k, v in snap.items()))
    print(f"wrote {args.out / 'summary.json'} and {len(summary['snapshots'])} snapshot(s) under "
          f"{args.out / 'snapshots'}")
    return 0


def _diff(args) -> int:
    from vmstate.bridge.diff import diff, render
    res = diff(args.a, args.b, disallow=args.disallow)
    if args.json:
        print(json.dumps(res.as_json(), indent=2))
    else:
        print(render(res, limit=args.limit))
    return EXIT_DIFFERS if res.differences else 0


if __name__ == "__main__":
    sys.exit("use: vmstate capture|kernel-run|diff (vmstate.cli)")
