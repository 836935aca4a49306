"""``vmstate sweep`` and ``vmstate plot``: the plan, the dataset, resume after an interruption or a
SIGKILL, the Dask executor giving the local executor's dataset run for run, shards that merge to
consistent totals, and the charts. Populations are tiny (64 THPs a run): the suite also runs with
``NUMBA_DISABLE_JIT=1``."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from vmstate.batch import api

from vmstate import cli
from vmstate.errors import BadInput
from vmstate.batch.sweep import (
    TIMING_COLUMNS, build_runs_table, load_sweep, parse_sweep, read_thps, run_shard, run_sweep,
    shard_tasks,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "datasets" / "sweeps" / "tiny.toml"
JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0")


def sweep_doc(**over):
    doc = {"sweep": {"name": "t", "seeds": [1, 2]},
           "population": {"thps": 64, "shared": 0.5, "pte_mapped": 0.125},
           "grid": {"pinned": [0.0, 0.25], "mappers": [2, 4]}}
    for table, value in over.items():
        doc[table] = value
    return doc


def dataset(out: Path):
    """runs.parquet without the machine's timings, and every per-THP part by its path."""
    runs = pl.read_parquet(out / "runs.parquet").drop(TIMING_COLUMNS)
    parts = {p.relative_to(out).as_posix(): pl.read_parquet(p)
             for p in sorted((out / "thps").rglob("*.parquet"))}
    return runs, parts


