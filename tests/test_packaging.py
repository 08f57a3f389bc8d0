"""The wheel installs heads/ and datasets/ as transfer.heads / transfer.datasets, never top level."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import transfer.datasets
import transfer.heads

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_maps_heads_and_datasets_under_transfer(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("transfer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "transfer/heads/__init__.py" in names and "transfer/datasets/__init__.py" in names
    assert "transfer/examples/digits.pb" in names
    assert not [n for n in names if n.startswith(("heads/", "datasets/"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "transfer = transfer.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_editable_install_imports_the_mapped_packages():
    assert Path(transfer.heads.__file__).parent == ROOT / "heads"
    assert Path(transfer.datasets.__file__).parent == ROOT / "datasets"


def test_installed_tensorflow_and_keras_are_within_the_declared_bounds():
    """The code relies on TF/Keras internals (wrap_function, load_v1_in_v2, Keras' safe mode and
    state tracker): pyproject.toml bounds them, and CI installs what the bounds allow."""
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement

    bounded = {r.name: r for r in map(Requirement, requires("transfer")) if r.name in ("tensorflow", "keras")}
    for name, requirement in bounded.items():
        assert "<" in str(requirement.specifier), f"{name} needs an upper bound"
        assert requirement.specifier.contains(version(name)), (name, version(name), str(requirement.specifier))
