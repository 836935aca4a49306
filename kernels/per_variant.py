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

Each compiled copy is its own function to numba (``<name>__<variant>``, ``name`` the build's own:
one function may be built twice, as ``zap_pmd_range`` and its serial ``zap_pmd_range_serial``), so
the on-disk cache keeps one entry per build and variant (numba names its cache files after the
qualname: two builds under one name would load each other's code); the cache directory itself is
keyed by a digest of every kernel source.
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
def folio_mapcount(page):
    """Every mapping of the THP (a PMD counts one, a PTE one): ``total_mapcount()`` before 6.10,
    ``folio_mapcount()`` (``_large_mapcount``) since."""


@_declare
def population_folio(page, pmd_maps, pte_maps, mappers, partial, split):
    """A generated population's THP (``vmstate.engine.population``) whose ``_mapcount`` and
    ``compound_mapcount`` are set: the variant's other fields (6.18: the folio's, PageAnonExclusive)
    and the deferred queue, for ``mappers`` processes (the parent, mm_id 1, and forked children) of
    which each maps it by PMD or (``split``) by PTEs, the parent with a partial zap (``partial``).
    Returns 1 when the program counted the THP in ``thp_deferred_split_page``."""


@_declare
def count_deferred_split(events, n):
    """``n`` THPs counted by ``deferred_split_huge_page()`` (6.18: also mthp ``split_deferred``)."""


@_declare
def page_add_new_anon_rmap(page, mm_id):
    """``page_add_new_anon_rmap(page, vma, address, compound=true)`` on a newly faulted THP of the
    process with ``mm_id`` (6.18: ``folio_add_new_anon_rmap()`` and the deferred queue)."""


@_declare
def count_thp_faults(events, n):
    """The counters of ``n`` THP faults (``thp_fault_alloc``; 6.18 also mthp ``anon_fault_alloc``)."""


VMA_MERGE = _Declared("whether mprotect merges the VMAs it changed with compatible neighbours "
                      "(vma_merge(): 6.18, where the running kernel shows it; v5 and 4.5 keep the "
                      "seed's no-merge rule)")
LARGE_FOLIO_FIELDS = _Declared("whether the variant keeps the large-folio fields (_large_mapcount, "
                               "_nr_pages_mapped, the MM slots: 6.18)")
MADV_COLD_PAGEOUT = _Declared("whether the variant's kernel has MADV_COLD and MADV_PAGEOUT (v5.4+)")
MPROTECT_WRITABLE_EXCLUSIVE = _Declared("whether mprotect() to writable makes the entries of "
                                        "PageAnonExclusive pages writable at once (6.18)")
NEW_ANON_PAGE_FLAGS = _Declared("flags a new small anonymous page gets besides ANON_FAULT_FLAGS "
                                "(6.18: PG_anon_exclusive)")


@_declare
def page_dup_anon_rmap_pmd(page, mm_id):
    """fork's ``page_dup_rmap(page, compound=true)`` (6.18: ``folio_try_dup_anon_rmap_pmd()``) into
    the child with ``mm_id``."""


@_declare
def page_dup_anon_rmap_pte(page, i, mm_id):
    """fork's ``page_dup_rmap(page + i, false)`` (6.18: ``folio_try_dup_anon_rmap_pte()``) into the
    child with ``mm_id``."""


@_declare
def page_remove_anon_compound_rmap(page, mm_id, events):
    """``page_remove_rmap(page, compound=true)``: a PMD mapping of the THP in process ``mm_id``
    goes."""


@_declare
def page_remove_rmap_ptes(page, lo, hi, mm_id, events):
    """One zap batch: the PTE mappings of subpages ``[lo, hi)`` of the block (consecutive present
    PTEs of one page table) in process ``mm_id`` go (6.18: one ``folio_remove_rmap_ptes()``)."""


@_declare
def split_huge_pmd_counts(page, freeze, mm_id, events):
    """The counts ``__split_huge_pmd_locked()`` changes when one PMD mapping of the THP (process
    ``mm_id``) becomes 512 PTEs (or, with ``freeze``, 512 migration entries)."""


@_declare
def split_pmd_pte_bits(page, entry, freeze):
    """The bits ``__split_huge_pmd_locked()`` writes into each of the 512 entries (the pfn aside) for
    the huge PMD ``entry``: a PTE, or with ``freeze`` a migration entry."""


HUGE_PMD_WP_COPIES_THP = _Declared("whether do_huge_pmd_wp_page() copies a THP it cannot reuse whole "
                                   "(2015-5.7), rather than splitting the PMD for the PTE fault "
                                   "to copy one page (5.8+: 6.18)")
MOVE_NORMAL_PMD = _Declared("whether mremap moves a whole PTE table where both sides cover an aligned "
                            "2 MiB and the new PMD is none (move_normal_pmd(), 4.20+)")
PT_RECLAIM = _Declared("whether MADV_DONTNEED frees a PTE table it emptied whole (CONFIG_PT_RECLAIM, "
                       "6.14+)")


@_declare
def huge_pmd_wp_can_reuse(page, offset):
    """``do_huge_pmd_wp_page()``'s reuse test for the THP in block record ``page`` (``offset``: the
    variant's ``mapcount_offset(page)``), setting what reuse sets (6.18: PageAnonExclusive)."""


@_declare
def pte_wp_can_reuse(page, i):
    """``do_wp_page()``'s reuse test for page ``i`` of block record ``page`` (a THP's or a small
    page's), setting what reuse sets (6.18: PageAnonExclusive)."""


SPLIT_PMD_SETS_PAGE_DIRTY = _Declared("whether __split_huge_pmd_locked() sets the head's PG_dirty "
                                      "for a dirty PMD")
FREEZE_FROM_VM_START = _Declared("whether freeze_page_vma() walks from the VMA's first subpage "
                                 "(else from subpage 0)")
FREEZE_TO_VM_END = _Declared("whether freeze_page_vma() stops at the VMA's end (else the THP's)")
FREEZE_AT_VMA_ADDRESS = _Declared("whether freeze_page_vma() walks from __vma_address() itself, into "
                                  "the next page table where a mremap'ed THP crosses one (else from "
                                  "the PMD-aligned address, the seed's walk)")
RMAP_WALK_STEPS_OVER_HOLES = _Declared("whether the rmap walk of a VMA steps over a missing page table "
                                       "to the next (6.18 page_vma_mapped_walk()) rather than ending")
FREEZE_STOPS_UNMAPPED = _Declared("whether freeze_page() ends the rmap walk once the THP is no longer "
                                  "mapped (6.18 try_to_migrate(): rwc.done = folio_not_mapped)")


@_declare
def freeze_pte(page, i, pte, mm_id, events):
    """``freeze_page_vma()`` / ``try_to_migrate_one()`` on subpage ``i``'s present PTE ``pte`` in
    process ``mm_id``: what it does to the counts; returns the migration entry."""


@_declare
def unfreeze_page(b, v0, v1, vma_walk, vma_lo, vma_hi, vma_write, pmds, tables, blocks, costs):
    """``unfreeze_page(anon_vma, page)`` (6.18: ``remap_page()``): migration entries back to PTEs
    (rmap arrays as in :mod:`vmstate.kernels.freeze`)."""


SPLIT_PINNED = _Declared("what split_huge_page() returns for an extra reference: -EBUSY (v5, 4.5), "
                         "-EAGAIN (6.18)")


@_declare
def split_recheck_ok(mapcount, count):
    """The recheck after ``freeze_page()`` in ``split_huge_page_to_list()``: the split may go on."""


@_declare
def split_recheck_bug(mapcount, count):
    """The recheck failed in the way the kernel ``BUG()``s on."""


@_declare
def count_split(ok, events):
    """``thp_split_page`` or ``thp_split_page_failed`` (6.18: also mthp ``split``/``split_failed``)."""


@_declare
def _split_huge_page_tail(flags, _count, _mapcount, compound_mapcount_raw, offset, head_flags, tail):
    """``__split_huge_page_tail(head, tail, lruvec, NULL)`` over one THP's fields; returns the
    mapcount moved from the head to the tail."""


DEBUGFS_SPLIT_PER_ADDRESS = _Declared(
    "whether debugfs split_huge_pages walks the range address by address, ending at the first hole "
    "and trying a folio again at its next address (6.18 split_huge_pages_pid()), rather than "
    "splitting each THP of the range once")


@_declare
def debugfs_split_skips(page):
    """debugfs ``split_huge_pages`` passes over this THP without trying (6.18:
    ``!can_split_folio(folio, 0)``)."""


@_declare
def deferred_split_should_split(page, events):
    """``deferred_split_scan()`` on a queued THP: 1 split it, 2 split it as underused (6.18), 0 leave
    it (taking it off the queue)."""


@_declare
def deferred_split_requeue(page, did_split):
    """After ``deferred_split_scan()`` tried a THP: whether it stays queued."""


@_declare
def folio_maybe_mapped_shared(page):
    """6.18 ``folio_maybe_mapped_shared()`` (MADV_COLD/MADV_PAGEOUT, which the older variants lack)."""


DECLARED = tuple(n for n, v in list(globals().items())
                 if isinstance(v, _Declared) or getattr(v, "__qualname__", "") == "_declare.<locals>.unbuilt")


def per_variant(name=None, **options):
    """Mark a common kernel: compiled once per variant by :func:`build` (with ``options`` for njit),
    never called as it stands. ``name``: build it under another name (one function, two builds)."""
    def mark(fn):
        key = name or fn.__name__
        if key in _COMMON:
            raise RuntimeError(f"two common kernels named {key}")
        _COMMON[key] = (fn, options)
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
        copy.__qualname__ = f"{name}__{suffix}"  # the build's own name: numba caches by it
        copy.__module__, copy.__doc__, copy.__kwdefaults__ = fn.__module__, fn.__doc__, fn.__kwdefaults__
        setattr(out, name, njit(cache=True, **options)(copy))
        env.append(glb)
    # numba resolves a function's globals when it first compiles it: bind them before any call
    common = {name: getattr(out, name) for name in _COMMON}
    for glb in env:
        glb.update(bound)
        glb.update(common)
    return out
