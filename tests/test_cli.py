"""``vmstate run``: exit statuses, --json, --out files and their schemas, and that a run which fails
writes nothing. The first tests run the real command line in a subprocess; the rest call
``vmstate.cli.main`` in-process (same code, no interpreter start-up per case)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from vmstate import cli
from vmstate.errors import CorruptState

REPO = Path(__file__).resolve().parents[1]

# Two THPs at 0x200000, shared with a child by fork, then split in the parent: both splits succeed
# (total_mapcount 2 == page_count 3 - 1).
SMALL = """\
[scenario]
name = "fork_shared"
seed = 3

[[op]]
op = "mmap"
mm = "parent"
addr = 0x200000
len = "4M"

[[op]]
op = "fork"
mm = "parent"
child = "child"

[[op]]
op = "snapshot"
label = "before"

[[op]]
op = "split"
mm = "parent"
addr = 0x200000
len = "4M"

[[op]]
op = "snapshot"
label = "after-split"
"""

# Op 2 asks for a range that is not mapped: only the engine can tell (ENOMEM).
UNMAPPED = """\
[scenario]
name = "unmapped"

[[op]]
op = "mmap"
mm = "a"
addr = 0x200000
len = "2M"

[[op]]
op = "snapshot"
label = "early"

[[op]]
op = "madvise_dontneed"
mm = "a"
addr = 0x400000
len = "2M"
"""

PAGES_SCHEMA = {"pfn": pl.UInt64, "flags": pl.UInt64, "mapcount": pl.Int64, "refcount": pl.Int64,
                "head_pfn": pl.UInt64}
PAGEMAP_SCHEMA = {"mm": pl.String, "vaddr": pl.UInt64, "pfn": pl.UInt64, "present": pl.Boolean,
                  "migration": pl.Boolean, "writable": pl.Boolean, "pmd": pl.Boolean}


def vmstate(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "vmstate", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, env=env, timeout=600)


def scenario(tmp_path, text, name="s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def listing(directory: Path) -> list[str]:
    """What a reader of ``directory`` sees: every name, symlinks followed, hidden names left out."""
    names = []
    for top, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        names += [os.path.relpath(os.path.join(top, n), directory)
                  for n in dirs + files if not n.startswith(".")]
    return sorted(names)


def hidden(directory: Path) -> list[str]:
    """The hidden names of a run directory (vmstate.io.atomic's switch), the trees as ``<id>``."""
    names = [p.name for p in directory.iterdir() if p.name.startswith(".")]
    runs = directory / ".runs"
    return sorted(names + (["<id>" for _ in runs.iterdir()] if runs.is_dir() else []))


# --- the real command line ---------------------------------------------------------------------


def test_json_and_out(tmp_path):
    out = tmp_path / "out"
    r = vmstate("run", scenario(tmp_path, SMALL), "--json", "--out", out)
    assert (r.returncode, r.stderr) == (0, "")
    summary = json.loads(r.stdout)  # nothing else on stdout
    assert {"scenario", "vm_events", "costs", "splits", "snapshots"} <= summary.keys()
    assert summary["scenario"] == "fork_shared"
    assert {"thp_fault_alloc", "thp_split_page", "thp_split_page_failed", "thp_split_pmd",
            "thp_deferred_split_page"} <= summary["vm_events"].keys()
    assert summary["vm_events"]["thp_fault_alloc"] == 2
    assert summary["vm_events"]["thp_split_page"] == 2
    assert summary["splits"] == [{"op": 4, "mm": "parent", "attempted": 2, "succeeded": 2,
                                  "failed": 0}]
    assert summary["snapshots"] == {"before": {"thps": 2, "pages_in_use": 1024},
                                    "after-split": {"thps": 0, "pages_in_use": 1024}}
    assert json.loads((out / "summary.json").read_text()) == summary
    assert listing(out) == ["snapshots", "snapshots/after-split", "snapshots/after-split/pagemap.parquet",
                            "snapshots/after-split/pages.parquet", "snapshots/before",
                            "snapshots/before/pagemap.parquet", "snapshots/before/pages.parquet",
                            "summary.json"]
    assert hidden(out) == [".current", ".runs", "<id>"]  # one tree, no .tmp-* left behind
    for label in ("before", "after-split"):
        pages = pl.read_parquet(out / "snapshots" / label / "pages.parquet")
        pagemap = pl.read_parquet(out / "snapshots" / label / "pagemap.parquet")
        assert dict(pages.schema) == PAGES_SCHEMA
        assert dict(pagemap.schema) == PAGEMAP_SCHEMA
        assert pages.height == 1024 and pagemap.height == 2 * 1024
    before = pl.read_parquet(out / "snapshots/before/pagemap.parquet")
    assert before["pmd"].all() and before["present"].all() and not before["migration"].any()
    after = pl.read_parquet(out / "snapshots/after-split/pages.parquet")
    assert after["head_pfn"].null_count() == 1024  # every page is a small page now


def test_human_summary(tmp_path):
    r = vmstate("run", scenario(tmp_path, SMALL))
    assert (r.returncode, r.stderr) == (0, "")
    assert "scenario fork_shared" in r.stdout
    assert "thp_split_page" in r.stdout and "splits:" in r.stdout
    split_row = next(line for line in r.stdout.splitlines() if "parent" in line).split()
    assert split_row == ["4", "parent", "2", "2", "0"]


def test_static_bad_input_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    bad = SMALL.replace('len = "4M"\n\n[[op]]\nop = "snapshot"', 'len = 5000\n\n[[op]]\nop = "snapshot"')
    r = vmstate("run", scenario(tmp_path, bad), "--out", out, "--json")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"vmstate: error: {tmp_path / 's.toml'}: op 4 (line 20): field 'len': "
                        "expected a positive multiple of 4096 (4K), got 5000\n")
    assert not out.exists()


