"""``vmstate run SCENARIO [--out DIR [--kpage]] [--json] [--validate] [--trace ADDR[@MM]]`` (the
contract in ``SCENARIOS.md``), ``vmstate sweep SWEEP --out DIR`` (:mod:`vmstate.batch.sweep`),
``vmstate plot DIR [--map]`` (:mod:`vmstate.batch.plot`) and ``vmstate show DIR --format F``
(:mod:`vmstate.io.views`).

Exit status: 0 the scenario ran (failed splits are outcomes, not errors), 2 bad input (one line on
stderr), 3 the state was found corrupt (the kernel's BUG() path), 4 an output could not be written (a
full disk, no permission, a read-only file system: one line on stderr naming the path and the errno,
``vmstate: error: DIR/snapshots/a/pages.parquet: No space left on device (ENOSPC)``; nothing partial
is left and DIR keeps its previous run). Only a run that succeeded writes, and ``--out DIR`` switches
from the previous run to the new one in one step (:mod:`vmstate.io.atomic`).
"""

import argparse
import dataclasses
import errno
import json
import os
import sys
from pathlib import Path

from vmstate.kernels.constants import VARIANTS
from vmstate.cli import kernel as cli_kernel
from vmstate.io.atomic import json_writer, write_tree
from vmstate.io.dataset import PAGEMAP, PAGES, SUMMARY, parquet_writer
from vmstate.errors import BadInput, CorruptState, OutputError
from vmstate.io.kformat import KPAGECOUNT, KPAGEFLAGS, kpage_arrays, write_u64
from vmstate.batch.runner import RunResult, run_scenario
from vmstate.io.scenario import load_scenario

