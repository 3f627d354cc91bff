"""Auto N-click: the evaluation protocol run live in the Segment widget (a tab of it).

Each simulated click appears in the prompts layer and its mask in the output layer as it happens; Dice
per click fills a table and a small plot; the table exports to CSV. The loop itself is
:func:`napari_msam.evaluation.run_protocol`, the same one the CLI and the benchmarks use, run on the
widget's inference worker.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import MSAMError
from ._utils import fill_combo, friendly
from .plots import MetricPlot
from .segment_ui import OUTPUT_NAME
from .workers import JobContext, JobResult

COLUMNS = ("click", "sign", "voxel (axis0, axis1, axis2)", "Dice", "seconds")


@dataclass
class ClickRow:
    index: int
    voxel: tuple[int, int, int]
    positive: bool
    dice: float
    seconds: float
    bbox: tuple[slice, slice, slice] | None
    mask: np.ndarray | None


def job_protocol(ctx: JobContext, gt: np.ndarray, n_clicks: int, strategy: str, seed: int) -> Any:
    """Run the N-click protocol on the worker's session, streaming one row per click to the GUI."""
    from ..evaluation import run_protocol

    session = ctx.state.session
    if session is None or ctx.state.image_key is None:
        raise MSAMError("no image is set up for segmentation yet")

    def callback(rec: Any, result: Any) -> bool:
        bbox = mask = None
        if result is not None and getattr(result, "bbox", None) is not None:
            bbox = tuple(result.bbox)
            mask = np.asarray(result.mask, dtype=bool)
        ctx.progress(ClickRow(int(rec.click), tuple(int(v) for v in rec.voxel), bool(rec.positive),
                              float(rec.dice), float(rec.seconds), bbox, mask))
        return not ctx.cancelled()

    return run_protocol(session, gt, n_clicks=n_clicks, strategy=strategy, seed=seed, callback=callback)


class AutoHost(Protocol):
    """What the panel needs from the Segment widget (and nothing more)."""

    viewer: Any

    @property
    def busy_auto(self) -> bool: ...

    def image_layer(self) -> Any: ...

    def image_name(self) -> str: ...

    def start_fresh_object(self) -> None: ...

    def run_auto(self, fn: Callable[..., Any], *args: Any, on_row: Callable[[Any], None],
                 on_done: Callable[[JobResult], None]) -> None: ...

    def cancel_auto(self) -> bool: ...

    def show_auto_click(self, voxel: tuple[int, int, int], positive: bool, bbox: Any, mask: Any) -> None: ...

    def show_message(self, text: str, level: str = "info") -> None: ...

    def error(self, text: str) -> None: ...


