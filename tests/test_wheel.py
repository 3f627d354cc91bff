"""The built wheel carries the npe2 manifest and the sample data.

``napari.yaml`` and ``sample_data/`` live at the repository's top level; the package reaches them through
relative links, which a wheel build must resolve into real files, or an installed plugin has no manifest.
The wheel is built offline from a copy of the sources (links kept as links), so the checkout stays clean.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "napari_msam"


def test_manifest_and_sample_data_are_links_to_the_top_level():
    for name in ("napari.yaml", "sample_data"):
        link = PKG / name
        assert link.is_symlink(), f"{link} should be a link to the top-level {name}"
        assert os.readlink(link) == f"../../{name}"
        assert link.resolve() == (ROOT / name).resolve()


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "napari.yaml"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "sample_data", src / "sample_data", symlinks=True)
    shutil.copytree(ROOT / "src", src / "src", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    out = tmp_path / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "-q", "-w", str(out), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    wheels = list(out.glob("napari_msam-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_carries_manifest_and_sample_data(tmp_path):
    # an offline build: no build isolation, no index (setuptools >= 70 builds wheels without `wheel`)
    for needed in ("pip", "setuptools"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"{needed} is not installed")
    whl = _build_wheel(tmp_path)
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        manifest = z.read("napari_msam/napari.yaml")
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        samples = {n.split("/", 2)[2]: z.read(n) for n in names if n.startswith("napari_msam/sample_data/")}
    assert manifest == (ROOT / "napari.yaml").read_bytes()
    assert "napari_msam:napari.yaml" in entry_points
    expected = {p.name: p.read_bytes() for p in (ROOT / "sample_data").iterdir() if p.is_file()}
    assert {"MR_T1_image.nii.gz", "MR_T1_mask.nii.gz", "CT_image.nii.gz", "CT_mask.nii.gz"} <= set(samples)
    assert samples == expected
    npe2 = pytest.importorskip("npe2")
    path = tmp_path / "napari.yaml"
    path.write_bytes(manifest)
    mf = npe2.PluginManifest.from_file(str(path))
    assert mf.name == "napari-msam"
    assert {c.id for c in mf.contributions.commands} >= {"napari-msam.get_reader", "napari-msam.sample_mr"}
