"""The floors of the package, as written in ``pyproject.toml``'s import contract, and no import cycle
anywhere in it (a module never imports one that imports it back, directly or through others)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_contract_holds():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    r = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_no_import_cycle():
    graph = grimp.build_graph("vmstate", cache_dir=None)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported != importer and graph.chain_exists(importer=imported, imported=importer):
                chain = graph.find_shortest_chain(importer=imported, imported=importer)
                cycles.append(f"{importer} -> {' -> '.join(chain)}")
    assert not cycles, "\n".join(cycles)


def test_no_top_level_kernels_package_is_declared():
    """``pip install .`` installs the kernels as ``vmstate.kernels``, never as ``kernels``."""
    import tomllib
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "vmstate" or p.startswith("vmstate.") for p in cfg["packages"])
    assert cfg["package-dir"] == {"vmstate.kernels": "kernels"}


def test_a_plain_install_has_no_top_level_kernels_and_runs_anywhere(tmp_path):
    """``pip install .`` (not editable) puts the kernels in ``vmstate/kernels``, no ``kernels``
    package beside it, and ``vmstate run`` works from a directory outside the checkout."""
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(site), str(REPO)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and "No matching distribution" in r.stderr + r.stdout:
        pytest.skip("no package index for the build backend (setuptools): " + r.stderr[-300:])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (site / "vmstate" / "kernels" / "split.py").is_file()
    assert not (site / "kernels").exists()
    packages = {p.parent.relative_to(REPO) for p in (REPO / "vmstate").rglob("__init__.py")}
    missing = [str(p) for p in packages if not (site / p / "__init__.py").is_file()]
    assert not missing, f"packages left out of the install (pyproject.toml packages): {missing}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "PYTHON"))}
    env.update(PYTHONPATH=str(site), HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-m", "vmstate", "run",
                          str(REPO / "datasets" / "scenarios" / "pmd_mapped.toml"), "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["scenario"] == "pmd_mapped"
    probe = subprocess.run([sys.executable, "-c", "import vmstate, vmstate.kernels as k; "
                            "print(vmstate.__file__); print(k.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert all(line.startswith(str(site)) for line in probe.stdout.split()), probe.stdout
