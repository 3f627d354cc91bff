"""ROI zoom: the metadata, the training sampler, zoomed training crops and the Session's zoom-out."""

from __future__ import annotations

import numpy as np
import pytest

from _training_helpers import real_pair
from napari_msam.errors import MSAMError
from napari_msam.model import PreprocessConfig
from napari_msam.model.roi_zoom import RoiZoom
from napari_msam.preprocess import prepare_roi
from napari_msam.session import Session
from napari_msam.training import array_case
from napari_msam.training.data import prepare_cases, sample_crop


def test_metadata_round_trip_levels_and_sampler():
    z = RoiZoom(max=2.0, prob=0.25)
    assert RoiZoom.from_metadata({"roi_zoom": z.to_metadata()}) == z
    assert RoiZoom.from_metadata({}) is None and RoiZoom.from_metadata({"roi_zoom": {"max": 1.0}}) is None
    assert z.steps() == [1.0, 1.5, 2.0] and RoiZoom(max=3.0).steps() == [1.0, 1.5, 2.25, 3.0]
    draws = np.array([z.sample(np.random.default_rng(i)) for i in range(2000)])
    assert draws.min() == 1.0 and draws.max() <= 2.0
    zoomed = draws[draws > 1.0]
    assert 0.2 < len(zoomed) / len(draws) < 0.3  # prob
    assert 1.3 < np.median(zoomed) < 1.5  # log-uniform on [1, 2]: median sqrt(2)


def test_zoomed_crop_is_the_inference_roi_at_the_coarser_spacing():
    """A zoom-2 training crop equals prepare_roi at twice the spacing, and sees the tumour whole."""
    from napari_msam.io import read_volume

    ip, lp = real_pair()
    vol, lab = read_volume(ip), read_volume(lp, is_label=True)
    pre = PreprocessConfig(spacing_mm=vol.spacing, normalization="zscore_positive")
    (pc,) = prepare_cases([array_case(vol.data, lab.data, vol.spacing, modality="mr")], pre, img_size=16,
                          max_jitter=0, max_zoom=2.0)
    img, gt = sample_crop(pc, 16, np.random.default_rng(0), preprocess=pre, zoom=2.0)
    nz = np.argwhere(lab.data > 0)
    lo = np.maximum(nz.min(0) - (16 + 0 + 2), 0)  # margin: half the zoom-2 ROI + jitter + 2
    centre = [int(c + o) for c, o in zip(pc.centre, lo, strict=True)]
    wide = PreprocessConfig(spacing_mm=tuple(2 * s for s in vol.spacing), normalization="zscore_positive")
    ref = prepare_roi(vol.data, vol.spacing, centre, wide, 16, "mr").image[0, 0].numpy()
    np.testing.assert_allclose(img, ref, rtol=1e-5, atol=1e-5)
    _, gt1 = sample_crop(pc, 16, np.random.default_rng(0), preprocess=pre, zoom=1.0)
    # a grid 2x coarser per axis and 2x wider: more of the tumour inside, far less of it cut by the ROI faces
    assert gt.sum() * 8 > gt1.sum()

    def on_faces(m):
        return sum(int(m.take(i, axis=a).sum()) for a in range(3) for i in (0, -1)) / m.sum()

    assert on_faces(gt) < 0.6 * on_faces(gt1)  # measured: 0.19 vs 0.37


def _sphere_session(loaded, make_sphere, **kw):
    gt = make_sphere((48, 48, 48), (24, 24, 24), 12)
    s = Session(loaded, device="cpu", **kw)
    s.set_image(np.where(gt, 1.0, -1.0).astype(np.float32), (1.0, 1.0, 1.0))
    return s, gt


def test_session_zooms_out_on_a_large_object_and_undo_restores(threshold_loaded, make_sphere):
    """16-voxel ROI, 25-voxel sphere: with zoom up to 2 one 32-voxel ROI holds it whole (no extra windows)."""
    threshold_loaded.metadata = {"roi_zoom": RoiZoom(max=2.0).to_metadata()}
    s, gt = _sphere_session(threshold_loaded, make_sphere)
    assert s.zoom_levels == [1.0, 1.5, 2.0]
    s.add_click((24, 24, 24))
    assert s.zoom == 2.0 and s.n_windows == 1
    g = s._windows[0].geometry
    assert g.step == (2.0, 2.0, 2.0)
    dice = 2 * (s.current_mask & gt).sum() / (s.current_mask.sum() + gt.sum())
    assert dice > 0.9
    s.add_click((24, 24, 36), positive=True)  # a later click stays on the zoomed grid
    assert s.zoom == 2.0 and s.n_windows == 1
    s.undo()
    assert s.zoom == 2.0
    s.undo()
    assert s.zoom == 1.0 and s.n_windows == 0 and not s.current_mask.any()
    s.add_click((24, 24, 24))
    s.accept()
    assert s.zoom == 1.0  # every object starts at the checkpoint's own spacing


def test_no_zoom_without_metadata_or_when_turned_off(threshold_loaded, make_sphere):
    s, _ = _sphere_session(threshold_loaded, make_sphere, max_windows=27)
    assert s.zoom_levels == [1.0]
    s.add_click((24, 24, 24))
    assert s.zoom == 1.0 and s.n_windows > 1  # the window-stitching path, as before
    threshold_loaded.metadata = {"roi_zoom": {"max": 2.0}}
    s, _ = _sphere_session(threshold_loaded, make_sphere, max_zoom=1.0, max_windows=27)
    s.add_click((24, 24, 24))
    assert s.zoom == 1.0 and s.n_windows > 1
    with pytest.raises(MSAMError, match="max_zoom"):
        Session(threshold_loaded, device="cpu", max_zoom=0.5)


def test_click_outside_the_roi_zooms_out_instead_of_a_second_window(threshold_loaded, make_sphere):
    """A second click beyond the object's 16-voxel ROI: one 24-voxel ROI (zoom 1.5) holds the object and the
    click, so no second window is stitched; undo goes back to the first ROI."""
    threshold_loaded.metadata = {"roi_zoom": {"max": 2.0}}
    gt = make_sphere((48, 48, 48), (20, 20, 20), 4)
    s = Session(threshold_loaded, device="cpu")
    s.set_image(np.where(gt, 1.0, -1.0).astype(np.float32), (1.0, 1.0, 1.0))
    s.add_click((20, 20, 20))
    assert s.zoom == 1.0 and s.n_windows == 1
    first = s._windows[0].geometry
    s.add_click((20, 20, 33), positive=False)  # outside [12, 28) on the last axis
    assert s.zoom == 1.5 and s.n_windows == 1
    g = s._windows[0].geometry
    assert g.contains((20, 20, 33)) and g.contains((20, 20, 16)) and g.step == (1.5, 1.5, 1.5)
    dice = 2 * (s.current_mask & gt).sum() / (s.current_mask.sum() + gt.sum())
    assert dice > 0.8
    s.undo()
    assert s.zoom == 1.0 and s._windows[0].geometry == first
    off = Session(threshold_loaded, device="cpu", max_zoom=1.0)
    off.set_image(np.where(gt, 1.0, -1.0).astype(np.float32), (1.0, 1.0, 1.0))
    off.add_click((20, 20, 20))
    off.add_click((20, 20, 33), positive=False)
    assert off.zoom == 1.0 and off.n_windows == 2
