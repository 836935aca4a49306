"""The refcounting variants, each its common kernels built against its own module
(:mod:`vmstate.kernels.per_variant`): ``KERNELS[name]`` is what a state of that variant runs."""
from vmstate.kernels import (  # noqa: F401 (the builds need every module of common kernels)
    fault, freeze, madvise, mapcount, memory, mremap, pmd, split, v4_5, v5, v6_18,
)
from vmstate.kernels.constants import VARIANTS
from vmstate.kernels.per_variant import build

KERNELS = {m.NAME: build(m) for m in (v5, v4_5, v6_18)}
assert tuple(KERNELS) == VARIANTS, "constants.VARIANTS names the variants in this order"
