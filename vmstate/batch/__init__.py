"""Batch experiments: running a scenario (:mod:`~vmstate.batch.runner`), the Python API
(:mod:`~vmstate.batch.api`), parameter sweeps (:mod:`~vmstate.batch.sweep`) and their plots."""
