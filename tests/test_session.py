"""Session: clicks, caching, undo, reset/accept, large objects, errors."""

import numpy as np
import pytest
import torch

from napari_msam.errors import ClickOutsideError, InvalidVolumeError, MSAMError
from napari_msam.session import Session


def test_click_result_and_cached_embedding(tiny_loaded, blob_case):
    img, gt = blob_case
    s = Session(tiny_loaded, device="cpu", return_probabilities=True)
    s.set_image(img, (1.0, 1.0, 1.0))
    r1 = s.add_click((20, 19, 21), True)
    assert r1.object_id == 1 and set(r1.timings) >= {"encode", "refine", "paste", "total"}
    assert r1.timings["encode"] > 0 and r1.mask.dtype == bool
    assert r1.mask.shape == tuple(b.stop - b.start for b in r1.bbox)
    np.testing.assert_array_equal(s.current_mask[r1.bbox], r1.mask)
    if s.n_windows == 1:
        np.testing.assert_array_equal(r1.probabilities > 0.5, r1.mask)
    r2 = s.add_click((22, 19, 21), False)
    assert r2.timings["encode"] == 0.0  # embedding reused
    assert s.clicks == [((20, 19, 21), True), ((22, 19, 21), False)]
    assert not s.current_mask.flags.writeable


def test_undo_is_exact(tiny_loaded, blob_case):
    img, _ = blob_case
    s = Session(tiny_loaded, device="cpu", auto_extend=False)
    s.set_image(img, (1.0, 1.0, 1.0))
    s.add_click((20, 19, 21), True)
    m1 = s.current_mask.copy()
    low1 = s._windows[0].low_res.clone()
    s.add_click((15, 19, 21), True)
    s.add_click((25, 19, 21), False)
    s.undo()
    s.undo()
    np.testing.assert_array_equal(s.current_mask, m1)
    assert torch.equal(s._windows[0].low_res, low1) and len(s.clicks) == 1
    # redoing the same click gives the same result (logits restored, not recomputed from scratch)
    r = s.add_click((15, 19, 21), True)
    s.undo()
    r2 = s.add_click((15, 19, 21), True)
    np.testing.assert_array_equal(r.mask, r2.mask)
    s.undo()
    s.undo()
    assert not s.current_mask.any() and s.undo() is None


