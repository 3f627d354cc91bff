"""The Segment (M-SAM) widget: click-based 3-D segmentation into a Labels layer.

A click travels: Points layer "M-SAM prompts" -> world coordinates -> voxel index of the image layer ->
the single inference worker (owns the Session; FIFO, never reordered) -> ClickResult (bbox + mask) ->
written into the output Labels layer inside the bbox, respecting the overwrite policy. The model never
runs on the GUI thread.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QApplication,
    QFileDialog,
    QMessageBox,
    QWidget,
)

from ..errors import MSAMError
from ._utils import close_quietly, esc_html, fill_combo, friendly
from .jobs import (
    ObjectUpdate,
    SessionSpec,
    job_accept,
    job_click,
    job_ensure,
    job_replay,
    job_reset,
    job_undo,
)
from .labels_policy import (
    CT_PRESETS,
    POLICIES,
    ObjectWrites,
    compose_labels,
    next_free_id,
    timing_text,
    window_to_limits,
)
from .prompts import (
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
    PROMPTS_NAME,
    SHORTCUTS,
    Prompts,
    bind_layer_keys,
    bind_viewer_keys,
    layer_token,
    unbind_viewer_keys,
)
from .segment_ui import DEFAULT_MODEL, FILE_MODEL, NEW_OUTPUT, OUTPUT_NAME, build_segment_ui
from .workers import InferenceWorker, JobResult

log = logging.getLogger(__name__)


__all__ = [
    "CT_PRESETS", "DEFAULT_MODEL", "FILE_MODEL", "NEGATIVE_COLOR", "NEW_OUTPUT", "OUTPUT_NAME", "POLICIES",
    "POSITIVE_COLOR", "PROMPTS_NAME", "SHORTCUTS", "ObjectUpdate", "SegmentWidget", "compose_labels",
    "window_to_limits",
]


# ----------------------------------------------------------------------------- the widget
class SegmentWidget(QWidget):
    """Interactive M-SAM segmentation of the selected image layer into a Labels layer.

    ``model_path`` preselects a checkpoint instead of the embedded default; ``session_factory`` (tests)
    replaces :class:`napari_msam.session.Session`.
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
        self.writes = ObjectWrites()                 # what the current object wrote, for undo/reset
        self._positive = True
        self._auto_job: int | None = None
        self._closed = False
        self._device_shown = "?"
        self._last_click_seconds: float | None = None
        self.prompts = Prompts(self.viewer, self._on_points_changed, self._bind_layer_keys)
        self._viewer_keys: list[str] = []
        build_segment_ui(self)
        self._connect_signals()
        if model_path:
            self.model_combo.setCurrentText(FILE_MODEL)
            self.model_path.setText(str(model_path))
        self._connect_viewer()
        self.refresh_layers()
        self._bind_viewer_keys()
        self._model_requested = False
        if model_path:
            self._on_model_changed()
        else:  # deferred, so a caller may still pick another model (set_model) without a wasted load
            QTimer.singleShot(0, self._initial_model_load)

    def _initial_model_load(self) -> None:
        if not self._closed and not self._model_requested:
            self._on_model_changed()

    # ------------------------------------------------------------------ layout
    def _connect_signals(self) -> None:
        self._update_polarity_button()
        self.path_widget.setVisible(False)
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.modality_combo.currentIndexChanged.connect(self._on_modality_changed)
        self.window_combo.activated.connect(self._on_window_preset)
        self.output_combo.currentIndexChanged.connect(self._on_output_changed)
        self.label_spin.valueChanged.connect(self._on_label_id_changed)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.model_path.editingFinished.connect(self._on_model_changed)
        self.browse_btn.clicked.connect(self._browse_model)
        self.device_combo.currentIndexChanged.connect(self._on_model_changed)
        self.tta_spin.valueChanged.connect(self._on_model_changed)
        self.edge_combo.currentIndexChanged.connect(self._on_model_changed)
        self.polarity_btn.clicked.connect(lambda: self.set_polarity(not self._positive))
        self.undo_btn.clicked.connect(self.undo)
        self.reset_btn.clicked.connect(self.reset_object)
        self.accept_btn.clicked.connect(self.accept_object)
        self.clear_btn.clicked.connect(self.clear_labels)


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

    # ------------------------------------------------------------------ messages
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

    # ------------------------------------------------------------------ viewer / layers
    def _connect_viewer(self) -> None:
        ev = self.viewer.layers.events
        ev.inserted.connect(self._on_layers_changed)
        ev.removed.connect(self._on_layers_changed)
        ev.moved.connect(self._on_layers_changed)

    def _disconnect_viewer(self) -> None:
        ev = self.viewer.layers.events
        for e in (ev.inserted, ev.removed, ev.moved):
            try:
                e.disconnect(self._on_layers_changed)
            except Exception:
                pass
        for layer in self.viewer.layers:
            try:
                layer.events.name.disconnect(self._on_layers_changed)
            except Exception:
                pass

    def _on_layers_changed(self, event: Any = None) -> None:
        if self._closed:
            return
        if self.prompts.forget_if_removed():
            self._object_clicks = []
        self.refresh_layers()

    def _layers_of(self, kind: str) -> list[Any]:
        from napari.layers import Image, Labels

        cls = {"image": Image, "labels": Labels}[kind]
        return [lay for lay in self.viewer.layers if isinstance(lay, cls)]

    def refresh_layers(self) -> None:
        """Repopulate the layer choosers, keeping the current choices when they still exist."""
        for layer in self.viewer.layers:
            layer.events.name.connect(self._on_layers_changed)
        images = [lay.name for lay in self._layers_of("image")]
        labels = [lay.name for lay in self._layers_of("labels")]
        fill_combo(self.image_combo, images, keep=True)
        outs = [n for n in labels if "ground truth" not in n.lower() and "mask" not in n.lower()] + \
               [n for n in labels if "ground truth" in n.lower() or "mask" in n.lower()]
        fill_combo(self.output_combo, [NEW_OUTPUT, *outs], keep=True,
              prefer=OUTPUT_NAME if OUTPUT_NAME in labels else None)
        self.auto_panel.refresh_layers(labels)

    def image_layer(self) -> Any:
        """The chosen image layer, or raise MSAMError with what to do."""
        from napari.layers import Image

        name = self.image_combo.currentText()
        if not name:
            raise MSAMError("no image layer: open a 3-D image (File > Open, or File > Open Sample > napari-msam)")
        if name not in self.viewer.layers:
            raise MSAMError(f"the image layer {name!r} no longer exists")
        layer = self.viewer.layers[name]
        if not isinstance(layer, Image):
            raise MSAMError(f"{name!r} is a {type(layer).__name__} layer, not an image")
        if getattr(layer, "multiscale", False):
            raise MSAMError(f"{name!r} is a multiscale image; open a single-resolution 3-D volume")
        if getattr(layer, "rgb", False):
            raise MSAMError(f"{name!r} is an RGB image; M-SAM needs a single-channel 3-D volume")
        if layer.ndim != 3:
            raise MSAMError(f"{name!r} has {layer.ndim} dimensions; M-SAM needs a 3-D volume "
                            + ("(this is a 2-D image)" if layer.ndim == 2 else "(choose one channel / time point)"))
        return layer

    def _image_array(self, layer: Any) -> np.ndarray:
        key = id(layer.data)
        if self._image_cache is None or self._image_cache[0] != key:
            arr = np.asarray(layer.data)
            if arr.dtype.kind not in "biuf":
                raise MSAMError(f"{layer.name!r} has data of type {arr.dtype}, not numbers")
            self._image_cache = (key, arr)
        return self._image_cache[1]

    def output_layer(self, create: bool = True) -> Any:
        """The chosen output Labels layer (created to match the image when missing)."""
        from napari.layers import Labels

        image = self.image_layer()
        name = self.output_combo.currentText()
        if name and name != NEW_OUTPUT and name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if not isinstance(layer, Labels):
                raise MSAMError(f"the output {name!r} is not a Labels layer")
            if tuple(layer.data.shape) != tuple(image.data.shape):
                raise MSAMError(f"the output {name!r} has shape {tuple(layer.data.shape)} but the image "
                                f"{image.name!r} has {tuple(image.data.shape)}; choose <new> to make one")
            return layer
        if not create:
            return None
        meta = {k: v for k, v in dict(image.metadata).items() if k != "modality"}
        meta["source_image"] = image.name
        base_name = OUTPUT_NAME
        n = 2
        while base_name in self.viewer.layers:
            base_name = f"{OUTPUT_NAME} [{n}]"
            n += 1
        layer = self.viewer.add_labels(
            np.zeros(image.data.shape, dtype=np.uint16), name=base_name, scale=image.scale,
            translate=image.translate, rotate=image.rotate, shear=image.shear, metadata=meta, opacity=0.6,
        )
        self._bind_layer_keys(layer)
        self.refresh_layers()
        self.output_combo.setCurrentText(base_name)
        self.prompts_layer()  # keep the prompts on top so clicks land on them
        return layer

    def prompts_layer(self) -> Any:
        """The "M-SAM prompts" Points layer with the image's transform (made when missing)."""
        return self.prompts.ensure(self.image_layer(), self._positive)

    # ------------------------------------------------------------------ key bindings
    def _key_actions(self) -> dict[str, Any]:
        return {"t": lambda *_: self.set_polarity(not self._positive), "u": lambda *_: self.undo(),
                "r": lambda *_: self.reset_object(), "n": lambda *_: self.accept_object()}

    def _bind_layer_keys(self, layer: Any) -> None:
        bind_layer_keys(layer, self._key_actions())

    def _bind_viewer_keys(self) -> None:
        self._viewer_keys.extend(bind_viewer_keys(self.viewer, self._key_actions()))

    # ------------------------------------------------------------------ polarity
    @friendly
    def set_polarity(self, positive: bool) -> None:
        self._positive = bool(positive)
        self._update_polarity_button()
        self._apply_polarity_to_layer()

    def _update_polarity_button(self) -> None:
        self.polarity_btn.setChecked(not self._positive)
        if self._positive:
            self.polarity_btn.setText("Next click: POSITIVE (+, green)  [T]")
            self.polarity_btn.setStyleSheet("QPushButton { color: #7CFC00; font-weight: bold; }")
        else:
            self.polarity_btn.setText("Next click: NEGATIVE (−, red)  [T]")
            self.polarity_btn.setStyleSheet("QPushButton { color: #ff5555; font-weight: bold; }")

    def _apply_polarity_to_layer(self) -> None:
        self.prompts.apply_polarity(self._positive)

    # ------------------------------------------------------------------ choices changed
    @friendly
    def _on_image_changed(self, *_: Any) -> None:
        if self._closed:
            return
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            return
        layer = self.viewer.layers[name]
        from ..io import guess_modality

        mod = (layer.metadata or {}).get("modality") if hasattr(layer, "metadata") else None
        if mod not in ("ct", "mr", "other"):
            try:
                data = self._image_array(layer) if layer.ndim == 3 else None
            except MSAMError:
                data = None
            mod = guess_modality(name, data)
        self.modality_combo.blockSignals(True)
        self.modality_combo.setCurrentText({"ct": "CT", "mr": "MR"}.get(mod, "other"))
        self.modality_combo.blockSignals(False)
        self._update_window_enabled()
        self._drop_object_tracking(clear_points=True)
        self.auto_panel.on_image_changed()
        self._ready_prompts()

    def _ready_prompts(self) -> None:
        """Give the prompts layer the image's transform and make it active in add mode (ready to click)."""
        try:
            image = self.image_layer()
            layer = self.prompts_layer()
        except MSAMError:
            return
        self.prompts.match_transform(image)
        self.viewer.layers.selection.active = layer
        try:
            layer.mode = "add"
        except Exception:  # a mode napari does not know: the user picks it
            pass

    @friendly
    def _on_modality_changed(self, *_: Any) -> None:
        self._update_window_enabled()
        self._drop_object_tracking(clear_points=True)

    def _update_window_enabled(self) -> None:
        self.window_combo.setEnabled(self.modality_combo.currentText() == "CT")

    @friendly
    def _on_window_preset(self, *_: Any) -> None:
        name = self.window_combo.currentText()
        if name not in CT_PRESETS:
            return
        try:
            layer = self.image_layer()
        except MSAMError as exc:
            self.error(str(exc))
            return
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

    @friendly
    def _on_model_changed(self, *_: Any) -> None:
        if self._closed:
            return
        self.path_widget.setVisible(self.model_combo.currentText() == FILE_MODEL)
        source = self._model_source()
        if source is None:
            self.model_info.setText("choose a checkpoint file (.pth / .pt / .safetensors)")
            return
        self.model_info.setText("loading…")
        self._model_requested = True
        self._drop_object_tracking(clear_points=True)
        spec = SessionSpec(source, self.device, ("none",), self.tta, self.edge_refine)
        self._submitted_spec = None
        self.submit("load model", job_ensure, spec, source, None, (1.0, 1.0, 1.0), "other",
                    self._session_factory, on_done=self._on_model_loaded)

    def set_model(self, path: str | None) -> None:
        """Use the checkpoint at ``path`` (None: the embedded default) and load it on the worker."""
        self.model_combo.blockSignals(True)
        self.model_combo.setCurrentText(DEFAULT_MODEL if path is None else FILE_MODEL)
        self.model_combo.blockSignals(False)
        if path is not None:
            self.model_path.setText(str(path))
        self._on_model_changed()

    def _model_source(self) -> tuple | None:
        if self.model_combo.currentText() == DEFAULT_MODEL:
            return ("default",)
        text = self.model_path.text().strip()
        if not text:
            return None
        p = Path(text).expanduser()
        try:
            mtime = p.stat().st_mtime
        except OSError:
            mtime = None
        return ("file", str(p), mtime)

    @friendly
    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose an M-SAM checkpoint", "",
                                              "Checkpoints (*.pth *.pt *.safetensors *.ckpt);;All files (*)")
        if path:
            self.model_path.setText(path)
            self._on_model_changed()

    def _on_model_loaded(self, result: JobResult) -> None:
        if result.error:
            hint = ""
            if self.model_combo.currentText() == DEFAULT_MODEL:
                hint = " Choose “Checkpoint file…” to use your own weights."
            self.model_info.setText(f"<span style='color:#ff6b6b'>model not loaded: {esc_html(result.error)}</span>")
            self.error(f"model not loaded: {result.error}.{hint}")
            return
        info = result.value or {}
        if "summary" in info:
            self.model_info.setText(info["summary"])
        self._device_shown = info.get("device", self.device)
        self.show_message(f"model ready on {self._device_shown} ({result.seconds:.1f} s)")

    # ------------------------------------------------------------------ worker plumbing
    def submit(self, name: str, fn: Any, *args: Any, on_done: Any = None, on_progress: Any = None) -> int:
        job_id = self.worker.submit(name, fn, *args)
        if on_done is not None:
            self._handlers[job_id] = on_done
        if on_progress is not None:
            self._progress_handlers[job_id] = on_progress
        return job_id

    def _on_job_finished(self, result: JobResult) -> None:
        handler = self._handlers.pop(result.job_id, None)
        self._progress_handlers.pop(result.job_id, None)
        if self._closed:
            return
        if result.error and result.name in ("set up image", "load model"):
            self._submitted_spec = None
        try:
            if handler is not None:
                handler(result)
            elif result.error:
                self.error(f"{result.name}: {result.error}")
        except Exception as exc:  # a GUI-side bug must not surface as a traceback dialog
            log.warning("handler for %s failed", result.name, exc_info=True)
            self.error(f"{result.name}: {exc}")
        self._on_queue_changed(self.worker.pending)

    def _on_job_progress(self, item: tuple) -> None:
        job_id, _name, payload = item
        handler = self._progress_handlers.get(job_id)
        if handler is not None and not self._closed:
            try:
                handler(payload)
            except Exception as exc:
                log.warning("progress handler failed", exc_info=True)
                self.error(str(exc))

    def _on_queue_changed(self, n: int) -> None:
        if self._closed:
            return
        self.busy.setRange(0, 0 if n else 1)
        self.busy.setValue(0 if n else 1)
        self.busy.setToolTip(f"{n} step(s) queued or running" if n else "idle")

    def ensure_session(self) -> SessionSpec:
        """Queue whatever the worker needs (model, session, image) before a click; returns the spec."""
        source = self._model_source()
        if source is None:
            raise MSAMError("no model: choose a checkpoint file or the embedded default")
        image = self.image_layer()
        data = self._image_array(image)
        modality = self.modality_combo.currentText().lower()
        spacing = tuple(float(s) for s in image.scale)
        spec = SessionSpec(source, self.device, (layer_token(image), id(data), data.shape, modality, spacing),
                           self.tta, self.edge_refine)
        if spec != self._submitted_spec:
            self._submitted_spec = spec
            self.submit("set up image", job_ensure, spec, source, data, spacing, modality,
                        self._session_factory, on_done=self._on_setup_done)
        return spec

    def _on_setup_done(self, result: JobResult) -> None:
        if result.error:
            self.error(f"cannot set up the image: {result.error}")
            return
        info = result.value or {}
        if "summary" in info:
            self.model_info.setText(info["summary"])
        self._device_shown = info.get("device", self._device_shown)

    @property
    def busy_auto(self) -> bool:
        return self._auto_job is not None

    # ------------------------------------------------------------------ points -> clicks
    @friendly
    def _on_points_changed(self, event: Any) -> None:
        if self.prompts.updating or self._closed:
            return
        action = str(getattr(event, "action", "changed"))
        layer = self.prompts.layer
        if layer is None:
            return
        if action.endswith("adding") or action.endswith("removing") or action.endswith("changing"):
            return
        if self.busy_auto:
            self._sync_points_from_clicks()
            self.error("wait for the automatic N-click run to finish (or cancel it) before clicking")
            return
        if action.endswith("added"):
            n = len(layer.data)
            idx = sorted({int(i) % n for i in (event.data_indices or ())}) or [n - 1]
            if idx != list(range(len(self._object_clicks), n)):
                self._replay_from_layer()
                return
            for i in idx:
                self._handle_new_point(i)
        else:  # removed or moved by hand: rebuild the object from what the layer now shows
            self._replay_from_layer()

    def _point_voxel(self, layer: Any, i: int) -> tuple[int, int, int] | None:
        return self.prompts.point_voxel(self.image_layer(), i)

    def _handle_new_point(self, i: int) -> None:
        layer = self.prompts.layer
        try:
            vox = self._point_voxel(layer, i)
            if vox is None:
                self._remove_points([i])
                self.error("that click is outside the image; click inside the volume")
                return
            self.output_layer()
            self.ensure_session()
        except MSAMError as exc:
            self._remove_points([i])
            self.error(str(exc))
            return
        positive = self.prompts.polarity(i, self._positive)
        self._object_clicks.append((vox, positive))
        self._start_tracking()
        n = len(self._object_clicks)
        self.submit("click", job_click, vox, positive, on_done=lambda r, n=n: self._on_click_done(r, n))
        self._show_queue_status()

    def add_click(self, voxel: tuple[int, int, int], positive: bool = True) -> None:
        """Programmatic click (scripts, tests): adds the point to the prompts layer like a user would."""
        image = self.image_layer()
        layer = self.prompts_layer()
        data = self.prompts.voxel_to_data(image, voxel)
        if positive != self._positive:
            self.set_polarity(positive)
        layer.add(data)

    def _show_queue_status(self) -> None:
        pending = self.worker.pending
        more = f" · {pending - 1} more queued" if pending > 1 else ""
        self.show_message(f"click {len(self._object_clicks)}: computing…{more}")

    def _remove_points(self, indices: list[int]) -> None:
        self.prompts.remove(indices, self._positive)

    def _sync_points_from_clicks(self) -> None:
        """Make the prompts layer show exactly the current object's clicks."""
        image = self.image_layer()
        self.prompts_layer()
        self.prompts.show_clicks(image, self._object_clicks, self._positive)

    def _replay_from_layer(self) -> None:
        layer = self.prompts.layer
        clicks: list[tuple[tuple[int, int, int], bool]] = []
        bad: list[int] = []
        try:
            for i in range(len(layer.data)):
                vox = self._point_voxel(layer, i)
                if vox is None:
                    bad.append(i)
                else:
                    clicks.append((vox, bool(layer.features["positive"].iloc[i])))
            if bad:
                self._remove_points(bad)
                self.error("points outside the image were removed")
            self.output_layer()
            self.ensure_session()
        except MSAMError as exc:
            self.error(str(exc))
            return
        self._object_clicks = clicks
        self._start_tracking()
        if not clicks:
            self.submit("reset", job_reset)
            self._restore_object()
            self.show_message("object cleared (no prompts left)")
            return
        self.submit("replay clicks", job_replay, list(clicks), on_done=self._on_replay_done)

    # ------------------------------------------------------------------ results -> labels
    def _start_tracking(self) -> None:
        self.writes.start(self.output_layer())

    def _layer_valid(self) -> bool:
        return self.writes.valid(self.viewer.layers)

    def apply_update(self, update: ObjectUpdate) -> None:
        """Write the object's new state into the output layer inside its box, respecting the policy."""
        if not self._layer_valid():
            self.error("the output Labels layer changed or was removed; the result was not written")
            return
        if update.replace_all:
            self.writes.restore(refresh=False)
        if update.bbox is not None and update.mask is not None:
            self.writes.write(update.bbox, update.mask, int(self.label_spin.value()),
                              self.policy_combo.currentText())
        self.writes.layer.refresh()

    def _restore_object(self, refresh: bool = True) -> None:
        """Put back what was under the current object (undo all its writes)."""
        if self._layer_valid():
            self.writes.restore(refresh)

    def _commit_tracking(self) -> None:
        self.writes.commit()

    def _drop_object_tracking(self, clear_points: bool) -> None:
        """The image/model changed: the object stays in the layer as it is, its clicks are forgotten."""
        self._commit_tracking()
        self._object_clicks = []
        layer = self.prompts.layer
        if clear_points and layer is not None and layer in self.viewer.layers:
            self.prompts.set(np.zeros((0, 3)), np.zeros(0, dtype=bool), self._positive)
        if self._submitted_spec is not None and not self._closed:
            self.submit("reset", job_reset)

    def _on_click_done(self, result: JobResult, n: int) -> None:
        if result.error:
            self.error(f"click {n} failed: {result.error}")
            return
        if result.cancelled:
            return
        upd: ObjectUpdate = result.value
        self.apply_update(upd)
        self._last_click_seconds = result.seconds
        vox = self.writes.voxels
        q = f" · {result.pending} queued" if result.pending else ""
        z = f" · zoomed out {upd.zoom:g}x (large object)" if upd.zoom > 1.0 else ""
        self.show_message(f"click {n}: {timing_text(upd.timings, result.seconds)} · "
                          f"{vox} voxels{z} · {self._device_shown}{q}")

    def _on_replay_done(self, result: JobResult) -> None:
        if result.error:
            self.error(f"re-running the clicks failed: {result.error}")
            return
        if result.cancelled:
            return
        self.apply_update(result.value)
        self.show_message(f"object rebuilt from {len(self._object_clicks)} click(s) "
                          f"in {result.seconds:.2f} s")

    # ------------------------------------------------------------------ actions
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
        self.submit("undo", job_undo, on_done=self._on_undo_done)

    def _on_undo_done(self, result: JobResult) -> None:
        if result.error:
            self.error(f"undo failed: {result.error}")
            return
        self.apply_update(result.value)
        self.show_message(f"undone; {len(self._object_clicks)} click(s) left")

    @friendly
    def reset_object(self) -> None:
        if self.busy_auto:
            self.worker.cancel(self._auto_job)
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
        if not self.writes.active or not self._layer_valid() or not (
                self.writes.layer.data == self.label_spin.value()).any():
            self.show_message("nothing to accept yet: click on the object first")
            return
        accepted = int(self.label_spin.value())
        layer = self.writes.layer
        self._commit_tracking()
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
        try:
            layer = self.output_layer(create=False)
        except MSAMError as exc:
            self.error(str(exc))
            return
        if layer is None:
            self.show_message("no output layer to clear")
            return
        if self._confirm_clear and np.any(layer.data):
            ans = QMessageBox.question(self, "Clear labels",
                                       f"Erase every label in {layer.name!r}? This cannot be undone.")
            if ans != QMessageBox.StandardButton.Yes:
                return
        self.reset_object()
        self._commit_tracking()
        layer.data[...] = 0
        layer.refresh()
        self.label_spin.setValue(1)
        self.show_message(f"{layer.name!r} cleared")

    # ------------------------------------------------------------------ teardown
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

