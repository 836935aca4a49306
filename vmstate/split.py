"""``vmstate.split``, the documented name of the split op's types, which live in
:mod:`vmstate.engine.huge_memory`."""
from vmstate.engine.huge_memory import Race, SplitResult

__all__ = ["Race", "SplitResult"]
