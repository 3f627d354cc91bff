"""Reading (reorientation, spacing, channels, errors) and writing masks."""

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_msam.errors import InvalidVolumeError, MSAMError
from napari_msam.io import read_volume, write_mask

LPS_AFFINE = np.array([[-0.9, 0, 0, 10.0], [0, -0.8, 0, 20.0], [0, 0, 3.0, -5.0], [0, 0, 0, 1]])


def _save(tmp_path, data, affine=LPS_AFFINE, name="img.nii.gz"):
    p = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), str(p))
    return p


def test_nifti_reoriented_to_spl_with_world_coordinates_kept(tmp_path):
    orig = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    vol = read_volume(_save(tmp_path, orig))
    assert nib.aff2axcodes(vol.affine) == ("S", "P", "L")
    assert vol.data.shape == (7, 6, 5)
    assert vol.spacing == pytest.approx((3.0, 0.8, 0.9))
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = tuple(int(rng.integers(n)) for n in vol.data.shape)
        oidx = np.unravel_index(int(vol.data[idx]), orig.shape)
        w_new = vol.affine @ np.array([*idx, 1.0])
        w_old = LPS_AFFINE @ np.array([*oidx, 1.0])
        np.testing.assert_allclose(w_new, w_old, atol=1e-9)
        assert vol.original_index_to_array(tuple(int(i) for i in oidx)) == idx
    np.testing.assert_array_equal(vol.to_original(vol.data), orig)
    assert vol.original_shape == (5, 6, 7)
    with pytest.raises(MSAMError, match="outside"):
        vol.original_index_to_array((5, 0, 0))


def test_sts_crop_reads(sts_paths):
    img = read_volume(sts_paths[0])
    lab = read_volume(sts_paths[1], is_label=True)
    assert img.data.shape == lab.data.shape == (33, 63, 58)
    assert img.spacing == pytest.approx((3.26995, 0.976562, 0.976562), rel=1e-5)
    assert int((lab.data > 0).sum()) == 24892
    np.testing.assert_allclose(img.affine, lab.affine)


def test_write_mask_nifti_round_trip(tmp_path):
    orig = np.zeros((5, 6, 7), np.float32)
    vol = read_volume(_save(tmp_path, orig))
    mask = np.zeros(vol.data.shape, bool)
    mask[1:3, 2:4, 0:2] = True
    out = write_mask(tmp_path / "m.nii.gz", mask, vol.affine)
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_allclose(back.affine, vol.affine)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), mask.astype(np.uint8))
    # in the original orientation with the original affine: same world positions
    write_mask(tmp_path / "o.nii.gz", vol.to_original(mask), vol.original_affine)
    again = read_volume(tmp_path / "o.nii.gz", is_label=True)
    np.testing.assert_array_equal(again.data > 0, mask)
    big = np.zeros((3, 3, 3), np.int32)
    big[0, 0, 0] = 300
    write_mask(tmp_path / "b.nii", big, np.eye(4))
    assert nib.load(str(tmp_path / "b.nii")).get_data_dtype() == np.uint16
    with pytest.raises(MSAMError, match="0..65535"):
        write_mask(tmp_path / "c.nii.gz", big - 301, np.eye(4))


def test_tiff_spacing_and_round_trip(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    p = tmp_path / "s.tif"
    tifffile.imwrite(p, data, imagej=True, resolution=(1 / 0.5, 1 / 0.25), metadata={"spacing": 2.0, "axes": "ZYX"})
    vol = read_volume(p)
    np.testing.assert_array_equal(vol.data, data)
    assert vol.spacing == pytest.approx((2.0, 0.25, 0.5))
    write_mask(tmp_path / "m.tif", data > 50, spacing=vol.spacing)
    back = read_volume(tmp_path / "m.tif", is_label=True)
    np.testing.assert_array_equal(back.data, (data > 50).astype(np.uint8))
    assert back.spacing == pytest.approx(vol.spacing)


def test_multichannel_needs_channel(tmp_path):
    data = np.random.default_rng(0).random((4, 5, 6, 2)).astype(np.float32)
    p = _save(tmp_path, data, np.eye(4))
    with pytest.raises(InvalidVolumeError, match=r"\(4, 5, 6, 2\).*channel="):
        read_volume(p)
    vol = read_volume(p, channel=1)
    np.testing.assert_allclose(vol.to_original(vol.data), data[..., 1])
    with pytest.raises(InvalidVolumeError, match="out of range"):
        read_volume(p, channel=2)
    single = read_volume(_save(tmp_path, data[..., :1], np.eye(4), "one.nii.gz"))
    assert single.data.ndim == 3


def test_bad_files(tmp_path):
    with pytest.raises(MSAMError, match="no such file") as e:
        read_volume(tmp_path / "missing.nii.gz")
    assert "missing.nii.gz" in str(e.value)
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    with pytest.raises(MSAMError, match="corrupt.nii.gz: cannot read"):
        read_volume(bad)
    badtif = tmp_path / "corrupt.tif"
    badtif.write_bytes(b"II*\x00garbage")
    with pytest.raises(MSAMError, match="cannot read"):
        read_volume(badtif)
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(MSAMError, match="unsupported"):
        read_volume(tmp_path / "x.png")
    with pytest.raises(InvalidVolumeError, match="3-D"):
        read_volume(_save(tmp_path, np.zeros((4, 5), np.float32), np.eye(4), "flat.nii.gz"))
    with pytest.raises(InvalidVolumeError, match="integer"):
        read_volume(_save(tmp_path, np.full((3, 3, 3), 0.5, np.float32), np.eye(4), "lab.nii.gz"), is_label=True)
    with pytest.raises(MSAMError, match="3-D"):
        write_mask(tmp_path / "m.nii.gz", np.zeros((3, 3)), np.eye(4))
    with pytest.raises(MSAMError, match="does not exist"):
        write_mask(tmp_path / "nofolder" / "m.nii.gz", np.zeros((3, 3, 3), bool), np.eye(4))
