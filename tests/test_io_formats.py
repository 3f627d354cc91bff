"""NRRD, MetaImage and DICOM input: data, spacing and RAS affine must match a NIfTI of the same geometry.

Each volume is written with a known LPS geometry (as those formats store it), and the same array with the
equivalent RAS affine is written as NIfTI; ``read_volume`` must give identical outputs for both.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_msam.errors import InvalidVolumeError, MSAMError
from napari_msam.io import can_read, list_dicom_series, read_volume

nrrd = pytest.importorskip("nrrd")
pydicom = pytest.importorskip("pydicom")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# An oblique, axis-permuting LPS direction matrix (columns = directions of array axes i, j, k).
DIRS = np.array([[0.0, -1.0, 0.0], [0.6, 0.0, 0.8], [0.8, 0.0, -0.6]])
SPACING = (0.5, 0.7, 2.0)
ORIGIN = (1.0, 2.0, 3.0)


def _lps_to_ras_affine(dirs=DIRS, spacing=SPACING, origin=ORIGIN) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(dirs) @ np.diag(spacing)
    aff[:3, 3] = origin
    return LPS_TO_RAS @ aff


def _data(shape=(4, 3, 2), dtype=np.int16) -> np.ndarray:
    """An (i, j, k) array whose values all differ, so any axis mix-up shows."""
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape, order="F") - 5


def _nifti_reference(tmp_path: Path, data: np.ndarray, ras_affine: np.ndarray):
    p = tmp_path / "reference.nii.gz"
    nib.save(nib.Nifti1Image(data, ras_affine), str(p))
    return read_volume(p)


def _assert_same(vol, ref) -> None:
    np.testing.assert_array_equal(vol.data, ref.data)
    assert vol.data.dtype == ref.data.dtype
    assert vol.spacing == pytest.approx(ref.spacing)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-9)
    np.testing.assert_array_equal(vol.ornt, ref.ornt)
    assert vol.original_shape == ref.original_shape
    np.testing.assert_allclose(vol.original_affine, ref.original_affine, atol=1e-9)
    assert nib.aff2axcodes(vol.affine) == ("S", "P", "L")


# --------------------------------------------------------------------------------------------- NRRD


def test_nrrd_lps_geometry_matches_nifti(tmp_path):
    data = _data()
    header = {
        "space": "left-posterior-superior",
        "space directions": (DIRS @ np.diag(SPACING)).T,  # one row per array axis
        "space origin": np.array(ORIGIN),
        "kinds": ["domain"] * 3,
    }
    nrrd.write(str(tmp_path / "a.nrrd"), data, header, index_order="F")
    vol = read_volume(tmp_path / "a.nrrd")
    ref = _nifti_reference(tmp_path, data, _lps_to_ras_affine())
    _assert_same(vol, ref)
    # ITK (SimpleITK) puts file index (1, 0, 0) of this geometry at LPS (1.0, 2.3, 3.4) = RAS (-1, -2.3, 3.4)
    idx = vol.original_index_to_array((1, 0, 0))
    np.testing.assert_allclose((vol.affine @ [*idx, 1])[:3], [-1.0, -2.3, 3.4], atol=1e-9)
    assert vol.data[idx] == data[1, 0, 0]
    np.testing.assert_array_equal(vol.to_original(vol.data), data)
    # detached header (.nhdr + raw file) and gzip encoding read the same
    nrrd.write(str(tmp_path / "b.nhdr"), data, {**header, "encoding": "gzip"}, index_order="F")
    _assert_same(read_volume(tmp_path / "b.nhdr"), ref)


def test_nrrd_ras_space_no_space_and_channels(tmp_path):
    data = _data(dtype=np.float32)
    ras = _lps_to_ras_affine()
    header = {"space": "right-anterior-superior", "space directions": ras[:3, :3].T, "space origin": ras[:3, 3]}
    nrrd.write(str(tmp_path / "ras.nrrd"), data, header, index_order="F")
    _assert_same(read_volume(tmp_path / "ras.nrrd"), _nifti_reference(tmp_path, data, ras))
    # no space: spacings only, ITK convention (identity directions in LPS), like a TIFF's ZYX order
    nrrd.write(str(tmp_path / "plain.nrrd"), data, {"spacings": [0.5, 0.7, 2.0]}, index_order="F")
    plain = read_volume(tmp_path / "plain.nrrd")
    np.testing.assert_array_equal(plain.data, np.transpose(data, (2, 1, 0)))
    assert plain.spacing == pytest.approx((2.0, 0.7, 0.5))
    # a vector axis (no space direction) is a channel axis
    vec = np.stack([data, data * 10], axis=0)
    header_v = {
        "space": "left-posterior-superior",
        "space directions": np.vstack([[np.nan] * 3, (DIRS @ np.diag(SPACING)).T]),  # NaN row = none
        "space origin": np.array(ORIGIN),
        "kinds": ["vector", "domain", "domain", "domain"],
    }
    nrrd.write(str(tmp_path / "vec.nrrd"), vec, header_v, index_order="F")
    with pytest.raises(InvalidVolumeError, match="channel=0..1"):
        read_volume(tmp_path / "vec.nrrd")
    _assert_same(read_volume(tmp_path / "vec.nrrd", channel=1), _nifti_reference(tmp_path, data * 10, _lps_to_ras_affine()))


# ---------------------------------------------------------------------------------------- MetaImage

_MET = {np.dtype(np.int16): "MET_SHORT", np.dtype(np.uint8): "MET_UCHAR", np.dtype(np.float32): "MET_FLOAT"}


def _write_metaimage(path: Path, data: np.ndarray, *, compressed=False, msb=False, detached=False,
                     dirs=DIRS, spacing=SPACING, origin=ORIGIN) -> None:
    """A MetaImage as ITK writes it: x fastest, TransformMatrix = one axis direction after the other."""
    raw = np.asarray(data, dtype=data.dtype.newbyteorder(">" if msb else "<")).tobytes(order="F")
    if compressed:
        raw = zlib.compress(raw)
    fmt = " ".join
    lines = [
        "ObjectType = Image",
        "NDims = 3",
        "BinaryData = True",
        f"BinaryDataByteOrderMSB = {msb}",
        f"CompressedData = {compressed}",
        *([f"CompressedDataSize = {len(raw)}"] if compressed else []),
        f"TransformMatrix = {fmt(repr(float(v)) for v in np.asarray(dirs).T.ravel())}",
        f"Offset = {fmt(repr(float(v)) for v in origin)}",
        "CenterOfRotation = 0 0 0",
        "AnatomicalOrientation = ILA",
        f"ElementSpacing = {fmt(repr(float(v)) for v in spacing)}",
        f"DimSize = {fmt(str(n) for n in data.shape)}",
        f"ElementType = {_MET[np.dtype(data.dtype)]}",
    ]
    if detached:
        data_name = path.with_suffix(".zraw" if compressed else ".raw").name
        (path.parent / data_name).write_bytes(raw)
        path.write_text("\n".join([*lines, f"ElementDataFile = {data_name}"]) + "\n")
    else:
        path.write_bytes(("\n".join([*lines, "ElementDataFile = LOCAL"]) + "\n").encode() + raw)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("a.mha", {}), ("b.mha", {"compressed": True, "msb": True}), ("c.mhd", {"detached": True}),
     ("d.mhd", {"detached": True, "compressed": True})],
)
def test_metaimage_matches_nifti(tmp_path, name, kwargs):
    data = _data()
    _write_metaimage(tmp_path / name, data, **kwargs)
    vol = read_volume(tmp_path / name)
    _assert_same(vol, _nifti_reference(tmp_path, data, _lps_to_ras_affine()))
    idx = vol.original_index_to_array((1, 0, 0))  # ITK: LPS (1.0, 2.3, 3.4)
    np.testing.assert_allclose((vol.affine @ [*idx, 1])[:3], [-1.0, -2.3, 3.4], atol=1e-9)


def test_metaimage_itk_header_and_errors(tmp_path):
    # header text exactly as SimpleITK 2.5 writes it for this geometry
    itk_header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "CompressedData = False\nTransformMatrix = 0 0.59999999999999998 0.80000000000000004 -1 0 0 0 "
        "0.80000000000000004 -0.59999999999999998\nOffset = 1 2 3\nCenterOfRotation = 0 0 0\n"
        "AnatomicalOrientation = ILA\nElementSpacing = 0.5 0.69999999999999996 2\nDimSize = 4 3 2\n"
        "ElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    zyx = np.arange(24, dtype="<i2").reshape(2, 3, 4)
    (tmp_path / "itk.mha").write_bytes(itk_header.encode() + zyx.tobytes())
    vol = read_volume(tmp_path / "itk.mha")
    np.testing.assert_array_equal(vol.to_original(vol.data), zyx.transpose(2, 1, 0))
    _assert_same(vol, _nifti_reference(tmp_path, zyx.transpose(2, 1, 0), _lps_to_ras_affine()))

    (tmp_path / "short.mha").write_bytes(itk_header.encode() + zyx.tobytes()[:-2])
    with pytest.raises(MSAMError, match="truncated"):
        read_volume(tmp_path / "short.mha")
    (tmp_path / "bad.mha").write_bytes(itk_header.replace("MET_SHORT", "MET_STRING").encode() + zyx.tobytes())
    with pytest.raises(MSAMError, match="ElementType"):
        read_volume(tmp_path / "bad.mha")
    (tmp_path / "2d.mha").write_bytes(itk_header.replace("NDims = 3", "NDims = 2").encode())
    with pytest.raises(InvalidVolumeError, match="NDims = 2"):
        read_volume(tmp_path / "2d.mha")
    (tmp_path / "junk.mha").write_bytes(b"\x00\x01 not a header\n")
    with pytest.raises(MSAMError, match="not a MetaImage header"):
        read_volume(tmp_path / "junk.mha")
    (tmp_path / "nodata.mhd").write_text(itk_header.replace("LOCAL", "missing.raw"))
    with pytest.raises(MSAMError, match="missing.raw"):
        read_volume(tmp_path / "nodata.mhd")


# -------------------------------------------------------------------------------------------- DICOM

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _save_dicom(ds, path: Path) -> None:
    try:  # pydicom >= 3
        ds.save_as(str(path), enforce_file_format=True)
    except TypeError:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)


def _write_series(folder: Path, hu: np.ndarray, *, iop, ipp0, step, pixel_spacing, slope=1.0, intercept=-1024.0,
                  number=1, description="CT test", seed=0) -> tuple[str, np.ndarray]:
    """Slices of ``hu`` (indexed column, row, slice) as CT files in shuffled order; returns (uid, RAS affine)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(exist_ok=True)
    uid, study = generate_uid(), generate_uid()
    row_dir, col_dir = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    cols, rows, n = hu.shape
    stored = np.round((hu - intercept) / slope).astype(np.uint16)
    rng = np.random.default_rng(seed)
    for k in rng.permutation(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, uid
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "CT", description, number, int(k) + 1
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(ipp0, float) + k * np.asarray(step, float)]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.SliceThickness = float(np.linalg.norm(step))
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows, cols) on disk
        _save_dicom(ds, folder / f"{uid[-6:]}_{rng.integers(1 << 30):010d}.dcm")
    aff = np.eye(4)
    aff[:3, 0] = row_dir * pixel_spacing[1]
    aff[:3, 1] = col_dir * pixel_spacing[0]
    aff[:3, 2] = step
    aff[:3, 3] = ipp0
    return uid, LPS_TO_RAS @ aff


