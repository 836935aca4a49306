"""``vmstate run --out DIR --kpage``: /proc/kpageflags and /proc/kpagecount images that read back as
pages.parquet's flags and mapcount, u64 little-endian per pfn, zero for frames never allocated."""
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from vmstate.batch import api

from vmstate import cli

from vmstate.io import kformat
from vmstate.errors import BadInput

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["mix", "fork_shared", "partial_munmap", "racing_pin"])
def test_kpage_files_read_back_as_pages_parquet(tmp_path, name, capsys):
    out = tmp_path / "out"
    scenario = REPO / "datasets" / "scenarios" / f"{name}.toml"
    assert cli.main(["run", str(scenario), "--out", str(out), "--kpage", "--json"]) == 0
    capsys.readouterr()
    snaps = sorted(p for p in (out / "snapshots").iterdir())
    assert snaps
    for snap in snaps:
        pages = pl.read_parquet(snap / "pages.parquet")
        flags = kformat.read_kpageflags(snap / "kpageflags")
        count = kformat.read_kpagecount(snap / "kpagecount")
        top = int(pages["pfn"].max())
        assert (snap / "kpageflags").stat().st_size == (top + 1) * 8
        assert len(flags) == len(count) == top + 1
        pfn = pages["pfn"].to_numpy().astype(np.int64)
        assert np.array_equal(flags[pfn], pages["flags"].to_numpy())
        assert np.array_equal(count[pfn], pages["mapcount"].to_numpy())
        never = np.ones(top + 1, bool)
        never[pfn] = False
        assert not flags[never].any() and not count[never].any()
        # Byte level: entry p at offset 8 * p, little-endian, as fs/proc/page.c serves it.
        raw = (snap / "kpageflags").read_bytes()
        p = int(pfn[len(pfn) // 2])
        assert int.from_bytes(raw[8 * p:8 * p + 8], "little") == int(flags[p])
        back = kformat.read_kpage(snap, nonzero=False).join(pages, on="pfn", suffix="_pq")
        assert back["flags"].equals(back["flags_pq"], check_names=False)
        assert back["mapcount"].equals(back["mapcount_pq"], check_names=False)
    assert not list(out.glob(".tmp-*"))


def test_without_kpage_no_kernel_files(tmp_path, capsys):
    assert cli.main(["run", str(REPO / "datasets/scenarios/fork_shared.toml"),
                     "--out", str(tmp_path)]) == 0
    assert not list(tmp_path.rglob("kpage*"))
    with pytest.raises(SystemExit) as e:
        cli.main(["run", str(REPO / "datasets/scenarios/fork_shared.toml"), "--kpage"])
    assert e.value.code == 2
    assert "--kpage writes into --out DIR" in capsys.readouterr().err


def test_write_kpage_and_bad_files(tmp_path):
    r = api.run(api.population(thps=3, shared=1.0, mappers=2, pinned=0.5, seed=2, split=False))
    pages = pages_of(r)
    kformat.write_kpage(pages, tmp_path)
    back = kformat.read_kpage(tmp_path)
    assert back.equals(pages.select("pfn", "flags", "mapcount").filter(
        (pl.col("flags") != 0) | (pl.col("mapcount") != 0)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kpagecount", "kpageflags"]
    (tmp_path / "kpagecount").write_bytes(b"\0" * 12)
    with pytest.raises(BadInput, match="not a whole number of u64"):
        kformat.read_kpage(tmp_path)
    empty = pages.clear()
    flags, count = kformat.kpage_arrays(empty)
    assert len(flags) == len(count) == 0


def pages_of(result):
    from vmstate.io.export import pages_frame
    return pages_frame(result.state)
