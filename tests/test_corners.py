"""The fixed corner programs of ``tests/corners.py``, engine against reference, in every variant."""
import pytest

from corners import POPULATIONS, PROGRAMS, VARIANTS, run_population, run_program


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", PROGRAMS)
def test_corner_program(name, variant):
    bad = run_program(name, variant)
    assert bad is None, bad


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", POPULATIONS)
def test_population_against_the_reference(name, variant):
    bad = run_population(name, variant)
    assert bad is None, bad
