"""``vmstate run SCENARIO [--out DIR] [--json] [--validate]`` (the contract in ``SCENARIOS.md``).

Exit status: 0 the scenario ran (failed splits are outcomes, not errors), 2 bad input (one line on
stderr), 3 the state was found corrupt (the kernel's BUG() path). Only a run that succeeded writes, and
every file reaches its final name complete or not at all.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from vmstate.errors import BadInput, CorruptState
from vmstate.runner import RunResult, run_scenario
from vmstate.scenario import load_scenario

EXIT_OK, EXIT_BAD_INPUT, EXIT_CORRUPT = 0, 2, 3


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # argparse itself exits 2 on a bad argument
    try:
        scenario = load_scenario(args.scenario)
        if args.out is not None:
            _check_out(args.out)
        result = run_scenario(scenario, validate=args.validate)
        if args.out is not None:
            write_outputs(result, args.out)
    except BadInput as e:
        print(f"vmstate: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CorruptState as e:
        print(f"vmstate: BUG: corrupt state: {e}", file=sys.stderr)
        if e.rule is not None:
            print(f"vmstate:   rule: {e.rule}", file=sys.stderr)
        if e.pfn is not None:
            print(f"vmstate:   pfn: {e.pfn:#x}", file=sys.stderr)
        return EXIT_CORRUPT
    if args.json:
        print(json.dumps(result.summary, indent=2))
    else:
        print(human_summary(result.summary, args.out))
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmstate", description="Simulate transparent huge page "
                                     "state and split_huge_page().")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run a scenario file",
                              description="Run a scenario file (TOML) and report what happened.",
                              epilog="exit status: 0 the scenario ran (failed splits are outcomes), "
                                     "2 bad input, 3 corrupt state (the kernel's BUG() path)")
    run.add_argument("scenario", metavar="SCENARIO", type=Path, help="scenario file (TOML)")
    run.add_argument("--out", metavar="DIR", type=Path,
                     help="write DIR/summary.json and DIR/snapshots/<label>/{pages,pagemap}.parquet")
    run.add_argument("--json", action="store_true", help="print only the summary JSON on stdout")
    run.add_argument("--validate", action="store_true",
                     help="check every invariant after every op (slow; a debug switch)")
    return parser


def human_summary(summary: dict, out: Path | None) -> str:
    lines = [f"scenario {summary['scenario']}", "vm_events:"]
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
# Output: temp files in DIR/.tmp-XXXX, fsync'd, then renamed into place, summary.json last.


def _check_out(out: Path):
    """Refuse an --out that cannot become a directory before spending the run on it."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise BadInput(f"--out {out}: {probe} is not a directory (ENOTDIR)", field="out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"--out {out}: {probe} is not writable (EACCES)", field="out")


def write_outputs(result: RunResult, out: Path):
    """Write the run's files under ``out``. A run killed half-way leaves at most a hidden
    ``.tmp-*`` directory, never a partial file under a final name."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out))
    except OSError as e:
        raise BadInput(f"--out {out}: cannot create the directory: {e.strerror}", field="out") from e
    try:
        files = []
        for label, (pages, pagemap) in result.snapshots.items():
            for name, frame in (("pages.parquet", pages), ("pagemap.parquet", pagemap)):
                files.append(Path("snapshots", label, name))
                _write_synced(tmp / files[-1], frame.write_parquet)
        data = (json.dumps(result.summary, indent=2) + "\n").encode()
        files.append(Path("summary.json"))  # last: its presence says the run's files are all there
        _write_synced(tmp / files[-1], lambda f: f.write(data))
        for rel in files:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, out / rel)
            _fsync_dir(out / rel.parent)
    except OSError as e:
        raise BadInput(f"--out {out}: cannot write {e.filename or ''}: {e.strerror}",
                       field="out") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_synced(path: Path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
