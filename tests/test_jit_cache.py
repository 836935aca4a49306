"""The kernels' JIT cache (``kernels/_cache.py``): keyed by the digest of every kernel source, never
deleted, in ``$NUMBA_CACHE_DIR``, in-tree or user-wide; other numba users keep their ``CACHE_DIR``."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numba
import pytest
from numba.core import config

from vmstate.kernels import _cache

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "datasets" / "scenarios" / "pmd_mapped.toml"

# total_mapcount() of an all-zero _mapcount row with compound_mapcount_raw -1 is HPAGE_PMD_NR: the
# answer depends on constants.py while the cached function lives in mapcount.py (numba's own source
# stamp would not see the change).
TOTAL_MAPCOUNT = """
import json, numpy as np
import vmstate.kernels as k
from vmstate.kernels.mapcount import total_mapcount
r = total_mapcount(np.zeros(512, np.int32), np.int32(-1), 0)
s = total_mapcount.stats
print(json.dumps({"file": k.__file__, "dir": str(k.JIT_CACHE_DIR), "result": int(r),
                  "cache_path": s.cache_path, "hits": sum(s.cache_hits.values())}))
"""


def _copy_tree(dst):
    """A checkout: vmstate/ (with its kernels symlink) and kernels/, without caches."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    dst.mkdir(parents=True)
    shutil.copytree(ROOT / "vmstate", dst / "vmstate", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "kernels", dst / "kernels", ignore=ignore)
    return dst


def _env(**kw):
    # the children jit (and cache) even in the NUMBA_DISABLE_JIT=1 run of the suite
    drop = ("NUMBA_CACHE_DIR", "PYTHONPATH", "NUMBA_DISABLE_JIT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update({k: str(v) for k, v in kw.items()})
    return env


def _run_snippet(root, cache_dir):
    out = subprocess.run([sys.executable, "-c", TOTAL_MAPCOUNT], cwd=root.parent, capture_output=True,
                         text=True, env=_env(PYTHONPATH=root, NUMBA_CACHE_DIR=cache_dir), timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _files(d):
    return {p for p in Path(d).rglob("*") if p.is_file()}


@pytest.mark.parametrize("layout", ["two checkouts", "one path, two versions"])
def test_versions_sharing_a_cache_dir_each_run_their_own_code(tmp_path, layout):
    a = _copy_tree(tmp_path / "a")
    b = _copy_tree(tmp_path / "b")
    constants = b / "kernels" / "constants.py"
    text = constants.read_text()
    assert "HPAGE_PMD_ORDER = 9\n" in text
    constants.write_text(text.replace("HPAGE_PMD_ORDER = 9\n", "HPAGE_PMD_ORDER = 8\n"))
    expected = {a: 512, b: 256}
    cache_dir = tmp_path / "numba-cache"
    current = tmp_path / "current"  # "one path": both versions installed, in turn, at current/

    def place(tree):
        if layout == "two checkouts":
            return tree
        if current.is_symlink():
            current.unlink()
        current.symlink_to(tree, target_is_directory=True)
        return current

    seen, before = {}, set()
    for turn, tree in enumerate([a, b, a, b]):
        root = place(tree)
        r = _run_snippet(root, cache_dir)
        assert r["file"] == str(root / "vmstate" / "kernels" / "__init__.py")
        assert r["result"] == expected[tree], (layout, turn, r)
        assert Path(r["cache_path"]).is_relative_to(r["dir"])
        assert Path(r["dir"]).parent == cache_dir and Path(r["dir"]).name.startswith(_cache.PREFIX)
        assert r["hits"] == (1 if turn >= 2 else 0), (turn, r)  # second round: from the cache
        seen.setdefault(tree, r["dir"])
        assert r["dir"] == seen[tree]
        after = _files(cache_dir)
        assert before <= after, f"deleted: {sorted(before - after)}"
        before = after
    assert seen[a] != seen[b]
    for tree in (a, b):  # NUMBA_CACHE_DIR given: nothing in the trees
        assert not list(tree.rglob("*.nbi"))


def test_read_only_install_caches_under_the_user_cache(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copytree(ROOT / "vmstate", site / "vmstate",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))  # kernels link followed
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["chmod", "-R", "a-w", str(site)], check=True)
    cmd = [sys.executable, "-m", "vmstate", "run", str(SCENARIO), "--json"]
    if os.geteuid() == 0:  # root writes through a-w: bind-mount the install read-only instead
        if shutil.which("unshare") is None or subprocess.run(
                ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root without user namespaces: cannot make a read-only install")
        cmd = ["unshare", "-rm", "sh", "-c",
               'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"',
               "sh", str(site)] + cmd
    try:
        out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env=_env(PYTHONPATH=site, HOME=home, XDG_CACHE_HOME=home / ".cache"))
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(site)], check=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["scenario"] == "pmd_mapped"
    digest = _cache.source_digest(site / "vmstate" / "kernels")
    cached = list((home / ".cache" / "numba" / (_cache.PREFIX + digest)).rglob("*.nbi"))
    assert any(p.name.startswith("split.") for p in cached), sorted(_files(home))
    assert not list(site.rglob("*.nbi")) and not list(site.rglob("__pycache__"))


