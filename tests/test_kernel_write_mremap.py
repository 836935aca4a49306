"""kernel-run's ``write`` and ``mremap`` on the running kernel (root, THP; skips otherwise): the
write-protect faults of a fork-shared THP (6.18: split the PMD, copy the one page; reuse once the
other process is gone), a new THP fault of an emptied slot, a PMD moved whole by an aligned mremap
and split by an unaligned one, the captures after them, and the bad input of both ops
(docs/kernel-bridge.md "Write faults, COW and mremap (measured)")."""
from pathlib import Path

import polars as pl
import pytest

from bridge_helpers import needs_kernel
from vmstate.bridge.kernel_run import KERNEL_VARIANTS, kernel_run
from vmstate.errors import BadInput
from vmstate.io.dataset import read_dataset
from vmstate.io.scenario import load_scenario

A = 0x7f0000000000
B = 0x7f0040000000
HP = 2 << 20


def _scenario(tmp_path: Path, ops: str):
    path = tmp_path / "s.toml"
    path.write_text('[scenario]\nname = "w"\nvariant = "6.18"\n' + ops)
    return load_scenario(path, variants=KERNEL_VARIANTS)


def _op(op, **fields):
    body = "".join(f"{k} = {v!r}\n" if isinstance(v, str) else f"{k} = {v:#x}\n"
                   for k, v in fields.items())
    return f'\n[[op]]\nop = "{op}"\n' + body


def _slot(out, label, mm, addr):
    """The pagemap rows of ``mm``'s 2 MiB slot at ``addr`` in snapshot ``label``, with pages."""
    ds = read_dataset(out / "snapshots" / label)
    j = ds.pagemap.join(ds.pages, on="pfn", how="left")
    return j.filter((pl.col("mm") == mm) & (pl.col("vaddr") >= addr)
                    & (pl.col("vaddr") < addr + HP)).sort("vaddr")


def _events(summary, index):
    return next(e for e in summary["ops"] if e["op"] == index)["vm_events"]


@needs_kernel
def test_write_cow_of_a_fork_shared_thp(tmp_path):
    """The parent's write of one page of a THP the child shares: the parent's PMD is split and
    that page copied, the child keeps its PMD; after the child exits a write of a still
    write-protected page reuses it (same pfn), and the whole range ends as 511 pages of the THP
    and one small page (no new THP)."""
    sc = _scenario(tmp_path, _op("mmap", mm="p", addr=A, len="2M")
                   + '\n[[op]]\nop = "fork"\nmm = "p"\nchild = "c"\n'
                   + _op("snapshot", label="before")
                   + _op("write", mm="p", addr=A + 4096, len="4K")      # op 4
                   + _op("snapshot", label="cow")
                   + '\n[[op]]\nop = "exit"\nmm = "c"\n'
                   + _op("write", mm="p", addr=A, len="2M")             # op 7
                   + _op("snapshot", label="reuse"))
    out = tmp_path / "out"
    s = kernel_run(sc, out)
    before, cow, reuse = (_slot(out, k, "p", A) for k in ("before", "cow", "reuse"))
    assert before["pmd"].all() and before.height == 512
    head = before["pfn"][0]
    assert not cow["pmd"].any() and cow.height == 512
    changed = cow.filter(cow["pfn"] != before["pfn"])
    assert changed["vaddr"].to_list() == [A + 4096]  # only the written page was copied
    assert changed["head_pfn"].is_null().all()       # to a small page
    assert (cow.filter(pl.col("vaddr") != A + 4096)["head_pfn"] == head).all()
    assert _slot(out, "cow", "c", A)["pmd"].all()    # the child keeps its PMD mapping
    assert _events(s, 4)["thp_split_pmd"] >= 1 and _events(s, 4)["thp_fault_alloc"] == 0
    assert reuse["pfn"].to_list() == cow["pfn"].to_list()  # reused: nothing copied, no new THP
    assert _events(s, 7)["thp_fault_alloc"] == 0


