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


def _mirror(display: np.ndarray, r) -> None:
    """What a viewer does with a ClickResult: write its mask into its box."""
    display[r.bbox] = r.mask


def test_two_phase_refinement_matches_the_eager_session_and_keeps_undo_accept_exact():
    img, gt = _case()
    refiner = EdgeRefiner(band_mm=4.0, seed_mm=2.0, grid_mm=1.0)
    clicks = [((20, 20, 20), True), ((20, 20, 28), False), ((14, 20, 20), True)]
    eager = Session(shrinking_loaded(), device="cpu", auto_extend=False, edge_refine=refiner)
    lazy = Session(shrinking_loaded(), device="cpu", auto_extend=False, edge_refine=refiner)
    for s in (eager, lazy):
        s.set_image(img, (1.0, 1.0, 1.0), modality="mr")
    display = np.zeros(gt.shape, bool)
    states = []
    for voxel, pos in clicks:
        eager.add_click(voxel, pos)
        r = lazy.add_click(voxel, pos, refine_edges=False)
        _mirror(display, r)
        assert lazy.edges_pending and r.timings.get("edges") is None
        np.testing.assert_array_equal(lazy.current_mask, lazy.model_mask)  # the network's answer first
        np.testing.assert_array_equal(display, lazy.current_mask)
        np.testing.assert_array_equal(lazy.model_mask, eager.model_mask)
        r2 = lazy.refine_edges()
        assert r2 is not None and r2.timings["edges"] > 0 and not lazy.edges_pending
        _mirror(display, r2)
        np.testing.assert_array_equal(lazy.current_mask, eager.current_mask)
        np.testing.assert_array_equal(display, lazy.current_mask)
        assert lazy.refine_edges() is None  # nothing pending any more
        states.append(eager.current_mask.copy())
    assert not np.array_equal(states[-1], lazy.model_mask)  # refinement did change the mask
    # a pending click undone: back to the refined state before it, and the viewer follows the box
    _mirror(display, lazy.add_click((20, 26, 20), False, refine_edges=False))
    _mirror(display, lazy.undo())
    assert not lazy.edges_pending
    np.testing.assert_array_equal(lazy.current_mask, states[-1])
    np.testing.assert_array_equal(display, states[-1])
    # two pending clicks, one undone: the earlier one is pending again and refines like the eager session
    lazy.undo()
    eager.undo()
    _mirror(display, lazy.add_click(*clicks[2], refine_edges=False))
    _mirror(display, lazy.add_click((20, 26, 20), False, refine_edges=False))
    _mirror(display, lazy.undo())
    assert lazy.edges_pending
    np.testing.assert_array_equal(display, lazy.current_mask)
    eager.add_click(*clicks[2])
    _mirror(display, lazy.refine_edges())
    np.testing.assert_array_equal(lazy.current_mask, states[-1])
    np.testing.assert_array_equal(display, states[-1])
    # accept applies a pending refinement first: the frozen object is the same either way
    eager.add_click((20, 26, 20), False)
    lazy.add_click((20, 26, 20), False, refine_edges=False)
    assert lazy.accept() == eager.accept() == 1
    np.testing.assert_array_equal(lazy.labels, eager.labels)
    lazy.add_click((20, 20, 20), True, refine_edges=False)
    lazy.reset()
    assert not lazy.edges_pending and not lazy.current_mask.any() and lazy.refine_edges() is None


def test_refine_edges_is_none_when_the_session_does_not_refine():
    img, _ = _case()
    s = Session(shrinking_loaded(), device="cpu", auto_extend=False, edge_refine="off")
    s.set_image(img, (1.0, 1.0, 1.0), modality="mr")
    r = s.add_click((20, 20, 20), True, refine_edges=False)
    assert not s.edges_pending and s.refine_edges() is None
    np.testing.assert_array_equal(s.current_mask[r.bbox], r.mask)
