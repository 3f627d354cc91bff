"""Helpers for the napari widget tests (owned by the widget tests; imported, not a conftest).

* ``BallSession``: a deterministic stand-in for ``napari_msam.session.Session`` (same methods) whose
  object is the union of balls around positive clicks minus balls around negative ones, so tests of the
  widget's label-writing rules know exactly which voxels the "model" claims.
* ``blob_volume()``: a small synthetic 3-D image with one bright ellipsoid and its ground truth.
"""

from __future__ import annotations

import numpy as np

from napari_msam.session import ClickResult


def blob_volume(shape=(20, 40, 36), center=(10, 20, 18), radii=(5, 9, 8), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    r = ((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 + ((xx - center[2]) / radii[2]) ** 2
    gt = r <= 1.0
    img = (rng.normal(0, 5, shape) + 100 * gt + 50).astype(np.float32)
    return img, gt.astype(np.uint8)


class BallSession:
    """Stand-in for Session: balls of ``radius`` voxels around clicks (positive add, negative cut)."""

    radius = 3
    delay = 0.0          # seconds per click (to test queueing / cancelling)
    instances: list = []

    def __init__(self, loaded, device=None, threads=None):
        self.loaded = loaded
        self.device = "cpu"
        self._shape = None
        self._clicks: list = []
        self._next_id = 1
        self.calls: list = []
        BallSession.instances.append(self)

    def set_image(self, volume, spacing=(1, 1, 1), modality="other"):
        self._shape = np.asarray(volume).shape
        self.spacing = spacing
        self.modality = modality
        self._clicks = []
        self.calls.append(("set_image", self._shape, modality))

    def _mask_for(self, clicks):
        mask = np.zeros(self._shape, bool)
        idx = np.indices(self._shape)
        for v, pos in clicks:
            ball = sum((idx[a] - v[a]) ** 2 for a in range(3)) <= self.radius**2
            mask = (mask | ball) if pos else (mask & ~ball)
        return mask

    @property
    def shape(self):
        return tuple(self._shape)

    @property
    def current_mask(self):
        return self._mask_for(self._clicks)

    @property
    def clicks(self):
        return list(self._clicks)

    def add_click(self, voxel, positive=True):
        if self._shape is None:
            raise ValueError("no image")
        if self.delay:
            import time

            time.sleep(self.delay)
        self.calls.append(("click", tuple(voxel), positive))
        self._clicks.append((tuple(int(v) for v in voxel), bool(positive)))
        full = (slice(0, self._shape[0]), slice(0, self._shape[1]), slice(0, self._shape[2]))
        return ClickResult(full, self.current_mask, None, {"total": 0.001}, self._next_id)

    def undo(self):
        if not self._clicks:
            return None
        self._clicks.pop()
        full = tuple(slice(0, n) for n in self._shape)
        return ClickResult(full, self.current_mask, None, {"total": 0.0}, self._next_id)

    def reset(self):
        self.calls.append(("reset",))
        self._clicks = []

    def accept(self):
        self.calls.append(("accept",))
        oid = self._next_id
        self._next_id += 1
        self._clicks = []
        return oid


# ----------------------------------------------------------------------------- driving the GUI like a user
def find_button(widget, text: str):
    """The visible push button of ``widget`` whose text starts with ``text`` (how a user finds it)."""
    from qtpy.QtWidgets import QAbstractButton

    found = [b for b in widget.findChildren(QAbstractButton) if b.text().startswith(text)]
    assert found, f"no button {text!r} in {[b.text() for b in widget.findChildren(QAbstractButton)]}"
    assert len(found) == 1, f"several buttons start with {text!r}"
    return found[0]


def press(qtbot, widget, text: str) -> None:
    """Press the button labelled ``text`` with the mouse, as a person does (emits ``clicked(bool)``)."""
    from qtpy.QtCore import Qt

    button = find_button(widget, text)
    assert button.isEnabled(), f"button {text!r} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def voxel_screen_pos(viewer, image_layer, voxel):
    """Move the 2-D view to ``voxel``'s slice; returns the canvas pixel (QPoint) showing that voxel."""
    from qtpy.QtCore import QPoint

    world = np.asarray(image_layer.data_to_world(np.asarray(voxel, dtype=float)))
    viewer.dims.set_point(0, world[0])
    canvas = viewer.window._qt_viewer.canvas.native
    cam = viewer.camera
    px = (world[-1] - cam.center[-1]) * cam.zoom + canvas.width() / 2
    py = (world[-2] - cam.center[-2]) * cam.zoom + canvas.height() / 2
    return QPoint(int(round(px)), int(round(py)))


def click_canvas(qtbot, viewer, pos) -> None:
    """A left mouse click on the vispy canvas at ``pos`` (a QPoint in canvas pixels)."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    canvas = viewer.window._qt_viewer.canvas.native
    QTest.mouseMove(canvas, pos)
    qtbot.wait(10)
    QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
    qtbot.wait(10)


def click_voxel(qtbot, viewer, image_layer, voxel) -> None:
    """Click the canvas where the 2-D view shows ``voxel`` of ``image_layer``."""
    click_canvas(qtbot, viewer, voxel_screen_pos(viewer, image_layer, voxel))


def row_button(widget, row_label: str):
    """The push button in the form row labelled ``row_label`` (e.g. the "Browse…" beside "Output folder")."""
    from qtpy.QtWidgets import QFormLayout, QLabel, QPushButton, QWidget

    for form in widget.findChildren(QFormLayout):
        for r in range(form.rowCount()):
            label = form.itemAt(r, QFormLayout.ItemRole.LabelRole)
            field = form.itemAt(r, QFormLayout.ItemRole.FieldRole)
            if label is None or field is None or not isinstance(label.widget(), QLabel):
                continue
            if label.widget().text() == row_label and isinstance(field.widget(), QWidget):
                buttons = field.widget().findChildren(QPushButton)
                if buttons:
                    return buttons[0]
    raise AssertionError(f"no button in a row labelled {row_label!r}")
