"""The floors of the package, as written in ``pyproject.toml``'s import contract, and no import cycle
anywhere in it (a module never imports one that imports it back, directly or through others)."""
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
