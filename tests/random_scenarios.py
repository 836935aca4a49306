"""Random 6.18 scenarios of the contract's ops, as a new user might write them: a parent's THP
mappings (data or zeros), forks, partial and whole unmaps, DONTNEED, mprotect, vmsplice pins,
MADV_COLD, MADV_PAGEOUT, the shrinker, writes (COW after fork, faults into emptied ranges) and
mremap to a free range above the others (aligned or not), a snapshot after each few ops; every range inside one
live VMA (or anywhere for munmap), ends biased to 2 MiB edges. No ``split`` op (debugfs is locked
here: kernel-run would stand in with MADV_COLD). ``scenario(seed)`` returns the TOML document as a
dict for ``vmstate.io.scenario.parse_scenario``; ``python tests/random_scenarios.py SEED`` prints it
as TOML."""
import random
import sys

BASE = 0x7F0000000000
MB2 = 2 << 20
PAGE = 4096


def _range(rng, start, end):
    """A page-aligned sub-range of ``[start, end)``, its ends at 2 MiB edges or subpages 1 and 511
    half the time."""
    pages = (end - start) // PAGE

    def point(lo, hi):
        edges = [p for p in range(lo, hi + 1)
                 if (start // PAGE + p) % 512 in (0, 1, 511)] or [lo, hi]
        return rng.choice(edges) if rng.random() < 0.5 else rng.randint(lo, hi)

    a = point(0, pages - 1)
    b = point(a + 1, pages)
    return start + a * PAGE, (b - a) * PAGE


def _cut(ranges, addr, length):
    """``ranges`` less ``[addr, addr + length)``."""
    left = []
    for a, b in ranges:
        if a < addr:
            left.append((a, min(b, addr)))
        if b > addr + length:
            left.append((max(a, addr + length), b))
    return left


def scenario(seed: int, steps: int = 12) -> dict:
    rng = random.Random(seed)
    ops = []
    vmas = {"p": []}          # process -> [(start, end)] of its mappings
    pins = []                 # (mm, addr, len) held
    nthp = rng.randint(2, 4)
    ops.append({"op": "mmap", "mm": "p", "addr": BASE, "len": nthp * MB2,
                "fill": rng.choice(["data", "data", "zero"])})
    vmas["p"].append((BASE, BASE + nthp * MB2))
    children = 0
    for step in range(steps):
        alive = [m for m in vmas if vmas[m]]
        kind = rng.choice(["munmap", "dontneed", "mprotect", "pin", "unpin", "cold", "cold",
                           "pageout", "pageout", "shrink", "shrink", "fork", "exit", "mmap",
                           "write", "write", "mremap"])
        mm = rng.choice(alive) if alive else None
        if kind == "fork" and mm and children < 2:
            children += 1
            child = f"c{children}"
            ops.append({"op": "fork", "mm": mm, "child": child})
            vmas[child] = list(vmas[mm])
        elif kind == "exit" and mm and mm != "p":
            ops.append({"op": "exit", "mm": mm})
            vmas[mm] = []
            pins = [p for p in pins if p[0] != mm]
        elif kind == "mmap" and mm:
            top = max(e for _, e in vmas[mm]) if vmas[mm] else BASE
            addr = (top + MB2 - 1) // MB2 * MB2 + MB2
            n = rng.choice([MB2, 2 * MB2, MB2 + 64 * PAGE])
            ops.append({"op": "mmap", "mm": mm, "addr": addr, "len": n,
                        "fill": rng.choice(["data", "zero"])})
            vmas[mm].append((addr, addr + n))
        elif kind == "shrink":
            ops.append({"op": "shrink"})
        elif kind in ("write", "mremap") and mm and vmas[mm]:
            start, end = rng.choice(vmas[mm])
            addr, length = _range(rng, start, end)
            # a write needs a writable VMA, a mremap one VMA: no mprotect over the range before
            if any(o["op"] == "mprotect" and o["addr"] < end and start < o["addr"] + o["len"]
                   for o in ops):
                continue
            if kind == "write":
                ops.append({"op": "write", "mm": mm, "addr": addr, "len": length})
                continue
            top = max(e for _, e in vmas[mm])
            new = (top + MB2 - 1) // MB2 * MB2 + MB2 + rng.choice([0, 0, PAGE, 5 * PAGE])
            ops.append({"op": "mremap", "mm": mm, "addr": addr, "len": length, "new_addr": new})
            vmas[mm] = _cut(vmas[mm], addr, length) + [(new, new + length)]
        elif kind == "unpin" and pins:
            mm, addr, length = pins.pop(rng.randrange(len(pins)))
            ops.append({"op": "unpin", "mm": mm, "addr": addr, "len": length})
        elif mm and vmas[mm] and kind in ("munmap", "dontneed", "mprotect", "pin", "cold",
                                           "pageout"):
            start, end = rng.choice(vmas[mm])
            addr, length = _range(rng, start, end)
            if kind == "pin":
                length = min(length, 16 * PAGE)
            name = {"dontneed": "madvise_dontneed", "cold": "madvise_cold",
                    "pageout": "madvise_pageout"}.get(kind, kind)
            op = {"op": name, "mm": mm, "addr": addr, "len": length}
            if kind == "mprotect":
                op["prot"] = rng.choice(["r", "rw"])
            if kind == "pin" and any(
                    (a, b) for a, b in vmas[mm] if a <= addr and addr + length <= b):
                # a pin needs present pages: not over what a DONTNEED emptied (the kernel's GUP
                # would fault them in again; vmstate's pin is bad input there)
                if any(o["op"] == "madvise_dontneed"  # in any process: a child inherits holes
                       and o["addr"] < addr + length and addr < o["addr"] + o["len"] for o in ops):
                    continue
                if any(o["op"] == "mremap" for o in ops) and any(  # a hole may have moved there
                        o["op"] == "madvise_dontneed" for o in ops):
                    continue
                pins.append((mm, addr, length))
            ops.append(op)
            if kind == "munmap":
                vmas[mm] = _cut(vmas[mm], addr, length)  # pins survive munmap
        if step % 4 == 3:
            ops.append({"op": "snapshot", "label": f"s{step}"})
    ops.append({"op": "snapshot", "label": "end"})
    return {"scenario": {"name": f"random-{seed}", "seed": seed, "variant": "6.18"}, "op": ops}


def to_toml(doc: dict) -> str:
    lines = ["[scenario]"] + [f"{k} = {v!r}".replace("'", '"') for k, v in doc["scenario"].items()]
    for op in doc["op"]:
        lines.append("\n[[op]]")
        for k, v in op.items():
            lines.append(f"{k} = {hex(v) if k in ('addr', 'new_addr') else repr(v).replace(chr(39), chr(34))}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(to_toml(scenario(int(sys.argv[1]) if len(sys.argv) > 1 else 0)), end="")
