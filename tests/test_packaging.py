"""What `pip install .` ships: every module and data file of the source tree, importable from the wheel alone.

An editable install (and the test suite's own imports) read the source tree, so a subpackage missing from
pyproject's package list goes unnoticed until a clean machine installs the wheel; this test installs it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _source_files() -> set[str]:
    """Paths inside the wheel that the source tree says it must hold."""
    want = {f"edgekd/{p.relative_to(ROOT / 'edgekd').as_posix()}"
            for p in (ROOT / "edgekd").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix in {".py", ".gz"}}
    want |= {f"edgekd/profiles/{p.relative_to(ROOT / 'targets').as_posix()}"
             for p in (ROOT / "targets").rglob("*") if p.is_file() and p.suffix in {".yaml", ".json"}}
    return want


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of what a clean checkout holds: setuptools reuses a stale build/ folder, which
    # would still hold a package that pyproject.toml no longer lists.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("edgekd", "targets"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(src)], check=True, cwd=out,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    (whl,) = out.glob("edgekd-*.whl")
    return whl


def test_the_wheel_holds_every_module_profile_and_packaged_dataset(wheel):
    with zipfile.ZipFile(wheel) as z:
        shipped = set(z.namelist())
    missing = sorted(_source_files() - shipped)
    assert not missing, f"pyproject.toml's [tool.setuptools] packages leave out: {missing[:10]}"


def test_every_module_imports_from_the_installed_wheel_alone(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    script = (
        "import importlib, pkgutil, sys, edgekd\n"
        f"assert edgekd.__file__.startswith({str(site)!r}), edgekd.__file__\n"
        "names = [m.name for m in pkgutil.walk_packages(edgekd.__path__, 'edgekd.') if not m.name.endswith('__main__')]\n"
        "for n in names: importlib.import_module(n)\n"
        "from edgekd.hardware.targets import target_names\n"
        "print(len(names), len(target_names()))\n")
    # cwd is not the repository, and PYTHONPATH puts the wheel's copy ahead of any editable install.
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(site)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    modules, targets = map(int, done.stdout.split())
    sources = [p for p in (ROOT / "edgekd").rglob("*.py") if "__pycache__" not in p.parts]
    # Every file but edgekd/__init__.py and the __main__ modules (which run the CLI) is imported.
    assert modules == len([p for p in sources if p.name != "__main__.py"]) - 1
    assert targets == len(list((ROOT / "targets").glob("*.yaml")))
