"""The scenario contract and dataset I/O: scenario parsing (:mod:`~vmstate.io.scenario`), the state
dataset frames (:mod:`~vmstate.io.export`), reading datasets (:mod:`~vmstate.io.dataset`), the
``/proc/kpageflags`` format (:mod:`~vmstate.io.kformat`) and the one crash-safe writer."""