def assert_same_dataset(a: Path, b: Path):
    runs_a, parts_a = dataset(a)
    runs_b, parts_b = dataset(b)
    assert_frame_equal(runs_a, runs_b)
    assert parts_a.keys() == parts_b.keys()
    for k in parts_a:
        assert_frame_equal(parts_a[k], parts_b[k])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny sweep, run in this process: the dataset the other executors must reproduce."""
    out = tmp_path_factory.mktemp("ref")
    report = run_sweep(TINY, out, workers=0, progress="none")
    assert (report.done, report.errors, report.interrupted) == (12, [], False)
    return out


# ---------------------------------------------------------------------------------------------
# The sweep file and its plan


def test_plan_is_the_grid_then_the_sample_times_the_seeds():
    s = load_sweep(TINY)
    plan = s.plan()
    assert s.swept == ("pinned", "mappers", "pte_mapped")
    assert [r.key for r in plan[:3]] == ["pinned=0.0/mappers=2/pte_mapped=0.125/seed=1",
                                         "pinned=0.0/mappers=2/pte_mapped=0.125/seed=2",
                                         "pinned=0.0/mappers=4/pte_mapped=0.125/seed=1"]
    assert [r.origin for r in plan] == ["grid"] * 8 + ["sample"] * 4
    sampled = [r.params["pte_mapped"] for r in plan if r.origin == "sample"]
    assert all(0.0 <= v <= 0.5 and round(v, 4) == v for v in sampled)
    assert load_sweep(TINY).plan() == plan  # the sample comes from its seed
    assert plan[5].population == {"thps": 64, "addr": 0x100000000000, "shared": 0.5,
                                  "pte_mapped": 0.125, "partially_unmapped": 0.125,
                                  "pinned": 0.25, "mappers": 2}
    assert parse_sweep(sweep_doc(sweep={"seeds": 3})).seeds == (0, 1, 2)


@pytest.mark.parametrize("over, message", [
    ({"grids": {}}, "unknown table [grids]"),
    ({"grid": {"pinned": [0.1, "x"]}}, "[grid]: field 'pinned': expected fractions, got 'x'"),
    ({"grid": {"pined": [0.1]}}, "[grid]: field 'pined': unknown key"),
    ({"grid": {"mappers": [1, 2]}}, "run mappers=1: field 'mappers': shared THPs need mappers >= 2"),
    ({"grid": {"variant": ["v5", "v6"]}}, "expected one of 'v5', 'v4.5', '6.18', got 'v6'"),
    ({"sweep": {"seeds": []}}, "[sweep]: field 'seeds'"),
    ({"sweep": {"shards": 65}}, "expected at most thps = 64 shards"),
    ({"sample": {"n": 2, "pinned": [0.5, 0.1]}}, "[sample]: field 'pinned': expected lo <= hi"),
    ({"sample": {"pinned": [0.0, 0.1]}}, "[sample]: field 'n'"),
    ({"split": {"race": {"pin": "whenever"}}}, "[split]: field 'race'"),
])
def test_bad_sweep_files_name_table_and_field(over, message):
    with pytest.raises(BadInput) as e:
        parse_sweep(sweep_doc(**over), path="s.toml")
    assert message in str(e.value)
    assert str(e.value).startswith("s.toml")


# ---------------------------------------------------------------------------------------------
# The dataset


def test_runs_table_and_per_thp_dataset(reference):
    runs = pl.read_parquet(reference / "runs.parquet")
    assert len(runs) == 12 and runs["run"].n_unique() == 12
    assert runs.schema["failure_rate"] == pl.Float64 and runs.schema["seed"] == pl.Int64
    assert (runs["attempted"] == 64).all()
    assert (runs["failed"] == runs["fail_precheck"] + runs["fail_recheck"]).all()
    # A pinned THP fails at the precheck, a racing pin at the recheck (8 of 64 THPs).
    assert runs["fail_precheck"].to_list() == [round(p * 64) for p in runs["pinned"]]
    # A precheck failure costs nothing; a recheck failure split every PMD mapping first.
    assert (runs["thp_split_pmd_per_failed"] > 0).all()
    pinned = runs.filter(pl.col("pinned") > 0)
    assert (pinned["pte_write_per_failed"] < pinned["pte_write_per_succeeded"]).all()

    thps = read_thps(reference).collect()
    assert thps.height == 12 * 64
    assert {"pinned", "mappers", "pte_mapped", "seed", "thp", "reason", "pte_write"} <= set(thps.columns)
    per_run = thps.group_by("pinned", "mappers", "pte_mapped", "seed").agg(
        (pl.col("ret") != 0).sum().alias("failed"), pl.col("thp").n_unique().alias("n"),
        (pl.col("thp_pinned") & (pl.col("reason") != 2)).sum().alias("pinned_not_precheck"))
    joined = runs.join(per_run, on=["pinned", "mappers", "pte_mapped", "seed"])
    assert len(joined) == 12
    assert (joined["failed"] == joined["failed_right"]).all() and (joined["n"] == 64).all()
    assert (joined["pinned_not_precheck"] == 0).all()


def test_an_unsharded_run_is_vmstate_run_of_its_population(reference):
    """Each run is exactly the scenario api.population() builds: same summary counters."""
    runs = pl.read_parquet(reference / "runs.parquet")
    s = load_sweep(TINY)
    for run in (s.plan()[5], s.plan()[-1]):
        r = api.run(api.population(**run.population, seed=run.seed, race=s.race))
        row = runs.filter(pl.col("run") == run.key).row(0, named=True)
        assert {k: row[k] for k in r.vm_events} == r.vm_events
        assert {k: row[k] for k in r.costs} == r.costs
        part = pl.read_parquet(reference / "thps" / run.key / "part-0.parquet")
        assert_frame_equal(part.select(r.thps.drop("op").columns), r.thps.drop("op"))


def test_resume_skips_finished_shards_and_loses_none(reference, tmp_path):
    out = tmp_path / "resumed"
    run_sweep(TINY, out, workers=0, progress="none")
    summaries = sorted((out / "summaries").rglob("*.json"))
    # As a kill leaves it: some shards never finished, one wrote its part but not its summary,
    # a temp file half written, runs.parquet stale.
    for p in summaries[3:8]:
        p.unlink()
    (out / "thps" / summaries[3].parent.relative_to(out / "summaries") / "part-0.parquet").write_bytes(b"junk")
    (out / ".tmp").mkdir()
    (out / ".tmp" / "part-0.parquet.123").write_bytes(b"half")
    report = run_sweep(TINY, out, workers=0, progress="none")
    assert (report.skipped, report.done) == (7, 5)
    assert not (out / ".tmp").exists()
    assert_same_dataset(out, reference)
    again = run_sweep(TINY, out, workers=0, progress="none")
    assert (again.skipped, again.done) == (12, 0)


def test_another_sweep_in_the_same_directory_is_refused(reference, tmp_path, capsys):
    other = tmp_path / "other.toml"
    other.write_text(TINY.read_text().replace("seeds = [1, 2]", "seeds = [1, 3]"))
    assert cli.main(["sweep", str(other), "--out", str(reference), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "holds another sweep" in err and "differs in: seeds" in err


def test_local_processes_give_the_same_dataset(reference, tmp_path, capsys):
    out = tmp_path / "local"
    assert cli.main(["sweep", str(TINY), "--out", str(out), "--workers", "2",
                     "--progress", "log"]) == 0
    err = capsys.readouterr().err
    assert "2 local worker process(es)" in err and "[12/12]" in err and "ETA" in err
    assert_same_dataset(out, reference)


def test_dask_local_cluster_gives_the_same_dataset(reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "dask"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        assert cli.main(["sweep", str(TINY), "--out", str(out), "--scheduler",
                         cluster.scheduler_address, "--progress", "none"]) == 0
    assert_same_dataset(out, reference)
    hosts = pl.read_parquet(out / "runs.parquet")["host"].unique()
    assert len(hosts) >= 1


def test_interrupt_then_sigkill_then_resume(reference, tmp_path):
    """A real ``vmstate sweep`` process: SIGINT stops it with exit 130 and a runs.parquet of what
    finished; SIGKILL leaves only whole files; started again, it finishes the same dataset."""
    thps = 3000 if JIT else 64
    sweep = tmp_path / "slow.toml"
    sweep.write_text(TINY.read_text().replace("thps = 64", f"thps = {thps}"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vmstate", "sweep", str(sweep), "--out", str(out), "--workers", "1",
           "--progress", "log"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start_and_wait_for(n_done):
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while len(list((out / "summaries").rglob("*.json"))) < n_done:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return proc

    proc = start_and_wait_for(1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stdout and "run the same command again" in stderr
    done = len(list((out / "summaries").rglob("*.json")))
    assert 1 <= done < 12
    assert len(pl.read_parquet(out / "runs.parquet")) == done

    proc = start_and_wait_for(done + 1)
    proc.kill()
    proc.communicate()
    done = len(list((out / "summaries").rglob("*.json")))
    for p in (out / "thps").rglob("*"):
        assert p.is_dir() or p.name.endswith(".parquet"), p  # no temp file under a final name
    for p in (out / "summaries").rglob("*.json"):
        json.loads(p.read_text())

    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{done} done before, {12 - done} now" in result.stdout
    runs = pl.read_parquet(out / "runs.parquet")
    assert len(runs) == 12 and (runs["attempted"] == thps).all()


# ---------------------------------------------------------------------------------------------
# Shards


def test_shards_cover_the_run_and_keep_its_counts(tmp_path):
    doc = sweep_doc(sweep={"name": "sharded", "seeds": [5], "shards": 3},
                    population={"thps": 100, "shared": 0.31, "pte_mapped": 0.07,
                                "partially_unmapped": 0.13, "pinned": 0.11, "mappers": 3},
                    grid={})
    s = parse_sweep(doc)
    (run,) = s.plan()
    tasks = shard_tasks(run, 3)
    assert [(t.lo, t.hi) for t in tasks] == [(0, 33), (33, 66), (66, 100)]
    assert len({t.seed for t in tasks}) == 3
    for f in ("shared", "pte_mapped", "partially_unmapped", "pinned"):
        assert sum(round(t.table[f] * t.table["thps"]) for t in tasks) == round(run.population[f] * 100)

    out = tmp_path / "sharded"
    run_sweep(s, out, workers=0, progress="none")
    row = pl.read_parquet(out / "runs.parquet").row(0, named=True)
    assert (row["shards"], row["attempted"], row["thp_fault_alloc"]) == (3, 100, 100)
    assert row["failed"] == row["fail_precheck"] == 11  # exactly the run's pinned THPs
    thps = read_thps(out).collect()
    assert sorted(thps["thp"].to_list()) == list(range(100))
    assert thps["thp_pinned"].sum() == 11 and (thps["thp_mappers"] == 3).sum() == 31
    # Merged totals are the sums over the shards, each of which is a run of its own.
    parts = [run_shard(t)[0] for t in tasks]
    for k in ("pte_write", "tlb_flush", "mmu_notifier", "pmd_lock"):
        assert row[k] == sum(p["costs"][k] for p in parts)
    assert row["thp_split_pmd"] == sum(p["vm_events"]["thp_split_pmd"] for p in parts)
    assert row["pte_write_per_succeeded"] == pytest.approx(
        thps.filter(pl.col("ret") == 0)["pte_write"].mean())


def test_shards_of_a_uniform_population_give_the_unsharded_totals(tmp_path):
    """When every THP is alike (all shared, nothing else drawn), sharding changes nothing."""
    base = {"thps": 30, "shared": 1.0, "mappers": 3}
    one = run_sweep(parse_sweep(sweep_doc(sweep={"seeds": [4]}, population=base, grid={})),
                    tmp_path / "one", workers=0, progress="none")
    four = run_sweep(parse_sweep(sweep_doc(sweep={"seeds": [4], "shards": 4}, population=base,
                                           grid={})),
                     tmp_path / "four", workers=0, progress="none")
    assert one.done == 1 and four.done == 4
    a = pl.read_parquet(tmp_path / "one" / "runs.parquet").drop([*TIMING_COLUMNS, "shards"])
    b = pl.read_parquet(tmp_path / "four" / "runs.parquet").drop([*TIMING_COLUMNS, "shards"])
    assert_frame_equal(a, b)


def test_runs_table_waits_for_every_shard(tmp_path):
    s = parse_sweep(sweep_doc(sweep={"seeds": [1], "shards": 2}, grid={}))
    run_sweep(s, tmp_path, workers=0, progress="none")
    next((tmp_path / "summaries").rglob("shard-1.json")).unlink()
    assert build_runs_table(tmp_path).is_empty()


# ---------------------------------------------------------------------------------------------
# Plots and the command line


def test_plot_writes_readable_pngs(reference, tmp_path, capsys):
    assert cli.main(["plot", str(reference), "--out", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    assert [Path(p).name for p in written] == ["pinned.png", "mappers.png", "sample-pte_mapped.png"]
    for p in written:
        data = Path(p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert cli.main(["plot", str(reference), "--out", str(tmp_path), "--y", "nope"]) == 2
    assert cli.main(["plot", str(tmp_path)]) == 2  # no runs.parquet


def test_cli_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\npinned = 0.1\n")
    assert cli.main(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "[grid]: field 'pinned': expected a non-empty list" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", str(TINY), "--out", str(tmp_path), "--workers", "2", "--scheduler", "x"])
    assert e.value.code == 2
    pytest.importorskip("distributed")
    assert cli.main(["sweep", str(TINY), "--out", str(tmp_path / "d"), "--scheduler", "foo://bar",
                     "--progress", "none"]) == 2
    assert "--scheduler foo://bar: cannot connect: unknown address scheme" in capsys.readouterr().err
