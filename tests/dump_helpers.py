"""What the reference-model tests build their expected ``dump()`` sections from."""
from vmstate.kernels.constants import COSTS, MTHP_STATS, VM_EVENTS


def events(**nonzero):
    """A ``vm_events`` section: every name, 0 but the ones given."""
    return {k: nonzero.get(k, 0) for k in VM_EVENTS}


def costs(**nonzero):
    """A ``costs`` section: every name, 0 but the ones given."""
    return {k: nonzero.get(k, 0) for k in COSTS}


def mthp(**nonzero):
    """An ``mthp_stats`` section: every name, 0 but the ones given."""
    return {k: nonzero.get(k, 0) for k in MTHP_STATS}


def ptes_of(d, mm):
    """The PTEs of process ``mm`` in a dump, by address."""
    return {v: e for (m, v), e in d["ptes"].items() if m == mm}
