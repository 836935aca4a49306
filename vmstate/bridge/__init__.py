"""The real-kernel bridge: ``/proc`` readers (:mod:`~vmstate.bridge.procfs`), capturing a live
process (:mod:`~vmstate.bridge.capture`), running a scenario in real processes
(:mod:`~vmstate.bridge.kernel_run`, its worker :mod:`~vmstate.bridge.kworker`), and the diff of two
datasets with the documented divergences."""
