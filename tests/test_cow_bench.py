"""benchmarks/cow_bench.py --quick runs and prints its table (no timing is asserted), with the engine
and the reference agreeing on every count."""
from benchmarks import cow_bench


def test_quick_prints_table(capsys):
    assert cow_bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["v5"], ["v4.5"], ["6.18"])]
    # per variant: 5 cases x 2 phases
    assert len(rows) == 3 * 5 * 2
    by = {(r[0], r[1], r[2]): r for r in rows}
    # the 5.8 semantics change, in the counts: one page written per THP copies a THP before, 4 KiB after
    assert by[("v5", "1pg", "children")][4] == "1024.0"    # 2 children x 512 pages copied per THP
    assert by[("v4.5", "1pg", "children")][4] == "1024.0"
    assert by[("6.18", "1pg", "children")][4] == "2.0"     # 2 children x 1 page
    assert by[("6.18", "1pg", "children")][7] == "2.00"    # a PMD split per child
