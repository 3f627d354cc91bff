"""Segment widget behaviour a person meets: results arriving after Reset / Accept, settings changes, layers
that cannot be segmented, the modality guess, clicks in the 3-D view, open / save, screen size, colours."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QFileDialog, QMessageBox

from msam_gui_helpers import BallSession, blob_volume, click_canvas, click_voxel, press
from napari_msam.widgets.segment import OUTPUT_NAME, PROMPTS_NAME

pytestmark = pytest.mark.gui
SCALE = (2.0, 1.0, 1.0)


def _idle(qtbot, w, timeout=30000):
    qtbot.waitUntil(lambda: w.worker.pending == 0 and not w.busy_auto, timeout=timeout)
    qtbot.wait(50)


@pytest.fixture
def seg(make_segment_widget):
    def factory(session_factory=BallSession, image=True):
        return make_segment_widget(session_factory, image=None if image else False, show=True)

    return factory


def test_reset_while_a_click_computes_leaves_no_ghost(seg, qtbot):
    viewer, w = seg()
    BallSession.delay = 0.5
    click_voxel(qtbot, viewer, viewer.layers["blob MR"], (10, 20, 18))
    assert w.worker.pending
    press(qtbot, w, "Reset")
    _idle(qtbot, w)
    assert not viewer.layers[OUTPUT_NAME].data.any()
    assert len(viewer.layers[PROMPTS_NAME].data) == 0
    assert w.controls.status.text() == "object reset"


def test_accept_while_a_click_computes_accepts_it(seg, qtbot):
    viewer, w = seg()
    BallSession.delay = 0.5
    click_voxel(qtbot, viewer, viewer.layers["blob MR"], (10, 20, 18))
    press(qtbot, w, "Accept")
    assert "will be accepted" in w.controls.status.text()
    _idle(qtbot, w)
    out = viewer.layers[OUTPUT_NAME].data
    assert (out == 1).sum() > 0 and w.controls.label_spin.value() == 2
    assert "object 1 accepted" in w.controls.status.text() and "queued" not in w.controls.status.text()
    assert ("accept",) in BallSession.instances[-1].calls


def test_model_box_leaves_loading_after_a_settings_change(seg, qtbot):
    viewer, w = seg(session_factory=None)
    for change in (lambda: w.controls.edge_combo.setCurrentText("off"), lambda: w.controls.tta_spin.setValue(2)):
        change()
        _idle(qtbot, w)
        assert "loading" not in w.controls.model_info.text() and "msam-tiny" in w.controls.model_info.text()


@pytest.mark.parametrize("data, why", [
    (np.zeros((30, 30), np.float32), "2-D"),
    (np.zeros((4, 10, 30, 30), np.float32), "4 dimensions"),
    (np.zeros((30, 30, 3), np.uint8), "RGB"),
])
def test_layers_that_cannot_be_segmented_are_explained(seg, qtbot, monkeypatch, data, why):
    import napari.utils.notifications as notifications

    shown = []
    monkeypatch.setattr(notifications, "show_warning", shown.append)
    viewer, w = seg()
    viewer.add_image(data, name="odd", rgb=data.ndim == 3 and data.shape[-1] == 3)
    w.controls.image_combo.setCurrentText("odd")
    assert "cannot segment" in w.controls.status.text() and why in w.controls.status.text()
    assert any(why in s for s in shown)


def test_modality_guess_is_shown_and_can_be_changed(seg, qtbot):
    viewer, w = seg()
    # a z-scored volume whose name has no modality word and is not CT-like: taken as MR, said to be a guess
    img = blob_volume()[0]
    viewer.add_image((img - img.mean()) / img.std(), name="BraTS_007", scale=SCALE)
    w.controls.image_combo.setCurrentText("BraTS_007")
    assert w.controls.modality_combo.currentText() == "MR" and "taken as MR" in w.controls.modality_note.text()
    w.controls.modality_combo.setCurrentIndex(w.controls.modality_combo.findText("other"))
    w.controls.modality_combo.activated.emit(w.controls.modality_combo.currentIndex())
    assert "by hand" in w.controls.modality_note.text()
    click_voxel(qtbot, viewer, viewer.layers["BraTS_007"], (10, 20, 18))
    _idle(qtbot, w)
    assert BallSession.instances[-1].calls[0][2] == "other"
    viewer.add_image(blob_volume()[0], name="patient 3 PET", scale=SCALE)  # the name says PET: not MR
    w.controls.image_combo.setCurrentText("patient 3 PET")
    assert w.controls.modality_combo.currentText() == "other" and "PET" in w.controls.modality_note.text()


def _wait_for_a_still_view(qtbot, viewer, canvas) -> None:
    """Wait until the canvas size and the camera stop changing (the switch to 3-D resets the view and the
    dock may still be resizing the canvas; a click computed from a moving view lands beside its voxel)."""
    def view():
        cam = viewer.camera
        return canvas.width(), canvas.height(), round(cam.zoom, 6), tuple(np.round(cam.center, 6))

    last = [None]

    def still() -> bool:
        now = view()
        same, last[0] = now == last[0], now
        return same

    qtbot.wait(100)
    qtbot.waitUntil(lambda: still() or qtbot.wait(100), timeout=5000)


def test_a_3d_click_lands_on_the_brightest_voxel_under_the_cursor(seg, qtbot):
    viewer, w = seg()
    image = viewer.layers["blob MR"]
    viewer.dims.ndisplay = 3
    viewer.dims.set_point(0, 0.0)  # the slider plane lies outside the object
    canvas = viewer.window._qt_viewer.canvas.native
    _wait_for_a_still_view(qtbot, viewer, canvas)
    # the default 3-D camera looks down axis 0: screen x/y are the data's x/y around the camera centre
    cam = viewer.camera
    world = image.data_to_world((10, 20, 18))
    from qtpy.QtCore import QPoint

    px = (world[2] - cam.center[2]) * cam.zoom + canvas.width() / 2
    py = (world[1] - cam.center[1]) * cam.zoom + canvas.height() / 2
    click_canvas(qtbot, viewer, QPoint(int(round(px)), int(round(py))))
    _idle(qtbot, w)
    clicks = [c for c in BallSession.instances[-1].calls if c[0] == "click"]
    assert len(clicks) == 1
    z, y, x = clicks[0][1]
    gt = viewer.layers["blob MR ground truth"].data
    assert abs(y - 20) <= 1 and abs(x - 18) <= 1 and gt[z, y, x] == 1  # inside the object, not on z = 0
    # the prompt is drawn where the click went
    np.testing.assert_allclose(viewer.layers[PROMPTS_NAME].data[0], (z, y, x), atol=1e-6)


def test_a_click_in_a_rotated_3d_view_lands_inside_the_object_under_the_cursor(seg, qtbot):
    """A rotated camera: the click goes along the ray under the cursor (not to the slider plane), into the
    object the user sees there, on a voxel that the screen shows under the cursor."""
    from qtpy.QtCore import QPoint

    viewer, w = seg()
    image = viewer.layers["blob MR"]
    viewer.dims.ndisplay = 3
    viewer.dims.set_point(0, 0.0)  # the slider plane lies outside the object
    viewer.camera.angles = (20.0, 35.0, 70.0)
    canvas = viewer.window._qt_viewer.canvas.native
    _wait_for_a_still_view(qtbot, viewer, canvas)
    to_canvas = viewer.window._qt_viewer.canvas.layer_to_visual[image].node.get_transform("visual", "canvas")

    def pixel(voxel):
        p = to_canvas.map([voxel[2], voxel[1], voxel[0], 1.0])  # vispy's visual axes are the data's reversed
        return p[:2] / p[3]

    target = pixel((10, 20, 18))  # the object's centre, seen through the rotated camera
    click_canvas(qtbot, viewer, QPoint(int(round(target[0])), int(round(target[1]))))
    _idle(qtbot, w)
    clicks = [c for c in BallSession.instances[-1].calls if c[0] == "click"]
    assert len(clicks) == 1
    voxel = clicks[0][1]
    assert viewer.layers["blob MR ground truth"].data[voxel] == 1 and voxel[0] != 0
    assert np.linalg.norm(pixel(voxel) - target) <= 2.0 * viewer.camera.zoom  # on the ray under the cursor


def test_open_volume_and_save_labels(seg, qtbot, monkeypatch, tmp_path, sts_paths):
    viewer, w = seg(image=False)
    image_path, mask_path = sts_paths
    answers = iter([str(image_path), str(mask_path)])
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (next(answers), ""))
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    press(qtbot, w, "Open volume")
    name = w.controls.image_combo.currentText()
    assert name and name in viewer.layers and f"{name} ground truth" in viewer.layers
    assert w.auto_panel.gt_combo.currentText() == f"{name} ground truth"
    assert w.controls.modality_combo.currentText() == "MR"
    _idle(qtbot, w)
    click_voxel(qtbot, viewer, viewer.layers[name], tuple(int(v) for v in np.argwhere(
        viewer.layers[f"{name} ground truth"].data)[0]))
    _idle(qtbot, w)
    out = viewer.layers[OUTPUT_NAME]
    assert out.data.any()
    # the image file itself is refused
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(image_path), ""))
    press(qtbot, w, "Save labels")
    assert "this is the input file" in w.controls.status.text()
    target = tmp_path / "labels.nii.gz"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    press(qtbot, w, "Save labels")
    assert target.is_file() and "saved" in w.controls.status.text()
    import nibabel as nib

    ref, saved = nib.load(str(image_path)), nib.load(str(target))
    np.testing.assert_allclose(saved.affine, ref.affine, atol=1e-4)
    assert saved.shape == ref.shape and int(np.asarray(saved.dataobj).astype(bool).sum()) == int(
        out.data.astype(bool).sum())
    # an existing file is replaced only when confirmed
    before = target.read_bytes()
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No)
    out.data[...] = 0
    press(qtbot, w, "Save labels")
    assert target.read_bytes() == before


def test_both_docks_fit_a_1080_screen_and_colours_differ_from_ground_truth(seg, qtbot):
    from napari_msam.widgets.train import TrainWidget

    viewer, w = seg()
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    for widget in (w, train):
        assert widget.minimumSizeHint().height() <= 1000
        assert widget.parentWidget().minimumSizeHint().height() <= 1000
    click_voxel(qtbot, viewer, viewer.layers["blob MR"], (10, 20, 18))
    _idle(qtbot, w)
    viewer.add_labels(blob_volume()[1], name="plain gt", scale=SCALE)  # napari's default colours
    out = viewer.layers[OUTPUT_NAME]
    for gt_name in ("plain gt", "blob MR ground truth"):
        gt = viewer.layers[gt_name]
        for label in range(1, 11):
            assert not np.allclose(out.colormap.map(label), gt.colormap.map(label), atol=0.02), (gt_name, label)


def test_network_mask_shows_before_edge_refinement(seg, qtbot, monkeypatch):
    viewer, w = seg(session_factory=None)
    assert w.controls.edge_refine == "auto" and w.controls.modality_combo.currentText() == "MR"
    texts: list[str] = []
    show = w.show_message
    monkeypatch.setattr(w, "show_message", lambda text, level="info": (texts.append(text), show(text, level)))
    click_voxel(qtbot, viewer, viewer.layers["blob MR"], (10, 20, 18))
    qtbot.waitUntil(lambda: "edges refined" in w.controls.status.text(), timeout=60000)
    _idle(qtbot, w, 60000)
    session = w.worker.state.session
    shown = [t for t in texts if t.startswith("click 1:") and "computing" not in t]
    assert "refining edges" in shown[0] and "edges refined" in shown[-1]
    np.testing.assert_array_equal(viewer.layers[OUTPUT_NAME].data == 1, session.current_mask)


class _TwoPhaseBallSession(BallSession):
    """BallSession with the Session's two-phase edge refinement: refine_edges() grows the last ball."""

    refining = True

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self._pending = False

    def add_click(self, voxel, positive=True, refine_edges=True):
        res = super().add_click(voxel, positive)
        self._pending = not refine_edges
        return res

    def refine_edges(self):
        from napari_msam.session import ClickResult

        self.calls.append(("refine", self._clicks[-1][0]))
        if not self._pending:
            return None
        self._pending = False
        full = tuple(slice(0, n) for n in self._shape)
        return ClickResult(full, self.current_mask, None, {"total": 0.001, "edges": 0.001}, self._next_id)