def test_reset_and_accept_objects(threshold_loaded, blob_case):
    img, gt = blob_case
    s = Session(threshold_loaded, device="cpu")
    s.set_image(np.where(gt, 1.0, -1.0).astype(np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(MSAMError, match="empty"):
        s.accept()
    s.add_click((20, 19, 21))
    assert s.current_mask.any()
    s.reset()
    assert not s.current_mask.any() and s.clicks == []
    s.add_click((20, 19, 21))
    assert s.accept() == 1
    assert s.objects == [1] and s.current_object_id == 2
    np.testing.assert_array_equal(s.labels == 1, gt)
    assert not s.current_mask.any()


def test_large_object_is_followed_across_windows(threshold_loaded, make_sphere):
    """A 30-voxel-wide object and a 16-voxel ROI: the session must add windows until it covers it."""
    shape = (48, 48, 48)
    gt = make_sphere(shape, (24, 24, 24), 13)
    s = Session(threshold_loaded, device="cpu", max_windows=27)
    s.set_image(np.where(gt, 1.0, -1.0).astype(np.float32), (1.0, 1.0, 1.0))
    r = s.add_click((24, 24, 24))
    assert s.n_windows > 1
    dice = 2 * (s.current_mask & gt).sum() / (s.current_mask.sum() + gt.sum())
    assert dice > 0.99
    assert r.bbox[0].start <= 11 and r.bbox[0].stop >= 38
    s.undo()
    assert not s.current_mask.any() and s.n_windows == 0


def test_object_cut_by_roi_is_recentred(threshold_loaded, make_sphere):
    shape = (40, 40, 40)
    gt = make_sphere(shape, (20, 20, 20), 5)
    s = Session(threshold_loaded, device="cpu")
    s.set_image(np.where(gt, 1.0, -1.0).astype(np.float32), (1.0, 1.0, 1.0))
    s.add_click((20, 20, 16))  # near the object's edge: the first ROI cuts the sphere
    assert s.n_windows == 1
    np.testing.assert_array_equal(s.current_mask, gt)
    c = s._windows[0].geometry.center
    assert abs(c[2] - 20) <= 1


def test_multi_click_feeds_all_points(threshold_loaded, blob_case):
    img, _ = blob_case
    s = Session(threshold_loaded, device="cpu", multi_click=True, auto_extend=False)
    seen = []
    orig = threshold_loaded.model.refine

    def spy(emb, points, labels, prev):
        seen.append(points.shape[1])
        return orig(emb, points, labels, prev)

    threshold_loaded.model.refine = spy
    s.set_image(img, (1.0, 1.0, 1.0))
    for v in [(20, 19, 21), (21, 19, 21), (19, 19, 21)]:
        s.add_click(v)
    assert seen == [1, 2, 3]


def test_bad_inputs(tiny_loaded):
    s = Session(tiny_loaded, device="cpu")
    with pytest.raises(MSAMError, match="set_image"):
        s.add_click((0, 0, 0))
    with pytest.raises(InvalidVolumeError, match="3-D"):
        s.set_image(np.zeros((10, 10)))
    with pytest.raises(InvalidVolumeError, match="3-D"):
        s.set_image(np.zeros((2, 10, 10, 10)))
    with pytest.raises(InvalidVolumeError, match="empty"):
        s.set_image(np.zeros((0, 10, 10)))
    bad = np.zeros((8, 8, 8), np.float32)
    bad[1, 2, 3] = np.nan
    bad[2, 2, 3] = np.inf
    with pytest.raises(InvalidVolumeError, match="2 NaN or infinite"):
        s.set_image(bad)
    with pytest.raises(InvalidVolumeError, match="spacing"):
        s.set_image(np.zeros((8, 8, 8)), spacing=(1, 0, 1))
    with pytest.raises(MSAMError, match="modality"):
        s.set_image(np.zeros((8, 8, 8)), modality="pet")
    s.set_image(np.arange(512, dtype=np.float32).reshape(8, 8, 8))  # a constant image is refused
    with pytest.raises(ClickOutsideError, match="outside"):
        s.add_click((8, 0, 0))
    with pytest.raises(ClickOutsideError, match="outside"):
        s.add_click((-1, 0, 0))
    with pytest.raises(ClickOutsideError):
        s.add_click((1, 2))
    assert s.clicks == []
    with pytest.raises(MSAMError, match="threads"):
        Session(tiny_loaded, threads=0)


def test_oom_falls_back_to_cpu(threshold_loaded, blob_case, monkeypatch):
    import napari_msam.predictor as predictor_mod

    img, _ = blob_case
    s = Session(threshold_loaded, device="cpu", auto_extend=False)
    s.set_image(img, (1.0, 1.0, 1.0))
    s.device = "cuda:0"  # pretend: the ROI still goes to the CPU, the OOM below is simulated
    real_prepare = predictor_mod.prepare_roi
    monkeypatch.setattr(predictor_mod, "prepare_roi",
                        lambda *a, geometry=None: real_prepare(*a[:6], "cpu", geometry=geometry))
    calls = {"n": 0}
    orig = threshold_loaded.model.encode

    def flaky(image):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return orig(image)

    threshold_loaded.model.encode = flaky
    with pytest.warns(RuntimeWarning, match="out of memory"):
        r = s.add_click((20, 19, 21))
    assert s.device == "cpu" and s.fell_back_to_cpu and "out of memory" in s.warning
    assert r.mask.any()


def test_ras_axis_order_round_trip(threshold_loaded, make_sphere):
    """Reference weights see RAS-ordered ROIs; the pasted mask must still land on the SPL array."""
    import dataclasses

    threshold_loaded.preprocess = dataclasses.replace(threshold_loaded.preprocess, axis_order="RAS")
    gt = make_sphere((30, 34, 38), (15, 16, 20), 5)
    gt[15:18, 16:20, 20:26] = True  # break the symmetry
    s = Session(threshold_loaded, device="cpu")
    s.set_image(np.where(gt, 1.0, -1.0).astype(np.float32), (1.0, 1.0, 1.0))
    s.add_click((15, 16, 20))
    np.testing.assert_array_equal(s.current_mask, gt)


def test_real_tiny_model_on_anisotropic_case(tiny_loaded, sts_paths):
    from napari_msam.io import read_volume

    img = read_volume(sts_paths[0])
    s = Session(tiny_loaded, device="cpu", threads=1)
    s.set_image(img.data, img.spacing, "auto")
    assert s.modality == "mr"  # not CT-like: this plugin is for CT and MRI
    r = s.add_click((16, 30, 30))
    g = s._windows[0].geometry
    assert g.step == pytest.approx(tuple(2.0 / sp for sp in img.spacing))
    assert all(b.start >= 0 and b.stop <= n for b, n in zip(r.bbox, img.data.shape, strict=True))


def test_click_outside_the_roi_opens_a_second_window(threshold_loaded, make_sphere):
    shape = (40, 40, 60)
    gt = make_sphere(shape, (20, 20, 10), 4) | make_sphere(shape, (20, 20, 48), 4)
    s = Session(threshold_loaded, device="cpu")
    s.set_image(np.where(gt, 1.0, -1.0).astype(np.float32), (1.0, 1.0, 1.0))
    s.add_click((20, 20, 10))
    assert s.n_windows == 1 and not s.current_mask[:, :, 30:].any()
    r = s.add_click((20, 20, 48))
    assert s.n_windows == 2 and r.bbox[2].start >= 30
    np.testing.assert_array_equal(s.current_mask, gt)
    s.undo()
    assert s.n_windows == 1 and not s.current_mask[:, :, 30:].any()


class _RadiusModel(torch.nn.Module):
    """Stand-in whose prediction is a ball around the newest click: radius 6 for a positive click,
    2 for a negative one, so an object can grow and shrink and undo must bring back each state."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, image):
        return image.clone()

    def prepare(self, embedding):
        return embedding

    def refine(self, embedding, points, labels, mask_logits):
        side = embedding.shape[-1]
        r = 6.0 if int(labels[0, -1]) == 1 else 2.0
        ax = torch.arange(side, dtype=torch.float32)
        p = points[0, -1].float()
        d2 = (ax[:, None, None] - p[0]) ** 2 + (ax[None, :, None] - p[1]) ** 2 + (ax[None, None, :] - p[2]) ** 2
        return (r * r - d2).reshape(1, 1, side, side, side)


def test_paste_writes_only_what_can_change_and_undo_restores_it():
    from types import SimpleNamespace

    from napari_msam.model import PreprocessConfig

    loaded = SimpleNamespace(model=_RadiusModel(), config=SimpleNamespace(img_size=32, low_res=32), metadata={},
                             preprocess=PreprocessConfig(spacing_mm=(1.0, 1.0, 1.0), ct_window=None,
                                                         normalization="none"))
    s = Session(loaded, device="cpu", auto_extend=False)
    s.set_image(np.arange(40**3, dtype=np.float32).reshape(40, 40, 40), (1.0, 1.0, 1.0))  # not constant
    states = [s.current_mask.copy()]
    for v, pos in [((20, 20, 20), True), ((22, 20, 20), False), ((18, 21, 20), True), ((19, 20, 22), False)]:
        before = s.current_mask.copy()
        r = s.add_click(v, pos)
        roi_box = s._windows[0].geometry.bbox
        # the reported box is tight (a ball of radius <= 6 plus the previous object), not the 32^3 ROI box
        assert all(b.stop - b.start <= 15 for b in r.bbox)
        assert all(b.stop - b.start == 32 for b in roi_box)
        changed = before != s.current_mask
        changed[r.bbox] = False
        assert not changed.any()  # nothing outside the reported box changed
        np.testing.assert_array_equal(s.current_mask[r.bbox], r.mask)
        assert sum(old.size for _, old in s._history[-1].patches) <= 15**3  # undo keeps only that box
        states.append(s.current_mask.copy())
    assert states[2].sum() < states[1].sum()  # the negative click shrank the object
    for k in range(len(states) - 1, 0, -1):
        np.testing.assert_array_equal(s.current_mask, states[k])
        s.undo()
    np.testing.assert_array_equal(s.current_mask, states[0])
    s.add_click((20, 20, 20), True)
    s.add_click((22, 20, 20), False)
    small = s.current_mask.copy()
    oid = s.accept()  # the shrunken object's extent is still tracked correctly
    np.testing.assert_array_equal(s.labels == oid, small)
    assert not s.current_mask.any()
