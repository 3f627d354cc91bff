"""One whole session driven as a person drives it: open the sample, click the canvas, click again, undo,
reset, accept, a second object, Auto 10-click from its button, export, train from the Start button,
cancel, and use the result in the Segment widget. Tiny models keep it fast."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QFileDialog

from msam_gui_helpers import click_voxel, press
from napari_msam.widgets.segment import OUTPUT_NAME, PROMPTS_NAME

pytestmark = pytest.mark.gui


def test_a_whole_session(make_napari_viewer, qtbot, monkeypatch, tiny_checkpoint, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-msam", "sts024_mr")
    _, seg = viewer.window.add_plugin_dock_widget("napari-msam", "Segment (M-SAM)")

    def idle(timeout=60000):
        qtbot.waitUntil(lambda: seg.worker.pending == 0 and not seg.busy_auto, timeout=timeout)
        qtbot.wait(50)

    # a person's own checkpoint, chosen through the file dialog
    seg.controls.model_combo.setCurrentText("Checkpoint file…")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(tiny_checkpoint), ""))
    press(qtbot, seg, "…")
    idle()
    assert "msam-tiny" in seg.controls.model_info.text()
    image = viewer.layers["STS_024 MR"]
    gt = np.asarray(viewer.layers["STS_024 MR ground truth"].data) > 0
    inside = [tuple(int(v) for v in p) for p in np.argwhere(gt)[:: max(1, int(gt.sum()) // 3)][:3]]

    click_voxel(qtbot, viewer, image, inside[0])
    idle()
    out = viewer.layers[OUTPUT_NAME]
    first = out.data.copy()
    assert (first == 1).any()
    click_voxel(qtbot, viewer, image, inside[1])  # the layer list untouched
    idle()
    assert len(viewer.layers[PROMPTS_NAME].data) == 2 and "click 2:" in seg.controls.status.text()
    press(qtbot, seg, "Undo")
    idle()
    assert len(viewer.layers[PROMPTS_NAME].data) == 1
    np.testing.assert_array_equal(out.data, first)
    press(qtbot, seg, "Reset")
    idle()
    assert not out.data.any()
    click_voxel(qtbot, viewer, image, inside[0])
    idle()
    press(qtbot, seg, "Accept")
    idle()
    assert "object 1 accepted" in seg.controls.status.text() and seg.controls.label_spin.value() == 2
    click_voxel(qtbot, viewer, image, inside[2])
    idle()
    assert (out.data == 2).any() or "voxels" in seg.controls.status.text()

    seg.controls.tabs.setCurrentWidget(seg.auto_panel)
    press(qtbot, seg, "Run auto 10-click")
    idle(120000)
    rows = seg.auto_panel.table.rowCount()
    assert 1 <= rows <= 10 and "done" in seg.controls.status.text()
    csv_path = tmp_path / "dice.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(csv_path), ""))
    press(qtbot, seg, "Export CSV")
    assert len(csv_path.read_text().splitlines()) == rows + 1

    _, train = viewer.window.add_plugin_dock_widget("napari-msam", "Train (M-SAM)")
    train.controls.source_combo.setCurrentText("Viewer layers")
    train.controls.image_combo.setCurrentText("STS_024 MR")
    train.controls.labels_combo.setCurrentText("STS_024 MR ground truth")
    train.controls.init_combo.setCurrentText("From scratch (random weights)")
    train.controls.config_combo.setCurrentText("msam-tiny")
    train.controls.out_dir.setText(str(tmp_path / "run"))
    for spin, value in ((train.controls.epochs, 1), (train.controls.steps, 2), (train.controls.clicks, 2), (train.controls.batch, 1)):
        spin.setValue(value)
    train.controls.device_combo.setCurrentText("cpu")
    press(qtbot, train, "Start")
    qtbot.waitUntil(lambda: not train.running, timeout=120000)
    assert train.controls.status.text().startswith("done") and train.checkpoint_path() is not None
    train.controls.out_dir.setText(str(tmp_path / "run2"))
    train.controls.steps.setValue(500)
    press(qtbot, train, "Start")
    qtbot.waitUntil(lambda: any(e.kind == "step" for e in train.events), timeout=120000)
    press(qtbot, train, "Cancel")
    qtbot.waitUntil(lambda: not train.running, timeout=120000)
    assert train.controls.status.text().startswith("cancelled") and "checkpoint kept" in train.controls.status.text()
    press(qtbot, train, "Use in Segment widget")
    assert seg.controls.model_path.text() == str(train.checkpoint_path())
    idle()
    assert "msam-tiny" in seg.controls.model_info.text()
    seg.close_worker()
