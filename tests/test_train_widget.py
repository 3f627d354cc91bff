"""Train widget: one tiny epoch from the viewer's layers in a worker thread, live progress and plots,
Cancel, readable errors, and the hand-over of the checkpoint to the Segment widget."""

from __future__ import annotations

import pytest

from _training_helpers import blob_case

pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer, tmp_path):
    from napari_msam.widgets.train import INIT_SCRATCH, SOURCE_LAYERS, TrainWidget

    viewer = make_napari_viewer()
    img, lab, sp = blob_case(0)
    viewer.add_image(img, name="img", scale=sp)
    viewer.add_labels(lab, name="gt", scale=sp)
    w = TrainWidget(viewer)
    w.controls.source_combo.setCurrentText(SOURCE_LAYERS)
    w.controls.image_combo.setCurrentText("img")
    w.controls.labels_combo.setCurrentText("gt")
    w.controls.init_combo.setCurrentText(INIT_SCRATCH)  # a tiny model from scratch keeps the test fast
    w.controls.config_combo.setCurrentText("msam-tiny")
    w.controls.out_dir.setText(str(tmp_path / "run"))
    w.controls.epochs.setValue(1)
    w.controls.steps.setValue(3)
    w.controls.clicks.setValue(2)
    w.controls.batch.setValue(1)
    w.controls.device_combo.setCurrentText("cpu")
    yield w
    if w.trainer is not None:
        w.trainer.cancel()


def test_one_epoch_from_layers_shows_progress(widget, qtbot):
    cfg = widget.build_config()
    assert cfg.cases and cfg.cases[0].spacing == (2.0, 2.0, 2.0) and cfg.model_config == "msam-tiny"
    widget.start()
    assert widget.running and not widget.controls.start_btn.isEnabled() and widget.controls.cancel_btn.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    assert widget.last_error is None, widget.last_error
    kinds = [e.kind for e in widget.events]
    assert kinds.count("step") == 3 and "epoch" in kinds and kinds[-1] == "done"
    assert widget.controls.progress.value() == 3 and widget.controls.progress.maximum() == 3
    xs, ys = widget.controls.loss_plot.data("loss")
    assert xs == [1, 2, 3] and all(y > 0 for y in ys)
    assert widget.result is not None and widget.result.last_path.is_file()
    assert widget.checkpoint_path().name == "best.safetensors" and widget.controls.use_btn.isEnabled()

    got = []
    widget.checkpoint_ready.connect(got.append)
    seg = widget.use_in_segment()
    assert got == [str(widget.checkpoint_path())]
    assert seg is not None and seg.controls.model_path.text() == got[0]
    assert widget._find_segment_widget() is seg  # found again next time, not duplicated