EXIT_OK, EXIT_BAD_INPUT, EXIT_CORRUPT, EXIT_OUTPUT = 0, 2, 3, 4
EXIT_OUTPUT_HELP = "4 could not write output (full disk, no permission: the path and the errno)"
EXIT_SCHEDULER_LOST = 5  # vmstate sweep --scheduler: the Dask scheduler went away mid-sweep


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 on a bad argument
    if args.command == "run" and args.kpage and args.out is None:
        parser.error("--kpage writes into --out DIR: give --out")
    try:
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "plot":
            return _plot(args)
        if args.command == "show":
            return _show(args)
        if args.command in cli_kernel.COMMANDS:  # capture, kernel-run, diff
            return cli_kernel.main(args)
        scenario = load_scenario(args.scenario, external_processes=args.from_capture is not None)
        if args.variant is not None:  # --variant overrides the file's [scenario] variant
            scenario = dataclasses.replace(scenario, variant=args.variant)
        if args.out is not None:
            _check_out(args.out)
        tracer = None
        if args.trace is not None:
            from vmstate.batch.trace import Tracer, parse_trace
            tracer = Tracer(*parse_trace(args.trace), scenario.variant)
            if tracer.mm is not None and all(
                    op.fields.get("mm") != tracer.mm and op.fields.get("child") != tracer.mm
                    for op in scenario.ops):
                raise BadInput(f"--trace {args.trace!r}: no op of {args.scenario} names process "
                               f"{tracer.mm!r}", field="trace")
        result = run_scenario(scenario, validate=args.validate,
                              initial_state=cli_kernel.initial_state(args, scenario), trace=tracer)
        if args.out is not None:
            write_outputs(result, args.out, kpage=args.kpage)
    except BadInput as e:
        print(f"vmstate: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CorruptState as e:
        _report_corrupt(e)
        return EXIT_CORRUPT
    except OutputError as e:
        print(f"vmstate: error: {e}", file=sys.stderr)
        return EXIT_OUTPUT
    if tracer is not None:
        from vmstate.batch.trace import trace_lines
        print(json.dumps(tracer.records, indent=1) if args.json
              else "\n".join(trace_lines(tracer.records, tracer.addr, tracer.mm)))
    elif args.json:
        print(json.dumps(result.summary, indent=2))
    else:
        print(human_summary(result.summary, args.out))
    return EXIT_OK


def _report_corrupt(e: CorruptState):
    print(f"vmstate: BUG: corrupt state: {e}", file=sys.stderr)
    if e.rule is not None:
        print(f"vmstate:   rule: {e.rule}", file=sys.stderr)
    if e.pfn is not None:
        print(f"vmstate:   pfn: {e.pfn:#x}", file=sys.stderr)


def _sweep(args) -> int:
    """``vmstate sweep``: exit 0 every run is done, 2 bad input (the sweep file, DIR, or a run the
    engine refused), 3 a run found corrupt state, 4 a file could not be written (finished shards
    stay; started again when there is room, it goes on), 5 the Dask scheduler was lost (what
    finished is kept), 130 interrupted (run the command again to go on)."""
    from vmstate.batch.sweep import SchedulerLost, load_sweep, run_sweep
    from vmstate.batch.sweep.store import done_shards
    sweep = load_sweep(args.sweep)
    if args.out.exists() and not args.out.is_dir():
        raise BadInput(f"--out {args.out}: not a directory (ENOTDIR)", field="out")
    _check_out(args.out)
    try:
        report = run_sweep(sweep, args.out, workers=args.workers, scheduler=args.scheduler,
                           threads=args.threads, progress=args.progress)
    except SchedulerLost as e:
        print(f"vmstate: error: {e}; {len(done_shards(args.out))} shard(s) are written: run the "
              f"same command again (any --scheduler, or none for local processes) to finish",
              file=sys.stderr)
        return EXIT_SCHEDULER_LOST
    for key, shard, e in report.errors:
        print(f"vmstate: error: run {key} shard {shard}: {type(e).__name__}: {e}", file=sys.stderr)
    state = "interrupted" if report.interrupted else "done"
    print(f"sweep {sweep.name} {state}: {report.runs} runs in {report.shards} shard(s): "
          f"{report.skipped} done before, {report.done} now, {len(report.errors)} failed, "
          f"{report.shards - report.skipped - report.done - len(report.errors)} left; "
          f"{report.seconds:.1f} s; wrote {args.out / 'runs.parquet'}")
    if report.interrupted:
        print("vmstate: interrupted: run the same command again to finish the sweep",
              file=sys.stderr)
        return 130
    if any(isinstance(e, CorruptState) for _, _, e in report.errors):
        return EXIT_CORRUPT
    return EXIT_BAD_INPUT if report.errors else EXIT_OK


def _plot(args) -> int:
    if args.map:
        from vmstate.batch.plot import plot_map
        print(plot_map(args.dir, out=args.out, snapshot=args.snapshot))
        return EXIT_OK
    if args.snapshot is not None:
        raise BadInput("--snapshot goes with --map (a sweep has no snapshots)", field="snapshot")
    from vmstate.batch.plot import DEFAULT_METRICS, plot_sweep
    for path in plot_sweep(args.dir, out=args.out, metrics=args.y or DEFAULT_METRICS):
        print(path)
    return EXIT_OK


def _show(args) -> int:
    """``vmstate show DIR --format thpmaps|page-types|vmstat [--snapshot LABEL]``."""
    from vmstate.io.views import open_source, view_text
    src = open_source(args.dir, args.snapshot, need_dataset=args.format != "vmstat")
    print(view_text(src, args.format))
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmstate", description="Simulate transparent huge page "
                                     "state and split_huge_page().")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run a scenario file",
                              description="Run a scenario file (TOML) and report what happened.",
                              epilog="exit status: 0 the scenario ran (failed splits are outcomes), "
                                     "2 bad input, 3 corrupt state (the kernel's BUG() path), "
                                     + EXIT_OUTPUT_HELP)
    run.add_argument("scenario", metavar="SCENARIO", type=Path, help="scenario file (TOML)")
    run.add_argument("--out", metavar="DIR", type=Path,
                     help="write DIR/summary.json and DIR/snapshots/<label>/{pages,pagemap}.parquet")
    run.add_argument("--json", action="store_true", help="print only the summary JSON on stdout")
    run.add_argument("--validate", action="store_true",
                     help="check every invariant after every op (slow; a debug switch)")
    run.add_argument("--variant", choices=list(VARIANTS),
                     help="refcounting design: v5 (the patch series, default) or v4.5 (mainline); "
                          "overrides [scenario] variant")
    run.add_argument("--trace", metavar="ADDR[@MM]",
                     help="follow the THP (or page) ADDR of process MM maps (default: the first "
                          "process that maps it) through the ops: one line per op with what "
                          "changed (_count, _mapcount ranges, compound/entire mapcount, "
                          "PG_double_map or folio fields, PMD/PTEs, deferred queue); with --json "
                          "the records as a JSON list instead of the summary")
    run.add_argument("--kpage", action="store_true",
                     help="with --out: also DIR/snapshots/<label>/{kpageflags,kpagecount}, the "
                          "/proc/kpageflags and /proc/kpagecount binary formats (u64 per pfn)")

    sweep = commands.add_parser(
        "sweep", help="run a parameter sweep over populations",
        description="Run every point x seed of a sweep file (TOML: [sweep], [population], [grid], "
                    "[sample], [split]): generate the population, split every THP of 'parent'. "
                    "Writes DIR/runs.parquet (a row per run) and DIR/thps/ (per-THP outcomes, "
                    "hive-partitioned Parquet). Started again on the same DIR, it runs only what is "
                    "not done yet.",
        epilog="exit status: 0 every run done, 2 bad input, 3 corrupt state, 4 could not write "
               "output (full disk, no permission: the path and the errno; finished runs stay), "
               "5 the Dask scheduler was lost, 130 interrupted (run the same command again to finish)")
    sweep.add_argument("sweep", metavar="SWEEP", type=Path, help="sweep file (TOML)")
    sweep.add_argument("--out", metavar="DIR", type=Path, required=True,
                       help="the sweep's dataset directory (created; resumed when it exists)")
    where = sweep.add_mutually_exclusive_group()
    where.add_argument("--workers", metavar="N", type=_workers,
                       help="local worker processes (default: as many as CPUs and memory allow; "
                            "0: run in this process)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on a Dask distributed cluster (e.g. tcp://10.0.0.1:8786); needs "
                            "the 'cluster' extra: pip install 'vmstate[cluster]'")
    sweep.add_argument("--threads", metavar="T", type=_threads,
                       help="numba threads per run, set in the thread each task runs in (default: "
                            "a Dask worker's --nthreads; locally CPUs / workers); runs.parquet "
                            "'threads' records what numba reports inside the task")
    sweep.add_argument("--progress", choices=("auto", "bar", "log", "none"), default="auto",
                       help="a progress bar (terminal), a log line per shard, or nothing "
                            "(default: auto, a bar on a terminal)")

    plot = commands.add_parser(
        "plot", help="draw a sweep's charts (PNG)",
        description="Draw DIR/runs.parquet: for each swept key, the split failure rate and the µs "
                    "per THP split against it, one line per value of another swept key.",
        epilog="exit status: 0 drawn, 2 bad input, " + EXIT_OUTPUT_HELP)
    plot.add_argument("dir", metavar="DIR", type=Path, help="a directory written by vmstate sweep")
    plot.add_argument("--out", metavar="PLOTDIR", type=Path,
                      help="where to write the PNGs (default DIR/plots)")
    plot.add_argument("--y", metavar="COLUMN", action="append",
                      help="a runs.parquet column to plot (repeat for more; default failure_rate "
                           "and us_per_thp_split)")
    plot.add_argument("--map", action="store_true",
                      help="DIR is a run or capture directory: draw each process's address space "
                           "as 2 MiB slots coloured by THP state (PMD-mapped, PTE-mapped, partially "
                           "mapped, pinned, small pages, split, unmapped); writes one PNG "
                           "(default DIR/map.png, or --out FILE.png)")
    plot.add_argument("--snapshot", metavar="LABEL",
                      help="with --map: only this snapshot of a run (default: every snapshot)")

    show = commands.add_parser(
        "show", help="a snapshot as thpmaps, page-types or /proc/vmstat show it",
        description="Print one snapshot of a run, kernel-run or capture directory in a kernel "
                    "tool's layout: thpmaps (tools/mm/thpmaps: THP usage per VMA), page-types "
                    "(tools/mm/page-types -p: pages by flag combination, per process) or vmstat "
                    "(the run's vm_events as /proc/vmstat lines, mthp_stats as the "
                    "hugepages-2048kB/stats files). docs/views.md says where they differ.",
        epilog="exit status: 0 shown, 2 bad input (not a run or capture directory, no such "
               "snapshot, a capture asked for vmstat)")
    show.add_argument("dir", metavar="DIR", type=Path,
                      help="a run or kernel-run directory (summary.json + snapshots/) or a capture")
    show.add_argument("--format", required=True, choices=("thpmaps", "page-types", "vmstat"),
                      help="which tool's view")
    show.add_argument("--snapshot", metavar="LABEL",
                      help="the snapshot of a run to show (default: its last one)")
    cli_kernel.add_run_options(run)
    cli_kernel.add_parsers(commands, EXIT_OUTPUT_HELP)
    return parser


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return n


