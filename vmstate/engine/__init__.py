"""The simulated machine: record layouts (:mod:`~vmstate.engine.dtypes`), the state container
(:mod:`~vmstate.engine.state`), the operations arranged after the kernel's ``mm/`` files, the split
(:mod:`~vmstate.engine.huge_memory`), populations and validators. Below it only the numba kernels
(:mod:`vmstate.kernels`); above it I/O, batch experiments, the real-kernel bridge and the CLI."""
