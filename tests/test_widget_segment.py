"""Segment widget: points -> worker -> labels, queueing, undo/reset/accept, overwrite policies, errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from msam_gui_helpers import BallSession
from napari_msam.widgets.segment import (
    OUTPUT_NAME,
    PROMPTS_NAME,
    SegmentWidget,
    compose_labels,
    window_to_limits,
)

pytestmark = pytest.mark.gui
SCALE = (2.0, 1.0, 1.0)


def _idle(qtbot, w, timeout=30000):
    qtbot.waitUntil(lambda: w.worker.pending == 0, timeout=timeout)
    qtbot.wait(20)  # let the queued result signals run on the GUI thread
    qtbot.waitUntil(lambda: not w.jobs._handlers, timeout=timeout)


@pytest.fixture
def make_widget(make_segment_widget):
    return functools.partial(make_segment_widget, confirm_clear=False)


def _click(w, voxel, positive=True):
    w.add_click(voxel, positive)


def _ball(shape, center, r=BallSession.radius):
    idx = np.indices(shape)
    return sum((idx[a] - center[a]) ** 2 for a in range(3)) <= r * r


def test_real_model_click_writes_labels(make_widget, qtbot):
    viewer, w = make_widget(session_factory=None)
    assert "msam-tiny" in w.controls.model_info.text()
    prompts = viewer.layers[PROMPTS_NAME]
    # a user click: a point added to the prompts layer in its data coordinates (= image voxels here)
    prompts.add(np.array([10.0, 20.0, 18.0]))
    _idle(qtbot, w, 60000)
    out = viewer.layers[OUTPUT_NAME]
    session = w.worker.state.session
    assert session.clicks == [((10, 20, 18), True)]
    np.testing.assert_array_equal(out.data == 1, session.current_mask)
    assert out.data.shape == viewer.layers["blob MR"].data.shape
    np.testing.assert_allclose(out.scale, SCALE)
    assert "click 1:" in w.controls.status.text() and " s" in w.controls.status.text()


def test_flip_views_setting_reaches_the_session(make_widget, qtbot):
    viewer, w = make_widget(session_factory=None)
    w.controls.tta_spin.setValue(3)
    _idle(qtbot, w, 60000)
    viewer.layers[PROMPTS_NAME].add(np.array([10.0, 20.0, 18.0]))
    _idle(qtbot, w, 60000)
    session = w.worker.state.session
    assert session.tta == 3 and len(session._windows[0].views) == 3
    assert session.clicks == [((10, 20, 18), True)]
    np.testing.assert_array_equal(viewer.layers[OUTPUT_NAME].data == 1, session.current_mask)
    w.controls.tta_spin.setValue(1)  # a new session on the next setup, like a device change
    _idle(qtbot, w, 60000)
    viewer.layers[PROMPTS_NAME].add(np.array([12.0, 20.0, 18.0]))
    _idle(qtbot, w, 60000)
    assert w.worker.state.session is not session and w.worker.state.session.tta == 1


def test_edge_refinement_setting_reaches_the_session(make_widget, qtbot):
    viewer, w = make_widget(session_factory=None)
    assert w.controls.edge_refine == "auto" and w.controls.modality_combo.currentText() == "MR"
    viewer.layers[PROMPTS_NAME].add(np.array([10.0, 20.0, 18.0]))
    _idle(qtbot, w, 60000)
    session = w.worker.state.session
    assert session.edge_refine == "auto" and session.refining  # an MR image: refined by default
    np.testing.assert_array_equal(viewer.layers[OUTPUT_NAME].data == 1, session.current_mask)
    w.controls.edge_combo.setCurrentText("off")
    _idle(qtbot, w, 60000)
    viewer.layers[PROMPTS_NAME].add(np.array([12.0, 20.0, 18.0]))
    _idle(qtbot, w, 60000)
    session = w.worker.state.session
    assert session.edge_refine == "off" and not session.refining
    np.testing.assert_array_equal(viewer.layers[OUTPUT_NAME].data == 1, session.model_mask)


def test_world_to_voxel_uses_the_image_transform(make_widget, qtbot):
    viewer, w = make_widget(translate=(4.0, -3.0, 2.0))
    prompts = viewer.layers[PROMPTS_NAME]
    # a point given in world coordinates on a prompts layer with a different transform
    prompts.scale = (1.0, 1.0, 1.0)
    prompts.translate = (0.0, 0.0, 0.0)
    world = np.array([4.0 + 2.0 * 7, -3.0 + 11, 2.0 + 9])   # voxel (7, 11, 9)
    prompts.add(world)
    _idle(qtbot, w)
    assert [c for c in BallSession.instances[-1].calls if c[0] == "click"] == [("click", (7, 11, 9), True)]


def test_clicks_are_queued_in_order_and_never_lost(make_widget, qtbot):
    viewer, w = make_widget()
    BallSession.delay = 0.15
    voxels = [(10, 20, 18), (10, 24, 18), (12, 20, 14), (8, 16, 22)]
    for i, v in enumerate(voxels):
        _click(w, v, positive=i != 2)
    assert w.worker.pending >= 2  # they really were waiting while a step ran
    _idle(qtbot, w)
    calls = [c for c in BallSession.instances[-1].calls if c[0] == "click"]
    assert calls == [("click", v, i != 2) for i, v in enumerate(voxels)]
    out = viewer.layers[OUTPUT_NAME].data
    expected = np.zeros(out.shape, bool)
    for i, v in enumerate(voxels):
        expected = expected | _ball(out.shape, v) if i != 2 else expected & ~_ball(out.shape, v)
    np.testing.assert_array_equal(out == 1, expected)
    # the prompts layer shows green / red points in click order
    colors = viewer.layers[PROMPTS_NAME].face_color
    np.testing.assert_allclose(colors[2, :3], (1, 0, 0))
    np.testing.assert_allclose(colors[0, :3], (0, 1, 0))


def test_undo_reset_accept(make_widget, qtbot):
    viewer, w = make_widget()
    a, b, c = (5, 10, 10), (14, 30, 26), (10, 20, 18)
    _click(w, a)
    _click(w, b)
    _idle(qtbot, w)
    out = viewer.layers[OUTPUT_NAME]
    shape = out.data.shape
    np.testing.assert_array_equal(out.data == 1, _ball(shape, a) | _ball(shape, b))
    w.undo()
    _idle(qtbot, w)
    np.testing.assert_array_equal(out.data == 1, _ball(shape, a))
    assert len(viewer.layers[PROMPTS_NAME].data) == 1
    w.accept_object()
    _idle(qtbot, w)
    assert w.controls.label_spin.value() == 2 and len(viewer.layers[PROMPTS_NAME].data) == 0
    _click(w, c)
    _idle(qtbot, w)
    ball_c = _ball(shape, c)
    assert (out.data[ball_c & ~_ball(shape, a)] == 2).all()
    w.reset_object()
    _idle(qtbot, w)
    assert not (out.data == 2).any()
    np.testing.assert_array_equal(out.data == 1, _ball(shape, a))  # the accepted object survived
    assert ("accept",) in BallSession.instances[-1].calls


def test_changing_the_id_mid_object_relabels_it(make_widget, qtbot):
    viewer, w = make_widget()
    a, b = (5, 10, 10), (14, 30, 26)
    _click(w, a)
    _idle(qtbot, w)
    out = viewer.layers[OUTPUT_NAME]
    w.controls.label_spin.setValue(9)
    assert (out.data[_ball(out.data.shape, a)] == 9).all() and not (out.data == 1).any()
    _click(w, b)
    _idle(qtbot, w)
    np.testing.assert_array_equal(out.data == 9, _ball(out.data.shape, a) | _ball(out.data.shape, b))
    w.reset_object()
    _idle(qtbot, w)
    assert not out.data.any()


def test_existing_labels_survive_default_policy(make_widget, qtbot):
    viewer, w = make_widget()
    img = viewer.layers["blob MR"]
    existing = np.zeros(img.data.shape, np.uint16)
    existing[10, 18:23, 16:21] = 5
    viewer.add_labels(existing.copy(), name="my labels", scale=SCALE)
    w.controls.output_combo.setCurrentText("my labels")
    assert w.controls.label_spin.value() == 6  # the next free id
    assert w.controls.policy_combo.currentText() == "keep existing"
    _click(w, (10, 20, 18))
    _idle(qtbot, w)
    out = viewer.layers["my labels"].data
    assert (out[existing == 5] == 5).all()
    ball = _ball(out.shape, (10, 20, 18))
    assert (out[ball & (existing == 0)] == 6).all()
    # overwrite: the model wins; undoing the click restores the old label exactly
    w.controls.policy_combo.setCurrentText("overwrite")
    _click(w, (10, 21, 18))
    _idle(qtbot, w)
    assert (out[_ball(out.shape, (10, 21, 18))] == 6).all()
    w.undo()
    w.undo()
    _idle(qtbot, w)
    np.testing.assert_array_equal(out, existing)


def test_compose_labels_policies():
    under = np.array([0, 0, 3, 3, 7, 7], np.uint16)
    mask = np.array([1, 0, 1, 0, 1, 0], bool)
    np.testing.assert_array_equal(compose_labels(under, mask, 7, "keep existing"), [7, 0, 3, 3, 7, 0])
    np.testing.assert_array_equal(compose_labels(under, mask, 7, "only empty"), [7, 0, 3, 3, 7, 7])
    np.testing.assert_array_equal(compose_labels(under, mask, 7, "overwrite"), [7, 0, 7, 3, 7, 0])


def test_points_deleted_by_hand_rebuild_the_object(make_widget, qtbot):
    viewer, w = make_widget()
    _click(w, (5, 10, 10))
    _click(w, (14, 30, 26))
    _idle(qtbot, w)
    prompts = viewer.layers[PROMPTS_NAME]
    prompts.selected_data = {0}
    prompts.remove_selected()
    _idle(qtbot, w)
    out = viewer.layers[OUTPUT_NAME].data
    np.testing.assert_array_equal(out == 1, _ball(out.shape, (14, 30, 26)))


def test_polarity_toggle_and_shortcuts(make_widget, qtbot):
    viewer, w = make_widget()
    prompts = viewer.layers[PROMPTS_NAME]
    keys = {str(k).lower() for k in prompts.keymap}
    assert {"t", "u", "r", "n"} <= keys
    prompts.keymap[next(k for k in prompts.keymap if str(k).lower() == "t")](prompts)
    assert not w.points.positive and "NEGATIVE" in w.controls.polarity_btn.text()
    prompts.add(np.array([10.0, 20.0, 18.0]))
    _idle(qtbot, w)
    assert BallSession.instances[-1].calls[-1] == ("click", (10, 20, 18), False)
    for btn, key in ((w.controls.polarity_btn, "[T]"), (w.controls.undo_btn, "[U]"), (w.controls.reset_btn, "[R]"), (w.controls.accept_btn, "[N]")):
        assert key in btn.toolTip()


def test_ct_window_presets_change_only_contrast(make_widget, qtbot):
    img = np.random.default_rng(0).integers(-1000, 1000, (12, 20, 20)).astype(np.float32)
    viewer, w = make_widget(image=img, name="patient CT")
    assert w.controls.modality_combo.currentText() == "CT"
    before = viewer.layers["patient CT"].data.copy()
    for i in range(w.controls.window_combo.count()):
        if w.controls.window_combo.itemText(i).startswith("lung"):
            w.controls.window_combo.setCurrentIndex(i)
            w.controls.window_combo.activated.emit(i)
    assert tuple(viewer.layers["patient CT"].contrast_limits) == pytest.approx(window_to_limits(1500, -600))
    np.testing.assert_array_equal(viewer.layers["patient CT"].data, before)
    _click(w, (6, 10, 10))
    _idle(qtbot, w)
    assert BallSession.instances[-1].calls[0] == ("set_image", (12, 20, 20), "ct")


def test_friendly_errors_not_exceptions(make_widget, qtbot):
    viewer, w = make_widget()
    prompts = viewer.layers[PROMPTS_NAME]
    prompts.add(np.array([100.0, 20.0, 18.0]))  # outside the volume
    assert "outside" in w.controls.status.text() and len(prompts.data) == 0
    # wrong layer type / dimensionality
    viewer.add_image(np.zeros((30, 30), np.float32), name="flat")
    w.controls.image_combo.setCurrentText("flat")
    w.auto_panel.run()
    assert "3-D" in w.controls.status.text() or "2-D" in w.controls.status.text()
    w.controls.image_combo.setCurrentText("blob MR")
    # no ground truth
    del viewer.layers["blob MR ground truth"]
    w.auto_panel.run()
    assert "ground truth" in w.controls.status.text()
    # a missing checkpoint
    w.controls.model_path.setText("/nonexistent/model.safetensors")
    w.model.load()
    _idle(qtbot, w)
    assert "not found" in w.controls.model_info.text()


def test_no_image_at_all(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer, model_path=str(tiny_checkpoint), session_factory=BallSession)
    try:
        w.auto_panel.run()
        assert "no image" in w.controls.status.text()
        w.undo()
        w.accept_object()
        assert w.controls.status.text()
    finally:
        w.close_worker()


def test_plugin_menu_widget_and_no_thread_left_after_viewer_close(make_napari_viewer, qtbot, tiny_checkpoint):
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer()
    viewer.open_sample("napari-msam", "sts024_mr")
    _, w = viewer.window.add_plugin_dock_widget("napari-msam", "Segment (M-SAM)")
    assert isinstance(w, SegmentWidget)
    assert w.controls.image_combo.currentText() == "STS_024 MR" and w.controls.modality_combo.currentText() == "MR"
    assert w.auto_panel.gt_combo.currentText() == "STS_024 MR ground truth"
    w.set_model(str(tiny_checkpoint))
    qtbot.waitUntil(lambda: w.worker.pending == 0, timeout=30000)
    # napari gives plugin widgets a proxy viewer: clicks must still accumulate in one session
    w.add_click((20, 40, 40), True)
    w.add_click((22, 45, 38), False)
    _idle(qtbot, w, 60000)
    session = w.worker.state.session
    assert session.clicks == [((20, 40, 40), True), ((22, 45, 38), False)]
    np.testing.assert_array_equal(viewer.layers[OUTPUT_NAME].data == 1, session.current_mask)
    w.undo()
    _idle(qtbot, w, 60000)
    assert session.clicks == [((20, 40, 40), True)]
    np.testing.assert_array_equal(viewer.layers[OUTPUT_NAME].data == 1, session.current_mask)
    worker = w.worker
    viewer.close()
    QApplication.processEvents()
    qtbot.waitUntil(lambda: not worker.is_alive(), timeout=10000)


class _ZoomedBallSession(BallSession):
    """A session that reports its object as zoomed out (as Session.zoom does for a large tumour)."""

    zoom = 2.0


def test_status_line_says_when_a_large_object_zoomed_out(make_widget, qtbot):
    viewer, w = make_widget(session_factory=_ZoomedBallSession)
    _click(w, (10, 20, 18))
    _idle(qtbot, w)
    assert "click 1:" in w.controls.status.text() and "zoomed out 2x" in w.controls.status.text()
    viewer2, w2 = make_widget()
    _click(w2, (10, 20, 18))
    _idle(qtbot, w2)
    assert "click 1:" in w2.controls.status.text() and "zoomed" not in w2.controls.status.text()
