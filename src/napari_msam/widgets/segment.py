"""The Segment (M-SAM) widget: click-based 3-D segmentation into a Labels layer.

A click travels: Points layer "M-SAM prompts" -> world coordinates -> voxel index of the image layer (in
the 3-D view: the brightest voxel along the ray under the cursor) -> the single inference worker (owns
the Session; FIFO, never reordered) -> ObjectUpdate (bbox + mask) -> written into the output Labels layer
inside the bbox, respecting the overwrite policy. The model never runs on the GUI thread.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QMessageBox

from .. import modality as modality_rule
from ..errors import MSAMError
from ._utils import close_quietly, friendly
from .auto_click import AutoClickPanel
from .jobs import (
    ObjectUpdate,
    SessionSpec,
    job_accept,
    job_reset,
    job_undo,
)
from .labels_policy import (
    CT_PRESETS,
    POLICIES,
    ObjectWrites,
    compose_labels,
    next_free_id,
    window_to_limits,
)
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
from .segment_clicks import ClickFlow
from .segment_layers import LayerChoice
from .segment_ui import DEFAULT_MODEL, FILE_MODEL, NEW_OUTPUT, OUTPUT_NAME, SegmentControls
from .volume_io import open_volume_dialog, save_labels_dialog
from .workers import InferenceWorker, JobResult

log = logging.getLogger(__name__)


__all__ = [
    "CT_PRESETS", "DEFAULT_MODEL", "FILE_MODEL", "NEGATIVE_COLOR", "NEW_OUTPUT", "OUTPUT_NAME", "POLICIES",
    "POSITIVE_COLOR", "PROMPTS_NAME", "SHORTCUTS", "ObjectUpdate", "SegmentWidget", "compose_labels",
    "window_to_limits",
]


class SegmentWidget(LayerChoice, ClickFlow, SegmentControls):
    """Interactive M-SAM segmentation of the selected image layer into a Labels layer.

    ``model_path`` preselects a checkpoint instead of the embedded default; ``session_factory`` (tests)
    replaces :class:`napari_msam.session.Session`. The controls come from :class:`SegmentControls`, the
    layer lookups from :class:`LayerChoice`, the click loop from :class:`ClickFlow`.
    """

    def __init__(self, napari_viewer: Any, *, model_path: str | None = None,
                 session_factory: Any = None, confirm_clear: bool = True) -> None:
        super().__init__()
        # napari hands plugin widgets a PublicOnlyProxy whose attribute access returns fresh proxies, so
        # layer identity (``is``, ``id``) would change on every access; work on the real viewer.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self._session_factory = session_factory
        self._confirm_clear = confirm_clear
        self.worker = InferenceWorker()
        self.worker.finished.connect(self._on_job_finished)
        self.worker.progress.connect(self._on_job_progress)
        self.worker.queue_changed.connect(self._on_queue_changed)
        # the worker must stop even when napari deletes the dock widget without a close event
        self.destroyed.connect(functools.partial(close_quietly, self.worker))
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(functools.partial(close_quietly, self.worker))
        self._handlers: dict[int, Any] = {}          # job id -> GUI-thread callback(JobResult)
        self._progress_handlers: dict[int, Any] = {}
        self._submitted_spec: SessionSpec | None = None
        self._image_cache: tuple[int, np.ndarray] | None = None
        self._object_clicks: list[tuple[tuple[int, int, int], bool]] = []
        self._generation = 0                         # bumped by Reset / Accept / a new image or model
        self._object_jobs: set[int] = set()          # jobs of the current object still to report
        self._refine_jobs: set[int] = set()          # pending edge refinements (a newer click drops them)
        self._step_serial = 0                        # clicks / undos / replays submitted so far
        self._accept_when_done = False
        self.writes = ObjectWrites()                 # what the current object wrote, for undo/reset
        self._positive = True
        self._auto_job: int | None = None
        self._closed = False
        self._last_click_seconds: float | None = None
        self.prompts = Prompts(self.viewer, self._on_points_changed, self._bind_layer_keys)
        self.model = ModelChoice(self)
        self.auto_panel = AutoClickPanel(self)
        self.add_tab(self.auto_panel, "Auto N-click")
        self._viewer_keys: list[str] = []
        self._connect_signals()
        if model_path:
            self.model_combo.setCurrentText(FILE_MODEL)
            self.model_path.setText(str(model_path))
        self._connect_viewer()
        self.refresh_layers()
        self._bind_viewer_keys()
        if model_path:
            self.model.load()
        else:  # deferred, so a caller may still pick another model (set_model) without a wasted load
            QTimer.singleShot(0, self.model.initial_load)

    def _connect_signals(self) -> None:
        self._update_polarity_button()
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.modality_combo.activated.connect(self._on_modality_changed)
        self.window_combo.activated.connect(self._on_window_preset)
        self.output_combo.currentIndexChanged.connect(self._on_output_changed)
        self.label_spin.valueChanged.connect(self._on_label_id_changed)
        self.polarity_btn.clicked.connect(self.toggle_polarity)
        self.undo_btn.clicked.connect(self.undo)
        self.reset_btn.clicked.connect(self.reset_object)
        self.accept_btn.clicked.connect(self.accept_object)
        self.clear_btn.clicked.connect(self.clear_labels)
        self.open_btn.clicked.connect(self.open_volume)
        self.save_btn.clicked.connect(self.save_labels)

    @property
    def device(self) -> str:
        return self.device_combo.currentText().split(" ")[0]

    @property
    def tta(self) -> int:
        """Mirrored views per click (the Session's ``tta``)."""
        return int(self.tta_spin.value())

    @property
    def edge_refine(self) -> str:
        """The Session's ``edge_refine`` mode: "auto" (MR only), "on" or "off"."""
        return self.edge_combo.currentText().split(" ")[0]

    def set_model(self, path: str | None) -> None:
        """Use the checkpoint at ``path`` (None: the embedded default) and load it on the worker."""
        self.model.set(path)

    def _on_model_changed(self, *_: Any) -> None:
        self.model.load()

    def show_message(self, text: str, level: str = "info") -> None:
        """Status line + a napari notification for warnings/errors (never a traceback)."""
        color = {"info": "", "warning": "#ffb74d", "error": "#ff6b6b"}.get(level, "")
        self.status.setStyleSheet(f"color: {color}" if color else "")
        self.status.setText(text)
        if level in ("warning", "error"):
            try:
                from napari.utils.notifications import show_warning

                show_warning(f"M-SAM: {text}")
            except Exception:  # notifications are a nicety
                pass

    def error(self, text: str) -> None:
        self.show_message(text, "error")

    def _key_actions(self) -> dict[str, Any]:
        return {"t": lambda *_: self.toggle_polarity(), "u": lambda *_: self.undo(),
                "r": lambda *_: self.reset_object(), "n": lambda *_: self.accept_object()}

    def _bind_layer_keys(self, layer: Any) -> None:
        bind_layer_keys(layer, self._key_actions())

    def _bind_viewer_keys(self) -> None:
        self._viewer_keys.extend(bind_viewer_keys(self.viewer, self._key_actions()))

    @friendly
    def toggle_polarity(self) -> None:
        self.set_polarity(not self._positive)

    @friendly
    def set_polarity(self, positive: bool) -> None:
        self._positive = bool(positive)
        self._update_polarity_button()
        self.prompts.apply_polarity(self._positive)

    def _update_polarity_button(self) -> None:
        self.polarity_btn.setChecked(not self._positive)
        if self._positive:
            self.polarity_btn.setText("Next click: POSITIVE (+, green)  [T]")
            self.polarity_btn.setStyleSheet("QPushButton { color: #7CFC00; font-weight: bold; }")
        else:
            self.polarity_btn.setText("Next click: NEGATIVE (−, red)  [T]")
            self.polarity_btn.setStyleSheet("QPushButton { color: #ff5555; font-weight: bold; }")

    @friendly
    def _on_image_changed(self, *_: Any) -> None:
        if self._closed:
            return
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            return
        self._drop_object_tracking(clear_points=True)
        try:
            layer = self.image_layer()
        except MSAMError as exc:  # say at once why this layer cannot be segmented
            self.modality_note.setText("")
            self.show_message(f"cannot segment this layer: {exc}", "warning")
            return
        declared = (layer.metadata or {}).get("modality")
        guess = modality_rule.guess(name, self._image_array(layer))
        if declared in ("ct", "mr", "other") and declared != guess.modality:
            guess = modality_rule.guess(name, None, declared=declared)
        self.modality_combo.setCurrentText({"ct": "CT", "mr": "MR"}.get(guess.modality, "other"))
        self.modality_note.setText(f"<small>{guess.describe()}; change it if wrong</small>")
        self._update_window_enabled()
        self.auto_panel.on_image_changed()
        self._ready_prompts()
        self.show_message(f"ready: click inside the object in {name!r}")

    @friendly
    def _on_modality_changed(self, *_: Any) -> None:
        self.modality_note.setText(f"<small>{self.modality_combo.currentText()} (set by hand)</small>")
        self._update_window_enabled()
        self._drop_object_tracking(clear_points=True)

    def _update_window_enabled(self) -> None:
        self.window_combo.setEnabled(self.modality_combo.currentText() == "CT")

    @friendly
    def _on_window_preset(self, *_: Any) -> None:
        name = self.window_combo.currentText()
        if name not in CT_PRESETS:
            return
        layer = self.image_layer()
        lo, hi = window_to_limits(*CT_PRESETS[name])
        rlo, rhi = layer.contrast_limits_range
        if lo < rlo or hi > rhi:
            layer.contrast_limits_range = (min(lo, rlo), max(hi, rhi))
        layer.contrast_limits = (lo, hi)
        self.show_message(f"display window {name} (the model input is unchanged)")

    @friendly
    def _on_label_id_changed(self, value: int) -> None:
        # the object being drawn takes the new id at once (not only where the next click writes)
        if self.writes.active and self._layer_valid():
            self.writes.relabel(int(value))
            self.writes.layer.refresh()

    @friendly
    def _on_output_changed(self, *_: Any) -> None:
        if self.writes.active:
            # the object stays where it was written; start a new one in the new layer
            self._drop_object_tracking(clear_points=True)
        name = self.output_combo.currentText()
        if name and name != NEW_OUTPUT and name in self.viewer.layers:
            self._set_next_free_id(self.viewer.layers[name])

    @property
    def busy_auto(self) -> bool:
        return self._auto_job is not None

    def start_fresh_object(self) -> None:
        """Put back what the current object changed and get everything ready for a new one."""
        self.output_layer()
        self.prompts_layer()
        self._new_generation()
        self._object_clicks = []
        self._sync_points_from_clicks()
        self._restore_object()
        self._start_tracking()
        self.ensure_session()

    def run_auto(self, fn: Any, *args: Any, on_row: Any, on_done: Any) -> None:
        def done(result: JobResult) -> None:
            self._auto_job = None
            on_done(result)

        self._auto_job = self.submit("auto N-click", fn, *args, on_done=done, on_progress=on_row)

    def cancel_auto(self) -> bool:
        if self._auto_job is None:
            return False
        self.worker.cancel(self._auto_job)
        return True

    def show_auto_click(self, voxel: tuple[int, int, int], positive: bool, bbox: Any, mask: Any) -> None:
        self._object_clicks.append((voxel, positive))
        self._sync_points_from_clicks()
        if bbox is not None and mask is not None:
            self.apply_update(ObjectUpdate(bbox, mask, {}))

    @friendly
    def undo(self) -> None:
        if self.busy_auto:
            self.error("the automatic run is still going; cancel it first")
            return
        if not self._object_clicks:
            self.show_message("nothing to undo")
            return
        self._object_clicks.pop()
        self._sync_points_from_clicks()
        self.supersede_refinement()
        self._submit_object_job("undo", job_undo, on_done=self._on_undo_done)

    @friendly
    def reset_object(self) -> None:
        if self.busy_auto:
            self.worker.cancel(self._auto_job)
        self._new_generation()
        self._object_clicks = []
        if self.prompts.layer is not None:
            self._sync_points_from_clicks()
        self._restore_object()
        self.submit("reset", job_reset)
        self.show_message("object reset")

    @friendly
    def accept_object(self) -> None:
        if self.busy_auto:
            self.error("the automatic run is still going; wait or cancel it first")
            return
        if self._object_jobs:  # the object is still being computed: accept it as soon as it is done
            self._accept_when_done = True
            self.show_message(f"object {self.label_spin.value()} will be accepted when its "
                              f"{len(self._object_jobs)} pending step(s) are done")
            return
        if not self.writes.active or not self._layer_valid() or not (
                self.writes.layer.data == self.label_spin.value()).any():
            self.show_message("nothing to accept yet: click on the object first")
            return
        accepted = int(self.label_spin.value())
        layer = self.writes.layer
        self._new_generation()
        self.writes.commit()
        self._object_clicks = []
        self._sync_points_from_clicks()
        self.submit("accept", job_accept)
        self._set_next_free_id(layer)
        self.show_message(f"object {accepted} accepted; next label id {self.label_spin.value()}")

    def _set_next_free_id(self, layer: Any) -> None:
        self.label_spin.setValue(next_free_id(layer.data))
        try:
            layer.selected_label = self.label_spin.value()
        except Exception:
            pass

    @friendly
    def clear_labels(self) -> None:
        layer = self.output_layer(create=False)
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
        self.writes.commit()
        layer.data[...] = 0
        layer.refresh()
        self.label_spin.setValue(1)
        self.show_message(f"{layer.name!r} cleared")

    @friendly
    def open_volume(self) -> None:
        """Open a volume file or DICOM folder (and optionally its ground truth) as layers."""
        name = open_volume_dialog(self, self.viewer)
        if name:
            self.image_combo.setCurrentText(name)
            self._ready_prompts()  # the ground truth, added last, took the selection
            self.show_message(f"opened {name!r}: click inside the object")

    @friendly
    def save_labels(self) -> None:
        """Save the output labels beside the image, on its own grid."""
        saved = save_labels_dialog(self, self.output_layer(create=False), self.image_layer())
        if saved:
            self.show_message(f"saved {saved}")

    def close_worker(self, timeout: float = 30.0) -> None:
        """Stop the inference thread (idempotent); call before dropping the widget."""
        if self._closed:
            return
        self._closed = True
        self.worker.close(timeout)
        self._disconnect_viewer()
        self.prompts.disconnect()
        unbind_viewer_keys(self.viewer, self._viewer_keys)
        self._viewer_keys = []

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self.close_worker()
        super().closeEvent(event)