def test_importing_one_kernel_module_decorates_all_in_the_keyed_dir(tmp_path):
    code = ("import numba, vmstate.kernels.mapcount as m, vmstate.kernels as k, vmstate.kernels.split as s;"
            "from vmstate.kernels.variants import KERNELS;"
            "print(repr(numba.config.CACHE_DIR)); print(k.JIT_CACHE_DIR);"
            "print(m.total_mapcount.stats.cache_path); print(KERNELS['v4.5'].split_huge_pages.stats.cache_path)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=_env(NUMBA_CACHE_DIR=tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr
    previous, jit_dir, *paths = out.stdout.split("\n")[:4]
    assert previous == repr(str(tmp_path))  # the user's setting, restored after the import
    assert Path(jit_dir) == tmp_path / (_cache.PREFIX + _cache.source_digest())
    assert all(Path(p).is_relative_to(jit_dir) for p in paths)


def test_digest_covers_every_kernel_source_recursively(tmp_path, monkeypatch):
    kernels = shutil.copytree(ROOT / "kernels", tmp_path / "kernels",
                              ignore=shutil.ignore_patterns("__pycache__"))
    d0 = _cache.source_digest(kernels)
    assert d0 == _cache.source_digest(kernels) and len(d0) == 16
    (kernels / "__pycache__").mkdir()
    (kernels / "__pycache__" / "junk.py").write_text("x = 1\n")
    assert _cache.source_digest(kernels) == d0
    (kernels / "v9").mkdir()
    (kernels / "v9" / "split.py").write_text("X = 1\n")
    d1 = _cache.source_digest(kernels)
    assert d1 != d0
    (kernels / "v9" / "split.py").write_text("X = 2\n")
    d2 = _cache.source_digest(kernels)
    assert d2 not in (d0, d1)
    (kernels / "v9" / "split.py").rename(kernels / "v9" / "freeze.py")
    assert _cache.source_digest(kernels) != d2  # the path counts, not only the bytes
    monkeypatch.setattr(numba, "__version__", "0.0.0")
    assert _cache.source_digest(kernels) not in (d0, d1, d2)


def test_cache_dir_order(tmp_path, monkeypatch):
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    name = _cache.PREFIX + "0123456789abcdef"
    monkeypatch.setattr(config, "CACHE_DIR", "")
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def where():
        return _cache.kernel_cache_dir(kernels, "0123456789abcdef")

    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "user"))
    assert where() == tmp_path / "user" / name
    monkeypatch.setattr(config, "CACHE_DIR", "")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "env"))
    assert where() == tmp_path / "env" / name
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert where() == kernels / "__pycache__" / name
    usable = _cache._usable
    monkeypatch.setattr(_cache, "_usable", lambda p: not Path(p).is_relative_to(kernels) and usable(p))
    assert where() == tmp_path / "xdg" / "numba" / name
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert where() == tmp_path / "home" / ".cache" / "numba" / name
    monkeypatch.setattr(_cache, "_usable", lambda p: False)
    private = where()
    assert private.name.startswith(name + "-") and private.is_dir()


def test_kernel_cache_restores_numba_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))
    with _cache.kernel_cache() as path:
        assert config.CACHE_DIR == str(path)
        assert path == tmp_path / (_cache.PREFIX + _cache.source_digest())
    assert config.CACHE_DIR == str(tmp_path)
    with pytest.raises(KeyError), _cache.kernel_cache():
        raise KeyError
    assert config.CACHE_DIR == str(tmp_path)


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1",
                    reason="a property of the compiled builds (unjitted, njit returns the function)")
def test_each_build_of_a_kernel_is_cached_under_its_own_name():
    """One function built twice (``zap_pmd_range`` on a prange, ``zap_pmd_range_serial`` for a process
    whose slots may share a block) must not share a cache entry: numba names its cache files after
    the function's qualname, so a shared one would hand the serial build the parallel code."""
    from vmstate.kernels.variants import KERNELS
    for k in KERNELS.values():
        par, ser = k.zap_pmd_range, k.zap_pmd_range_serial
        assert par.py_func.__qualname__ != ser.py_func.__qualname__
        assert par.targetoptions.get("parallel") and not ser.targetoptions.get("parallel")
    names = [f.py_func.__qualname__ for k in KERNELS.values() for f in vars(k).values()
             if hasattr(f, "py_func") and "__" in f.py_func.__qualname__]
    assert len(names) == len(set(names))
