"""The Train widget's form: layout, texts, tooltips and the fields' own consistency (the widget in
``train.py`` holds it as ``controls``, reads it and runs the training).

Everything but Start / Cancel and the status line sits in a scroll area, so the dock fits a 1080-pixel
screen beside the Segment widget.
"""

from __future__ import annotations

import html
from pathlib import Path

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

from ..model.config import CONFIGS
from ._utils import scrolled_body
from .plots import MetricPlot

SOURCE_FOLDER = "Data folder"
SOURCE_LAYERS = "Viewer layers"
INIT_DEFAULT = "Embedded default model (fine-tune)"
INIT_FILE = "Checkpoint file (fine-tune)"
INIT_SCRATCH = "From scratch (random weights)"


def path_row(edit: QLineEdit, button: QPushButton) -> QWidget:
    w = QWidget()
    row = QHBoxLayout(w)
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(edit, 1)
    row.addWidget(button)
    return w


class TrainControls(QWidget):
    """The form of the Train widget: its fields keep themselves consistent (a data folder or layers, a
    checkpoint or from scratch) and fill from file dialogs; :class:`TrainWidget` reads them and runs."""

    def __init__(self) -> None:
        super().__init__()
        outer, root = scrolled_body(self)
        root.addWidget(self._data_group())
        root.addWidget(self._model_group())
        root.addWidget(self._options_group())
        self.loss_plot = MetricPlot(title="training loss", xlabel="step", ylabel="loss", series=("loss",), ylim=None)
        self.dice_plot = MetricPlot(title="validation Dice", xlabel="epoch", ylabel="Dice",
                                    series=("click 1", "last click", "mean"), ylim=(0.0, 1.0))
        root.addWidget(self.loss_plot)
        root.addWidget(self.dice_plot)
        root.addStretch(1)
        bottom = QVBoxLayout()
        bottom.setContentsMargins(6, 0, 6, 6)
        row = QHBoxLayout()
        self.start_btn = QPushButton("Start")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        row.addWidget(self.start_btn)
        row.addWidget(self.cancel_btn)
        bottom.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m steps")
        bottom.addWidget(self.progress)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        bottom.addWidget(self.status)
        self.use_btn = QPushButton("Use in Segment widget")
        self.use_btn.setEnabled(False)
        self.use_btn.setToolTip("Load best.safetensors (else last.safetensors) into the Segment widget")
        bottom.addWidget(self.use_btn)
        outer.addLayout(bottom)
        self.source_combo.currentTextChanged.connect(self._on_source_changed)
        self.init_combo.currentTextChanged.connect(self._on_init_changed)
        self.data_browse.clicked.connect(lambda *_: self._browse_dir(self.data_dir, "Training data folder"))
        self.init_browse.clicked.connect(lambda *_: self._browse_init())
        self.out_browse.clicked.connect(lambda *_: self._browse_dir(self.out_dir, "Output folder"))
        self._on_source_changed()
        self._on_init_changed()

    # ------------------------------------------------------------------ the form's own behaviour
    def _browse_dir(self, edit: QLineEdit, title: str) -> None:
        path = QFileDialog.getExistingDirectory(self, title, edit.text() or "")
        if path:
            edit.setText(path)

    def _browse_init(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint to fine-tune", "",
                                              "Checkpoints (*.pth *.pt *.safetensors);;All files (*)")
        if path:
            self.init_path.setText(path)
            self.init_combo.setCurrentText(INIT_FILE)

    def _on_source_changed(self, *_: object) -> None:
        folder = self.source_combo.currentText() == SOURCE_FOLDER
        self.data_row.setEnabled(folder)
        for w in (self.image_combo, self.labels_combo, self.modality_combo):
            w.setEnabled(not folder)
        self.val_patients.setEnabled(folder)
        self.val_protocol.setEnabled(folder)

    def _on_init_changed(self, *_: object) -> None:
        choice = self.init_combo.currentText()
        self.init_row.setVisible(choice == INIT_FILE)
        self.config_combo.setEnabled(choice == INIT_SCRATCH)  # a fine-tuned model keeps its architecture

    def show_layers(self, images: list[str], labels: list[str]) -> None:
        """Offer these layer names, keeping the current choices when they are still there."""
        for combo, names in ((self.image_combo, images), (self.labels_combo, labels)):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current:
                combo.setCurrentText(current)
            combo.blockSignals(False)

    def show_status(self, text: str, error: bool = False) -> None:
        """The status line; an error in red, its lines kept."""
        if error:
            body = html.escape(text).replace("\n", "<br>")
            self.status.setText(f"<span style='color:#ff6b6b'>{body}</span>")
        else:
            self.status.setText(text)

    def _data_group(self) -> QGroupBox:
        data = QGroupBox("Data")
        f = QFormLayout(data)
        self.source_combo = QComboBox()
        self.source_combo.addItems([SOURCE_FOLDER, SOURCE_LAYERS])
        f.addRow("Source", self.source_combo)
        self.data_dir = QLineEdit()
        self.data_dir.setPlaceholderText("imagesTr/+labelsTr/, X + X_label, or one folder per patient")
        self.data_browse = QPushButton("Browse…")
        self.data_row = path_row(self.data_dir, self.data_browse)
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
            "tumour, zoom-out, paste-back; slower). The two can rank checkpoints differently.")
        f.addRow("Validate with", self.val_protocol)
        return data

    def _model_group(self) -> QGroupBox:
        model = QGroupBox("Model and output")
        f = QFormLayout(model)
        self.init_combo = QComboBox()
        self.init_combo.addItems([INIT_DEFAULT, INIT_FILE, INIT_SCRATCH])
        self.init_combo.setToolTip(
            "Fine-tuning the embedded default model needs little data; from scratch needs a large data set "
            "and many epochs before its Dice leaves 0")
        f.addRow("Start from", self.init_combo)
        self.init_path = QLineEdit()
        self.init_path.setPlaceholderText("checkpoint to fine-tune")
        self.init_browse = QPushButton("Browse…")
        self.init_row = path_row(self.init_path, self.init_browse)
        f.addRow("", self.init_row)
        self.config_combo = QComboBox()
        self.config_combo.addItems(list(CONFIGS))
        self.config_combo.setCurrentText("msam-small")
        self.config_combo.setToolTip("Architecture of a model trained from scratch (a fine-tuned one keeps its own)")
        f.addRow("Config", self.config_combo)
        self.out_dir = QLineEdit(str(Path("runs") / "train"))
        self.out_browse = QPushButton("Browse…")
        f.addRow("Output folder", path_row(self.out_dir, self.out_browse))
        self.resume = QCheckBox("resume from the output folder's state.pt")
        f.addRow("", self.resume)
        return model

    def _options_group(self) -> QGroupBox:
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
        return opts
