"""npe2 reader / writer: spacing -> scale, affine kept, labels detected, round trips exact."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_msam._reader import data_looks_like_label, get_reader, guess_modality, name_looks_like_label
from napari_msam._writer import write_labels
from napari_msam.errors import MSAMError
from napari_msam.io import read_volume


def _lps_nifti(path, data, zooms=(0.8, 0.9, 3.0)):
    """A NIfTI stored L-P-S like the STS files, with an oblique-free affine and an offset."""
    aff = np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])
    aff[:3, 3] = (12.5, -40.0, 7.0)
    nib.save(nib.Nifti1Image(data, aff), str(path))
    return aff


def test_reader_claims_only_volumes(tmp_path):
    for name in ("a.nii", "a.nii.gz", "a.tif", "a.tiff", "A.NII.GZ"):
        assert get_reader(str(tmp_path / name)) is not None, name
    for name in ("a.gz", "a.tar.gz", "a.png", "a.csv", "nii.gz.txt"):
        assert get_reader(str(tmp_path / name)) is None, name
    assert get_reader([str(tmp_path / "a.nii.gz"), str(tmp_path / "b.txt")]) is None


def test_manifest_reader_patterns_do_not_claim_every_gz():
    import importlib.resources as res

    from npe2 import PluginManifest

    from napari_msam import __name__ as pkg  # noqa: F401

    mf = PluginManifest.from_file(str(res.files("napari_msam") / "napari.yaml"))
    patterns = [p for r in mf.contributions.readers for p in r.filename_patterns]
    assert "*.gz" not in patterns and "*" not in patterns
    assert {"*.nii", "*.nii.gz", "*.tif", "*.tiff"} <= set(patterns)
    widgets = {w.display_name: w.command for w in mf.contributions.widgets}
    assert widgets["Segment (M-SAM)"] == "napari-msam.segment_widget"
    assert widgets["Train (M-SAM)"] == "napari-msam.train_widget"
    cmds = {c.id: c.python_name for c in mf.contributions.commands}
    assert cmds["napari-msam.train_widget"] == "napari_msam.widgets.train:TrainWidget"


def test_nifti_image_read_keeps_spacing_and_affine(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(12, 10, 6)).astype(np.float32) * 100
    _lps_nifti(tmp_path / "MR_T1_image.nii.gz", data)
    layers = get_reader(str(tmp_path / "MR_T1_image.nii.gz"))(str(tmp_path / "MR_T1_image.nii.gz"))
    assert len(layers) == 1
    arr, kw, kind = layers[0]
    vol = read_volume(tmp_path / "MR_T1_image.nii.gz")
    assert kind == "image"
    np.testing.assert_array_equal(arr, vol.data)
    assert arr.shape == (6, 10, 12)  # reoriented to S, P, L
    np.testing.assert_allclose(kw["scale"], (3.0, 0.9, 0.8), rtol=1e-6)
    np.testing.assert_allclose(kw["metadata"]["affine"], vol.affine)
    assert kw["metadata"]["modality"] == "mr"
    assert kw["name"] == "MR_T1_image"


def test_mask_named_file_opens_as_labels_and_round_trips(tmp_path):
    mask = np.zeros((12, 10, 6), np.uint8)
    mask[3:7, 2:5, 1:4] = 1
    mask[8, 8, 5] = 2
    aff = _lps_nifti(tmp_path / "case_mask.nii.gz", mask)
    (arr, kw, kind), = get_reader(str(tmp_path / "case_mask.nii.gz"))(str(tmp_path / "case_mask.nii.gz"))
    assert kind == "labels" and arr.dtype.kind in "iu"
    out = tmp_path / "out.nii.gz"
    written = write_labels(str(out), arr, {"scale": kw["scale"], "metadata": kw["metadata"]})
    assert written == [str(out)]
    img = nib.load(str(out))
    # back on the source file's own grid: same array order, same affine
    np.testing.assert_array_equal(np.asarray(img.dataobj), mask)
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    # and reading it again gives the same layer
    (arr2, kw2, kind2), = get_reader(str(out))(str(out))
    np.testing.assert_array_equal(arr2, arr)
    np.testing.assert_allclose(kw2["metadata"]["affine"], kw["metadata"]["affine"], atol=1e-5)
    np.testing.assert_allclose(kw2["scale"], kw["scale"], rtol=1e-6)


def test_small_integer_image_opens_as_labels(tmp_path):
    lab = np.zeros((8, 9, 10), np.int16)
    lab[2:5, 2:5, 2:5] = 3
    _lps_nifti(tmp_path / "objects.nii", lab)
    (_, _, kind), = get_reader(str(tmp_path / "objects.nii"))(str(tmp_path / "objects.nii"))
    assert kind == "labels"
    ct = np.random.default_rng(0).integers(-1000, 1500, (8, 9, 10)).astype(np.int16)
    _lps_nifti(tmp_path / "scan.nii", ct)
    (_, kw, kind), = get_reader(str(tmp_path / "scan.nii"))(str(tmp_path / "scan.nii"))
    assert kind == "image" and kw["metadata"]["modality"] == "ct"


def test_tiff_round_trip_keeps_spacing(tmp_path):
    lab = np.zeros((5, 16, 12), np.uint16)
    lab[1:4, 3:9, 2:7] = 7
    out = tmp_path / "seg.tif"
    write_labels(str(out), lab, {"scale": (2.5, 0.5, 0.25), "metadata": {}})
    (arr, kw, kind), = get_reader(str(out))(str(out))
    assert kind == "labels"
    np.testing.assert_array_equal(arr, lab)
    np.testing.assert_allclose(kw["scale"], (2.5, 0.5, 0.25), rtol=1e-5)


def test_writer_without_metadata_uses_scale_and_adds_suffix(tmp_path):
    lab = np.zeros((4, 5, 6), np.uint8)
    lab[1, 2, 3] = 1
    written = write_labels(str(tmp_path / "plain"), lab, {"scale": (3.0, 1.0, 0.5), "metadata": {}})
    assert written[0].endswith(".nii.gz")
    img = nib.load(written[0])
    np.testing.assert_allclose(np.diag(img.affine)[:3], (3.0, 1.0, 0.5))
    np.testing.assert_array_equal(np.asarray(img.dataobj), lab)


def test_writer_rejects_bad_layers(tmp_path):
    with pytest.raises(MSAMError, match="3-D"):
        write_labels(str(tmp_path / "x.nii.gz"), np.zeros((4, 4), np.uint8), {})
    with pytest.raises(MSAMError, match="integers"):
        write_labels(str(tmp_path / "x.nii.gz"), np.zeros((4, 4, 4), np.float32), {})


def test_unreadable_file_gives_readable_error(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(MSAMError, match="broken.nii.gz"):
        get_reader(str(bad))(str(bad))


def test_label_and_modality_heuristics():
    assert name_looks_like_label("CT_mask.nii.gz") and name_looks_like_label("liver_seg.nii")
    assert name_looks_like_label("labels.tif") and name_looks_like_label("case_gt.nii.gz")
    assert not name_looks_like_label("MR_T1_image.nii.gz") and not name_looks_like_label("segundo_scan_image")
    assert data_looks_like_label(np.array([[[0, 1], [2, 1]]], np.uint8))
    assert not data_looks_like_label(np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10))
    assert guess_modality("STS_024 CT") == "ct" and guess_modality("patient_MR_T1") == "mr"
    assert guess_modality("scan", np.full((4, 4, 4), -1000.0, np.float32) + np.eye(4)[None] * 1500) == "ct"
    # neither CT-like nor named: this plugin is for CT and MRI, so MR
    assert guess_modality("scan", np.ones((4, 4, 4), np.float32)) == "mr"
    assert guess_modality("patient_PET_suv", np.ones((4, 4, 4), np.float32)) == "other"


def test_napari_open_and_save_through_the_manifest(make_napari_viewer, tmp_path):
    """napari itself picks our reader for .nii.gz and our writer for a Labels layer saved as .nii.gz."""
    mask = np.zeros((12, 10, 6), np.uint8)
    mask[3:7, 2:5, 1:4] = 1
    aff = _lps_nifti(tmp_path / "tumour_mask.nii.gz", mask)
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "tumour_mask.nii.gz"), plugin="napari-msam")
    assert type(layers[0]).__name__ == "Labels"
    np.testing.assert_allclose(layers[0].scale, (3.0, 0.9, 0.8), rtol=1e-6)
    layers[0].data[1, 2, 3] = 2
    out = tmp_path / "edited.nii.gz"
    written = layers[0].save(str(out), plugin="napari-msam")
    assert written == [str(out)]
    img = nib.load(str(out))
    expected = mask.copy()
    expected[3, 2, 1] = 2  # the file is L,P,S: array (S,P,L) index (1,2,3) is file index (3,2,1)
    np.testing.assert_array_equal(np.asarray(img.dataobj), expected)
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
