"""The Segment (M-SAM) widget: click-based 3-D segmentation into a Labels layer.

A click travels: Points layer "M-SAM prompts" -> world coordinates -> voxel index of the image layer (in
the 3-D view: the brightest voxel along the ray under the cursor) -> the single inference worker (owns
the Session; FIFO, never reordered) -> ObjectUpdate (bbox + mask) -> written into the output Labels layer
inside the bbox, respecting the overwrite policy. The model never runs on the GUI thread.

The widget assembles its parts and connects them: the controls (:class:`SegmentControls`), the worker's
result routing (:class:`JobRouter`), the layer choosers (:class:`LayerChoice`), the model and session
(:class:`ModelChoice`), the prompts layer (:class:`ClickInput`), the object being drawn
(:class:`ClickFlow`) and the Auto N-click tab (:class:`AutoClickPanel`).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QMessageBox, QVBoxLayout, QWidget

from .. import modality as modality_rule
from ..errors import MSAMError
from ._utils import close_quietly, friendly
from .auto_click import AutoClickPanel
from .job_router import JobRouter
from .jobs import ObjectUpdate
from .labels_policy import CT_PRESETS, POLICIES, compose_labels, window_to_limits
from .model_choice import ModelChoice
from .prompts import (
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
    PROMPTS_NAME,
    SHORTCUTS,
    Prompts,
    bind_layer_keys,
    bind_viewer_keys,
    unbind_viewer_keys,
)
from .segment_clicks import ClickFlow, ClickInput
from .segment_layers import LayerChoice
from .segment_ui import DEFAULT_MODEL, FILE_MODEL, NEW_OUTPUT, OUTPUT_NAME, SegmentControls
from .volume_io import open_volume_dialog, save_labels_dialog

__all__ = [
    "CT_PRESETS", "DEFAULT_MODEL", "FILE_MODEL", "NEGATIVE_COLOR", "NEW_OUTPUT", "OUTPUT_NAME", "POLICIES",
    "POSITIVE_COLOR", "PROMPTS_NAME", "SHORTCUTS", "ObjectUpdate", "SegmentWidget", "compose_labels",
    "window_to_limits",
]


class SegmentWidget(QWidget):
    """Interactive M-SAM segmentation of the selected image layer into a Labels layer.

    ``model_path`` preselects a checkpoint instead of the embedded default; ``session_factory`` (tests)
    replaces :class:`napari_msam.session.Session`. Its parts: ``controls``, ``jobs`` (and its ``worker``),
    ``layers``, ``model``, ``prompts``, ``points``, ``clicks`` and ``auto_panel``.
    """

    def __init__(self, napari_viewer: Any, *, model_path: str | None = None,
                 session_factory: Any = None, confirm_clear: bool = True) -> None:
        super().__init__()
        # napari hands plugin widgets a PublicOnlyProxy whose attribute access returns fresh proxies, so
        # layer identity (``is``, ``id``) would change on every access; work on the real viewer.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self._confirm_clear = confirm_clear
        self.controls = SegmentControls()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.controls)
        self.jobs = JobRouter(self.error, self.controls.show_queue, parent=self)
        self.worker = self.jobs.worker
        # the worker must stop even when napari deletes the dock widget without a close event
        self.destroyed.connect(functools.partial(close_quietly, self.worker))
        self.prompts = Prompts(self.viewer, self._on_points_changed, self._bind_layer_keys)
        self.auto_panel = AutoClickPanel(self)
        self.layers = LayerChoice(self.viewer, self.controls.image_combo, self.controls.output_combo,
                                  on_changed=self._on_layers_changed, on_labels=self.auto_panel.refresh_layers,
                                  on_output_added=self._on_output_added)
        self.model = ModelChoice(self.controls, self.jobs, self, session_factory=session_factory,
                                 before_rebuild=lambda: self.clicks.drop_tracking(clear_points=True))
        self.points = ClickInput(self.viewer, self.controls, self.layers, self.prompts)
        self.clicks = ClickFlow(self.viewer, self.controls, self.jobs, self.layers, self.model, self.points, self)
        self.controls.add_tab(self.auto_panel, "Auto N-click")
        self._viewer_keys: list[str] = []
        self._connect_controls()
        if model_path:
            self.controls.model_combo.setCurrentText(FILE_MODEL)
            self.controls.model_path.setText(str(model_path))
        self.layers.watch()
        self.layers.refresh()
        self._viewer_keys.extend(bind_viewer_keys(self.viewer, self._key_actions()))
        if model_path:
            self.model.load()
        else:  # deferred, so a caller may still pick another model (set_model) without a wasted load
            QTimer.singleShot(0, self.model.initial_load)

    def _connect_controls(self) -> None:
        c = self.controls
        for signal, slot in (
            (c.image_combo.currentIndexChanged, self._on_image_changed),
            (c.modality_combo.activated, self._on_modality_changed),
            (c.window_combo.activated, self._on_window_preset),
            (c.output_combo.currentIndexChanged, self._on_output_changed),
            (c.label_spin.valueChanged, self._on_label_id_changed),
            (c.polarity_btn.clicked, self.toggle_polarity),
            (c.undo_btn.clicked, self.undo),
            (c.reset_btn.clicked, self.reset_object),
            (c.accept_btn.clicked, self.accept_object),
            (c.clear_btn.clicked, self.clear_labels),
            (c.open_btn.clicked, self.open_volume),
            (c.save_btn.clicked, self.save_labels),
        ):
            signal.connect(slot)

    # ------------------------------------------------------------------ state
    @property
    def closed(self) -> bool:
        """True once the widget's worker has stopped (after ``close_worker``)."""
        return self.jobs.closed

    @property
    def busy_auto(self) -> bool:
        return self.clicks.busy_auto

    def set_model(self, path: str | None) -> None:
        """Use the checkpoint at ``path`` (None: the embedded default) and load it on the worker."""
        self.model.set(path)

    # ------------------------------------------------------------------ status sink
    def show_message(self, text: str, level: str = "info") -> None:
        """Status line + a napari notification for warnings/errors (never a traceback)."""
        self.controls.show_status(text, level)
        if level in ("warning", "error"):
            try:
                from napari.utils.notifications import show_warning

                show_warning(f"M-SAM: {text}")
            except Exception:  # notifications are a nicety
                pass

    def error(self, text: str) -> None:
        self.show_message(text, "error")

    # ------------------------------------------------------------------ layers and keys
    def image_name(self) -> str:
        return self.layers.image_name()

    def image_layer(self) -> Any:
        """The chosen image layer, or raise MSAMError with what to do."""
        return self.layers.image_layer()

    def prompts_layer(self) -> Any:
        """The "M-SAM prompts" Points layer with the image's transform (made when missing)."""
        return self.points.prompts_layer()

    def _on_layers_changed(self) -> None:
        if self.closed:
            return
        if self.prompts.forget_if_removed():
            self.clicks.forget_clicks()
        self.layers.refresh()

    def _on_output_added(self, layer: Any) -> None:
        self._bind_layer_keys(layer)
        # napari selects every new layer: give the selection back to the prompts, so the next click lands
        self.points.ready()

    def _on_points_changed(self, event: Any) -> None:
        self.clicks.on_points_changed(event)

    def _key_actions(self) -> dict[str, Any]:
        return {"t": lambda *_: self.toggle_polarity(), "u": lambda *_: self.undo(),
                "r": lambda *_: self.reset_object(), "n": lambda *_: self.accept_object()}

    def _bind_layer_keys(self, layer: Any) -> None:
        bind_layer_keys(layer, self._key_actions())

    # ------------------------------------------------------------------ control handlers
    @friendly
    def _on_image_changed(self, *_: Any) -> None:
        c = self.controls
        if self.closed:
            return
        name = c.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            return
        self.clicks.drop_tracking(clear_points=True)
        try:
            layer = self.layers.image_layer()
        except MSAMError as exc:  # say at once why this layer cannot be segmented
            c.modality_note.setText("")
            self.show_message(f"cannot segment this layer: {exc}", "warning")
            return
        declared = (layer.metadata or {}).get("modality")
        guess = modality_rule.guess(name, self.layers.image_array(layer))
        if declared in ("ct", "mr", "other") and declared != guess.modality:
            guess = modality_rule.guess(name, None, declared=declared)
        c.modality_combo.setCurrentText({"ct": "CT", "mr": "MR"}.get(guess.modality, "other"))
        c.modality_note.setText(f"<small>{guess.describe()}; change it if wrong</small>")
        self._update_window_enabled()
        self.auto_panel.on_image_changed()
        self.points.ready()
        self.show_message(f"ready: click inside the object in {name!r}")

    @friendly
    def _on_modality_changed(self, *_: Any) -> None:
        self.controls.modality_note.setText(f"<small>{self.controls.modality_combo.currentText()} "
                                            "(set by hand)</small>")
        self._update_window_enabled()
        self.clicks.drop_tracking(clear_points=True)

    def _update_window_enabled(self) -> None:
        self.controls.window_combo.setEnabled(self.controls.modality_combo.currentText() == "CT")

    @friendly
    def _on_window_preset(self, *_: Any) -> None:
        name = self.controls.window_combo.currentText()
        if name not in CT_PRESETS:
            return
        layer = self.layers.image_layer()
        lo, hi = window_to_limits(*CT_PRESETS[name])
        rlo, rhi = layer.contrast_limits_range
        if lo < rlo or hi > rhi:
            layer.contrast_limits_range = (min(lo, rlo), max(hi, rhi))
        layer.contrast_limits = (lo, hi)
        self.show_message(f"display window {name} (the model input is unchanged)")

    @friendly
    def _on_label_id_changed(self, value: int) -> None:
        self.clicks.relabel(int(value))

    @friendly
    def _on_output_changed(self, *_: Any) -> None:
        if self.clicks.writes.active:
            # the object stays where it was written; start a new one in the new layer
            self.clicks.drop_tracking(clear_points=True)
        name = self.controls.output_combo.currentText()
        if name and name != NEW_OUTPUT and name in self.viewer.layers:
            self.clicks.start_next_id(self.viewer.layers[name])

    # ------------------------------------------------------------------ the Auto tab's host (AutoHost)
    def start_fresh_object(self) -> None:
        """Put back what the current object changed and get everything ready for a new one."""
        self.clicks.start_fresh_object()

    def run_auto(self, fn: Any, *args: Any, on_row: Any, on_done: Any) -> None:
        self.clicks.run_auto(fn, *args, on_row=on_row, on_done=on_done)

    def cancel_auto(self) -> bool:
        return self.clicks.cancel_auto()

    def show_auto_click(self, voxel: tuple[int, int, int], positive: bool, bbox: Any, mask: Any) -> None:
        self.clicks.show_auto_click(voxel, positive, bbox, mask)

    # ------------------------------------------------------------------ actions (buttons, keys, scripts)
    def add_click(self, voxel: tuple[int, int, int], positive: bool = True) -> None:
        """Programmatic click (scripts, tests): adds the point to the prompts layer like a user would."""
        self.points.add(voxel, positive)

    @friendly
    def toggle_polarity(self) -> None:
        self.points.set_polarity(not self.points.positive)

    @friendly
    def set_polarity(self, positive: bool) -> None:
        self.points.set_polarity(positive)

    @friendly
    def undo(self) -> None:
        self.clicks.undo()

    @friendly
    def reset_object(self) -> None:
        self.clicks.reset()

    @friendly
    def accept_object(self) -> None:
        self.clicks.accept()

    @friendly
    def clear_labels(self) -> None:
        layer = self.layers.output_layer(create=False)
        if layer is None:
            self.show_message("no output layer to clear")
            return
        if self._confirm_clear and np.any(layer.data):
            ans = QMessageBox.question(self, "Clear labels",
                                       f"Erase every label in {layer.name!r}? This cannot be undone.")
            if ans != QMessageBox.StandardButton.Yes:
                self.show_message("nothing cleared")
                return
        self.reset_object()
        self.clicks.writes.commit()
        layer.data[...] = 0
        layer.refresh()
        self.controls.label_spin.setValue(1)
        self.show_message(f"{layer.name!r} cleared")

    @friendly
    def open_volume(self) -> None:
        """Open a volume file or DICOM folder (and optionally its ground truth) as layers."""
        name = open_volume_dialog(self, self.viewer)
        if name:
            self.controls.image_combo.setCurrentText(name)
            self.points.ready()  # the ground truth, added last, took the selection
            self.show_message(f"opened {name!r}: click inside the object")

    @friendly
    def save_labels(self) -> None:
        """Save the output labels beside the image, on its own grid."""
        saved = save_labels_dialog(self, self.layers.output_layer(create=False), self.layers.image_layer())
        if saved:
            self.show_message(f"saved {saved}")

    def close_worker(self, timeout: float = 30.0) -> None:
        """Stop the inference thread (idempotent); call before dropping the widget."""
        if self.closed:
            return
        self.jobs.close(timeout)
        self.layers.unwatch()
        self.prompts.disconnect()
        unbind_viewer_keys(self.viewer, self._viewer_keys)
        self._viewer_keys = []

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self.close_worker()
        super().closeEvent(event)
