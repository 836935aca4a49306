"""The engine's state in the plain-Python comparison format of ``docs/semantics.md`` (``dump()``).

The reference model (``tests/reference/``) returns the same structure; tests compare with ``==``.
"""
import numpy as np

from vmstate.kernels.constants import HPAGE_PMD_NR, PG_head, _PAGE_PRESENT, _PAGE_PSE

N = HPAGE_PMD_NR


def dump_state(state) -> dict:
    a = state.blocks.a
    pfns = state.allocated_pfns()
    b, i = pfns // N, pfns % N
    mapping, index = state.page_mapping_index()
    data = (a["data"][b, i >> 6] >> (i & 63).astype(np.uint64)) & np.uint64(1)
    cols = zip(pfns.tolist(), a["flags"][b, i].tolist(), a["_count"][b, i].tolist(),
               a["_mapcount"][b, i].tolist(), mapping[b, i].tolist(), index[b, i].tolist(),
               data.tolist())
    pages = {p: (f, c, m, mp, ix, d) for p, f, c, m, mp, ix, d in cols}
    heads = np.flatnonzero(a["flags"][:, 0] & (1 << PG_head))
    compound = {int(h) * N: int(a["compound_mapcount"][h]) for h in heads}
    folio = {int(h) * N: (int(a["_large_mapcount"][h]), int(a["_nr_pages_mapped"][h]),
                          int(a["_mm_id"][h, 0]), int(a["_mm_id"][h, 1]),
                          int(a["_mm_id_mapcount"][h, 0]), int(a["_mm_id_mapcount"][h, 1]),
                          int(a["_mm_ids_shared"][h]), int(a["partially_mapped"][h]))
             for h in heads}
    deferred = sorted(int(h) * N for h in np.flatnonzero(a["deferred"]))
    pmds, ptes, vmas = {}, {}, {}
    for mm in state.mms.values():
        if not mm.alive:
            continue
        vmas[mm.name] = sorted(v.as_tuple() for v in mm.vmas)
        for haddr, row in zip(mm.haddrs.tolist(), mm.rows.tolist()):
            entry = int(state.pmd[row])
            if entry & _PAGE_PSE:
                pmds[(mm.name, haddr)] = entry
            elif entry & _PAGE_PRESENT:
                table = state.ptes[int(state.pte_table[row])]
                for k in np.flatnonzero(table):
                    ptes[(mm.name, haddr + (int(k) << 12))] = int(table[k])
    return {"pages": pages, "compound_mapcount": compound, "folio": folio, "deferred": deferred,
            "pmds": pmds, "ptes": ptes, "vmas": vmas, "vm_events": state.vm_events,
            "mthp_stats": state.mthp_stats, "costs": state.costs}


def diff_dumps(a: dict, b: dict, limit=10) -> list[str]:
    """Human-readable differences between two dumps (first ``limit`` per section)."""
    out = []
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            keys = sorted(x.keys() | y.keys(), key=repr)
            bad = [k for k in keys if x.get(k) != y.get(k)]
            for k in bad[:limit]:
                out.append(f"{key}[{k!r}]: {x.get(k)!r} != {y.get(k)!r}")
            if len(bad) > limit:
                out.append(f"{key}: {len(bad) - limit} more")
        else:
            out.append(f"{key}: {x!r} != {y!r}")
    return out
