"""napari reader (and CLI) on NRRD, MetaImage and DICOM input: layer type, scale == spacing, names, series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_msam import cli
from napari_msam._reader import get_reader
from napari_msam.errors import MSAMError
from napari_msam.io import read_volume

nrrd = pytest.importorskip("nrrd")
pytest.importorskip("pydicom")

from test_io_formats import _write_metaimage, _write_series  # noqa: E402  (tests/ is on sys.path)

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _nrrd(path: Path, data: np.ndarray, spacing=(0.5, 0.7, 2.0)) -> Path:
    header = {"space": "left-posterior-superior", "space directions": np.diag(spacing),
              "space origin": np.zeros(3), "kinds": ["domain"] * 3}
    nrrd.write(str(path), data, header, index_order="F")
    return path


def _read(path):
    reader = get_reader(path)
    assert reader is not None, path
    return reader(path)


def test_reader_nrrd_image_and_label(tmp_path):
    img = np.random.default_rng(0).normal(100, 30, (12, 10, 6)).astype(np.float32)
    p = _nrrd(tmp_path / "T1_scan.nrrd", img)
    [(data, kw, kind)] = _read(str(p))
    vol = read_volume(p)
    assert kind == "image" and kw["name"] == "T1_scan"
    assert kw["scale"] == pytest.approx(vol.spacing)
    assert sorted(kw["scale"]) == pytest.approx([0.5, 0.7, 2.0])
    np.testing.assert_array_equal(data, vol.data)
    np.testing.assert_allclose(kw["metadata"]["affine"], vol.affine)
    assert kw["metadata"]["modality"] == "mr"  # from the name (NRRD does not say)
    # a .nhdr named like a mask opens as Labels
    mask = (img > 100).astype(np.uint8)
    nrrd.write(str(tmp_path / "tumour_mask.nhdr"), mask, {"spacings": [1.0, 1.0, 3.0]}, index_order="F")
    [(mdata, mkw, mkind)] = _read(str(tmp_path / "tumour_mask.nhdr"))
    assert mkind == "labels" and mkw["name"] == "tumour_mask" and mdata.dtype.kind in "iu"
    assert sorted(mkw["scale"]) == pytest.approx([1.0, 1.0, 3.0])
    assert int(mdata.sum()) == int(mask.sum())


def test_reader_metaimage(tmp_path):
    data = np.arange(4 * 3 * 2, dtype=np.int16).reshape((4, 3, 2), order="F") * 50 - 1000
    p = tmp_path / "vol.mha"
    _write_metaimage(p, data)
    [(arr, kw, kind)] = _read(str(p))
    vol = read_volume(p)
    assert kind == "image" and kw["name"] == "vol"
    assert kw["scale"] == pytest.approx(vol.spacing)
    np.testing.assert_array_equal(arr, vol.data)


def test_reader_dicom_folder_and_files(tmp_path):
    folder = tmp_path / "patient7_ct"
    hu = np.random.default_rng(1).integers(-1000, 1500, size=(6, 5, 4)).astype(np.int16)
    _write_series(folder, hu, iop=AXIAL, ipp0=[0, 0, 0], step=[0, 0, 2.5], pixel_spacing=[0.8, 0.6])
    vol = read_volume(folder)
    [(data, kw, kind)] = _read(str(folder))
    assert kind == "image" and kw["name"] == "patient7_ct"
    assert kw["scale"] == pytest.approx(vol.spacing)
    assert sorted(kw["scale"]) == pytest.approx([0.6, 0.8, 2.5])
    assert kw["metadata"]["modality"] == "ct"  # from the DICOM header, not the name
    np.testing.assert_array_equal(data, vol.data)
    # napari passes every selected .dcm file: one layer for the series, not one per file
    files = sorted(str(f) for f in folder.iterdir())
    layers = _read(files)
    assert len(layers) == 1 and layers[0][1]["name"] == "patient7_ct"
    np.testing.assert_array_equal(layers[0][0], vol.data)
    [(one, _, _)] = _read(files[0])
    np.testing.assert_array_equal(one, vol.data)


def test_reader_dicom_files_of_two_series_in_one_folder(tmp_path):
    folder = tmp_path / "study"
    uid_a, _ = _write_series(folder, np.full((4, 4, 3), 10, np.int16), iop=AXIAL, ipp0=[0, 0, 0],
                             step=[0, 0, 2.0], pixel_spacing=[1, 1], number=1, description="arterial")
    uid_b, _ = _write_series(folder, np.full((5, 3, 4), 20, np.int16), iop=AXIAL, ipp0=[0, 0, 0],
                             step=[0, 0, 1.5], pixel_spacing=[0.5, 0.5], number=2, description="venous", seed=3)
    with pytest.raises(MSAMError, match="2 DICOM series"):
        _read(str(folder))
    b_files = [str(f) for f in sorted(folder.iterdir()) if f.name.startswith(uid_b[-6:])]
    [(data, kw, kind)] = _read(b_files)
    assert kind == "image"  # a DICOM image series stays an Image even with one value (no label guessing)
    assert data.shape == read_volume(folder, series=uid_b).data.shape and np.all(data == 20)
    layers = _read([str(f) for f in sorted(folder.iterdir())])
    assert sorted(lay[1]["name"] for lay in layers) == ["study arterial", "study venous"]


def test_reader_leaves_other_folders_alone(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    _nrrd(tmp_path / "notes" / "b.nrrd", np.zeros((2, 2, 2), np.uint8))  # a volume inside is not DICOM
    assert get_reader(str(tmp_path / "notes")) is None
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "empty")) is None
    for name in ("a.nrrd", "a.NHDR", "a.mha", "a.mhd", "a.dcm", "a.IMA", "a.dicom"):
        assert get_reader(str(tmp_path / name)) is not None, name


def test_cli_segment_series_option(tmp_path, threshold_loaded, monkeypatch, make_sphere):
    folder = tmp_path / "study"
    ball = make_sphere((12, 10, 8), (6, 5, 4), 3, spacing=(1, 1, 1))
    hu = np.where(ball, 500, -500).astype(np.int16)
    _write_series(folder, np.full((12, 10, 8), -500, np.int16), iop=AXIAL, ipp0=[0, 0, 0], step=[0, 0, 1.0],
                  pixel_spacing=[1, 1], number=1, description="blank")
    uid, _ = _write_series(folder, hu, iop=AXIAL, ipp0=[0, 0, 0], step=[0, 0, 1.0], pixel_spacing=[1, 1],
                           number=2, description="ball", seed=5)
    monkeypatch.setattr(cli, "_load_model", lambda args: threshold_loaded)
    out = tmp_path / "m.nii.gz"
    argv = ["segment", str(folder), "-o", str(out), "--point", "6,5,4", "--device", "cpu"]
    assert cli.main(argv) == 2  # several series, no choice
    for choice in (uid, "1"):
        assert cli.main([*argv, "--series", choice, "--overwrite"]) == 0
        m = np.asanyarray(nib.load(str(out)).dataobj) > 0
        np.testing.assert_array_equal(m, ball)  # (column, row, slice) = the series' file index order
