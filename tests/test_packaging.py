"""What ``pip install .`` installs: every package of the source tree (found, not listed), each
importable, and the version it declares."""

import importlib
import runpy
from pathlib import Path

import sparsekit

ROOT = Path(__file__).resolve().parents[1]


def setup_script() -> dict:
    """setup.py's globals, read without running setup()."""
    return runpy.run_path(str(ROOT / "setup.py"), run_name="setup_script")


def source_packages() -> set[str]:
    """Every directory of Python files under sparsekit/ as a package name, and the Triton
    kernels as they are installed."""
    directories = {path.parent for path in (ROOT / "sparsekit").rglob("*.py")}
    names = {
        ".".join(d.relative_to(ROOT).parts) for d in directories if "__pycache__" not in d.parts
    }
    return names | {"sparsekit.triton_kernels"}


def test_setup_installs_every_package_and_each_imports():
    packages = setup_script()["PACKAGES"]
    assert source_packages() <= set(packages), (
        f"missing from setup.py's packages: {source_packages() - set(packages)}"
    )
    for directory in {path.parent for path in (ROOT / "sparsekit").rglob("*.py")}:
        assert (directory / "__init__.py").exists(), f"{directory} holds modules but no __init__.py"
    for name in packages:
        importlib.import_module(name)


def test_the_installed_version_is_the_package_version():
    assert setup_script()["version"]() == sparsekit.__version__
