"""The numba kernels against their C formulas, on random inputs (the stateful differential test in
test_differential.py checks them again inside whole programs)."""
import numpy as np
import hypothesis.strategies as st
from hypothesis import given, settings

from kernels.constants import HPAGE_PMD_NR
from kernels.mapcount import page_mapcount, total_mapcount
from vmstate.dtypes import PAGE_BLOCK_DTYPE

N = HPAGE_PMD_NR
raw_rows = st.lists(st.integers(-1, 6), min_size=N, max_size=N)


@settings(max_examples=200, deadline=None)
@given(raw=raw_rows, cmc_raw=st.integers(-1, 5))
def test_total_mapcount_is_the_seed_formula(raw, cmc_raw):
    blocks = np.zeros(1, PAGE_BLOCK_DTYPE)
    blocks["_mapcount"][0] = raw
    # the seed, literally: ret = compound_mapcount + sum(raw + 1) - (N if compound_mapcount else 0)
    cmc = cmc_raw + 1
    want = cmc + sum(r + 1 for r in raw) - (N if cmc else 0)
    assert total_mapcount(blocks["_mapcount"][0].copy(), cmc_raw) == want


@settings(max_examples=200, deadline=None)
@given(raw=raw_rows, cmc_raw=st.integers(-1, 5), i=st.integers(0, N - 1))
def test_page_mapcount_removes_the_offset(raw, cmc_raw, i):
    cmc = cmc_raw + 1
    want = raw[i] + 1 + (cmc - 1 if cmc else 0)
    assert page_mapcount(np.array(raw, np.int32), i, cmc_raw) == want
