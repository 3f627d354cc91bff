"""Which model the Segment widget runs: the embedded default or a checkpoint file, and its settings.

Why its own class: choosing, loading and describing the model is one concern with its own worker
round-trips; the Segment widget only asks it for the current ``source()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog

from ._utils import esc_html, friendly
from .jobs import SessionSpec
from .segment_ui import DEFAULT_MODEL, FILE_MODEL
from .workers import JobResult


class ModelChoice:
    """Drives the Model group of a Segment widget (``seg``): weights, device, flip views, edges."""

    def __init__(self, seg: Any) -> None:
        self.seg = seg
        self.requested = False
        self.device_shown = "?"
        self.warning: str | None = None  # shown once the next model is loaded (e.g. an untrained model)
        seg.model_combo.currentIndexChanged.connect(self.load)
        seg.model_path.editingFinished.connect(self.load)
        seg.browse_btn.clicked.connect(self.browse)
        for signal in (seg.device_combo.currentIndexChanged, seg.tta_spin.valueChanged,
                       seg.edge_combo.currentIndexChanged):
            signal.connect(self.load)

    def error(self, text: str) -> None:  # for ``friendly``
        self.seg.error(text)

    def initial_load(self) -> None:
        if not self.seg.closed and not self.requested:
            self.load()

    def source(self) -> tuple | None:
        """("default",) or ("file", path, mtime); None while no file is chosen."""
        seg = self.seg
        if seg.model_combo.currentText() == DEFAULT_MODEL:
            return ("default",)
        text = seg.model_path.text().strip()
        if not text:
            return None
        p = Path(text).expanduser()
        try:
            mtime = p.stat().st_mtime
        except OSError:
            mtime = None
        return ("file", str(p), mtime)

    def set(self, path: str | None) -> None:
        """Use the checkpoint at ``path`` (None: the embedded default) and load it on the worker."""
        seg = self.seg
        seg.model_combo.blockSignals(True)
        seg.model_combo.setCurrentText(DEFAULT_MODEL if path is None else FILE_MODEL)
        seg.model_combo.blockSignals(False)
        if path is not None:
            seg.model_path.setText(str(path))
        self.load()

    @friendly
    def load(self, *_: Any) -> None:
        """Load the chosen model (or rebuild the session for new settings) on the worker."""
        seg = self.seg
        if seg.closed:
            return
        seg.path_widget.setVisible(seg.model_combo.currentText() == FILE_MODEL)
        source = self.source()
        if source is None:
            seg.model_info.setText("choose a checkpoint file (.pth / .pt / .safetensors)")
            return
        seg.model_info.setText("loading…")
        self.requested = True
        seg.rebuild_session(SessionSpec(source, seg.device, ("none",), seg.tta, seg.edge_refine), source,
                            self.on_loaded)

    @friendly
    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.seg, "Choose an M-SAM checkpoint", "",
                                              "Checkpoints (*.pth *.pt *.safetensors *.ckpt);;All files (*)")
        if path:
            self.seg.model_path.setText(path)
            self.load()

    def on_loaded(self, result: JobResult) -> None:
        seg = self.seg
        if result.error:
            hint = ""
            if seg.model_combo.currentText() == DEFAULT_MODEL:
                hint = " Choose “Checkpoint file…” to use your own weights."
            seg.model_info.setText(f"<span style='color:#ff6b6b'>model not loaded: {esc_html(result.error)}</span>")
            seg.error(f"model not loaded: {result.error}.{hint}")
            return
        self.on_setup_done(result)
        warning, self.warning = self.warning, None
        if warning:
            seg.model_info.setText(seg.model_info.text() + f"<br><span style='color:#ffb74d'>{esc_html(warning)}</span>")
            seg.show_message(f"model loaded, but {warning}", "warning")
        else:
            seg.show_message(f"model ready on {self.device_shown} ({result.seconds:.1f} s)")

    def on_setup_done(self, result: JobResult) -> None:
        seg = self.seg
        if result.error:
            seg.error(f"cannot set up the image: {result.error}")
            return
        info = result.value or {}
        if "summary" in info:
            seg.model_info.setText(info["summary"])
        self.device_shown = info.get("device", self.device_shown)