def _threads(text: str) -> int:
    n = _workers(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return n


def human_summary(summary: dict, out: Path | None) -> str:
    lines = [f"scenario {summary['scenario']}"]
    if "from_capture" in summary:
        lines += cli_kernel.capture_lines(summary["from_capture"])
    lines.append("vm_events:")
    lines += [f"  {k:<28}{v:>12}" for k, v in summary["vm_events"].items()]
    lines.append("costs:")
    lines += [f"  {k:<28}{v:>12}" for k, v in summary["costs"].items()]
    if summary["splits"]:
        width = max(2, *(len(s["mm"]) for s in summary["splits"]))
        lines += ["splits:", f"  {'op':>4}  {'mm':<{width}}  {'attempted':>10}  {'succeeded':>10}"
                  f"  {'failed':>10}"]
        lines += [f"  {s['op']:>4}  {s['mm']:<{width}}  {s['attempted']:>10}  {s['succeeded']:>10}"
                  f"  {s['failed']:>10}" for s in summary["splits"]]
    if summary["snapshots"]:
        lines.append("snapshots:")
        lines += [f"  {label}: " + ", ".join(f"{k} {v}" for k, v in snap.items())
                  for label, snap in summary["snapshots"].items()]
    if out is not None:
        lines.append(f"wrote {out / 'summary.json'} and {len(summary['snapshots'])} snapshot(s) "
                     f"under {out / 'snapshots'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Output: the new run's tree in DIR/.runs/<id>, fsync'd, then one switch (vmstate.io.atomic).


def _check_out(out: Path):
    """Refuse an --out that cannot become a directory (bad input) or that this process may not
    write (EACCES, EROFS: an OutputError) before spending the run on it."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise BadInput(f"--out {out}: {probe} is not a directory (ENOTDIR)", field="out")
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
        raise OutputError(probe, errno.EROFS)
    if not os.access(probe, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        raise OutputError(probe, errno.EACCES)


def write_outputs(result: RunResult, out: Path, *, kpage: bool = False):
    """Write the run as ``out``'s whole content in one switch (:func:`vmstate.io.atomic.write_tree`):
    a reader sees the previous run or this one, never a mix, and none of the previous run's
    snapshot labels stays; a kill leaves only hidden files, removed by the next run into ``out``.
    ``kpage``: each snapshot also as ``kpageflags`` and ``kpagecount`` (:mod:`vmstate.io.kformat`)."""
    files = []
    for label, (pages, pagemap) in result.snapshots.items():
        files.append((Path("snapshots", label, PAGES), parquet_writer(pages)))
        files.append((Path("snapshots", label, PAGEMAP), parquet_writer(pagemap)))
        if kpage:
            for name, array in zip((KPAGEFLAGS, KPAGECOUNT), kpage_arrays(pages)):
                files.append((Path("snapshots", label, name), lambda f, a=array: write_u64(f, a)))
    files.append((Path(SUMMARY), json_writer(result.summary)))
    write_tree(out, files, dirs=("snapshots",))


if __name__ == "__main__":
    sys.exit(main())
