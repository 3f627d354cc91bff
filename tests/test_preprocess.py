"""ROI geometry, resampling, normalisation and paste-back (exact round trips)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_msam.errors import ClickOutsideError, MSAMError
from napari_msam.preprocess import (
    array_to_model,
    model_to_array,
    normalize,
    paste_back,
    point_to_model,
    prepare_label_roi,
    prepare_roi,
    resample_logits,
    roi_geometry,
    sample_image,
)


def cfg(spacing=(1.0, 1.0, 1.0), norm="none", axis="SPL", window=(-1000.0, 1000.0)):
    return SimpleNamespace(spacing_mm=spacing, ct_window=window, normalization=norm, axis_order=axis)


def blob(shape, center, radius, spacing=(1, 1, 1)):
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((zz, yy, xx), center, spacing, strict=True))
    return d2 <= radius**2


def test_identity_crop_is_exact():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(40, 41, 42)).astype(np.float32)
    roi = prepare_roi(vol, (1, 1, 1), (20, 20, 21), cfg(), 16)
    assert roi.image.shape == (1, 1, 16, 16, 16)
    np.testing.assert_array_equal(roi.image[0, 0].numpy(), vol[12:28, 12:28, 13:29])
    g = roi.geometry
    assert g.bbox == (slice(12, 28), slice(12, 28), slice(13, 29))
    assert g.to_model((20, 20, 21)) == (8, 8, 8)
    assert g.contains((12, 12, 13)) and not g.contains((28, 20, 21))


def test_padding_outside_volume_is_zero_and_bbox_clipped():
    vol = np.ones((10, 10, 10), np.float32)
    roi = prepare_roi(vol, (1, 1, 1), (0, 5, 9), cfg(), 16)
    img = roi.image[0, 0].numpy()
    assert img[:8].sum() == 0 and np.all(img[8:, 8 - 5 : 8 + 5, : 8 + 1] == 1)
    assert roi.geometry.bbox == (slice(0, 8), slice(0, 10), slice(1, 10))


def test_identity_paste_back_equals_reference_upsample():
    torch.manual_seed(0)
    low = torch.randn(1, 1, 8, 8, 8)
    g = roi_geometry((40, 40, 40), (1, 1, 1), (20, 20, 20), (1, 1, 1), 32)
    pasted = paste_back(low, g, (40, 40, 40))
    up = F.interpolate(low, size=(32, 32, 32), mode="trilinear", align_corners=False)[0, 0].numpy()
    assert pasted.bbox == (slice(4, 36),) * 3
    np.testing.assert_allclose(pasted.logits, up, atol=1e-5)


@pytest.mark.parametrize("axis", ["SPL", "RAS"])
def test_round_trip_blob_identity(axis):
    shape = (30, 34, 38)
    m = blob(shape, (15, 17, 19), 6)
    g = roi_geometry(shape, (1, 1, 1), (15, 17, 19), (1, 1, 1), 24, axis)
    roi, _ = sample_image(np.where(m, 1.0, -1.0), g)
    pasted = paste_back(array_to_model(roi, axis), g)
    out = np.zeros(shape, bool)
    out[pasted.bbox] = pasted.mask
    np.testing.assert_array_equal(out, m)


def test_round_trip_blob_anisotropic():
    """Native 1x1x3 mm, model 2 mm: down- then up-sampling keeps the blob up to its boundary voxels."""
    shape, sp = (30, 80, 80), (3.0, 1.0, 1.0)
    m = blob(shape, (15, 40, 40), 20.0, sp)
    g = roi_geometry(shape, sp, (15, 40, 40), (2, 2, 2), 48)
    roi, _ = sample_image(np.where(m, 1.0, -1.0), g)
    pasted = paste_back(roi, g)
    out = np.zeros(shape, bool)
    out[pasted.bbox] = pasted.mask
    inter = (out & m).sum()
    assert 2 * inter / (out.sum() + m.sum()) > 0.97
    from scipy import ndimage

    boundary = m ^ ndimage.binary_erosion(m)
    boundary |= ndimage.binary_dilation(m) ^ m
    assert not np.any((out ^ m) & ~boundary)


def test_axis_order_ras_roundtrip_and_points():
    t = torch.arange(4 * 5 * 6).reshape(4, 5, 6)
    r = array_to_model(t, "RAS")
    assert r.shape == (6, 5, 4)
    assert torch.equal(model_to_array(r, "RAS"), t)
    s = 8
    g = torch.arange(s**3).reshape(s, s, s)
    gr = array_to_model(g, "RAS")
    p = (1, 2, 3)
    assert gr[point_to_model(p, s, "RAS")] == g[p]


def test_ct_window_and_normalisations():
    vol = np.full((20, 20, 20), -3000.0, np.float32)
    vol[5:15, 5:15, 5:15] = 2000.0
    r = prepare_roi(vol, (1, 1, 1), (10, 10, 10), cfg(norm="none"), 16, modality="ct")
    assert r.image.min() == -1000 and r.image.max() == 1000
    x = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0])
    zp = normalize(x, "zscore_positive")
    np.testing.assert_allclose(zp[2:].numpy(), [-1.0, 0.0, 1.0], atol=1e-6)
    zr = normalize(x, "zscore_roi")
    assert abs(float(zr.mean())) < 1e-6 and abs(float(zr.std()) - 1) < 1e-6
    const = normalize(torch.zeros(10), "zscore_positive")
    assert torch.all(torch.isfinite(const))
    with pytest.raises(MSAMError, match="normalization"):
        normalize(x, "minmax")


def test_label_roi_nearest_and_resample_logits_shift():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[8:12, 8:12, 8:12] = 3
    g = roi_geometry(lab.shape, (1, 1, 1), (10, 10, 10), (1, 1, 1), 16)
    t = prepare_label_roi(lab, g)
    assert t.shape == (1, 1, 16, 16, 16) and t.dtype == torch.uint8 and int((t == 3).sum()) == 64
    g2 = roi_geometry(lab.shape, (1, 1, 1), (12, 10, 10), (1, 1, 1), 16)
    low = torch.randn(1, 1, 16, 16, 16)
    moved = resample_logits(low, g, g2, fill=-7.0)
    np.testing.assert_allclose(moved[0, 0, :14].numpy(), low[0, 0, 2:].numpy(), atol=1e-6)
    assert torch.all(moved[0, 0, 14:] == -7.0)


def test_click_outside_volume_raises():
    with pytest.raises(ClickOutsideError, match="outside"):
        roi_geometry((10, 10, 10), (1, 1, 1), (10, 0, 0), (1, 1, 1), 8)


def test_partial_paste_gives_the_same_mask():
    torch.manual_seed(1)
    low = torch.full((1, 1, 16, 16, 16), -3.0)
    low[0, 0, 5:8, 6:9, 4:10] = torch.randn(3, 3, 6) + 1.0
    g = roi_geometry((50, 70, 60), (3.0, 0.9, 1.1), (20, 30, 25), (2.0, 2.0, 2.0), 32, "RAS")
    a, b = paste_back(low, g, full=True), paste_back(low, g, full=False)
    assert b.logits.size < a.logits.size / 10
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.mask.any()
    none = paste_back(torch.full((1, 1, 8, 8, 8), -1.0), g, full=False)
    assert none.mask.shape == a.mask.shape and not none.mask.any()


def test_mask_only_paste_matches_the_float_paste():
    """``mask_only`` thresholds on the fly; it must give exactly the mask of the float logits."""
    torch.manual_seed(2)
    low = torch.randn(1, 1, 16, 16, 16) - 0.5
    for axis in ("SPL", "RAS"):
        g = roi_geometry((50, 70, 60), (3.0, 0.9, 1.1), (20, 30, 25), (2.0, 2.0, 2.0), 32, axis)
        ref = paste_back(low, g, full=True)
        for full in (True, False):
            m = paste_back(low, g, full=full, mask_only=True)
            assert m.logits.size == 0 and m.region_mask is not None
            np.testing.assert_array_equal(m.mask, ref.mask)


def test_sampling_a_tensor_equals_sampling_the_array():
    """The CPU gather goes through numpy; a torch input (any dtype) must give the same samples."""
    rng = np.random.default_rng(3)
    vol = rng.integers(-1000, 1000, (30, 34, 38)).astype(np.int16)
    g = roi_geometry(vol.shape, (1.0, 0.8, 1.3), (15, 17, 19), (1.5, 1.5, 1.5), 16)
    a, va = sample_image(vol, g)
    b, vb = sample_image(torch.from_numpy(vol), g)
    assert a.dtype == torch.float32 and torch.equal(a, b) and torch.equal(va, vb)
