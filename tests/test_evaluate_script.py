"""Smoke test of benchmarks/evaluate_default_model.py on a synthetic STS-like folder with the tiny model."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")
nib = pytest.importorskip("nibabel")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "evaluate_default_model.py"


@pytest.fixture(scope="module")
def ev():
    spec = importlib.util.spec_from_file_location("evaluate_default_model", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["evaluate_default_model"] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


def _write_case(folder: Path, prefix: str, image_name: str, rng: np.random.Generator) -> None:
    """A bright ball in noise, 3 mm x 2 mm x 2 mm voxels (LPS-like affine, so read_volume must reorient)."""
    shape = (24, 24, 12)
    aff = np.diag([-2.0, -2.0, 3.0, 1.0])
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ball = ((z - 12) * 2.0) ** 2 + ((y - 11) * 2.0) ** 2 + ((x - 6) * 3.0) ** 2 <= 9.0**2
    img = rng.normal(0, 20, shape).astype(np.float32) + np.where(ball, 200, 0).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img, aff), str(folder / image_name))
    nib.save(nib.Nifti1Image(ball.astype(np.uint8), aff), str(folder / f"{prefix}_mask.nii.gz"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from napari_msam.model import PreprocessConfig, build_model, save_checkpoint

    root = tmp_path_factory.mktemp("evalscript")
    rng = np.random.default_rng(0)
    for p in ("STS_900", "STS_901"):
        _write_case(root / "data" / p, "CT", "CT_image.nii.gz", rng)
        _write_case(root / "data" / p, "MR_T1", "MR_T1_image_from_dicom.nii.gz", rng)
    ckpt = root / "tiny.safetensors"
    import torch

    torch.manual_seed(0)
    save_checkpoint(ckpt, build_model("msam-tiny").eval(), PreprocessConfig(spacing_mm=(2.0, 2.0, 2.0)), {})
    return root, ckpt


def _args(root: Path, ckpt: Path) -> list[str]:
    return ["--data", str(root / "data"), "--patients", "STS_900", "STS_901", "--no-sample", "--seeds", "0", "1",
            "--clicks", "3", "--checkpoint", f"tiny={ckpt}", "--cache", str(root / "cache"),
            "--csv", str(root / "out.csv"), "--markdown", str(root / "out.md")]


def test_full_run_then_cached(ev, setup, capsys):
    root, ckpt = setup
    assert ev.main(_args(root, ckpt)) == 0
    first = capsys.readouterr().out
    assert "0 runs cached, 16 to run" in first
    rows = list(csv.DictReader(open(root / "out.csv")))
    # 2 methods x 2 patients x 2 modalities x 2 seeds x 3 clicks
    assert len(rows) == 48
    assert {r["method"] for r in rows} == {"tiny", "random-walker"}
    assert {r["modality"] for r in rows} == {"ct", "mr"}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    # the walker finds a bright ball in noise
    rw = [float(r["dice"]) for r in rows if r["method"] == "random-walker" and r["click"] == "3"]
    assert np.mean(rw) > 0.6
    md = (root / "out.md").read_text()
    assert "### CT — strategy `random`" in md and "### MR_T1 — strategy `random`" in md
    assert "ahead of the random walker at every click count from 3 on?" in md
    assert "| STS_900 CT | LPS | SPL |" in md and "| STS_901 MR_T1 | LPS | SPL |" in md
    # patients given by hand are not called validation patients
    assert "## Patients given with --patients (none of them a validation patient)" in md
    assert "Validation patients" not in md
    # the second run takes everything from the cache and writes the same CSV
    assert ev.main(_args(root, ckpt)) == 0
    assert "16 runs cached, 0 to run" in capsys.readouterr().out
    assert list(csv.DictReader(open(root / "out.csv"))) == rows


def test_patients_label_names_the_split(ev):
    assert ev.patients_label(list(reversed(ev.VAL_PATIENTS))) == "Validation patients"
    assert ev.patients_label(["STS_001", "STS_002"]).endswith("(none of them a validation patient)")
    assert ev.patients_label(["STS_001", "STS_003"]) == "Patients given with --patients"


def test_bad_arguments(ev, setup, capsys):
    root, ckpt = setup
    assert ev.main(["--checkpoint", "nopath", "--data", str(root / "data")]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    assert ev.main(["--checkpoint", f"x={root / 'missing.safetensors'}", "--data", str(root / "data")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert ev.main(["--patients", "STS_999", "--no-sample", "--data", str(root / "data"),
                    "--cache", str(root / "c2")]) == 2
    assert "STS_999" in capsys.readouterr().err
    assert ev.main(["--checkpoint", f"m={ckpt}", "--max-zoom", "other=2", "--data", str(root / "data")]) == 2
    assert "--max-zoom" in capsys.readouterr().err


def test_edge_refine_option_is_a_separately_cached_method(ev, setup, capsys):
    """--edge-refine NAME=on: a second name for the same checkpoint, its own cache key, MR and CT refined."""
    root, ckpt = setup
    args = _args(root, ckpt) + ["--no-random-walker", "--seeds", "0", "--checkpoint", f"tiny-edges={ckpt}",
                                "--edge-refine", "tiny-edges=on"]
    assert ev.main(args) == 0
    out = capsys.readouterr().out
    assert "tiny-edges STS_900 mr random" in out and "tiny-edges STS_901 ct random" in out  # run, not cached
    md = (root / "out.md").read_text()
    assert "`edge_refine auto` / `on`" in md and "edge_refine on" in md
    keys = sorted(p.name for p in (root / "cache").iterdir())
    assert any("-edges-on-" in k for k in keys)
    assert ev.main(args[:-1] + ["tiny-edges=sometimes"]) == 2
    assert "--edge-refine" in capsys.readouterr().err


def test_coarse_walker_maps_back_to_full_grid(ev):
    from napari_msam.baselines import RandomWalkerSession

    rng = np.random.default_rng(1)
    vol = rng.normal(0, 5, (16, 41, 41)).astype(np.float32)
    vol[4:12, 8:32, 9:33] += 100
    s = ev.CoarseRandomWalker(RandomWalkerSession(margin_mm=20), target_mm=2.0)
    s.set_image(vol, (3.0, 1.0, 1.0))
    assert s.factors == (1, 2, 2) and s.inner.shape == (16, 21, 21)
    s.add_click((8, 20, 20), True)
    inner = np.asarray(s.inner.current_mask)
    full = s.current_mask
    assert full.shape == vol.shape
    # every full voxel takes its block's label
    i0, i1, i2 = np.ix_(np.arange(16), np.arange(41) // 2, np.arange(41) // 2)
    assert np.array_equal(full, inner[i0, i1, i2])
    gt = np.zeros(vol.shape, bool)
    gt[4:12, 8:32, 9:33] = True
    assert (full & gt).sum() / max(full.sum(), 1) > 0.8 and (full & gt).sum() / gt.sum() > 0.8
    s.undo()
    assert not s.current_mask.any()
