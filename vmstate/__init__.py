"""vmstate: the Linux v5 THP refcounting state and split_huge_page(), as NumPy arrays and numba
kernels."""
from vmstate.errors import BadInput, CorruptState, VmstateError
from vmstate.state import MemoryState

__all__ = ["MemoryState", "BadInput", "CorruptState", "VmstateError"]
__version__ = "0.1.0"
