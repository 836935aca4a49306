"""The real-kernel bridge: ``/proc`` readers (:mod:`~vmstate.bridge.procfs`), capturing a live
process (:mod:`~vmstate.bridge.capture`), loading a capture into the engine
(:mod:`~vmstate.bridge.load`), running a scenario in real processes (:mod:`~vmstate.bridge.kernel_run`;
its processes :mod:`~vmstate.bridge.kprocess`, their worker :mod:`~vmstate.bridge.kworker`, the split
trigger :mod:`~vmstate.bridge.ksplit`), and the diff of two datasets with the documented
divergences."""
