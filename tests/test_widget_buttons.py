"""Every button of the Segment widget pressed with the mouse, found by its visible text; key presses as
real key events; clicks on the canvas at a voxel's screen position."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QMessageBox

from msam_gui_helpers import BallSession, click_voxel, find_button, press
from napari_msam.widgets.segment import OUTPUT_NAME, PROMPTS_NAME

pytestmark = pytest.mark.gui


def _idle(qtbot, w, timeout=30000):
    qtbot.waitUntil(lambda: w.worker.pending == 0 and not w.busy_auto, timeout=timeout)
    qtbot.wait(30)


def _ball(shape, center, r=BallSession.radius):
    idx = np.indices(shape)
    return sum((idx[a] - center[a]) ** 2 for a in range(3)) <= r * r


@pytest.fixture
def seg(make_segment_widget):
    return functools.partial(make_segment_widget, show=True)


def _clicks(session=None):
    session = session or BallSession.instances[-1]
    return [c[1:] for c in session.calls if c[0] == "click"]


def test_canvas_clicks_twice_without_touching_the_layer_list(seg, qtbot):
    viewer, w = seg()
    image = viewer.layers["blob MR"]
    a, b = (10, 20, 18), (10, 26, 12)
    click_voxel(qtbot, viewer, image, a)
    qtbot.waitUntil(lambda: OUTPUT_NAME in viewer.layers and viewer.layers[OUTPUT_NAME].data.any(), timeout=10000)
    _idle(qtbot, w)
    assert viewer.layers.selection.active is viewer.layers[PROMPTS_NAME]
    assert viewer.layers[PROMPTS_NAME].mode == "add"
    click_voxel(qtbot, viewer, image, b)
    _idle(qtbot, w)
    assert _clicks() == [(a, True), (b, True)]
    out = viewer.layers[OUTPUT_NAME].data
    np.testing.assert_array_equal(out == 1, _ball(out.shape, a) | _ball(out.shape, b))
    assert "click 2:" in w.controls.status.text()


def test_segment_buttons_pressed_with_the_mouse(seg, qtbot, monkeypatch):
    viewer, w = seg()
    image = viewer.layers["blob MR"]
    a, b, c = (5, 10, 10), (14, 30, 26), (10, 20, 18)
    click_voxel(qtbot, viewer, image, a)
    _idle(qtbot, w)
    press(qtbot, w, "Next click: POSITIVE")
    assert "NEGATIVE" in find_button(w, "Next click").text()
    press(qtbot, w, "Next click: NEGATIVE")
    click_voxel(qtbot, viewer, image, b)
    _idle(qtbot, w)
    out = viewer.layers[OUTPUT_NAME]
    shape = out.data.shape
    np.testing.assert_array_equal(out.data == 1, _ball(shape, a) | _ball(shape, b))
    press(qtbot, w, "Undo")
    _idle(qtbot, w)
    np.testing.assert_array_equal(out.data == 1, _ball(shape, a))
    assert len(viewer.layers[PROMPTS_NAME].data) == 1 and "undone" in w.controls.status.text()
    press(qtbot, w, "Accept")
    _idle(qtbot, w)
    assert w.controls.label_spin.value() == 2 and "accepted" in w.controls.status.text()
    click_voxel(qtbot, viewer, image, c)
    _idle(qtbot, w)
    assert (out.data == 2).any()
    press(qtbot, w, "Reset")
    _idle(qtbot, w)
    assert not (out.data == 2).any() and "reset" in w.controls.status.text()
    np.testing.assert_array_equal(out.data == 1, _ball(shape, a))
    # Clear labels…: "No" keeps them, "Yes" erases them
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No)
    press(qtbot, w, "Clear labels")
    assert (out.data == 1).any()
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    press(qtbot, w, "Clear labels")
    assert not out.data.any() and "cleared" in w.controls.status.text()
    assert "unexpected" not in w.controls.status.text()


def test_model_browse_button(seg, qtbot, monkeypatch, tiny_checkpoint):
    viewer, w = seg()
    w.controls.model_combo.setCurrentText("Checkpoint file…")
    _idle(qtbot, w)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(tiny_checkpoint), ""))
    press(qtbot, w, "…")
    _idle(qtbot, w)
    assert w.controls.model_path.text() == str(tiny_checkpoint) and "msam-tiny" in w.controls.model_info.text()


def test_auto_buttons_run_cancel_export(seg, qtbot, monkeypatch, tmp_path):
    viewer, w = seg()
    w.controls.tabs.setCurrentWidget(w.auto_panel)
    w.auto_panel.n_clicks.setValue(3)
    press(qtbot, w, "Run auto 3-click")
    _idle(qtbot, w)
    assert w.auto_panel.table.rowCount() == 3 and "done" in w.controls.status.text()
    target = tmp_path / "dice.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    press(qtbot, w, "Export CSV")
    assert target.read_text().count("\n") == 4 and "saved" in w.controls.status.text()
    BallSession.delay = 0.2
    w.auto_panel.n_clicks.setValue(30)
    press(qtbot, w, "Run auto 30-click")
    qtbot.waitUntil(lambda: w.auto_panel.table.rowCount() >= 1, timeout=10000)
    press(qtbot, w, "Cancel")
    _idle(qtbot, w)
    assert "cancelled" in w.controls.status.text() and w.auto_panel.table.rowCount() < 30


def test_shortcut_keys_as_key_events(seg, qtbot):
    viewer, w = seg()
    image = viewer.layers["blob MR"]
    canvas = viewer.window._qt_viewer.canvas.native
    click_voxel(qtbot, viewer, image, (5, 10, 10))
    _idle(qtbot, w)
    click_voxel(qtbot, viewer, image, (14, 30, 26))
    _idle(qtbot, w)
    out = viewer.layers[OUTPUT_NAME]
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_U)
    _idle(qtbot, w)
    np.testing.assert_array_equal(out.data == 1, _ball(out.data.shape, (5, 10, 10)))
    qtbot.keyClick(canvas, Qt.Key.Key_T)
    assert "NEGATIVE" in w.controls.polarity_btn.text()
    qtbot.keyClick(canvas, Qt.Key.Key_T)
    qtbot.keyClick(canvas, Qt.Key.Key_N)
    _idle(qtbot, w)
    assert w.controls.label_spin.value() == 2
    click_voxel(qtbot, viewer, image, (10, 20, 18))
    _idle(qtbot, w)
    assert (out.data == 2).any()
    qtbot.keyClick(canvas, Qt.Key.Key_R)
    _idle(qtbot, w)
    assert not (out.data == 2).any()
