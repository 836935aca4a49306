"""numba kernels of vmstate: plain jitted functions over arrays and scalars, named after the kernel
functions they mirror (``mm/huge_memory.c``, ``mm/rmap.c``). No classes, no argument checking: the
wrappers in :mod:`vmstate` own validation and state."""