def test_a_newer_click_supersedes_a_pending_refinement(seg, qtbot):
    viewer, w = seg(session_factory=_TwoPhaseBallSession)
    BallSession.delay = 0.3
    image = viewer.layers["blob MR"]
    click_voxel(qtbot, viewer, image, (10, 20, 18))
    click_voxel(qtbot, viewer, image, (10, 26, 12))
    qtbot.waitUntil(lambda: "edges refined" in w.controls.status.text(), timeout=20000)
    _idle(qtbot, w)
    calls = [c for c in BallSession.instances[-1].calls if c[0] in ("click", "refine")]
    assert calls == [("click", (10, 20, 18), True), ("click", (10, 26, 12), True), ("refine", (10, 26, 12))]
    assert w.controls.status.text().startswith("click 2:")


def test_the_model_line_says_which_inference_additions_run(seg, qtbot, tiny_loaded, tmp_path):
    """The embedded-style checkpoint (validated with edge refinement on MR) lists its additions; a
    checkpoint without such metadata, as reference weights, says the network runs alone."""
    from qtpy.QtCore import Qt

    from napari_msam.model import save_checkpoint

    viewer, w = seg(session_factory=None)  # the real Session
    info = w.controls.model_info
    qtbot.waitUntil(lambda: "additions:" in info.text(), timeout=30000)
    assert "edge refinement (mr images)" in info.text()

    plain = tmp_path / "paper_like.safetensors"
    save_checkpoint(plain, tiny_loaded.model, tiny_loaded.preprocess, {"kind": "msam-train"})
    field = w.controls.model_path
    field.clear()
    qtbot.keyClicks(field, str(plain))
    qtbot.keyClick(field, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: "paper_like" in info.text(), timeout=30000)
    assert "no inference additions" in info.text() and "additions:" not in info.text()