class AutoClickPanel(QWidget):
    """Controls, table and plot for the automatic N-click run; drives its host (the Segment widget)."""

    def __init__(self, seg: AutoHost) -> None:
        super().__init__()
        self.seg = seg
        self.rows: list[ClickRow] = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        form = QFormLayout()
        self.gt_combo = QComboBox()
        self.gt_combo.setToolTip("Ground-truth Labels layer on the same grid as the image")
        self.gt_label = QSpinBox()
        self.gt_label.setRange(1, 65535)
        self.gt_label.setToolTip("Which label of the ground truth is the object")
        gt_row = QHBoxLayout()
        gt_row.addWidget(self.gt_combo, 1)
        gt_row.addWidget(self.gt_label)
        self.n_clicks = QSpinBox()
        self.n_clicks.setRange(1, 50)
        self.n_clicks.setValue(10)
        self.strategy = QComboBox()
        self.strategy.addItems(["random", "center"])
        self.strategy.setToolTip("random: a voxel drawn from the whole error region (the paper's protocol)\n"
                                 "center: the deepest voxel of the largest error region (like a person)")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        opts = QHBoxLayout()
        opts.addWidget(self.n_clicks)
        opts.addWidget(self.strategy, 1)
        opts.addWidget(self.seed)
        form.addRow("Ground truth", gt_row)
        form.addRow("Clicks / strategy / seed", opts)
        lay.addLayout(form)
        btns = QHBoxLayout()
        self.run_btn = QPushButton("Run auto 10-click")
        self.run_btn.setToolTip("Simulate clicks from the ground truth and show Dice after each")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.export_btn = QPushButton("Export CSV…")
        self.export_btn.setEnabled(False)
        btns.addWidget(self.run_btn, 2)
        btns.addWidget(self.cancel_btn, 1)
        btns.addWidget(self.export_btn, 1)
        lay.addLayout(btns)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(150)
        lay.addWidget(self.table)
        self.plot = MetricPlot(xlabel="click", ylabel="Dice", series=("Dice",), ylim=(0.0, 1.0))
        lay.addWidget(self.plot)
        self.n_clicks.valueChanged.connect(lambda n: self.run_btn.setText(f"Run auto {n}-click"))
        self.gt_combo.currentIndexChanged.connect(self._on_gt_changed)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.export_btn.clicked.connect(self._export_dialog)

    def error(self, text: str) -> None:
        self.seg.error(text)

    # ------------------------------------------------------------------ layers
    def refresh_layers(self, labels: list[str]) -> None:
        gts = [n for n in labels if not n.startswith(OUTPUT_NAME)]
        prefer = next((n for n in gts if "ground truth" in n.lower() or "mask" in n.lower() or "gt" in n.lower()),
                      None)
        before = self.gt_combo.currentText()
        fill_combo(self.gt_combo, gts, keep=True, prefer=prefer)
        if prefer and before == "" and self.gt_combo.currentText() != prefer:
            self.gt_combo.setCurrentText(prefer)

    def on_image_changed(self) -> None:
        """Pick the ground truth whose name starts like the image's (e.g. "STS_024 MR ground truth")."""
        image = self.seg.image_name()
        for i in range(self.gt_combo.count()):
            name = self.gt_combo.itemText(i)
            if image and name.startswith(image) and name != image:
                self.gt_combo.setCurrentIndex(i)
                return

    @friendly
    def _on_gt_changed(self, *_: Any) -> None:
        name = self.gt_combo.currentText()
        if name and name in self.seg.viewer.layers:
            data = np.asarray(self.seg.viewer.layers[name].data)
            ids = np.unique(data[::2, ::2, ::2]) if data.ndim == 3 else np.unique(data)
            ids = ids[ids > 0]
            if ids.size:
                self.gt_label.setValue(int(ids[0]))

    def _ground_truth(self, image: Any) -> np.ndarray:
        from napari.layers import Labels

        name = self.gt_combo.currentText()
        if not name or name not in self.seg.viewer.layers:
            raise MSAMError("no ground truth: the automatic run needs a Labels layer with the true object "
                            "(e.g. open the sample case, or a *_mask.nii.gz)")
        layer = self.seg.viewer.layers[name]
        if not isinstance(layer, Labels):
            raise MSAMError(f"{name!r} is not a Labels layer")
        gt = np.asarray(layer.data)
        if gt.shape != tuple(image.data.shape):
            raise MSAMError(f"the ground truth {name!r} has shape {gt.shape}, the image {tuple(image.data.shape)}")
        obj = gt == int(self.gt_label.value())
        if not obj.any():
            present = np.unique(gt)
            present = [int(v) for v in present[present > 0][:10]]
            raise MSAMError(f"label {self.gt_label.value()} is not in {name!r}"
                            + (f" (it has {present})" if present else " (it is empty)"))
        return obj

    # ------------------------------------------------------------------ run
    @friendly
    def run(self) -> None:
        seg = self.seg
        if seg.busy_auto:
            seg.error("an automatic run is already going")
            return
        try:
            gt = self._ground_truth(seg.image_layer())
            seg.start_fresh_object()
        except MSAMError as exc:
            seg.error(str(exc))
            return
        self.rows = []
        self.table.setRowCount(0)
        self.plot.clear()
        self.export_btn.setEnabled(False)
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        n = int(self.n_clicks.value())
        seg.run_auto(job_protocol, gt, n, self.strategy.currentText(), int(self.seed.value()),
                     on_row=self._on_row, on_done=self._on_done)
        seg.show_message(f"auto {n}-click running ({self.strategy.currentText()})…")

    @friendly
    def cancel(self) -> None:
        if self.seg.cancel_auto():
            self.seg.show_message("cancelling after the current click…")

    def _on_row(self, row: ClickRow) -> None:
        seg = self.seg
        self.rows.append(row)
        seg.show_auto_click(row.voxel, row.positive, row.bbox, row.mask)
        r = self.table.rowCount()
        self.table.insertRow(r)
        values = (str(len(self.rows)), "+" if row.positive else "−", ", ".join(str(v) for v in row.voxel),
                  f"{row.dice:.4f}", f"{row.seconds:.2f}")
        for c, v in enumerate(values):
            self.table.setItem(r, c, QTableWidgetItem(v))
        self.table.scrollToBottom()
        self.plot.add_point("Dice", len(self.rows), row.dice)
        seg.show_message(f"auto click {len(self.rows)}/{self.n_clicks.value()}: Dice {row.dice:.3f} "
                         f"({row.seconds:.2f} s)")

    def _on_done(self, result: JobResult) -> None:
        seg = self.seg
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.export_btn.setEnabled(bool(self.rows))
        if result.error:
            seg.error(f"automatic run failed: {result.error}")
            return
        value = result.value
        if result.cancelled or getattr(value, "stopped", None) == "cancelled":
            seg.show_message(f"automatic run cancelled after {len(self.rows)} click(s)")
            return
        if not self.rows:
            seg.show_message("automatic run finished without clicks (the prediction already matched)")
            return
        best = max(r.dice for r in self.rows)
        nocs = getattr(value, "nocs", None) or {}
        extra = ""
        if nocs:
            extra = " · " + ", ".join(f"NoC@{k}: {v if v is not None else '>' + str(value.n_clicks)}"
                                      for k, v in nocs.items())
        perfect = " (perfect: stopped early)" if getattr(value, "stopped", None) == "perfect" else ""
        seg.show_message(f"auto {len(self.rows)}-click done in {result.seconds:.1f} s: final Dice "
                         f"{self.rows[-1].dice:.3f}, best {best:.3f}{extra}{perfect}")

    # ------------------------------------------------------------------ export
    def table_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["click", "positive", "axis0", "axis1", "axis2", "dice", "seconds"])
        for i, r in enumerate(self.rows, start=1):
            w.writerow([i, int(r.positive), *r.voxel, f"{r.dice:.6f}", f"{r.seconds:.4f}"])
        return buf.getvalue()

    def export_csv(self, path: str) -> str:
        from ..atomic import atomic_write

        if not self.rows:
            raise MSAMError("nothing to export: run the automatic N-click first")
        with atomic_write(path, "w") as fh:
            fh.write(self.table_csv())
        return path

    @friendly
    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export Dice per click", "dice_per_click.csv",
                                              "CSV (*.csv)")
        if not path:
            return
        try:
            self.export_csv(path)
            self.seg.show_message(f"saved {path}")
        except (MSAMError, OSError) as exc:
            self.seg.error(f"could not save: {exc}")
