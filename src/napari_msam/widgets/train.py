"""Train widget: fine-tune (or train) a model from a data folder or the viewer's image + Labels layers.

The Qt-free :class:`~napari_msam.training.Trainer` runs in a plain thread; its progress events and its
end reach the GUI thread through queued Qt signals, so the viewer stays responsive and an error is one
line in the status and a notification, never a traceback. Training starts from the embedded default
model unless the user picks another checkpoint or "from scratch". "Use in Segment widget" hands the best
(else last) checkpoint to an open Segment widget (or opens one) and warns when its validation Dice says
it has not learned the task.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget

from .. import modality as modality_rule
from ..errors import MSAMError
from .train_ui import INIT_DEFAULT, INIT_FILE, INIT_SCRATCH, SOURCE_FOLDER, SOURCE_LAYERS, TrainControls

log = logging.getLogger(__name__)

__all__ = ["INIT_DEFAULT", "INIT_FILE", "INIT_SCRATCH", "SOURCE_FOLDER", "SOURCE_LAYERS", "TrainWidget"]

#: a model whose best validation Dice is below this has not learned the task (flagged on hand-over)
UNTRAINED_DICE = 0.05


class _Bridge(QObject):
    """Carries trainer events and the run's end from the training thread to the GUI thread."""

    event = Signal(object)
    ended = Signal(object, object)  # (TrainResult or None, error text or None)