def test_cancel_and_errors(widget, qtbot):
    widget.controls.steps.setValue(200)
    widget.start()
    qtbot.waitUntil(lambda: any(e.kind == "step" for e in widget.events), timeout=60000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    assert widget.result is not None and widget.result.cancelled
    assert widget.checkpoint_path() is not None  # loadable checkpoint left behind
    from napari_msam.model.weights import load_checkpoint

    load_checkpoint(widget.checkpoint_path())

    widget.controls.labels_combo.clear()
    widget.start()
    assert not widget.running and "choose a 3-D image layer" in widget.controls.status.text()


def test_folder_source_passes_the_validation_protocol(widget, tmp_path):
    from napari_msam.widgets.train import SOURCE_FOLDER, SOURCE_LAYERS

    widget.controls.source_combo.setCurrentText(SOURCE_FOLDER)
    widget.controls.data_dir.setText(str(tmp_path))
    widget.controls.val_patients.setText("STS_003, STS_008")
    assert widget.controls.val_protocol.isEnabled()
    widget.controls.val_protocol.setCurrentText("session")
    cfg = widget.build_config()
    assert cfg.val_patients == ("STS_003", "STS_008") and cfg.val_protocol == "session"
    widget.controls.source_combo.setCurrentText(SOURCE_LAYERS)
    assert not widget.controls.val_protocol.isEnabled()  # one layer: nothing to validate on


def test_start_cancel_and_use_buttons(widget, qtbot, make_napari_viewer):
    from msam_gui_helpers import press

    widget.controls.steps.setValue(200)
    press(qtbot, widget, "Start")
    assert widget.running
    qtbot.waitUntil(lambda: any(e.kind == "step" for e in widget.events), timeout=60000)
    press(qtbot, widget, "Cancel")
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    steps = [e for e in widget.events if e.kind == "step"]
    assert widget.result.cancelled and len(steps) <= 3  # stopped within a step of the press
    text = widget.controls.status.text()
    assert text.startswith("cancelled") and "checkpoint kept" in text and str(widget.checkpoint_path()) in text
    widget.viewer.window.add_dock_widget(widget)
    press(qtbot, widget, "Use in Segment widget")
    seg = widget._find_segment_widget()
    assert seg is not None and seg.controls.model_path.text() == str(widget.checkpoint_path())
    seg.close_worker()


def test_defaults_to_fine_tuning_the_embedded_model(widget):
    from napari_msam.default_model import default_checkpoint_path
    from napari_msam.widgets.train import INIT_DEFAULT, INIT_SCRATCH, TrainWidget

    fresh = TrainWidget(widget.viewer)
    assert fresh.controls.init_combo.currentText() == INIT_DEFAULT and not fresh.controls.config_combo.isEnabled()
    fresh.controls.source_combo.setCurrentText(widget.controls.source_combo.currentText())
    fresh.controls.image_combo.setCurrentText("img")
    fresh.controls.labels_combo.setCurrentText("gt")
    assert fresh.build_config().init_checkpoint == str(default_checkpoint_path())
    fresh.controls.init_combo.setCurrentText(INIT_SCRATCH)
    assert fresh.build_config().init_checkpoint is None and fresh.controls.config_combo.isEnabled()


class _FakeTrainer:
    """Stands in for Trainer: emits one epoch with the given validation Dice, or raises ``error``."""

    error = None
    val_dice = [0.0, 0.001]

    def __init__(self, cfg, callback=None):
        from pathlib import Path

        self.cfg, self.callback, self.out_dir = cfg, callback, Path(cfg.out_dir)

    def cancel(self):
        pass

    def fit(self):
        from napari_msam.training.trainer import TrainEvent, TrainResult

        if self.error is not None:
            raise self.error
        import shutil

        self.out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(_FakeTrainer.checkpoint, self.out_dir / "best.safetensors")
        self.callback(TrainEvent("epoch", epoch=1, epochs=1, loss=0.5, val_dice=list(self.val_dice)))
        return TrainResult(self.out_dir, None, self.out_dir / "best.safetensors", {}, 3, 1)


def test_untrained_model_is_flagged_on_hand_over(widget, qtbot, monkeypatch, tiny_checkpoint):
    import napari_msam.training as training
    from msam_gui_helpers import press

    _FakeTrainer.checkpoint = tiny_checkpoint
    monkeypatch.setattr(training, "Trainer", _FakeTrainer)
    widget.viewer.window.add_dock_widget(widget)
    press(qtbot, widget, "Start")
    qtbot.waitUntil(lambda: not widget.running, timeout=10000)
    assert widget.controls.status.text().startswith("done")
    press(qtbot, widget, "Use in Segment widget")
    assert "has not learned the task" in widget.controls.status.text()
    seg = widget._find_segment_widget()
    qtbot.waitUntil(lambda: "not learned" in seg.controls.status.text(), timeout=30000)
    assert "not learned" in seg.controls.model_info.text()
    seg.close_worker()


def test_trainer_errors_are_one_line_and_a_notification(widget, qtbot, monkeypatch):
    import napari.utils.notifications as notifications

    import napari_msam.training as training
    from msam_gui_helpers import press
    from napari_msam.errors import MSAMError

    class LockError(MSAMError):
        pass

    shown = []
    monkeypatch.setattr(notifications, "show_warning", shown.append)
    _FakeTrainer.error = LockError("runs/train is in use by another training run (pid 123)")
    monkeypatch.setattr(training, "Trainer", _FakeTrainer)
    try:
        press(qtbot, widget, "Start")
        qtbot.waitUntil(lambda: not widget.running, timeout=10000)
    finally:
        _FakeTrainer.error = None
    assert widget.last_error == "runs/train is in use by another training run (pid 123)"
    assert "training failed: runs/train is in use" in widget.controls.status.text() and "Traceback" not in widget.controls.status.text()
    assert any("in use by another training run" in s for s in shown)
    assert widget.controls.start_btn.isEnabled() and not widget.controls.cancel_btn.isEnabled()


def test_browse_buttons_fill_their_fields(widget, qtbot, monkeypatch, tmp_path, tiny_checkpoint):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFileDialog

    from msam_gui_helpers import row_button
    from napari_msam.widgets.train import INIT_FILE, SOURCE_FOLDER

    widget.controls.source_combo.setCurrentText(SOURCE_FOLDER)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "data"))
    qtbot.mouseClick(row_button(widget, "Folder"), Qt.MouseButton.LeftButton)
    assert widget.controls.data_dir.text() == str(tmp_path / "data")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "out"))
    qtbot.mouseClick(row_button(widget, "Output folder"), Qt.MouseButton.LeftButton)
    assert widget.controls.out_dir.text() == str(tmp_path / "out")
    widget.controls.init_combo.setCurrentText(INIT_FILE)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(tiny_checkpoint), ""))
    qtbot.mouseClick(widget.controls.init_browse, Qt.MouseButton.LeftButton)  # the row below "Start from"
    assert widget.controls.init_path.text() == str(tiny_checkpoint)
    assert widget.build_config().init_checkpoint == str(tiny_checkpoint)


def test_start_on_a_folder_another_run_holds_is_refused_as_a_message(widget, qtbot, monkeypatch):
    """A real second run: the output folder is locked by a run in progress (here, this test holding the
    trainer's own lock); Start shows the one-line refusal and a notification, and trains nothing."""
    from pathlib import Path

    import napari.utils.notifications as notifications

    from msam_gui_helpers import press
    from napari_msam.training.checkpoints import run_lock

    shown = []
    monkeypatch.setattr(notifications, "show_warning", shown.append)
    out = Path(widget.controls.out_dir.text())
    with run_lock(out):
        press(qtbot, widget, "Start")
        qtbot.waitUntil(lambda: not widget.running, timeout=30000)
    assert widget.last_error is not None and "in use by another training run" in widget.last_error
    status = widget.controls.status.text()
    assert "in use by another training run" in status and "Traceback" not in status and "\n" not in status
    assert any("in use by another training run" in s for s in shown)
    assert not (out / "last.safetensors").exists() and not (out / "state.pt").exists()
    assert widget.controls.start_btn.isEnabled()


def test_choosing_an_image_layer_presets_its_modality_by_the_one_rule(widget, qtbot):
    """A CT-like layer (Hounsfield units) chosen in the Image box gets "ct"; an MR-like one "mr"."""
    import numpy as np

    ct = np.full((12, 16, 16), -1000.0, np.float32)
    ct[3:9, 4:12, 4:12] = 40.0
    widget.viewer.add_image(ct, name="scan A")
    combo = widget.controls.image_combo
    combo.setCurrentText("scan A")
    assert widget.controls.modality_combo.currentText() == "ct"
    combo.setCurrentText("img")
    assert widget.controls.modality_combo.currentText() == "mr"
