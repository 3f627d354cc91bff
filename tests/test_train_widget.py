"""Train widget: one tiny epoch from the viewer's layers in a worker thread, live progress and plots,
Cancel, readable errors, and the hand-over of the checkpoint to the Segment widget."""

from __future__ import annotations

import pytest

from _training_helpers import blob_case

pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer, tmp_path):
    from napari_msam.widgets.train import SOURCE_LAYERS, TrainWidget

    viewer = make_napari_viewer()
    img, lab, sp = blob_case(0)
    viewer.add_image(img, name="img", scale=sp)
    viewer.add_labels(lab, name="gt", scale=sp)
    w = TrainWidget(viewer)
    w.source_combo.setCurrentText(SOURCE_LAYERS)
    w.image_combo.setCurrentText("img")
    w.labels_combo.setCurrentText("gt")
    w.config_combo.setCurrentText("msam-tiny")
    w.out_dir.setText(str(tmp_path / "run"))
    w.epochs.setValue(1)
    w.steps.setValue(3)
    w.clicks.setValue(2)
    w.batch.setValue(1)
    w.device_combo.setCurrentText("cpu")
    yield w
    if w.trainer is not None:
        w.trainer.cancel()


def test_one_epoch_from_layers_shows_progress(widget, qtbot):
    cfg = widget.build_config()
    assert cfg.cases and cfg.cases[0].spacing == (2.0, 2.0, 2.0) and cfg.model_config == "msam-tiny"
    widget.start()
    assert widget.running and not widget.start_btn.isEnabled() and widget.cancel_btn.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    assert widget.last_error is None, widget.last_error
    kinds = [e.kind for e in widget.events]
    assert kinds.count("step") == 3 and "epoch" in kinds and kinds[-1] == "done"
    assert widget.progress.value() == 3 and widget.progress.maximum() == 3
    xs, ys = widget.loss_plot.data("loss")
    assert xs == [1, 2, 3] and all(y > 0 for y in ys)
    assert widget.result is not None and widget.result.last_path.is_file()
    assert widget.checkpoint_path().name == "best.safetensors" and widget.use_btn.isEnabled()

    got = []
    widget.checkpoint_ready.connect(got.append)
    seg = widget.use_in_segment()
    assert got == [str(widget.checkpoint_path())]
    assert seg is not None and seg.model_path.text() == got[0]
    assert widget._find_segment_widget() is seg  # found again next time, not duplicated


def test_cancel_and_errors(widget, qtbot):
    widget.steps.setValue(200)
    widget.start()
    qtbot.waitUntil(lambda: any(e.kind == "step" for e in widget.events), timeout=60000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    assert widget.result is not None and widget.result.cancelled
    assert widget.checkpoint_path() is not None  # loadable checkpoint left behind
    from napari_msam.model.weights import load_checkpoint

    load_checkpoint(widget.checkpoint_path())

    widget.labels_combo.clear()
    widget.start()
    assert not widget.running and "choose a 3-D image layer" in widget.status.text()


def test_folder_source_passes_the_validation_protocol(widget, tmp_path):
    from napari_msam.widgets.train import SOURCE_FOLDER, SOURCE_LAYERS

    widget.source_combo.setCurrentText(SOURCE_FOLDER)
    widget.data_dir.setText(str(tmp_path))
    widget.val_patients.setText("STS_003, STS_008")
    assert widget.val_protocol.isEnabled()
    widget.val_protocol.setCurrentText("session")
    cfg = widget.build_config()
    assert cfg.val_patients == ("STS_003", "STS_008") and cfg.val_protocol == "session"
    widget.source_combo.setCurrentText(SOURCE_LAYERS)
    assert not widget.val_protocol.isEnabled()  # one layer: nothing to validate on
