"""What differs between the refcounting variants, declared once, and the build of the common kernels
against each variant's implementation.

The kernel keeps configuration differences as ``#ifdef``'d implementations of the same function
names, and the code that calls them is written once. vmstate does the same: each variant module
(:mod:`vmstate.kernels.v5`, :mod:`vmstate.kernels.v4_5`) implements the functions declared below
under the same names, and the common kernels that call them (``__split_huge_pmd_locked()``,
``freeze_page()``, ``split_huge_page_to_list()``, the zaps, ...) are plain functions marked
``@per_variant``. :func:`build` compiles every marked function once per variant with these names
bound to that variant's implementations (:mod:`vmstate.kernels.variants` holds the builds), so the
variant is chosen once, when a state is created, and no kernel tests it at run time. Adding a
variant means adding a module that defines the names below, and one line in ``variants.py``.

Each compiled copy is its own function to numba (``<name>__<variant>``), so the on-disk cache keeps
one entry per variant; the cache directory itself is keyed by a digest of every kernel source.
"""
import types

from numba import njit

_COMMON: dict = {}  # name -> (python function, njit options), in definition order

# ---- The declarations (the "header"): every variant module defines each name, same signature ----
class _Declared:
    """A declared constant; the variant module gives its value."""

    def __init__(self, doc):
        self.__doc__ = doc


def _declare(fn):
    """A declared function: calling the declaration itself is a bug (the common kernel was not built)."""
    def unbuilt(*args):
        raise RuntimeError(f"{fn.__name__}() called from a common kernel that was not built "
                           f"for a variant (vmstate.kernels.variants)")
    unbuilt.__name__, unbuilt.__doc__ = fn.__name__, fn.__doc__
    return unbuilt


@_declare
def mapcount_offset(page):
    """1 when every subpage's raw ``_mapcount`` of the THP in block record ``page`` carries the
    offset that ``page_mapcount()``/``total_mapcount()`` remove again, else 0."""


@_declare
def mapcount_offset_for(page, pmd_maps, pte_maps):
    """The offset a THP mapped by ``pmd_maps`` PMDs and, per subpage, ``pte_maps`` PTEs carries,
    setting the variant's flag for it (a generated population's THPs)."""


@_declare
def page_add_new_anon_rmap(page):
    """``page_add_new_anon_rmap(page, vma, address, compound=true)`` on a newly faulted THP."""


@_declare
def page_remove_anon_compound_rmap(page, events):
    """``page_remove_rmap(page, compound=true)``: a PMD mapping of the THP goes."""


@_declare
def split_huge_pmd_counts(page, freeze, events):
    """The counts ``__split_huge_pmd_locked()`` changes when one PMD mapping of the THP becomes 512
    PTEs (or, with ``freeze``, 512 migration entries)."""


SPLIT_PMD_PTE_DIRTY = _Declared("the dirty bit __split_huge_pmd_locked() writes into every PTE")
SPLIT_PMD_SETS_PAGE_DIRTY = _Declared("whether __split_huge_pmd_locked() sets the head's PG_dirty "
                                      "for a dirty PMD")
FREEZE_FROM_VM_START = _Declared("whether freeze_page_vma() walks from the VMA's first subpage "
                                 "(else from subpage 0)")


@_declare
def freeze_pte_counts(page, i, pte, events):
    """What ``freeze_page_vma()`` does to the counts when subpage ``i``'s PTE (value ``pte``) became
    a migration entry."""


@_declare
def unfreeze_page(b, v0, v1, vma_pmd_row, vma_lo, vma_hi, vma_write, pmds, tables, blocks, costs):
    """``unfreeze_page(anon_vma, page)``: migration entries back to PTEs (rmap arrays as in
    :mod:`vmstate.kernels.freeze`)."""


@_declare
def split_recheck_ok(mapcount, count):
    """The recheck after ``freeze_page()`` in ``split_huge_page_to_list()``: the split may go on."""


@_declare
def split_recheck_bug(mapcount, count):
    """The recheck failed in the way the kernel ``BUG()``s on."""


@_declare
def _split_huge_page_tail(flags, _count, _mapcount, compound_mapcount_raw, offset, head_flags, tail):
    """``__split_huge_page_tail(head, tail, lruvec, NULL)`` over one THP's fields; returns the
    mapcount moved from the head to the tail."""


DECLARED = tuple(n for n, v in list(globals().items())
                 if isinstance(v, _Declared) or getattr(v, "__qualname__", "") == "_declare.<locals>.unbuilt")


def per_variant(**options):
    """Mark a common kernel: compiled once per variant by :func:`build` (with ``options`` for njit),
    never called as it stands."""
    def mark(fn):
        if fn.__name__ in _COMMON:
            raise RuntimeError(f"two common kernels named {fn.__name__}")
        _COMMON[fn.__name__] = (fn, options)
        return fn
    return mark


def build(variant: types.ModuleType) -> types.SimpleNamespace:
    """Every ``@per_variant`` kernel compiled against ``variant``'s declared names; the result also
    carries those names and the variant's ``NAME``."""
    missing = [n for n in DECLARED if not hasattr(variant, n)]
    if missing:
        raise RuntimeError(f"{variant.__name__} does not define {', '.join(missing)}")
    suffix = variant.NAME.replace(".", "_")
    bound = {n: getattr(variant, n) for n in DECLARED}
    out = types.SimpleNamespace(NAME=variant.NAME, **bound)
    env = []
    for name, (fn, options) in _COMMON.items():
        glb = dict(fn.__globals__)
        copy = types.FunctionType(fn.__code__, glb, name, fn.__defaults__, fn.__closure__)
        copy.__qualname__ = f"{fn.__qualname__}__{suffix}"
        copy.__module__, copy.__doc__, copy.__kwdefaults__ = fn.__module__, fn.__doc__, fn.__kwdefaults__
        setattr(out, name, njit(cache=True, **options)(copy))
        env.append(glb)
    # numba resolves a function's globals when it first compiles it: bind them before any call
    common = {name: getattr(out, name) for name in _COMMON}
    for glb in env:
        glb.update(bound)
        glb.update(common)
    return out
