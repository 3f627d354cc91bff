"""Edge refinement: the walker moves the model's boundary onto image edges, clicks win, and the Session keeps
the model's own mask, undo, reset and accept exact."""

import numpy as np
import pytest
import torch

from conftest import shrinking_loaded, sphere
from napari_msam.edge_refine import EdgeRefiner, applies
from napari_msam.errors import MSAMError
from napari_msam.metrics import dice
from napari_msam.session import Session


def _case(shape=(40, 40, 40), radius=9, seed=0):
    rng = np.random.default_rng(seed)
    gt = sphere(shape, tuple(n // 2 for n in shape), radius)
    img = rng.normal(0, 0.1, shape).astype(np.float32) + 2.0 * gt  # SNR 20: the default beta suits it
    return img, gt


def test_walker_moves_a_too_small_mask_onto_the_edge():
    img, gt = _case()
    model = sphere(gt.shape, (20, 20, 20), 6)  # the model under-segments by 3 mm
    box, seg = EdgeRefiner(band_mm=4.0, seed_mm=2.0, grid_mm=1.0).refine(img, model, [((20, 20, 20), True)], (1, 1, 1))
    out = np.zeros(gt.shape, bool)
    out[box] = seg
    assert dice(model, gt) < 0.75
    assert dice(out, gt) > 0.95


def test_a_negative_click_wins_over_the_model_and_far_voxels_keep_the_model():
    img, gt = _case()
    model = gt.copy()
    clicks = [((20, 20, 20), True), ((20, 20, 27), False)]
    box, seg = EdgeRefiner(band_mm=3.0, seed_mm=2.0, grid_mm=1.0).refine(img, model, clicks, (1, 1, 1))
    out = np.zeros(gt.shape, bool)
    out[box] = seg
    assert not out[20, 20, 26:29].any()  # the ball around the negative click is background
    core = sphere(gt.shape, (20, 20, 20), 4)  # farther than the band from the boundary: the model's
    assert out[core].all()


def test_large_boxes_are_solved_on_a_strided_grid():
    img, gt = _case((40, 60, 60), radius=12)
    model = sphere(gt.shape, (20, 30, 30), 9)
    ref = EdgeRefiner(band_mm=5.0, seed_mm=2.0, grid_mm=1.0, max_voxels=20_000)
    assert ref.factors((40, 60, 60), (1, 1, 1)) != (1, 1, 1)
    box, seg = ref.refine(img, model, [((20, 30, 30), True)], (1, 1, 1))
    assert seg.shape == tuple(b.stop - b.start for b in box)
    out = np.zeros(gt.shape, bool)
    out[box] = seg
    assert dice(out, gt) > dice(model, gt) and dice(out, gt) > 0.9


def test_modes_and_bad_parameters():
    assert applies("auto", "mr") and not applies("auto", "ct") and not applies("auto", "other")
    assert applies("on", "ct") and not applies("off", "mr")
    with pytest.raises(MSAMError, match="edge_refine"):
        applies("sometimes", "mr")
    with pytest.raises(MSAMError, match="band_mm"):
        EdgeRefiner(band_mm=-1)
    with pytest.raises(MSAMError, match="beta"):
        EdgeRefiner(beta=float("nan"))
    with pytest.raises(MSAMError, match="at least one click"):
        EdgeRefiner().refine(np.zeros((8, 8, 8)), np.zeros((8, 8, 8), bool), [], (1, 1, 1))


def test_session_shows_the_refined_mask_and_keeps_undo_reset_accept_exact():
    img, gt = _case()
    s = Session(shrinking_loaded(), device="cpu", auto_extend=False,
                edge_refine=EdgeRefiner(band_mm=4.0, seed_mm=2.0, grid_mm=1.0))
    s.set_image(img, (1.0, 1.0, 1.0), modality="ct")  # an EdgeRefiner means "on", whatever the modality
    assert s.refining
    r1 = s.add_click((20, 20, 20), True)
    assert dice(s.model_mask, gt) < 0.85 < 0.95 < dice(s.current_mask, gt)
    np.testing.assert_array_equal(s.current_mask[r1.bbox], r1.mask)
    assert r1.timings["edges"] > 0 and r1.probabilities is None
    shown1, model1 = s.current_mask.copy(), s.model_mask.copy()
    r2 = s.add_click((20, 20, 28), False)
    np.testing.assert_array_equal(s.current_mask[r2.bbox], r2.mask)
    assert not s.current_mask[20, 20, 27:30].any() and not np.array_equal(s.current_mask, shown1)
    s.undo()
    np.testing.assert_array_equal(s.current_mask, shown1)
    np.testing.assert_array_equal(s.model_mask, model1)
    oid = s.accept()
    np.testing.assert_array_equal(s.labels == oid, shown1)  # the refined object is what gets frozen
    assert not s.current_mask.any() and not s.model_mask.any()
    s.add_click((20, 20, 20), True)
    s.reset()
    assert not s.current_mask.any()


def test_auto_refines_mr_only_and_off_is_the_model():
    img, _ = _case()
    for modality, mode, refined in [("mr", "auto", True), ("ct", "auto", False), ("mr", "off", False)]:
        s = Session(shrinking_loaded(), device="cpu", auto_extend=False, edge_refine=mode)
        s.set_image(img, (1.0, 1.0, 1.0), modality=modality)
        s.add_click((20, 20, 20), True)
        assert s.refining is refined
        assert np.array_equal(s.current_mask, s.model_mask) is not refined
    with pytest.raises(MSAMError, match="edge_refine"):
        Session(shrinking_loaded(), device="cpu", edge_refine="yes")


def test_a_failing_refinement_leaves_the_session_as_before(monkeypatch):
    img, _ = _case()
    s = Session(shrinking_loaded(), device="cpu", auto_extend=False, edge_refine="on")
    s.set_image(img, (1.0, 1.0, 1.0))
    s.add_click((20, 20, 20), True)
    before, model_before = s.current_mask.copy(), s.model_mask.copy()

    def boom(*a, **k):
        raise MSAMError("walker failed")

    monkeypatch.setattr(EdgeRefiner, "refine", boom)
    with pytest.raises(MSAMError, match="walker failed"):
        s.add_click((20, 20, 25), False)
    np.testing.assert_array_equal(s.current_mask, before)
    np.testing.assert_array_equal(s.model_mask, model_before)
    assert len(s.clicks) == 1
    assert torch.is_tensor(s._windows[0].low_res)


def test_block_means_keep_partial_blocks_and_clamp_ct():
    from napari_msam.edge_refine import _block_mean

    a = np.arange(5, dtype=np.float32).reshape(5, 1, 1) * np.ones((1, 3, 1), np.float32)
    out = _block_mean(a, (2, 2, 1))
    assert out.shape == (3, 2, 1)
    np.testing.assert_allclose(out[:, 0, 0], [0.5, 2.5, 4.0])  # the last block of 1 plane is its own mean
    np.testing.assert_allclose(_block_mean(np.full((2, 2, 2), 3000.0, np.float32), (2, 2, 2), "ct"), 1000.0)
