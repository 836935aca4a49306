"""vmstate: the Linux THP refcounting state and split_huge_page() of the 2015 redesign (v5, the
default) and of mainline 4.5, as NumPy arrays and numba kernels.

The package is built in floors, each importing only the ones below it (``pyproject.toml``'s import
contract): :mod:`vmstate.kernels` (numba kernels), :mod:`vmstate.engine` (the simulated machine),
:mod:`vmstate.io` (the scenario contract and datasets), :mod:`vmstate.batch` (runs, the API, sweeps)
beside :mod:`vmstate.bridge` (the running kernel), and :mod:`vmstate.cli`. ``vmstate.api``,
``vmstate.export`` and ``vmstate.split`` are the documented short names of what lives in them.
"""
from vmstate.engine.population import from_population
from vmstate.engine.state import MemoryState
from vmstate.errors import BadInput, CorruptState, OutputError, VmstateError

__all__ = ["MemoryState", "from_population", "BadInput", "CorruptState", "OutputError", "VmstateError"]
__version__ = "0.1.0"
