"""Which model the Segment widget runs, with which settings, and what the worker's session is set up for.

Why its own class: choosing, loading and describing the model, and keeping the worker's session in step
with the chosen model, settings and image, is one concern with its own worker round-trips; the click
loop only asks it to :meth:`ModelChoice.ensure` a session before each step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from qtpy.QtWidgets import QFileDialog

from ..errors import MSAMError
from ._utils import esc_html, friendly
from .job_router import JobRouter
from .jobs import SessionSpec, job_ensure
from .prompts import layer_token
from .segment_ui import DEFAULT_MODEL, FILE_MODEL, SegmentControls
from .workers import JobResult


def additions_text(additions: dict[str, str]) -> str:
    """What the model line says about inference additions that are not M-SAM (the paper's model has none)."""
    if not additions:
        return "no inference additions (the network alone, as the reference code runs it)"
    return "additions: " + "; ".join(additions.values())


class StatusSink(Protocol):
    """Where the Segment widget's collaborators report: the status line and napari's notifications."""

    def show_message(self, text: str, level: str = "info") -> None: ...

    def error(self, text: str) -> None: ...


class ModelChoice:
    """Drives the Model group of the controls (weights, device, flip views, edges) and the session spec.

    ``session_factory`` (tests) replaces :class:`napari_msam.session.Session` on the worker;
    ``before_rebuild()`` runs before a new model or new settings replace the session (the object being
    drawn is let go of then).
    """

    def __init__(self, controls: SegmentControls, jobs: JobRouter, status: StatusSink, *,
                 session_factory: Any = None, before_rebuild: Callable[[], None] = lambda: None) -> None:
        self.controls = controls
        self.jobs = jobs
        self.status = status
        self.session_factory = session_factory
        self.before_rebuild = before_rebuild
        self.requested = False
        self.device_shown = "?"
        self.warning: str | None = None  # shown once the next model is loaded (e.g. an untrained model)
        self.submitted: SessionSpec | None = None  # what the worker's session was last asked to be
        c = controls
        c.model_combo.currentIndexChanged.connect(self.load)
        c.model_path.editingFinished.connect(self.load)
        c.browse_btn.clicked.connect(self.browse)
        for signal in (c.device_combo.currentIndexChanged, c.tta_spin.valueChanged,
                       c.edge_combo.currentIndexChanged):
            signal.connect(self.load)

    def error(self, text: str) -> None:  # for ``friendly``
        self.status.error(text)

    def initial_load(self) -> None:
        if not self.jobs.closed and not self.requested:
            self.load()

    def source(self) -> tuple | None:
        """("default",) or ("file", path, mtime); None while no file is chosen."""
        c = self.controls
        if c.model_combo.currentText() == DEFAULT_MODEL:
            return ("default",)
        text = c.model_path.text().strip()
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
        c = self.controls
        c.model_combo.blockSignals(True)
        c.model_combo.setCurrentText(DEFAULT_MODEL if path is None else FILE_MODEL)
        c.model_combo.blockSignals(False)
        if path is not None:
            c.model_path.setText(str(path))
        self.load()

    @friendly
    def load(self, *_: Any) -> None:
        """Load the chosen model (or rebuild the session for new settings) on the worker.

        The object being drawn stays as drawn and its clicks are forgotten; the image follows on the
        next click."""
        c = self.controls
        if self.jobs.closed:
            return
        c.path_widget.setVisible(c.model_combo.currentText() == FILE_MODEL)
        source = self.source()
        if source is None:
            c.model_info.setText("choose a checkpoint file (.pth / .pt / .safetensors)")
            return
        c.model_info.setText("loading…")
        self.requested = True
        spec = SessionSpec(source, c.device, ("none",), c.tta, c.edge_refine)
        self.before_rebuild()
        self.submitted = None
        self.jobs.submit("load model", job_ensure, spec, source, None, (1.0, 1.0, 1.0), "other",
                         self.session_factory, on_done=self.on_loaded)

    def ensure(self, image: Any, data: np.ndarray) -> SessionSpec:
        """Queue whatever the worker needs (model, session, the image ``data`` of layer ``image``) before a
        step of the click loop; returns the spec."""
        source = self.source()
        if source is None:
            raise MSAMError("no model: choose a checkpoint file or the embedded default")
        c = self.controls
        modality = c.modality
        spacing = tuple(float(s) for s in image.scale)
        spec = SessionSpec(source, c.device, (layer_token(image), id(data), data.shape, modality, spacing),
                           c.tta, c.edge_refine)
        if spec != self.submitted:
            self.submitted = spec
            self.jobs.submit("set up image", job_ensure, spec, source, data, spacing, modality,
                             self.session_factory, on_done=self.on_setup_done)
        return spec

    @friendly
    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.controls, "Choose an M-SAM checkpoint", "",
                                              "Checkpoints (*.pth *.pt *.safetensors *.ckpt);;All files (*)")
        if path:
            self.controls.model_path.setText(path)
            self.load()

    def on_loaded(self, result: JobResult) -> None:
        c = self.controls
        if result.error:
            self.submitted = None
            hint = ""
            if c.model_combo.currentText() == DEFAULT_MODEL:
                hint = " Choose “Checkpoint file…” to use your own weights."
            c.model_info.setText(f"<span style='color:#ff6b6b'>model not loaded: {esc_html(result.error)}</span>")
            self.status.error(f"model not loaded: {result.error}.{hint}")
            return
        self.on_setup_done(result)
        warning, self.warning = self.warning, None
        if warning:
            c.model_info.setText(c.model_info.text() + f"<br><span style='color:#ffb74d'>{esc_html(warning)}</span>")
            self.status.show_message(f"model loaded, but {warning}", "warning")
        else:
            self.status.show_message(f"model ready on {self.device_shown} ({result.seconds:.1f} s)")

    def on_setup_done(self, result: JobResult) -> None:
        if result.error:
            self.submitted = None
            self.status.error(f"cannot set up the image: {result.error}")
            return
        info = result.value or {}
        if "summary" in info:
            text = info["summary"]
            if "additions" in info:
                text += "<br><small>" + esc_html(additions_text(info["additions"])) + "</small>"
            self.controls.model_info.setText(text)
        self.device_shown = info.get("device", self.device_shown)
