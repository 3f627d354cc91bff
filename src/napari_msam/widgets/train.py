"""Train widget: train or fine-tune a model from a data folder or the viewer's image + Labels layers.

The Qt-free :class:`~napari_msam.training.Trainer` runs in a napari thread worker; its progress events
reach the GUI thread through a queued Qt signal, so the viewer stays responsive. "Use in Segment widget"
hands the best (else last) checkpoint to an open Segment widget (or opens one).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

SOURCE_FOLDER = "Data folder"
SOURCE_LAYERS = "Viewer layers"


class _Bridge(QObject):
    """Carries trainer events from the worker thread to the GUI thread (queued connection)."""

    event = Signal(object)


def _path_row(edit: QLineEdit, button: QPushButton) -> QWidget:
    w = QWidget()
    row = QHBoxLayout(w)
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(edit, 1)
    row.addWidget(button)
    return w


class TrainWidget(QWidget):
    """Dock widget around :class:`napari_msam.training.Trainer` (Start / Cancel, progress, live plots)."""

    #: emitted with the checkpoint path when "Use in Segment widget" is pressed
    checkpoint_ready = Signal(str)

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.trainer = None
        self.worker = None
        self.result = None
        self.last_error: str | None = None
        self.events: list[Any] = []
        self._bridge = _Bridge()
        self._bridge.event.connect(self._on_event)
        self._build_ui()
        self.refresh_layers()
        try:
            self.viewer.layers.events.inserted.connect(self.refresh_layers)
            self.viewer.layers.events.removed.connect(self.refresh_layers)
        except AttributeError:  # a stand-in viewer without layer events
            pass
        self._on_source_changed()

    # ------------------------------------------------------------------ layout
    def _build_ui(self) -> None:
        from napari_msam.model.config import CONFIGS

        root = QVBoxLayout(self)
        root.setContentsMargins(6, 6, 6, 6)

        data = QGroupBox("Data")
        f = QFormLayout(data)
        self.source_combo = QComboBox()
        self.source_combo.addItems([SOURCE_FOLDER, SOURCE_LAYERS])
        self.source_combo.currentTextChanged.connect(self._on_source_changed)
        f.addRow("Source", self.source_combo)
        self.data_dir = QLineEdit()
        self.data_dir.setPlaceholderText("imagesTr/+labelsTr/, X + X_label, or one folder per patient")
        b = QPushButton("Browse…")
        b.clicked.connect(lambda: self._browse_dir(self.data_dir, "Training data folder"))
        self.data_row = _path_row(self.data_dir, b)
        f.addRow("Folder", self.data_row)
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.modality_combo = QComboBox()
        self.modality_combo.addItems(["mr", "ct", "other"])
        self.modality_combo.setToolTip("CT applies the model's HU window before normalisation")
        f.addRow("Image layer", self.image_combo)
        f.addRow("Labels layer", self.labels_combo)
        f.addRow("Modality", self.modality_combo)
        self.label_id = QSpinBox()
        self.label_id.setRange(0, 65535)
        self.label_id.setSpecialValueText("all non-zero")
        self.label_id.setToolTip("Label value of the object to train on (0: every non-zero voxel)")
        f.addRow("Label id", self.label_id)
        self.val_patients = QLineEdit()
        self.val_patients.setPlaceholderText("e.g. STS_003 STS_008 (empty: no validation)")
        f.addRow("Validation patients", self.val_patients)
        self.val_protocol = QComboBox()
        self.val_protocol.addItems(["crops", "session"])
        self.val_protocol.setToolTip(
            "How validation scores a checkpoint (and so which one becomes best.safetensors):\n"
            "crops: the training loop on tumour-centred crops (fast);\n"
            "session: the Auto protocol through the same Session you click with (first click anywhere in the\n"
            "tumour, zoom-out, paste-back; about 1 min per 12 cases). Crops ranked the session-8 rotation\n"
            "runs above the shipped model, the Auto protocol below it (docs/model-card.md)."
        )
        f.addRow("Validate with", self.val_protocol)
        root.addWidget(data)

        model = QGroupBox("Model and output")
        f = QFormLayout(model)
        self.config_combo = QComboBox()
        self.config_combo.addItems(list(CONFIGS))
        self.config_combo.setCurrentText("msam-small")
        f.addRow("Config", self.config_combo)
        self.init_path = QLineEdit()
        self.init_path.setPlaceholderText("optional: fine-tune this checkpoint")
        b = QPushButton("Browse…")
        b.clicked.connect(self._browse_init)
        f.addRow("Start from", _path_row(self.init_path, b))
        self.out_dir = QLineEdit(str(Path("runs") / "train"))
        b = QPushButton("Browse…")
        b.clicked.connect(lambda: self._browse_dir(self.out_dir, "Output folder"))
        f.addRow("Output folder", _path_row(self.out_dir, b))
        self.resume = QCheckBox("resume from the output folder's state.pt")
        f.addRow("", self.resume)
        root.addWidget(model)

        opts = QGroupBox("Training")
        f = QFormLayout(opts)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100000)
        self.epochs.setValue(10)
        self.steps = QSpinBox()
        self.steps.setRange(0, 1000000)
        self.steps.setSpecialValueText("one pass")
        self.clicks = QSpinBox()
        self.clicks.setRange(1, 50)
        self.clicks.setValue(11)
        self.batch = QSpinBox()
        self.batch.setRange(1, 256)
        self.batch.setValue(2)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(8e-4)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        for label, w in (("Epochs", self.epochs), ("Steps / epoch", self.steps), ("Clicks / sample", self.clicks),
                         ("Batch size", self.batch), ("Learning rate", self.lr), ("Device", self.device_combo)):
            f.addRow(label, w)
        root.addWidget(opts)

        row = QHBoxLayout()
        self.start_btn = QPushButton("Start")
        self.start_btn.clicked.connect(self.start)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        row.addWidget(self.start_btn)
        row.addWidget(self.cancel_btn)
        root.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m steps")
        root.addWidget(self.progress)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        root.addWidget(self.status)

        from napari_msam.widgets.plots import MetricPlot

        self.loss_plot = MetricPlot(title="training loss", xlabel="step", ylabel="loss", series=("loss",),
                                    ylim=None)
        self.dice_plot = MetricPlot(title="validation Dice", xlabel="epoch", ylabel="Dice",
                                    series=("click 1", "last click", "mean"), ylim=(0.0, 1.0))
        root.addWidget(self.loss_plot)
        root.addWidget(self.dice_plot)
        self.use_btn = QPushButton("Use in Segment widget")
        self.use_btn.setEnabled(False)
        self.use_btn.setToolTip("Load best.safetensors (else last.safetensors) into the Segment widget")
        self.use_btn.clicked.connect(self.use_in_segment)
        root.addWidget(self.use_btn)
        root.addStretch(1)

    # ------------------------------------------------------------------ helpers
    def _browse_dir(self, edit: QLineEdit, title: str) -> None:
        path = QFileDialog.getExistingDirectory(self, title, edit.text() or "")
        if path:
            edit.setText(path)

    def _browse_init(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint to fine-tune", "",
                                              "Checkpoints (*.pth *.pt *.safetensors);;All files (*)")
        if path:
            self.init_path.setText(path)

    def _layers(self, kind: str) -> list[Any]:
        out = []
        for layer in self.viewer.layers:
            t = type(layer).__name__
            if (kind == "labels" and t == "Labels") or (kind == "image" and t == "Image"):
                if np.ndim(layer.data) == 3 or getattr(layer, "ndim", 0) == 3:
                    out.append(layer)
        return out

    def refresh_layers(self, *_: Any) -> None:
        for combo, kind in ((self.image_combo, "image"), (self.labels_combo, "labels")):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems([layer.name for layer in self._layers(kind)])
            if current:
                combo.setCurrentText(current)
            combo.blockSignals(False)

    def _on_source_changed(self, *_: Any) -> None:
        folder = self.source_combo.currentText() == SOURCE_FOLDER
        self.data_row.setEnabled(folder)
        for w in (self.image_combo, self.labels_combo, self.modality_combo):
            w.setEnabled(not folder)
        self.val_patients.setEnabled(folder)
        self.val_protocol.setEnabled(folder)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def build_config(self):
        """TrainConfig from the form (raises MSAMError with a readable message on bad input)."""
        from napari_msam.errors import MSAMError
        from napari_msam.training import TrainConfig, array_case

        cases = None
        data: list[str] = []
        val = None
        if self.source_combo.currentText() == SOURCE_FOLDER:
            text = self.data_dir.text().strip()
            if not text:
                raise MSAMError("choose a training data folder")
            data = [text]
            vp = self.val_patients.text().replace(",", " ").split()
            val = tuple(vp) if vp else None
        else:
            iname, lname = self.image_combo.currentText(), self.labels_combo.currentText()
            if not iname or not lname:
                raise MSAMError("choose a 3-D image layer and a Labels layer")
            img_layer, lab_layer = self.viewer.layers[iname], self.viewer.layers[lname]
            img = np.asarray(img_layer.data)
            lab = np.asarray(lab_layer.data)
            spacing = tuple(float(s) for s in img_layer.scale[-3:])
            cases = [array_case(img, lab, spacing, modality=self.modality_combo.currentText(), case_id=iname)]
        out = self.out_dir.text().strip()
        if not out:
            raise MSAMError("choose an output folder")
        return TrainConfig(
            data=data, cases=cases, out_dir=out, model_config=self.config_combo.currentText(),
            init_checkpoint=self.init_path.text().strip() or None,
            label_id=self.label_id.value() or None, val_patients=val, epochs=self.epochs.value(),
            steps_per_epoch=self.steps.value() or None, clicks=self.clicks.value(),
            batch_size=self.batch.value(), lr=self.lr.value(), device=self.device_combo.currentText(),
            resume=self.resume.isChecked(), val_protocol=self.val_protocol.currentText(),
        )

    # ------------------------------------------------------------------ run
    def start(self, config=None) -> None:
        """Start training in a worker thread (``config`` overrides the form, for scripts and tests)."""
        from napari.qt.threading import create_worker

        from napari_msam.training import Trainer

        if self.running:
            return
        try:
            cfg = config if config is not None else self.build_config()
        except ValueError as exc:
            self._set_status(str(exc), error=True)
            return
        self.events = []
        self.result = None
        self.last_error = None
        self.loss_plot.clear()
        self.dice_plot.clear()
        self.trainer = Trainer(cfg, callback=self._bridge.event.emit)
        self.worker = create_worker(self.trainer.fit)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)
        self.start_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.use_btn.setEnabled(False)
        self._set_status("preparing data…")
        self.worker.start()

    def cancel(self) -> None:
        if self.trainer is not None:
            self.trainer.cancel()
            self._set_status("cancelling: writing a checkpoint…")

    def _set_status(self, text: str, error: bool = False) -> None:
        if error:
            body = html.escape(text).replace("\n", "<br>")
            self.status.setText(f"<span style='color:#ff6b6b'>{body}</span>")
        else:
            self.status.setText(text)

    def _on_event(self, ev: Any) -> None:
        self.events.append(ev)
        if ev.kind == "data":
            self._set_status(f"preparing data: {ev.step}/{ev.steps}")
        elif ev.kind == "start":
            self.progress.setRange(0, max(1, ev.steps * ev.epochs))
            self.progress.setValue(ev.global_step)
            self._set_status(ev.message)
        elif ev.kind == "step":
            self.progress.setValue(min(ev.global_step, self.progress.maximum()))
            self.loss_plot.add_point("loss", ev.global_step, ev.loss)
            self._set_status(f"epoch {ev.epoch}/{ev.epochs}  step {ev.step}/{ev.steps}  loss {ev.loss:.4f}")
        elif ev.kind == "epoch":
            text = f"epoch {ev.epoch}/{ev.epochs} done, train loss {ev.loss:.4f}"
            if ev.val_dice:
                d = ev.val_dice
                self.dice_plot.add_point("click 1", ev.epoch, d[0])
                self.dice_plot.add_point("last click", ev.epoch, d[-1])
                self.dice_plot.add_point("mean", ev.epoch, float(np.mean(d)))
                text += f", val Dice @1 {d[0]:.3f} @{len(d)} {d[-1]:.3f}"
            self._set_status(text)
            self.use_btn.setEnabled(True)
        elif ev.kind in ("done", "cancelled"):
            self._set_status(f"{ev.kind}: {ev.global_step} steps, {ev.elapsed_s:.0f} s {ev.message}".strip())

    def _on_returned(self, result: Any) -> None:
        self.result = result

    def _on_errored(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        self._set_status(f"training failed: {exc}", error=True)

    def _on_finished(self) -> None:
        self.worker = None
        self.start_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.use_btn.setEnabled(self.checkpoint_path() is not None)

    def checkpoint_path(self) -> Path | None:
        out = Path(self.out_dir.text().strip() or ".")
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
        seg = self._find_segment_widget()
        if seg is None:
            from napari_msam.widgets.segment import SegmentWidget

            seg = SegmentWidget(self.viewer, model_path=str(path))
            self.viewer.window.add_dock_widget(seg, name="Segment (M-SAM)", area="right")
        else:
            from napari_msam.widgets.segment import FILE_MODEL

            seg.model_combo.setCurrentText(FILE_MODEL)
            seg.model_path.setText(str(path))
            seg._on_model_changed()
        self._set_status(f"{path.name} loaded into the Segment widget")
        return seg

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        if self.trainer is not None:
            self.trainer.cancel()
        super().closeEvent(event)
