"""Auto N-click in the Segment widget: live rows, Dice table + plot, CSV export, cancel, errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from msam_gui_helpers import BallSession, blob_volume
from napari_msam.metrics import dice
from napari_msam.widgets.segment import OUTPUT_NAME, PROMPTS_NAME, SegmentWidget

pytestmark = pytest.mark.gui


def _idle(qtbot, w, timeout=60000):
    qtbot.waitUntil(lambda: w.worker.pending == 0 and not w.busy_auto, timeout=timeout)
    qtbot.wait(20)


@pytest.fixture
def auto_widget(make_napari_viewer, qtbot, tiny_checkpoint):
    made = []

    def factory(session_factory=None):
        viewer = make_napari_viewer()
        img, gt = blob_volume()
        viewer.add_image(img, name="blob MR", scale=(2.0, 1.0, 1.0))
        viewer.add_labels(gt, name="blob MR ground truth", scale=(2.0, 1.0, 1.0))
        w = SegmentWidget(viewer, model_path=str(tiny_checkpoint), session_factory=session_factory)
        viewer.window.add_dock_widget(w)
        made.append(w)
        _idle(qtbot, w)
        return viewer, w, gt

    BallSession.delay = 0.0
    yield factory
    for w in made:
        w.close_worker()
        assert not w.worker.is_alive()


def test_auto_clicks_fill_table_plot_and_labels(auto_widget, qtbot, tmp_path):
    viewer, w, gt = auto_widget()
    panel = w.auto_panel
    assert panel.gt_combo.currentText() == "blob MR ground truth" and panel.gt_label.value() == 1
    panel.n_clicks.setValue(3)
    panel.strategy.setCurrentText("center")
    assert panel.run_btn.text() == "Run auto 3-click"
    panel.run()
    assert w.busy_auto and panel.cancel_btn.isEnabled()
    _idle(qtbot, w)
    assert panel.table.rowCount() == len(panel.rows) == 3
    session = w.worker.state.session
    dices = [float(panel.table.item(r, 3).text()) for r in range(3)]
    assert all(0.0 <= d <= 1.0 for d in dices)
    # the last row's Dice is the session's current object against the ground truth
    assert dices[-1] == pytest.approx(dice(session.current_mask, gt.astype(bool)), abs=1e-4)
    assert panel.plot.data("Dice")[1] == pytest.approx([r.dice for r in panel.rows])
    # every click is shown as a point, the object is in the output layer
    assert len(viewer.layers[PROMPTS_NAME].data) == 3
    assert [c[0] for c in session.clicks] == [r.voxel for r in panel.rows]
    np.testing.assert_array_equal(viewer.layers[OUTPUT_NAME].data == 1, session.current_mask)
    assert panel.rows[0].positive and gt[panel.rows[0].voxel] == 1  # the first click is inside the object
    assert "done" in w.controls.status.text() and "NoC@" in w.controls.status.text()
    # CSV export (atomic) reads back
    out = panel.export_csv(str(tmp_path / "dice.csv"))
    rows = list(csv.DictReader(open(out)))
    assert [float(r["dice"]) for r in rows] == pytest.approx(dices, abs=1e-4)
    # manual clicks continue the same object afterwards
    w.add_click(panel.rows[0].voxel, positive=True)
    qtbot.waitUntil(lambda: w.worker.pending == 0, timeout=30000)
    qtbot.wait(20)
    assert len(w.worker.state.session.clicks) == 4


def test_auto_click_cancel(auto_widget, qtbot):
    viewer, w, gt = auto_widget(session_factory=BallSession)
    BallSession.delay = 0.2
    panel = w.auto_panel
    panel.n_clicks.setValue(30)
    panel.run()
    qtbot.waitUntil(lambda: len(panel.rows) >= 1, timeout=20000)
    panel.cancel()
    _idle(qtbot, w)
    assert 1 <= len(panel.rows) < 30
    assert "cancelled" in w.controls.status.text()
    assert panel.run_btn.isEnabled() and not panel.cancel_btn.isEnabled()


def test_auto_click_missing_or_wrong_ground_truth(auto_widget, qtbot):
    viewer, w, gt = auto_widget(session_factory=BallSession)
    panel = w.auto_panel
    panel.gt_label.setValue(4)
    panel.run()
    assert "label 4 is not in" in w.controls.status.text() and not w.busy_auto
    viewer.add_labels(np.zeros((5, 5, 5), np.uint8), name="small gt")
    panel.gt_combo.setCurrentText("small gt")
    panel.run()
    assert "shape" in w.controls.status.text() and not w.busy_auto
    with pytest.raises(Exception, match="nothing to export"):
        panel.export_csv("/tmp/never.csv")