class TrainWidget(QWidget):
    """Dock widget around :class:`napari_msam.training.Trainer` (Start / Cancel, progress, live plots)."""

    #: emitted with the checkpoint path when "Use in Segment widget" is pressed
    checkpoint_ready = Signal(str)

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.controls = c = TrainControls()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(c)
        self.trainer = None
        self.worker: threading.Thread | None = None
        self.result = None
        self.last_error: str | None = None
        self.best_val_dice: float | None = None
        self.events: list[Any] = []
        self._bridge = _Bridge()
        self._bridge.event.connect(self._on_event)
        self._bridge.ended.connect(self._on_ended)
        c.start_btn.clicked.connect(lambda *_: self.start())
        c.cancel_btn.clicked.connect(lambda *_: self.cancel())
        c.use_btn.clicked.connect(lambda *_: self.use_in_segment())
        c.image_combo.currentTextChanged.connect(self._guess_modality)
        self.refresh_layers()
        try:
            self.viewer.layers.events.inserted.connect(self.refresh_layers)
            self.viewer.layers.events.removed.connect(self.refresh_layers)
        except AttributeError:  # a stand-in viewer without layer events
            pass

    def _layers(self, kind: str) -> list[Any]:
        out = []
        for layer in self.viewer.layers:
            t = type(layer).__name__
            if (kind == "labels" and t == "Labels") or (kind == "image" and t == "Image"):
                if np.ndim(layer.data) == 3 or getattr(layer, "ndim", 0) == 3:
                    out.append(layer)
        return out

    def refresh_layers(self, *_: Any) -> None:
        """Offer the viewer's 3-D Image and Labels layers as training data."""
        self.controls.show_layers([lay.name for lay in self._layers("image")],
                                  [lay.name for lay in self._layers("labels")])

    def _guess_modality(self, name: str) -> None:
        """Preset the modality of the chosen image layer by the project's one rule (the reader's declaration,
        then the name, then the intensities); the user can still change it."""
        layer = next((lay for lay in self._layers("image") if lay.name == name), None)
        if layer is None:
            return
        declared = (layer.metadata or {}).get("modality")
        guess = modality_rule.guess(name, np.asarray(layer.data), declared=declared)
        self.controls.modality_combo.setCurrentText(guess.modality)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _init_checkpoint(self) -> str | None:
        c = self.controls
        choice = c.init_combo.currentText()
        if choice == INIT_SCRATCH:
            return None
        if choice == INIT_DEFAULT:
            from ..default_model import default_checkpoint_path

            path = default_checkpoint_path()
            if not path.is_file():
                raise MSAMError(f"the embedded default model {path} is missing; choose a checkpoint file "
                                "or “from scratch”")
            return str(path)
        text = c.init_path.text().strip()
        if not text:
            raise MSAMError("choose the checkpoint to fine-tune (or another “Start from”)")
        return text

    def build_config(self):
        """TrainConfig from the form (raises MSAMError with a readable message on bad input)."""
        c = self.controls
        from napari_msam.training import TrainConfig, array_case

        cases = None
        data: list[str] = []
        val = None
        if c.source_combo.currentText() == SOURCE_FOLDER:
            text = c.data_dir.text().strip()
            if not text:
                raise MSAMError("choose a training data folder")
            data = [text]
            vp = c.val_patients.text().replace(",", " ").split()
            val = tuple(vp) if vp else None
        else:
            iname, lname = c.image_combo.currentText(), c.labels_combo.currentText()
            if not iname or not lname:
                raise MSAMError("choose a 3-D image layer and a Labels layer")
            img_layer, lab_layer = self.viewer.layers[iname], self.viewer.layers[lname]
            img = np.asarray(img_layer.data)
            lab = np.asarray(lab_layer.data)
            spacing = tuple(float(s) for s in img_layer.scale[-3:])
            cases = [array_case(img, lab, spacing, modality=c.modality_combo.currentText(), case_id=iname)]
        out = c.out_dir.text().strip()
        if not out:
            raise MSAMError("choose an output folder")
        return TrainConfig(
            data=data, cases=cases, out_dir=out, model_config=c.config_combo.currentText(),
            init_checkpoint=self._init_checkpoint(),
            label_id=c.label_id.value() or None, val_patients=val, epochs=c.epochs.value(),
            steps_per_epoch=c.steps.value() or None, clicks=c.clicks.value(),
            batch_size=c.batch.value(), lr=c.lr.value(), device=c.device_combo.currentText(),
            resume=c.resume.isChecked(), val_protocol=c.val_protocol.currentText(),
        )

    # ------------------------------------------------------------------ run
    def start(self, config: Any = None) -> None:
        """Start training in a thread (``config`` overrides the form, for scripts and tests)."""
        from napari_msam.training import Trainer

        c = self.controls
        if self.running:
            return
        self.last_error = None
        try:
            cfg = config if config is not None else self.build_config()
            self.trainer = Trainer(cfg, callback=self._bridge.event.emit)
        except ValueError as exc:  # MSAMError and its kin: the user can act on the message
            self._fail(str(exc))
            return
        self.events = []
        self.result = None
        self.best_val_dice = None
        c.loss_plot.clear()
        c.dice_plot.clear()
        c.start_btn.setEnabled(False)
        c.cancel_btn.setEnabled(True)
        c.use_btn.setEnabled(False)
        self._set_status("preparing data…")
        self.worker = threading.Thread(target=self._run, args=(self.trainer,), name="napari-msam-train",
                                       daemon=True)
        self.worker.start()

    def _run(self, trainer: Any) -> None:
        """The training thread: never raises; the end goes to the GUI thread as (result, error)."""
        try:
            result, error = trainer.fit(), None
        except ValueError as exc:
            result, error = None, str(exc)
        except Exception as exc:  # a bug: the traceback goes to the log, the user gets one line
            log.warning("training failed", exc_info=True)
            result, error = None, f"unexpected {type(exc).__name__}: {exc}"
        try:
            self._bridge.ended.emit(result, error)
        except RuntimeError:  # the widget is gone
            pass

    def cancel(self) -> None:
        if self.trainer is not None and self.running:
            self.trainer.cancel()
            self._set_status("cancelling after the current step: writing a checkpoint…")

    def _set_status(self, text: str, error: bool = False) -> None:
        self.controls.show_status(text, error)

    def _notify(self, text: str) -> None:
        try:
            from napari.utils.notifications import show_warning

            show_warning(f"M-SAM training: {text}")
        except Exception:  # notifications are a nicety
            pass

    def _fail(self, text: str) -> None:
        line = text.strip().splitlines()[0] if text.strip() else "failed"
        self.last_error = line
        self._set_status(f"training failed: {line}", error=True)
        self._notify(line)

    def _on_event(self, ev: Any) -> None:
        c = self.controls
        self.events.append(ev)
        if ev.kind == "data":
            self._set_status(f"preparing data: {ev.step}/{ev.steps}")
        elif ev.kind == "start":
            c.progress.setRange(0, max(1, ev.steps * ev.epochs))
            c.progress.setValue(ev.global_step)
            self._set_status(ev.message)
        elif ev.kind == "step":
            c.progress.setValue(min(ev.global_step, c.progress.maximum()))
            c.loss_plot.add_point("loss", ev.global_step, ev.loss)
            self._set_status(f"epoch {ev.epoch}/{ev.epochs}  step {ev.step}/{ev.steps}  loss {ev.loss:.4f}")
        elif ev.kind == "epoch":
            text = f"epoch {ev.epoch}/{ev.epochs} done, train loss {ev.loss:.4f}"
            if ev.val_dice:
                d = ev.val_dice
                c.dice_plot.add_point("click 1", ev.epoch, d[0])
                c.dice_plot.add_point("last click", ev.epoch, d[-1])
                c.dice_plot.add_point("mean", ev.epoch, float(np.mean(d)))
                self.best_val_dice = max(self.best_val_dice or 0.0, float(np.mean(d)))
                text += f", val Dice @1 {d[0]:.3f} @{len(d)} {d[-1]:.3f}"
            self._set_status(text)
            c.use_btn.setEnabled(True)

    def _on_ended(self, result: Any, error: str | None) -> None:
        c = self.controls
        self.worker = None
        self.result = result
        c.start_btn.setEnabled(True)
        c.cancel_btn.setEnabled(False)
        c.use_btn.setEnabled(self.checkpoint_path() is not None)
        if error is not None:
            self._fail(error)
            return
        kept = self.checkpoint_path()
        steps = getattr(result, "global_step", 0)
        if getattr(result, "cancelled", False):
            where = f"; checkpoint kept: {kept}" if kept else "; no checkpoint written"
            self._set_status(f"cancelled after {steps} steps{where}")
        else:
            self._set_status(f"done: {steps} steps; checkpoint: {kept}")

    def checkpoint_path(self) -> Path | None:
        c = self.controls
        out = Path(c.out_dir.text().strip() or ".")
        if self.trainer is not None:
            out = self.trainer.out_dir
        for name in ("best.safetensors", "last.safetensors"):
            if (out / name).is_file():
                return out / name
        return None

    # ------------------------------------------------------------------ hand-over
    def _find_segment_widget(self) -> Any:
        from napari_msam.widgets.segment import SegmentWidget

        window = getattr(self.viewer, "window", None)
        docks = getattr(window, "dock_widgets", None)  # napari >= 0.6: name -> inner widget
        if docks is None:
            docks = getattr(window, "_dock_widgets", None) or {}
        for dock in list(docks.values()):
            w = dock.widget() if hasattr(dock, "widget") else dock
            if isinstance(w, SegmentWidget):
                return w
            if isinstance(w, QWidget):
                found = w.findChildren(SegmentWidget)
                if found:
                    return found[0]
        return None

    def use_in_segment(self) -> Any:
        """Load the best/last checkpoint into the Segment widget (opened if needed); returns that widget."""
        path = self.checkpoint_path()
        if path is None:
            self._set_status("no checkpoint yet", error=True)
            return None
        self.checkpoint_ready.emit(str(path))
        warning = None
        if self.best_val_dice is not None and self.best_val_dice < UNTRAINED_DICE:
            warning = (f"{path.name} has validation Dice {self.best_val_dice:.3f}: it has not learned the task "
                       "yet (more data or epochs, or fine-tune the default model)")
        seg = self._find_segment_widget()
        if seg is None:
            from napari_msam.widgets.segment import SegmentWidget

            seg = SegmentWidget(self.viewer, model_path=str(path))
            self.viewer.window.add_dock_widget(seg, name="Segment (M-SAM)", area="right")
        else:
            seg.set_model(str(path))
        seg.model.warning = warning
        if warning:
            self._set_status(f"loaded into the Segment widget, but {warning}", error=True)
            self._notify(warning)
        else:
            self._set_status(f"{path.name} loaded into the Segment widget")
        return seg

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        if self.trainer is not None:
            self.trainer.cancel()
        super().closeEvent(event)
