"""The Segment widget's controls: layout, texts and tooltips (the behaviour lives in ``segment.py``)."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .labels_policy import CT_PRESETS, POLICIES

OUTPUT_NAME = "M-SAM labels"
NEW_OUTPUT = f"<new: {OUTPUT_NAME}>"
DEFAULT_MODEL = "Embedded default model"
FILE_MODEL = "Checkpoint file…"
EDGE_CHOICES = ["auto (MR only)", "on", "off"]  # first word = the Session's edge_refine mode


def available_devices() -> list[str]:
    """Device choices: CUDA (named) first when present, then the CPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return [f"cuda ({torch.cuda.get_device_name(0)})", "cpu"]
    except Exception:  # a broken CUDA install must not break the widget
        pass
    return ["cpu"]


def build_segment_ui(w: Any) -> None:
    """Create the Segment widget's controls as attributes of ``w`` (no signals: the widget connects them)."""
    root = QVBoxLayout(w)
    root.setContentsMargins(6, 6, 6, 6)

    inp = QGroupBox("Image and output")
    form = QFormLayout(inp)
    w.image_combo = QComboBox()
    w.image_combo.setToolTip("The 3-D image layer to segment")
    w.modality_combo = QComboBox()
    w.modality_combo.addItems(["CT", "MR", "other"])
    w.modality_combo.setToolTip(
        "Guessed from the layer name and intensities; decides the "
        "normalisation the model sees (CT: HU window)"
    )
    w.window_combo = QComboBox()
    w.window_combo.addItems(["(window / level)", *CT_PRESETS])
    w.window_combo.setToolTip(
        "CT display presets: change only the contrast limits, never what the model sees"
    )
    mod_row = QHBoxLayout()
    mod_row.addWidget(w.modality_combo)
    mod_row.addWidget(w.window_combo, 1)
    w.output_combo = QComboBox()
    w.output_combo.setToolTip(
        "Labels layer receiving the objects (made if missing, same shape and scale as the image)"
    )
    w.label_spin = QSpinBox()
    w.label_spin.setRange(1, 65535)
    w.label_spin.setToolTip("Label id of the current object; Accept (N) moves to the next free id")
    w.policy_combo = QComboBox()
    for i, (name, tip) in enumerate(POLICIES.items()):
        w.policy_combo.addItem(name)
        w.policy_combo.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
    w.policy_combo.setToolTip("\n".join(f"{k}: {v}" for k, v in POLICIES.items()))
    out_row = QHBoxLayout()
    out_row.addWidget(w.output_combo, 1)
    out_row.addWidget(QLabel("id"))
    out_row.addWidget(w.label_spin)
    form.addRow("Image", w.image_combo)
    form.addRow("Modality", mod_row)
    form.addRow("Output", out_row)
    form.addRow("Existing labels", w.policy_combo)
    root.addWidget(inp)

    mdl = QGroupBox("Model")
    mform = QFormLayout(mdl)
    w.model_combo = QComboBox()
    w.model_combo.addItems([DEFAULT_MODEL, FILE_MODEL])
    w.model_path = QLineEdit()
    w.model_path.setPlaceholderText("M-SAM / SAM-Med3D .pth or napari-msam .safetensors")
    w.browse_btn = QPushButton("…")
    w.browse_btn.setMaximumWidth(30)
    w.browse_btn.setToolTip("Choose a checkpoint file")
    path_row = QHBoxLayout()
    path_row.addWidget(w.model_path, 1)
    path_row.addWidget(w.browse_btn)
    w.path_widget = QWidget()
    w.path_widget.setLayout(path_row)
    path_row.setContentsMargins(0, 0, 0, 0)
    w.device_combo = QComboBox()
    w.device_combo.addItems(available_devices())
    w.device_combo.setToolTip("Where the model runs")
    from ..session import MAX_TTA

    w.tta_spin = QSpinBox()
    w.tta_spin.setRange(1, MAX_TTA)
    w.tta_spin.setValue(1)
    w.tta_spin.setToolTip(
        "Test-time flips: average this many mirrored views of each ROI (1 = off). Each view costs one more "
        "encoder and refine pass; on our validation 2-4 views changed Dice@10 by -0.01 to +0.02"
    )
    w.edge_combo = QComboBox()
    w.edge_combo.addItems(EDGE_CHOICES)
    w.edge_combo.setToolTip(
        "Snap the model's mask to image edges after each click (a random walker seeded by the model's sure "
        "inside / outside and by the clicks; about 0.1-0.4 s a click). auto: MR only; on our validation MR it "
        "raised Dice@10 from 0.72 to 0.78 (0.80 to 0.84 with centred clicks); on CT it did not help"
    )
    w.model_info = QLabel("loading…")
    w.model_info.setWordWrap(True)
    w.model_info.setTextFormat(Qt.TextFormat.RichText)
    mform.addRow("Weights", w.model_combo)
    mform.addRow("", w.path_widget)
    mform.addRow("Device", w.device_combo)
    mform.addRow("Flip views", w.tta_spin)
    mform.addRow("Edge refinement", w.edge_combo)
    mform.addRow(w.model_info)
    root.addWidget(mdl)

    w.tabs = QTabWidget()
    inter = QWidget()
    grid = QGridLayout(inter)
    w.polarity_btn = QPushButton()
    w.polarity_btn.setCheckable(True)
    w.polarity_btn.setToolTip(
        "Next click is positive (green, inside the object) or negative (red, outside) [T]"
    )
    w.undo_btn = QPushButton("Undo click [U]")
    w.undo_btn.setToolTip("Remove the last click of the current object [U]")
    w.reset_btn = QPushButton("Reset object [R]")
    w.reset_btn.setToolTip("Forget all clicks of the current object and erase it [R]")
    w.accept_btn = QPushButton("Accept → next [N]")
    w.accept_btn.setToolTip("Keep the current object under its label id and start the next free id [N]")
    w.clear_btn = QPushButton("Clear labels…")
    w.clear_btn.setToolTip("Erase every label of the output layer (asks first)")
    grid.addWidget(w.polarity_btn, 0, 0, 1, 2)
    grid.addWidget(w.undo_btn, 1, 0)
    grid.addWidget(w.reset_btn, 1, 1)
    grid.addWidget(w.accept_btn, 2, 0)
    grid.addWidget(w.clear_btn, 2, 1)
    help_text = QLabel(
        "Add points to <b>M-SAM prompts</b> (Points layer, add mode <b>P</b>): "
        "<span style='color:#7CFC00'>green</span> = inside, <span style='color:#ff5555'>red</span> = outside. "
        "<b>T</b> polarity · <b>U</b> undo · <b>R</b> reset · <b>N</b> accept"
    )
    help_text.setWordWrap(True)
    grid.addWidget(help_text, 3, 0, 1, 2)
    w.tabs.addTab(inter, "Interactive")

    from .auto_click import AutoClickPanel

    w.auto_panel = AutoClickPanel(w)
    w.tabs.addTab(w.auto_panel, "Auto N-click")
    root.addWidget(w.tabs)

    status_row = QHBoxLayout()
    w.busy = QProgressBar()
    w.busy.setMaximumWidth(60)
    w.busy.setMaximumHeight(12)
    w.busy.setTextVisible(False)
    w.busy.setRange(0, 1)
    w.status = QLabel("ready")
    w.status.setWordWrap(True)
    w.status.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    status_row.addWidget(w.busy)
    status_row.addWidget(w.status, 1)
    root.addLayout(status_row)
    root.addStretch(1)
