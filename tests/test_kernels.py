"""The numba kernels against their C formulas, on random inputs (the stateful differential test in
test_differential.py checks them again inside whole programs)."""
import numpy as np
import hypothesis.strategies as st
from hypothesis import given, settings

from vmstate.kernels.constants import HPAGE_PMD_NR, PG_double_map
from vmstate.kernels.mapcount import page_mapcount, total_mapcount
from vmstate.kernels.variants import KERNELS
from vmstate.engine.dtypes import PAGE_BLOCK_DTYPE

N = HPAGE_PMD_NR
raw_rows = st.lists(st.integers(-1, 6), min_size=N, max_size=N)


@settings(max_examples=200, deadline=None)
@given(raw=raw_rows, cmc_raw=st.integers(-1, 5), double_map=st.booleans())
def test_total_mapcount_is_the_c_formula(raw, cmc_raw, double_map):
    blocks = np.zeros(1, PAGE_BLOCK_DTYPE)
    blocks["_mapcount"][0] = raw
    blocks["compound_mapcount"][0] = cmc_raw
    blocks["flags"][0, 1] = (1 << PG_double_map) if double_map else 0
    cmc = cmc_raw + 1
    # the seed, literally: ret = compound_mapcount + sum(raw + 1) - (N if compound_mapcount else 0)
    v5 = cmc + sum(r + 1 for r in raw) - (N if cmc else 0)
    # 4.5: ret = compound_mapcount + sum(raw + 1) - (N if PageDoubleMap else 0)
    v45 = cmc + sum(r + 1 for r in raw) - (N if double_map else 0)
    for variant, want in (("v5", v5), ("v4.5", v45)):
        offset = KERNELS[variant].mapcount_offset(blocks[0])
        assert total_mapcount(blocks["_mapcount"][0].copy(), cmc_raw, offset) == want


@settings(max_examples=200, deadline=None)
@given(raw=raw_rows, cmc_raw=st.integers(-1, 5), i=st.integers(0, N - 1), double_map=st.booleans())
def test_page_mapcount_removes_the_offset(raw, cmc_raw, i, double_map):
    cmc = cmc_raw + 1
    blocks = np.zeros(1, PAGE_BLOCK_DTYPE)
    blocks["compound_mapcount"][0] = cmc_raw
    blocks["flags"][0, 1] = (1 << PG_double_map) if double_map else 0
    v5 = raw[i] + 1 + (cmc - 1 if cmc else 0)
    v45 = raw[i] + 1 + cmc - (1 if double_map else 0)
    for variant, want in (("v5", v5), ("v4.5", v45)):
        offset = KERNELS[variant].mapcount_offset(blocks[0])
        assert page_mapcount(np.array(raw, np.int32), i, cmc_raw, offset) == want
