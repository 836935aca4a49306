"""``vmstate show`` (thpmaps, page-types, vmstat views) and ``vmstate plot --map`` on simulated and
captured directories; the live test compares a capture's views with smaps (and with the real
``thpmaps``/``page-types`` when ``VMSTATE_THPMAPS``/``VMSTATE_PAGE_TYPES`` name them)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bridge_helpers import live_thp_process, needs_kernel
from vmstate.batch.plot import plot_map
from vmstate.batch.runner import run_scenario
from vmstate.bridge.capture import Target, capture, write_capture
from vmstate.cli import write_outputs
from vmstate.cli.commands import main
from vmstate.errors import BadInput
from vmstate.io.scenario import load_scenario
from vmstate.io.views import (
    SLOT_STATES, open_source, page_flag_longname, page_flag_name, page_types_frame, slot_states,
    thpmaps_text, well_known_flags,
)

SCENARIOS = Path(__file__).resolve().parent.parent / "datasets" / "scenarios"
TWO_M = 2 << 20


@pytest.fixture(scope="module")
def munmap_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("views") / "run"
    write_outputs(run_scenario(load_scenario(SCENARIOS / "partial_munmap.toml")), out)
    return out


def test_thpmaps_of_a_partial_munmap(munmap_run):
    text = thpmaps_text(open_source(munmap_run, "after-munmap").dataset)
    assert text.splitlines() == [
        "       PID             START              END PROT   OFFSET   DEV    INODE OBJECT",
        "0000000001: 00007f0000000000-00007f0000800000 rw-p 00000000 00:00 00000000 ",
        "anon-thp-pmd-aligned-2048kB:        6144 kB (86%)",
        "anon-thp-pte-partial:               1024 kB (14%)"]
    after = thpmaps_text(open_source(munmap_run, "after-split").dataset).splitlines()
    assert after[2:] == []  # split: no THP left to report


def test_page_types_names_and_layout(munmap_run, capsys):
    # the flag letters and names of tools/mm/page-types.c, THP compound bits hidden (not -r)
    flags = (1 << 3) | (1 << 5) | (1 << 11) | (1 << 12) | (1 << 14) | (1 << 15) | (1 << 22)
    assert page_flag_name(flags) == "___U_l_____Ma_bH______t_____________________"
    assert page_flag_name(well_known_flags(flags)) == "___U_l_____Ma_b_______t_____________________"
    assert page_flag_longname(well_known_flags(flags)) == "uptodate,lru,mmap,anonymous,swapbacked,thp"
    t = page_types_frame(open_source(munmap_run, "after-munmap").dataset, "proc")
    assert t["page_count"].sum() == 1792
    assert (t["flags"] & (1 << 15)).sum() == 0  # compound head hidden for a THP
    assert main(["show", str(munmap_run), "--format", "page-types"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "# mm proc (pid 1)"
    assert out[1] == "             flags\tpage-count       MB  symbolic-flags\t\t\tlong-symbolic-flags"
    assert re.fullmatch(r"0x[0-9a-f]{16}\t {0,9}\d+ {1,8}\d+  [A-Za-z_1]{44}\t[a-z_,0-9]+", out[2])
    assert out[-1] == "             total\t      1792        7"


def test_vmstat(munmap_run, capsys):
    assert main(["show", str(munmap_run), "--format", "vmstat"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "thp_fault_alloc 4" in lines and "thp_split_page 4" in lines
    assert main(["show", str(SCENARIOS.parent / "scenarios-6.18"), "--format", "vmstat"]) == 2


def test_vmstat_618_has_mthp_stats(tmp_path, capsys):
    s = load_scenario(SCENARIOS / "partial_munmap.toml")
    import dataclasses
    write_outputs(run_scenario(dataclasses.replace(s, variant="6.18")), tmp_path / "r")
    assert main(["show", str(tmp_path / "r"), "--format", "vmstat"]) == 0
    out = capsys.readouterr().out
    assert "/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/stats/split:" in out


@pytest.mark.parametrize("args,expected", [
    (["--snapshot", "nope"], "--snapshot 'nope': no such snapshot"),
    (["--format", "vmstat", "--snapshot", "x"], "no such snapshot"),
])
def test_bad_input(munmap_run, capsys, args, expected):
    argv = ["show", str(munmap_run)] + (args if "--format" in args else ["--format", "thpmaps", *args])
    assert main(argv) == 2
    assert expected in capsys.readouterr().err


def test_not_a_run_directory(tmp_path, capsys):
    assert main(["show", str(tmp_path), "--format", "thpmaps"]) == 2
    assert "not a run or capture directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["show", str(tmp_path), "--format", "smaps"])
    assert e.value.code == 2
    with pytest.raises(BadInput, match="not a directory"):
        open_source(tmp_path / "missing")


def test_slot_states_and_map(munmap_run, tmp_path):
    states = slot_states(open_source(munmap_run, "after-munmap").dataset)
    names = [SLOT_STATES[s] for s in states["state"].to_list()]
    assert names == ["partially mapped THP"] + ["PMD-mapped THP"] * 3
    split = slot_states(open_source(munmap_run, "after-split").dataset)
    assert set(split["state"].to_list()) == {SLOT_STATES.index("split THP")}
    path = plot_map(munmap_run, out=tmp_path / "m.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pinned_slot(tmp_path):
    write_outputs(run_scenario(load_scenario(SCENARIOS / "gup_pinned.toml")), tmp_path / "r")
    states = slot_states(open_source(tmp_path / "r", "pinned").dataset)
    assert [SLOT_STATES[s] for s in states["state"].to_list()] == [
        "split THP", "pinned THP", "split THP", "split THP"]


# ---- the running kernel ------------------------------------------------------------------------

# After the THPs are written: MADV_DONTNEED 1 MiB inside the second (a PTE-mapped partial THP),
# then MADV_NOHUGEPAGE so that khugepaged leaves it alone while the tools look.
_PARTIAL = """
M = 1 << 20
assert libc.madvise(a + 2 * M + M // 2, M, 4) == 0
assert libc.madvise(a, L, 15) == 0
"""


def _partial_thp_process():
    return live_thp_process(4, then=_PARTIAL)


def _counters(text):
    return [line for line in text.splitlines() if re.match(r"^(anon|file)-", line)]


@needs_kernel
def test_views_of_a_live_process(tmp_path):
    with _partial_thp_process() as (pid, addr):
        write_capture(capture([Target("app", pid)], [(addr, addr + 4 * TWO_M)]), tmp_path)
        smaps = Path(f"/proc/{pid}/smaps").read_text()
        real = {}
        for tool, env in (("thpmaps", "VMSTATE_THPMAPS"), ("page-types", "VMSTATE_PAGE_TYPES")):
            if os.environ.get(env):
                cmd = [sys.executable, os.environ[env], "--pid", str(pid)] if tool == "thpmaps" \
                    else [os.environ[env], "-p", str(pid), "-a", f"{addr >> 12:#x},{(addr >> 12) + 2048:#x}"]
                real[tool] = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    ds = open_source(tmp_path).dataset
    text = thpmaps_text(ds)
    assert _counters(text) == ["anon-thp-pmd-aligned-2048kB:        6144 kB (86%)",
                               "anon-thp-pte-partial:               1024 kB (14%)"]
    vma = re.search(rf"^{addr:x}-.*?\n(.*?)(?=^[0-9a-f]+-|\Z)", smaps, re.M | re.S).group(1)
    assert re.search(r"^AnonHugePages:\s+6144 kB", vma, re.M)
    assert re.search(r"^Rss:\s+7168 kB", vma, re.M)
    if "thpmaps" in real:  # the real tool's counters for that VMA
        block = real["thpmaps"].split(f"{addr:016x}-", 1)[1].split("\n0", 1)[0]
        assert _counters(block) == _counters(text)
    t = page_types_frame(ds, "app")
    assert int(t["page_count"].sum()) == 1792
    if "page-types" in real:
        rows = [line for line in real["page-types"].splitlines() if line.startswith("0x")]
        ours = [f"0x{f:016x}\t{n:10d} {mb:8d}  {s}\t{long}" for f, n, mb, s, long in t.iter_rows()]
        assert sorted(rows) == sorted(ours)