def _hu(shape=(6, 5, 4), seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 2000, size=shape).astype(np.int16)


def test_dicom_series_matches_nifti(tmp_path):
    hu = _hu()
    c, s = np.cos(0.3), np.sin(0.3)
    iop = [c, s, 0.0, 0.0, 0.0, -1.0]  # oblique coronal; normal = (-s, c, 0)
    step = 2.5 * np.array([-s, c, 0.0])
    _, ras = _write_series(tmp_path / "ct", hu, iop=iop, ipp0=[-50.0, 20.0, 100.0], step=step, pixel_spacing=[0.8, 0.6])
    vol = read_volume(tmp_path / "ct")
    _assert_same(vol, _nifti_reference(tmp_path, hu, ras))
    assert vol.data.dtype == np.int16
    assert vol.modality == "ct"
    assert sorted(vol.spacing) == pytest.approx(sorted((0.8, 0.6, 2.5)))
    np.testing.assert_array_equal(vol.to_original(vol.data), hu)  # (column, row, slice) file order
    # a file of the series reads the same volume
    one_file = next((tmp_path / "ct").iterdir())
    assert can_read(one_file) and can_read(tmp_path / "ct")
    np.testing.assert_array_equal(read_volume(one_file).data, vol.data)


def test_dicom_float_rescale_and_axial(tmp_path):
    hu = _hu((5, 4, 3)).astype(np.float32) / 2.0
    iop = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # axial: normal +z (LPS superior)
    _, ras = _write_series(tmp_path / "ct", hu, iop=iop, ipp0=[10.0, 20.0, -30.0], step=[0, 0, 3.0],
                           pixel_spacing=[0.9, 0.7], slope=0.5, intercept=-1000.0)
    vol = read_volume(tmp_path / "ct")
    assert vol.data.dtype == np.float32
    _assert_same(vol, _nifti_reference(tmp_path, hu, ras))
    assert vol.spacing == pytest.approx((3.0, 0.9, 0.7))  # (S, P, L): slices, rows, columns


