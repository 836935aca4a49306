"""``vmstate sweep`` when things go wrong around it: a Dask worker killed mid-sweep, the Dask
scheduler killed mid-sweep, a second sweep on a directory one is writing, and the numba thread
count reaching the thread each task runs in. Real ``dask scheduler`` / ``dask worker`` and
``vmstate sweep`` processes on 127.0.0.1."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from vmstate import cli
from vmstate.batch.sweep import run_sweep

distributed = pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "datasets" / "sweeps" / "tiny.toml"
JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0")
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


from test_sweep import assert_same_dataset  # noqa: E402 (one dataset comparison for both files)


def n_done(out: Path) -> int:
    return len(list((out / "summaries").rglob("shard-*.json")))


def wait_for(cond, proc=None, timeout=120):
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc is None or proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """The tiny sweep with runs big enough to be caught mid-sweep, and its dataset run here."""
    d = tmp_path_factory.mktemp("slow")
    sweep = d / "slow.toml"
    sweep.write_text(TINY.read_text().replace("thps = 64", f"thps = {3000 if JIT else 64}"))
    report = run_sweep(sweep, d / "ref", workers=0, progress="none")
    assert (report.done, report.errors) == (12, [])
    return sweep, d / "ref"


class Cluster:
    """``dask scheduler`` and ``dask worker`` processes (no nanny: a killed worker stays dead)."""

    def __init__(self, tmp: Path, workers=1, nthreads=1):
        port = _free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.procs = []
        self.scheduler = self._start(["scheduler", "--host", "127.0.0.1", "--port", str(port),
                                      "--no-dashboard"], tmp / "scheduler.log")
        self.workers = [self._start(["worker", self.address, "--nthreads", str(nthreads),
                                     "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
                                    tmp / f"worker{i}.log") for i in range(workers)]
        with distributed.Client(self.address, timeout="60s") as c:
            c.wait_for_workers(workers, timeout=120)

    def _start(self, args, log: Path):
        p = subprocess.Popen([str(BIN / "dask"), *args], stdout=log.open("w"),
                             stderr=subprocess.STDOUT, env=ENV)
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture
def cluster(tmp_path, request):
    c = Cluster(tmp_path, **getattr(request, "param", {}))
    yield c
    c.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep_cmd(sweep, out, *more):
    return [sys.executable, "-m", "vmstate", "sweep", str(sweep), "--out", str(out),
            "--progress", "log", *more]


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cluster", [{"workers": 2}], indirect=True)
def test_a_worker_killed_mid_sweep_changes_nothing(slow, cluster, tmp_path):
    """Its shards go to the other worker; the dataset is the local run's."""
    sweep, ref = slow
    out = tmp_path / "out"
    proc = subprocess.Popen(sweep_cmd(sweep, out, "--scheduler", cluster.address), cwd=REPO,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: n_done(out) >= 2, proc)
    cluster.workers[0].kill()
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert cluster.workers[1].poll() is None
    assert_same_dataset(out, ref)


def test_the_scheduler_lost_mid_sweep_then_local_processes_finish(slow, cluster, tmp_path):
    """Exit 5 with one line naming the scheduler; what was written stays valid, and the same
    command on local processes finishes the dataset an uninterrupted local run writes."""
    sweep, ref = slow
    out = tmp_path / "out"
    proc = subprocess.Popen(sweep_cmd(sweep, out, "--scheduler", cluster.address), cwd=REPO,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: n_done(out) >= 1, proc)
    cluster.scheduler.kill()
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 5, stderr
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert errors == [stderr.splitlines()[-1]], stderr
    assert errors[0].startswith(f"vmstate: error: --scheduler {cluster.address}: lost the Dask "
                                f"scheduler mid-sweep")
    done = n_done(out)
    assert 1 <= done < 12 and f"{done} shard(s) are written" in errors[0]
    for p in (out / "summaries").rglob("*.json"):
        json.loads(p.read_text())
    for p in (out / "thps").rglob("*"):
        assert p.is_dir() or pl.read_parquet(p).height > 0
    assert len(pl.read_parquet(out / "runs.parquet")) <= done

    result = subprocess.run(sweep_cmd(sweep, out, "--workers", "1"), cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert f"{done} done before, {12 - done} now" in result.stdout
    assert_same_dataset(out, ref)


def test_a_second_sweep_on_the_directory_is_refused_naming_the_holder(slow, tmp_path, capsys):
    """The first sweep is stopped (SIGSTOP) while it holds the lock: the second exits 2 at once,
    names its pid, host and start, and changes no file; the first then finishes."""
    sweep, ref = slow
    out = tmp_path / "out"
    first = subprocess.Popen(sweep_cmd(sweep, out, "--workers", "0"), cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: n_done(out) >= 1, first)
        first.send_signal(signal.SIGSTOP)
        holder = json.loads((out / ".lock").read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")}
        t0 = time.monotonic()
        assert cli.main(["sweep", str(sweep), "--out", str(out), "--workers", "0",
                         "--progress", "none"]) == 2
        assert time.monotonic() - t0 < 5
        err = capsys.readouterr().err
        assert err == (f"vmstate: error: --out {out}: another vmstate sweep is writing it (pid "
                       f"{first.pid} on {socket.gethostname()} since {holder['since']})\n")
        assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")} == before
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=180)
    assert first.returncode == 0, stderr
    assert_same_dataset(out, ref)
    assert (out / ".lock").read_text() == ""  # released


@pytest.mark.parametrize("cluster", [{"workers": 1, "nthreads": 1}], indirect=True)
def test_the_thread_count_reaches_every_task(cluster, tmp_path, capsys):
    """numba.set_num_threads holds per thread: each task sets it in its own thread, and
    runs.parquet records what numba reports there — on Dask, locally and in this process."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")

    def threads(*args):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert cli.main(["sweep", str(TINY), "--out", str(out), "--progress", "none", *args]) == 0
        return pl.read_parquet(out / "runs.parquet")["threads"].unique().to_list()

    dask = ["--scheduler", cluster.address]
    assert threads(*dask, "--threads", "1") == [1]
    assert threads(*dask, "--threads", "2") == [2]
    assert threads(*dask) == [1]  # the worker's --nthreads
    assert threads("--workers", "1", "--threads", "1") == [1]
    assert threads("--workers", "1", "--threads", "2") == [2]
    assert threads("--workers", "0", "--threads", "1") == [1]
    assert threads("--workers", "0", "--threads", "2") == [2]
    capsys.readouterr()
