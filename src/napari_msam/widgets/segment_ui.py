"""The Segment widget's controls: layout, texts and tooltips, and the values they stand for.

Why a class of its own: the controls are created and owned in one place; the widget holds them as
``controls`` and its collaborators read settings through the few properties here (``device``, ``tta``,
``edge_refine``, ``modality``, ``label_id``, ``policy``) instead of parsing combo texts themselves.
"""

from __future__ import annotations

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
    QWidget,
)

from ..session import MAX_TTA
from ._utils import scrolled_body
from .labels_policy import CT_PRESETS, POLICIES

OUTPUT_NAME = "M-SAM labels"
NEW_OUTPUT = f"<new: {OUTPUT_NAME}>"
DEFAULT_MODEL = "Embedded default model"
FILE_MODEL = "Checkpoint file…"
EDGE_CHOICES = ["auto (as validated)", "on", "off"]  # first word = the Session's edge_refine mode


def available_devices() -> list[str]:
    """Device choices: CUDA (named) first when present, then the CPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return [f"cuda ({torch.cuda.get_device_name(0)})", "cpu"]
    except Exception:  # a broken CUDA install must not break the widget
        pass
    return ["cpu"]


class SegmentControls(QWidget):
    """The controls of the Segment widget (no behaviour: :class:`SegmentWidget` connects them).

    Everything but the status line sits in a scroll area, so the dock fits a 1080-pixel screen beside
    other widgets; the status line stays visible below it.
    """

    def __init__(self) -> None:
        super().__init__()
        outer, root = scrolled_body(self)
        root.addWidget(self._image_group())
        root.addWidget(self._model_group())
        self.tabs = QTabWidget()
        self.tabs.addTab(self._interactive_tab(), "Interactive")
        root.addWidget(self.tabs)
        root.addStretch(1)
        outer.addLayout(self._status_row())
        self.show_polarity(True)

    def add_tab(self, widget: QWidget, title: str) -> None:
        self.tabs.addTab(widget, title)

    # ------------------------------------------------------------------ settings read by the collaborators
    @property
    def device(self) -> str:
        """The torch device the model runs on ("cpu", "cuda")."""
        return self.device_combo.currentText().split(" ")[0]

    @property
    def tta(self) -> int:
        """Mirrored views per click (the Session's ``tta``)."""
        return int(self.tta_spin.value())

    @property
    def edge_refine(self) -> str:
        """The Session's ``edge_refine`` mode: "auto" (the checkpoint's validated modalities), "on" or "off"."""
        return self.edge_combo.currentText().split(" ")[0]

    @property
    def modality(self) -> str:
        """"ct", "mr" or "other", as the Session takes it."""
        return self.modality_combo.currentText().lower()

    @property
    def label_id(self) -> int:
        return int(self.label_spin.value())

    @property
    def policy(self) -> str:
        """How the object treats labels already in the output layer (a key of ``POLICIES``)."""
        return self.policy_combo.currentText()

    # ------------------------------------------------------------------ what the widget shows
    def show_polarity(self, positive: bool) -> None:
        self.polarity_btn.setChecked(not positive)
        if positive:
            self.polarity_btn.setText("Next click: POSITIVE (+, green)  [T]")
            self.polarity_btn.setStyleSheet("QPushButton { color: #7CFC00; font-weight: bold; }")
        else:
            self.polarity_btn.setText("Next click: NEGATIVE (−, red)  [T]")
            self.polarity_btn.setStyleSheet("QPushButton { color: #ff5555; font-weight: bold; }")

    def show_status(self, text: str, level: str = "info") -> None:
        color = {"info": "", "warning": "#ffb74d", "error": "#ff6b6b"}.get(level, "")
        self.status.setStyleSheet(f"color: {color}" if color else "")
        self.status.setText(text)

    def show_queue(self, n: int) -> None:
        """The busy bar: spinning while ``n`` steps are queued or running."""
        self.busy.setRange(0, 0 if n else 1)
        self.busy.setValue(0 if n else 1)
        self.busy.setToolTip(f"{n} step(s) queued or running" if n else "idle")

    def _image_group(self) -> QGroupBox:
        inp = QGroupBox("Image and output")
        form = QFormLayout(inp)
        self.open_btn = QPushButton("Open volume…")
        self.open_btn.setToolTip("Open a NIfTI / NRRD / MHA / TIFF file, or a DICOM series by any file of it, as an image layer "
                                 "(spacing, orientation and modality from the file); optionally its ground truth")
        self.save_btn = QPushButton("Save labels…")
        self.save_btn.setToolTip("Save the output labels on the image's own grid (NIfTI keeps its affine; TIFF)")
        io_row = QHBoxLayout()
        io_row.addWidget(self.open_btn)
        io_row.addWidget(self.save_btn)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The 3-D image layer to segment")
        self.modality_combo = QComboBox()
        self.modality_combo.addItems(["CT", "MR", "other"])
        self.modality_combo.setToolTip(
            "A guess from the file, the layer name and the intensities (shown below); change it if wrong. "
            "It decides the normalisation the model sees (CT: HU window) and whether edge refinement runs")
        self.window_combo = QComboBox()
        self.window_combo.addItems(["(window / level)", *CT_PRESETS])
        self.window_combo.setToolTip("CT display presets: change only the contrast limits, never what the model sees")
        mod_row = QHBoxLayout()
        mod_row.addWidget(self.modality_combo)
        mod_row.addWidget(self.window_combo, 1)
        self.modality_note = QLabel("")
        self.modality_note.setWordWrap(True)
        self.output_combo = QComboBox()
        self.output_combo.setToolTip(
            "Labels layer receiving the objects (made if missing, same shape and scale as the image)")
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 65535)
        self.label_spin.setToolTip("Label id of the current object; Accept (N) moves to the next free id")
        self.policy_combo = QComboBox()
        for i, (name, tip) in enumerate(POLICIES.items()):
            self.policy_combo.addItem(name)
            self.policy_combo.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
        self.policy_combo.setToolTip("\n".join(f"{k}: {v}" for k, v in POLICIES.items()))
        out_row = QHBoxLayout()
        out_row.addWidget(self.output_combo, 1)
        out_row.addWidget(QLabel("id"))
        out_row.addWidget(self.label_spin)
        form.addRow(io_row)
        form.addRow("Image", self.image_combo)
        form.addRow("Modality", mod_row)
        form.addRow("", self.modality_note)
        form.addRow("Output", out_row)
        form.addRow("Existing labels", self.policy_combo)
        return inp

    def _model_group(self) -> QGroupBox:
        mdl = QGroupBox("Model")
        mform = QFormLayout(mdl)
        self.model_combo = QComboBox()
        self.model_combo.addItems([DEFAULT_MODEL, FILE_MODEL])
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("M-SAM / SAM-Med3D .pth or napari-msam .safetensors")
        self.browse_btn = QPushButton("…")
        self.browse_btn.setMaximumWidth(30)
        self.browse_btn.setToolTip("Choose a checkpoint file")
        path_row = QHBoxLayout()
        path_row.addWidget(self.model_path, 1)
        path_row.addWidget(self.browse_btn)
        path_row.setContentsMargins(0, 0, 0, 0)
        self.path_widget = QWidget()
        self.path_widget.setLayout(path_row)
        self.path_widget.setVisible(False)
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        self.device_combo.setToolTip("Where the model runs")
        self.tta_spin = QSpinBox()
        self.tta_spin.setRange(1, MAX_TTA)
        self.tta_spin.setValue(1)
        self.tta_spin.setToolTip(
            "Test-time flips: average this many mirrored views of each ROI (1 = off). Each view costs one more "
            "encoder and refine pass (docs/model-card.md has what it changes)")
        self.edge_combo = QComboBox()
        self.edge_combo.addItems(EDGE_CHOICES)
        self.edge_combo.setToolTip(
            "Snap the model's mask to image edges after each click (a random walker seeded by the model's sure "
            "inside / outside and by the clicks). The model's own mask shows first; the refined one follows. "
            "auto: only on the modalities the checkpoint was validated on (the embedded default model: MR; "
            "reference SAM-Med3D / M-SAM checkpoints: none); docs/model-card.md has where it helps")
        self.model_info = QLabel("loading…")
        self.model_info.setWordWrap(True)
        self.model_info.setTextFormat(Qt.TextFormat.RichText)
        mform.addRow("Weights", self.model_combo)
        mform.addRow("", self.path_widget)
        mform.addRow("Device", self.device_combo)
        mform.addRow("Flip views", self.tta_spin)
        mform.addRow("Edge refinement", self.edge_combo)
        mform.addRow(self.model_info)
        return mdl

    def _interactive_tab(self) -> QWidget:
        inter = QWidget()
        grid = QGridLayout(inter)
        self.polarity_btn = QPushButton()
        self.polarity_btn.setCheckable(True)
        self.polarity_btn.setToolTip("Next click is positive (green, inside the object) or negative (red, outside) [T]")
        self.undo_btn = QPushButton("Undo click [U]")
        self.undo_btn.setToolTip("Remove the last click of the current object [U]")
        self.reset_btn = QPushButton("Reset object [R]")
        self.reset_btn.setToolTip("Forget all clicks of the current object and erase it [R]")
        self.accept_btn = QPushButton("Accept → next [N]")
        self.accept_btn.setToolTip("Keep the current object under its label id and start the next free id [N]")
        self.clear_btn = QPushButton("Clear labels…")
        self.clear_btn.setToolTip("Erase every label of the output layer (asks first)")
        grid.addWidget(self.polarity_btn, 0, 0, 1, 2)
        grid.addWidget(self.undo_btn, 1, 0)
        grid.addWidget(self.reset_btn, 1, 1)
        grid.addWidget(self.accept_btn, 2, 0)
        grid.addWidget(self.clear_btn, 2, 1)
        help_text = QLabel(
            "Click the image (the <b>M-SAM prompts</b> layer is selected in add mode): "
            "<span style='color:#7CFC00'>green</span> = inside, <span style='color:#ff5555'>red</span> = outside. "
            "<b>T</b> polarity · <b>U</b> undo · <b>R</b> reset · <b>N</b> accept. In the 3-D view a click lands "
            "on the brightest voxel under the cursor (what the MIP shows)."
        )
        help_text.setWordWrap(True)
        grid.addWidget(help_text, 3, 0, 1, 2)
        return inter

    def _status_row(self) -> QHBoxLayout:
        status_row = QHBoxLayout()
        status_row.setContentsMargins(6, 0, 6, 6)
        self.busy = QProgressBar()
        self.busy.setMaximumWidth(60)
        self.busy.setMaximumHeight(12)
        self.busy.setTextVisible(False)
        self.busy.setRange(0, 1)
        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        status_row.addWidget(self.busy)
        status_row.addWidget(self.status, 1)
        return status_row