def test_engine_bad_input_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = vmstate("run", scenario(tmp_path, UNMAPPED), "--out", out)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"vmstate: error: {tmp_path / 's.toml'}: op 3 (line 14): ")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert listing(out) == ["keep.txt"]


def test_missing_scenario_file(tmp_path):
    r = vmstate("run", tmp_path / "nope.toml")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"vmstate: error: {tmp_path / 'nope.toml'}: cannot read the scenario: "
                        "No such file or directory\n")


@pytest.mark.parametrize("args", [[], ["run"], ["frob", "x.toml"], ["run", "x.toml", "--bogus"]])
def test_argument_errors_exit_2(args):
    r = vmstate(*args)
    assert r.returncode == 2 and "error:" in r.stderr and r.stdout == ""


# --- in-process: the same main() -------------------------------------------------------------


def test_validate_switch_runs_validate_after_every_op(tmp_path, monkeypatch, capsys):
    from vmstate.engine.state import MemoryState
    calls = []
    real = MemoryState.validate
    monkeypatch.setattr(MemoryState, "validate", lambda self: calls.append(1) or real(self))
    assert cli.main(["run", str(scenario(tmp_path, SMALL)), "--validate", "--json"]) == 0
    assert len(calls) == 5
    assert json.loads(capsys.readouterr().out)["scenario"] == "fork_shared"


def test_corrupt_state_exits_3_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from vmstate.engine.state import MemoryState

    def split(self, mm, addr, length):
        raise CorruptState("pfn 0x400: total_mapcount 3 > page_count 2 - 1", pfn=0x400,
                           rule="split_huge_page: VM_BUG_ON_PAGE(mapcount > count - 1)")
    monkeypatch.setattr(MemoryState, "split", split)
    out = tmp_path / "out"
    assert cli.main(["run", str(scenario(tmp_path, SMALL)), "--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"vmstate: BUG: corrupt state: {tmp_path / 's.toml'}: op 4 (line 20): pfn 0x400: "
        "total_mapcount 3 > page_count 2 - 1",
        "vmstate:   rule: split_huge_page: VM_BUG_ON_PAGE(mapcount > count - 1)",
        "vmstate:   pfn: 0x400"]
    assert not out.exists()


def test_failed_write_leaves_no_final_file(tmp_path, monkeypatch, capsys):
    """The second parquet write fails (a full disk): no file reaches a final name, no temp is left."""
    real = pl.DataFrame.write_parquet
    calls = []

    def write_parquet(self, file, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, file, *args, **kwargs)
    monkeypatch.setattr(pl.DataFrame, "write_parquet", write_parquet)
    out = tmp_path / "out"
    assert cli.main(["run", str(scenario(tmp_path, SMALL)), "--out", str(out)]) == 4
    assert capsys.readouterr().err == (f"vmstate: error: {out}/snapshots/before/pagemap.parquet: "
                                       "No space left on device (ENOSPC)\n")
    assert listing(out) == []
    assert hidden(out) == []  # the new tree removed, nothing else


def test_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert cli.main(["run", str(scenario(tmp_path, SMALL)), "--out", str(tmp_path / "f" / "d")]) == 2
    assert capsys.readouterr().err == (f"vmstate: error: --out {tmp_path / 'f' / 'd'}: "
                                       f"{tmp_path / 'f'} is not a directory (ENOTDIR)\n")


def test_a_reused_out_holds_the_new_run_only(tmp_path, capsys):
    """A second run into the same --out replaces the first one whole: none of its snapshot labels
    stays; an --out written by an older vmstate (real files under the final names) is taken over."""
    out = tmp_path / "out"
    first = scenario(tmp_path, SMALL)
    assert cli.main(["run", str(first), "--out", str(out)]) == 0
    other = tmp_path / "other.toml"
    other.write_text(SMALL.replace('label = "before"', 'label = "early"'))
    assert cli.main(["run", str(other), "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["after-split", "early"]
    assert set(json.loads((out / "summary.json").read_text())["snapshots"]) == {"after-split", "early"}
    assert hidden(out) == [".current", ".runs", "<id>"]
    legacy = tmp_path / "legacy"  # as vmstate wrote it before the switch
    (legacy / "snapshots" / "old").mkdir(parents=True)
    (legacy / "snapshots" / "old" / "pages.parquet").write_bytes(b"x")
    (legacy / "summary.json").write_text("{}")
    assert cli.main(["run", str(first), "--out", str(legacy)]) == 0
    assert listing(legacy) == sorted(n.replace("early", "before") for n in listing(out))
    assert sorted(p.name for p in (legacy / "snapshots").iterdir()) == ["after-split", "before"]
    assert hidden(legacy) == [".current", ".runs", "<id>"]


def test_rerun_replaces_files(tmp_path, capsys):
    out = tmp_path / "out"
    path = scenario(tmp_path, SMALL)
    assert cli.main(["run", str(path), "--out", str(out)]) == 0
    first = (out / "summary.json").read_text()
    assert cli.main(["run", str(path), "--out", str(out)]) == 0
    assert (out / "summary.json").read_text() == first
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert f"wrote {out / 'summary.json'}" in capsys.readouterr().out


def test_a_size_the_machine_cannot_hold(tmp_path, capsys):
    text = '[scenario]\nname = "huge"\n[[op]]\nop = "mmap"\nmm = "a"\naddr = 0x1000\nlen = 0x7ffffffff000\n'
    assert cli.main(["run", str(scenario(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vmstate: error: {tmp_path / 's.toml'}: op 1 (line 3): field 'len': the mmaps "
                          "up to here would need about ")
    assert err.endswith(" GiB is available (MemAvailable) (ENOMEM)\n")
