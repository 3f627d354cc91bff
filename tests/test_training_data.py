"""Training data: discovery of the three folder layouts, ONE message for all problems, patient split,
and train-time crops identical to the inference preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _training_helpers import blob_case, real_pair, write_nifti
from napari_msam.model.config import PreprocessConfig
from napari_msam.preprocess import prepare_roi
from napari_msam.training.data import (
    TrainingDataError,
    array_case,
    discover_cases,
    prepare_cases,
    sample_crop,
    split_by_patient,
    validate_cases,
)


def _blob_files(folder, name_img, name_lab, seed=0):
    img, lab, sp = blob_case(seed)
    write_nifti(folder / name_img, img, sp)
    write_nifti(folder / name_lab, lab, sp)


def test_discover_msd_layout(tmp_path):
    _blob_files(tmp_path, "imagesTr/case_001_0000.nii.gz", "labelsTr/case_001.nii.gz")
    _blob_files(tmp_path, "imagesTr/case_002.nii.gz", "labelsTr/case_002.nii.gz", seed=1)
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}}))
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["case_001", "case_002"]
    assert all(c.modality == "ct" and c.label_path is not None for c in cases)


def test_discover_pairs_and_per_patient_layout(tmp_path):
    _blob_files(tmp_path, "a.nii.gz", "a_label.nii.gz")
    _blob_files(tmp_path, "b_image.nii.gz", "b_mask.nii.gz")
    _blob_files(tmp_path, "STS_101/CT_image_from_dicom.nii.gz", "STS_101/CT_mask.nii.gz")
    _blob_files(tmp_path, "STS_101/MR_T1_image.nii.gz", "STS_101/MR_T1_mask.nii.gz")
    _blob_files(tmp_path, "STS_102/MR_T1_image.nii.gz", "STS_102/MR_T1_mask.nii.gz")
    cases = {c.case_id: c for c in discover_cases(tmp_path)}
    assert set(cases) == {"a", "b", "STS_101/CT", "STS_101/MR_T1", "STS_102/MR_T1"}
    assert cases["STS_101/CT"].modality == "ct" and cases["STS_101/MR_T1"].modality == "mr"
    assert cases["STS_101/CT"].patient_id == cases["STS_101/MR_T1"].patient_id == "STS_101"
    only_mr = discover_cases(tmp_path, modalities=["mr"])
    assert {c.case_id for c in only_mr} == {"STS_101/MR_T1", "STS_102/MR_T1"}
    train, val = split_by_patient(only_mr + [cases["STS_101/CT"]], val_patients=["STS_101"])
    assert {c.case_id for c in val} == {"STS_101/MR_T1", "STS_101/CT"}  # a patient never on both sides
    assert [c.case_id for c in train] == ["STS_102/MR_T1"]


def test_all_problems_in_one_message(tmp_path):
    _blob_files(tmp_path, "good.nii.gz", "good_label.nii.gz")
    img, lab, sp = blob_case()
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti at all")  # unreadable image
    write_nifti(tmp_path / "broken_label.nii.gz", lab, sp)
    write_nifti(tmp_path / "empty.nii.gz", img, sp)
    write_nifti(tmp_path / "empty_label.nii.gz", np.zeros_like(lab), sp)
    write_nifti(tmp_path / "grid.nii.gz", img, sp)
    write_nifti(tmp_path / "grid_label.nii.gz", lab[:-2], sp)
    cases = discover_cases(tmp_path)
    with pytest.raises(TrainingDataError) as ei:
        validate_cases(cases)
    msg = str(ei.value)
    assert "3 problems" in msg, msg
    assert "broken: cannot read image" in msg and "empty: label is empty" in msg and "grid mismatch" in msg
    with pytest.raises(TrainingDataError, match="label id 7 not present"):
        validate_cases([array_case(img, lab, sp)], label_id=7)
    (tmp_path / "sub").mkdir()
    with pytest.raises(TrainingDataError, match="no image/label pairs"):
        discover_cases(tmp_path / "sub")
    with pytest.raises(TrainingDataError, match="data folder not found"):
        discover_cases(tmp_path / "missing")
    with pytest.raises(TrainingDataError, match="validation patient X9 not found"):
        split_by_patient(cases, val_patients=["X9"])


def test_crop_equals_inference_preprocessing():
    """At the native spacing a training crop is exactly what prepare_roi gives at inference."""
    from napari_msam.io import read_volume

    ip, lp = real_pair()
    vol = read_volume(ip)
    lab = read_volume(lp, is_label=True)
    pre = PreprocessConfig(spacing_mm=vol.spacing, normalization="zscore_positive")
    case = array_case(vol.data, lab.data, vol.spacing, modality="mr")
    (pc,) = prepare_cases([case], pre, img_size=32, max_jitter=0)
    img, gt = sample_crop(pc, 32, np.random.default_rng(0), preprocess=pre)
    # the same ROI in the native volume: the cached crop's offset + its centre
    nz = np.argwhere(lab.data > 0)
    margin = 32 // 2 + 0 + 2
    lo = np.maximum(nz.min(0) - margin, 0)
    centre = [int(c + o) for c, o in zip(pc.centre, lo, strict=True)]
    ref = prepare_roi(vol.data, vol.spacing, centre, pre, 32, "mr").image[0, 0].numpy()
    np.testing.assert_allclose(img, ref, rtol=1e-5, atol=1e-5)
    assert gt.shape == (32, 32, 32) and gt.sum() > 100 and gt[16, 16, 16]


def test_resampled_crop_flip_jitter_deterministic():
    img, lab, sp = blob_case(3)
    pre = PreprocessConfig(spacing_mm=(3.0, 3.0, 3.0), normalization="zscore_positive")
    (pc,) = prepare_cases([array_case(img, lab, sp)], pre, img_size=16, max_jitter=2)
    a = sample_crop(pc, 16, np.random.default_rng(5), preprocess=pre, jitter=2, flips=True)
    b = sample_crop(pc, 16, np.random.default_rng(5), preprocess=pre, jitter=2, flips=True)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].shape == (16, 16, 16) and a[1].any()
    # normalised like inference: positive in-volume voxels have mean ~0, std ~1
    c = sample_crop(pc, 16, np.random.default_rng(0), preprocess=pre)
    t = torch.from_numpy(c[0])
    assert abs(float(t.mean())) < 1.0 and 0.5 < float(t.std()) < 2.0


def test_intensity_augmentation_changes_the_image_only():
    """intensity_prob=1 rescales / shifts (and sometimes noises) the normalised image; the mask and the
    geometry stay, and intensity_prob=0 draws nothing extra from the generator (older runs reproduce)."""
    from napari_msam.training.data import augment_intensity

    img, lab, sp = blob_case(3)
    pre = PreprocessConfig(spacing_mm=(3.0, 3.0, 3.0), normalization="zscore_positive")
    (pc,) = prepare_cases([array_case(img, lab, sp)], pre, img_size=16, max_jitter=2)
    plain = sample_crop(pc, 16, np.random.default_rng(5), preprocess=pre, jitter=2, flips=True)
    off = sample_crop(pc, 16, np.random.default_rng(5), preprocess=pre, jitter=2, flips=True, intensity_prob=0.0)
    assert np.array_equal(plain[0], off[0])
    changed = 0
    for seed in range(6):
        base = sample_crop(pc, 16, np.random.default_rng(seed), preprocess=pre, jitter=2, flips=True)
        aug = sample_crop(pc, 16, np.random.default_rng(seed), preprocess=pre, jitter=2, flips=True,
                          intensity_prob=1.0)
        assert np.array_equal(base[1], aug[1]) and aug[0].dtype == np.float32
        corr = np.corrcoef(base[0].ravel(), aug[0].ravel())[0, 1]
        assert corr > 0.9  # the same anatomy, only contrast / brightness / mild noise
        changed += not np.allclose(base[0], aug[0])
    assert changed == 6
    x = np.linspace(-2, 2, 1000, dtype=np.float32).reshape(10, 10, 10)
    ys = [augment_intensity(x, np.random.default_rng(s)) for s in range(50)]
    slopes = [np.polyfit(x.ravel(), y.ravel(), 1)[0] for y in ys]
    assert 0.74 < min(slopes) and max(slopes) < 1.26 and max(slopes) - min(slopes) > 0.2


def test_intensity_prob_out_of_range_is_refused(tmp_path):
    from napari_msam.training.trainer import TrainConfig, Trainer, TrainingError

    cfg = TrainConfig(data=[str(tmp_path)], out_dir=str(tmp_path / "out"), model_config="msam-tiny",
                      intensity_prob=1.5, epochs=1)
    with pytest.raises(TrainingError, match="intensity"):
        Trainer(cfg).fit()


def test_axial_rotation_turns_image_and_mask_together():
    """rot90_prob=1 gives the plain crop turned in the axial plane (S kept), image and mask alike;
    rot90_prob=0 draws nothing extra from the generator (older runs reproduce)."""
    from napari_msam.training.data import rotate_axial

    img, lab, sp = blob_case(3)
    pre = PreprocessConfig(spacing_mm=(3.0, 3.0, 3.0), normalization="zscore_positive")
    (pc,) = prepare_cases([array_case(img, lab, sp)], pre, img_size=16, max_jitter=2)
    plain = sample_crop(pc, 16, np.random.default_rng(5), preprocess=pre, jitter=2, flips=True)
    off = sample_crop(pc, 16, np.random.default_rng(5), preprocess=pre, jitter=2, flips=True, rot90_prob=0.0)
    assert np.array_equal(plain[0], off[0]) and np.array_equal(plain[1], off[1])
    for seed in range(4):
        base = sample_crop(pc, 16, np.random.default_rng(seed), preprocess=pre, jitter=2, flips=True)
        rot = sample_crop(pc, 16, np.random.default_rng(seed), preprocess=pre, jitter=2, flips=True,
                          rot90_prob=1.0)
        assert np.array_equal(rot[0], np.swapaxes(base[0], 1, 2))
        assert np.array_equal(rot[1], np.swapaxes(base[1], 1, 2))
    a = np.arange(24).reshape(2, 3, 4)
    assert rotate_axial(a, "SPL").shape == (2, 4, 3)
    assert rotate_axial(a, "LPS").shape == (3, 2, 4)  # S last: the first two axes turn


def test_rot90_prob_out_of_range_is_refused(tmp_path):
    from napari_msam.training.trainer import TrainConfig, Trainer, TrainingError

    cfg = TrainConfig(data=[str(tmp_path)], out_dir=str(tmp_path / "out"), model_config="msam-tiny",
                      rot90_prob=-0.1, epochs=1)
    with pytest.raises(TrainingError, match="rot90"):
        Trainer(cfg).fit()


def test_in_plane_rotation_turns_the_centre_cube():
    """rotate_in_plane: 0 degrees is the exact centre cube, 90 degrees equals the axes swap of rot90 (up to
    the turn's sense), a 30 degree turn keeps the S axis and the mask's size; the crop samples real tissue
    in the corners (a wider ROI), and rotate_prob=0 draws nothing extra from the generator."""
    from napari_msam.training.data import rotate_in_plane, rotation_support

    rng = np.random.default_rng(0)
    big, n = 24, 16
    img = rng.random((big, big, big), dtype=np.float32)
    gt = np.zeros((big, big, big), bool)
    gt[6:14, 9:12, 4:20] = True  # a bar along L, off-centre in S and P
    o = (big - n) // 2
    c_img, c_gt = img[o:o + n, o:o + n, o:o + n], gt[o:o + n, o:o + n, o:o + n]
    r_img, r_gt = rotate_in_plane(img, gt, 0.0, n)
    assert np.allclose(r_img, c_img, atol=1e-5) and np.array_equal(r_gt, c_gt)
    r_img, r_gt = rotate_in_plane(img, gt, 90.0, n)
    turned = [np.swapaxes(c_gt, 1, 2)[:, ::-1], np.swapaxes(c_gt, 1, 2)[:, :, ::-1]]
    assert any(np.array_equal(r_gt, t) for t in turned)
    r_img, r_gt = rotate_in_plane(img, gt, 30.0, n)
    assert np.array_equal(r_gt.any(axis=(1, 2)), c_gt.any(axis=(1, 2)))  # S extent unchanged
    assert r_gt.sum() == pytest.approx(c_gt.sum(), rel=0.25)
    assert rotation_support(64, 30.0) >= 64 * (np.cos(np.pi / 6) + np.sin(np.pi / 6))
    assert rotation_support(64, 0.0) == 66

    img3, lab3, sp3 = blob_case(3)
    pre = PreprocessConfig(spacing_mm=(3.0, 3.0, 3.0), normalization="zscore_positive")
    (pc,) = prepare_cases([array_case(img3, lab3, sp3)], pre, img_size=16, max_jitter=2)
    plain = sample_crop(pc, 16, np.random.default_rng(5), preprocess=pre, jitter=2, flips=True)
    off = sample_crop(pc, 16, np.random.default_rng(5), preprocess=pre, jitter=2, flips=True, rotate_prob=0.0,
                      rotate_max_deg=30.0)
    assert np.array_equal(plain[0], off[0]) and np.array_equal(plain[1], off[1])
    turned = sample_crop(pc, 16, np.random.default_rng(5), preprocess=pre, jitter=2, flips=True,
                         rotate_prob=1.0, rotate_max_deg=30.0)
    assert turned[0].shape == (16, 16, 16) and turned[1].dtype == bool
    assert not np.array_equal(turned[0], plain[0])
    assert abs(int(turned[1].sum()) - int(plain[1].sum())) <= 0.3 * plain[1].sum()


def test_rotate_options_out_of_range_are_refused(tmp_path):
    from napari_msam.training.trainer import TrainConfig, Trainer, TrainingError

    for kw, match in (({"rotate_prob": 1.5}, "rotate_prob"), ({"rotate_max_deg": 60.0}, "rotate-deg")):
        cfg = TrainConfig(data=[str(tmp_path)], out_dir=str(tmp_path / "out"), model_config="msam-tiny",
                          epochs=1, **kw)
        with pytest.raises(TrainingError, match=match):
            Trainer(cfg).fit()