@needs_kernel
def test_write_faults_a_thp_into_an_emptied_slot(tmp_path):
    """MADV_DONTNEED of a whole PMD-mapped THP, then a write of one page: a new THP (PMD-mapped,
    thp_fault_alloc 1); of one page of another THP: a small page in the PTE-mapped THP."""
    sc = _scenario(tmp_path, _op("mmap", mm="p", addr=A, len="4M")
                   + _op("madvise_dontneed", mm="p", addr=A, len="2M")
                   + _op("write", mm="p", addr=A + 4096, len="4K")      # op 3
                   + _op("madvise_dontneed", mm="p", addr=A + HP + 4096, len="4K")
                   + _op("write", mm="p", addr=A + HP + 4096, len="4K")  # op 5
                   + _op("snapshot", label="after"))
    out = tmp_path / "out"
    s = kernel_run(sc, out)
    assert _events(s, 3)["thp_fault_alloc"] == 1
    assert s["ops"][2].get("mthp_stats", {"anon_fault_alloc": 1})["anon_fault_alloc"] == 1
    assert _events(s, 5)["thp_fault_alloc"] == 0
    new = _slot(out, "after", "p", A)
    assert new.height == 512 and new["pmd"].all()
    other = _slot(out, "after", "p", A + HP)
    assert other.height == 512 and not other["pmd"].any()
    assert other.filter(other["head_pfn"].is_null())["vaddr"].to_list() == [A + HP + 4096]


@needs_kernel
def test_mremap_moves_a_pmd_whole_or_splits_it(tmp_path):
    """mremap of a 2 MiB-aligned THP to a 2 MiB-aligned address moves the PMD (still PMD-mapped,
    same frames, no thp_split_pmd); to an unaligned one it splits the PMD (the THP stays compound,
    PTE-mapped across two slots); one 4 KiB page moved splits its THP's PMD. The captures read
    the new ranges."""
    sc = _scenario(tmp_path, _op("mmap", mm="p", addr=A, len="6M")
                   + _op("snapshot", label="before")
                   + _op("mremap", mm="p", addr=A, len="2M", new_addr=B)           # op 3
                   + _op("mremap", mm="p", addr=A + HP, len="2M", new_addr=B + 2 * HP + 4096)
                   + _op("mremap", mm="p", addr=A + 2 * HP + 4096, len="4K",
                         new_addr=B + 6 * HP)                                       # op 5
                   + _op("snapshot", label="after"))
    out = tmp_path / "out"
    s = kernel_run(sc, out)
    before = read_dataset(out / "snapshots" / "before").pagemap.sort("vaddr")
    after = read_dataset(out / "snapshots" / "after").pagemap
    moved = after.filter((pl.col("vaddr") >= B) & (pl.col("vaddr") < B + HP)).sort("vaddr")
    assert moved["pmd"].all() and moved["pfn"].to_list() == before["pfn"][:512].to_list()
    assert _events(s, 3)["thp_split_pmd"] == 0
    assert _events(s, 4)["thp_split_pmd"] >= 1 and _events(s, 5)["thp_split_pmd"] >= 1
    un = after.filter((pl.col("vaddr") > B + 2 * HP) & (pl.col("vaddr") <= B + 3 * HP)).sort("vaddr")
    assert un.height == 512 and not un["pmd"].any()
    assert un["pfn"].to_list() == before["pfn"][512:1024].to_list()
    one = after.filter(pl.col("vaddr") == B + 6 * HP)
    assert one["pfn"].to_list() == [before["pfn"][1024 + 1]]
    assert after.filter(pl.col("vaddr") < A + 4 * HP).height == 511  # the rest of THP 2 stays
    assert s["snapshots"]["after"]["thps"] == 3  # every THP still compound


@needs_kernel
def test_write_and_mremap_bad_input(tmp_path):
    for ops, field, words in (
            (_op("mmap", mm="p", addr=A, len="2M") + _op("write", mm="p", addr=A, len="4M"),
             "len", "nothing is mapped"),
            (_op("mmap", mm="p", addr=A, len="2M")
             + _op("mprotect", mm="p", addr=A, len="2M", prot="r")
             + _op("write", mm="p", addr=A, len="4K"), "addr", "not writable"),
            (_op("mmap", mm="p", addr=A, len="2M") + _op("mmap", mm="p", addr=B, len="2M")
             + _op("mremap", mm="p", addr=A, len="2M", new_addr=B), "new_addr", "no mapping"),
            (_op("mmap", mm="p", addr=A, len="2M")
             + _op("mremap", mm="p", addr=A + HP, len="2M", new_addr=B), "addr", "EFAULT")):
        with pytest.raises(BadInput) as e:
            kernel_run(_scenario(tmp_path, ops), tmp_path / "bad")
        assert e.value.field == field and words in str(e.value) and "op " in str(e.value), e.value