def test_dicom_several_series_need_a_choice(tmp_path):
    folder = tmp_path / "study"
    iop = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    hu_a, hu_b = _hu((4, 4, 3), seed=2), _hu((5, 3, 4), seed=3)
    uid_a, ras_a = _write_series(folder, hu_a, iop=iop, ipp0=[0, 0, 0], step=[0, 0, 2.0], pixel_spacing=[1, 1],
                                 number=2, description="arterial")
    uid_b, ras_b = _write_series(folder, hu_b, iop=iop, ipp0=[5, 5, 5], step=[0, 0, 1.5], pixel_spacing=[0.5, 0.5],
                                 number=7, description="venous", seed=4)
    (folder / "notes.txt").write_text("not DICOM")
    with pytest.raises(MSAMError, match="2 DICOM series") as err:
        read_volume(folder)
    msg = str(err.value)
    assert uid_a in msg and uid_b in msg and "arterial" in msg and "3 files" in msg and "4 files" in msg
    assert [s.uid for s in list_dicom_series(folder)] == [uid_a, uid_b]
    _assert_same(read_volume(folder, series=uid_b), _nifti_reference(tmp_path, hu_b, ras_b))
    _assert_same(read_volume(folder, series=0), _nifti_reference(tmp_path, hu_a, ras_a))
    a_file = next(f for f in folder.iterdir() if f.name.startswith(uid_a[-6:]))
    np.testing.assert_array_equal(read_volume(a_file).data, read_volume(folder, series=uid_a).data)
    with pytest.raises(MSAMError, match="no DICOM series"):
        read_volume(folder, series="1.2.3")
    with pytest.raises(MSAMError, match="out of range"):
        read_volume(folder, series=5)


def test_dicom_bad_series_errors(tmp_path):
    iop = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    folder = tmp_path / "gap"
    _write_series(folder, _hu((4, 4, 5)), iop=iop, ipp0=[0, 0, 0], step=[0, 0, 2.0], pixel_spacing=[1, 1])
    files = sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(str(f)).ImagePositionPatient[2]))
    files[2].unlink()
    with pytest.raises(MSAMError, match="not evenly spaced"):
        read_volume(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(MSAMError, match="no DICOM image files"):
        read_volume(empty)
    assert not can_read(empty)
    with pytest.raises(MSAMError, match="series= only applies"):
        read_volume(_nrrd_file(tmp_path), series=0)


def _nrrd_file(tmp_path: Path) -> Path:
    p = tmp_path / "small.nrrd"
    nrrd.write(str(p), _data(), {"spacings": [1, 1, 1]}, index_order="F")
    return p


def test_missing_optional_libraries_give_install_hint(tmp_path, monkeypatch):
    p = _nrrd_file(tmp_path)
    folder = tmp_path / "ct"
    _write_series(folder, _hu((3, 3, 2)), iop=[1, 0, 0, 0, 1, 0], ipp0=[0, 0, 0], step=[0, 0, 1.0],
                  pixel_spacing=[1, 1])
    monkeypatch.setitem(sys.modules, "nrrd", None)  # makes `import nrrd` raise ImportError
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(MSAMError, match=r"pip install napari-msam\[formats\]"):
        read_volume(p)
    with pytest.raises(MSAMError, match=r"pydicom .*napari-msam\[formats\]"):
        read_volume(folder)
