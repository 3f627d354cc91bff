"""The N-click protocol (paper / reference) and dataset evaluation, shared by the widget, CLI and benchmarks.

``run_protocol`` drives anything with the session interface (``reset``, ``add_click``, ``current_mask``,
``spacing``, ``shape``): the M-SAM :class:`~napari_msam.session.Session` or the random-walker baseline.
"""

from __future__ import annotations

import csv
import io as _io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .clicks import STRATEGIES, next_click
from .errors import MSAMError
from .metrics import dice, iou, noc

NOC_THRESHOLDS = (80, 85, 90)
CSV_COLUMNS = ("case", "click", "dice", "iou", "positive", "seconds")


@dataclass
class ClickRecord:
    """One simulated click and the overlap after it (``click`` is 1-based)."""

    click: int
    voxel: tuple[int, int, int]
    positive: bool
    dice: float
    iou: float
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ProtocolResult:
    """Per-click records; ``stopped`` is "perfect" (nothing left to click), "cancelled" or None."""

    records: list[ClickRecord]
    n_clicks: int
    stopped: str | None = None

    @property
    def dices(self) -> list[float]:
        return [r.dice for r in self.records]

    @property
    def ious(self) -> list[float]:
        return [r.iou for r in self.records]

    def dice_curve(self) -> list[float]:
        """Dice after clicks 1..n_clicks; after a perfect stop the last value carries forward."""
        d = self.dices
        if self.stopped == "perfect" and d:
            d = d + [d[-1]] * (self.n_clicks - len(d))
        return d

    def noc(self, threshold: float) -> int | None:
        return noc(self.dice_curve(), threshold)

    @property
    def nocs(self) -> dict[int, int | None]:
        return {t: self.noc(t) for t in NOC_THRESHOLDS}

    @property
    def final_dice(self) -> float:
        return self.records[-1].dice if self.records else float("nan")

    @property
    def best_dice(self) -> float:
        return max(self.dices) if self.records else float("nan")


def ground_truth_mask(gt: np.ndarray, label: int | None = None) -> np.ndarray:
    """Bool mask of one object: ``gt > 0`` or ``gt == label``; clear errors for absent / empty objects."""
    gt = np.asarray(gt)
    if gt.ndim != 3:
        raise MSAMError(f"the ground truth must be 3-D, got shape {gt.shape}")
    if label is None:
        m = gt > 0 if gt.dtype != bool else gt
        if not m.any():
            raise MSAMError("the ground truth is empty (no voxel > 0)")
        return m
    m = gt == label
    if not m.any():
        present = [int(v) for v in np.unique(gt) if v != 0][:20]
        raise MSAMError(f"label {label} is absent from the ground truth (labels present: {present})")
    return m


def run_protocol(
    session: Any,
    gt: np.ndarray,
    n_clicks: int = 10,
    strategy: str = "random",
    seed: int = 0,
    callback: Callable[[ClickRecord, Any], bool | None] | None = None,
    *,
    label: int | None = None,
) -> ProtocolResult:
    """Reset the session's current object and simulate ``n_clicks`` clicks against ``gt``.

    The first click is a foreground voxel; each later one comes from the error region (see ``clicks``).
    ``callback(record, click_result)`` runs after every click; returning False cancels the run.
    """
    if strategy not in STRATEGIES:
        raise MSAMError(f"unknown click strategy {strategy!r}; expected one of {STRATEGIES}")
    if int(n_clicks) < 1:
        raise MSAMError(f"n_clicks must be >= 1, got {n_clicks}")
    mask = ground_truth_mask(gt, label)
    if tuple(mask.shape) != tuple(session.shape):
        raise MSAMError(f"ground truth shape {mask.shape} does not match the image shape {tuple(session.shape)}")
    session.reset()
    rng = np.random.default_rng(seed)
    records: list[ClickRecord] = []
    stopped = None
    for k in range(1, int(n_clicks) + 1):
        c = next_click(mask, session.current_mask, rng, strategy, session.spacing)
        if c is None:
            stopped = "perfect"
            break
        voxel, positive = c
        t0 = time.perf_counter()
        result = session.add_click(voxel, positive)
        seconds = time.perf_counter() - t0
        pred = session.current_mask
        rec = ClickRecord(k, voxel, positive, dice(pred, mask), iou(pred, mask), seconds,
                          dict(getattr(result, "timings", {}) or {}))
        records.append(rec)
        if callback is not None and callback(rec, result) is False:
            stopped = "cancelled"
            break
    return ProtocolResult(records=records, n_clicks=int(n_clicks), stopped=stopped)


# ------------------------------------------------------------------------------------------ datasets
@dataclass(frozen=True)
class Case:
    name: str
    image: Path
    label: Path


def find_cases(data_dir: str | Path) -> list[Case]:
    """Image/label pairs under ``data_dir`` by the one dataset finder (:func:`napari_msam.io.find_pairs`)."""
    from .io import find_pairs

    cases = [Case(p.name, p.image, p.label) for p in find_pairs(data_dir) if p.label is not None]
    if not cases:
        raise MSAMError(f"{data_dir}: imagesTr/ and labelsTr/ hold no matching names")
    return cases


def load_case(case: Case):
    """Read a case's image and label, refusing a label on another grid than its image."""
    from .io import read_volume

    img = read_volume(case.image)
    lab = read_volume(case.label, is_label=True)
    if img.data.shape != lab.data.shape or not np.allclose(img.affine, lab.affine, atol=1e-3):
        raise MSAMError(
            f"case {case.name}: image {img.data.shape} and label {lab.data.shape} are not on the same grid "
            "(shape or affine differ); resample the label to the image first"
        )
    return img, lab


def evaluate_cases(
    cases: Sequence[Case],
    session: Any,
    *,
    n_clicks: int = 10,
    strategy: str = "random",
    seed: int = 0,
    modality: str = "auto",
    label: int | None = None,
    progress: bool = True,
) -> list[tuple[str, ProtocolResult]]:
    """Run the protocol on every case with one session (``set_image`` per case); seeds ``seed + index``."""
    out: list[tuple[str, ProtocolResult]] = []
    iterator: Any = cases
    if progress:
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is optional: no progress bar then
            pass
        else:
            iterator = tqdm(cases, desc="cases", unit="case")
    for i, case in enumerate(iterator):
        img, lab = load_case(case)
        mod = modality  # auto: what the file says (DICOM), else its name, else its intensities
        if mod == "auto":
            from .io import volume_modality

            mod = volume_modality(img, case.image.name)
        session.set_image(img.data, img.spacing, mod)
        out.append((case.name, run_protocol(session, lab.data, n_clicks, strategy, seed + i, label=label)))
    return out


def results_csv(results: Sequence[tuple[str, ProtocolResult]]) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for name, res in results:
        for r in res.records:
            w.writerow([name, r.click, f"{r.dice:.6f}", f"{r.iou:.6f}", int(r.positive), f"{r.seconds:.4f}"])
    return buf.getvalue()


def write_csv(path: str | Path, results: Sequence[tuple[str, ProtocolResult]]) -> None:
    from .atomic import atomic_write

    with atomic_write(path, "w") as fh:
        fh.write(results_csv(results))


def summary(results: Sequence[tuple[str, ProtocolResult]], n_clicks: int) -> dict[str, Any]:
    """Mean Dice per click; mean NoC@80/85/90 counting failures as ``n_clicks``, with the failure count."""
    curves = np.array([(r.dice_curve() + [np.nan] * n_clicks)[:n_clicks] for _, r in results], dtype=float)
    mean = np.nanmean(curves, axis=0) if len(results) else np.full(n_clicks, np.nan)
    nocs = {}
    for t in NOC_THRESHOLDS:
        vals = [r.noc(t) for _, r in results]
        fails = sum(v is None for v in vals)
        nocs[t] = (float(np.mean([n_clicks if v is None else v for v in vals])) if vals else float("nan"), fails)
    seconds = [rec.seconds for _, r in results for rec in r.records]
    return {"cases": len(results), "mean_dice": mean.tolist(), "noc": nocs,
            "median_seconds": float(np.median(seconds)) if seconds else float("nan")}


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"cases: {s['cases']}", "click  mean Dice"]
    for k, d in enumerate(s["mean_dice"], start=1):
        lines.append(f"{k:>5}  {d:.4f}")
    for t, (m, fails) in s["noc"].items():
        lines.append(f"NoC@{t}: {m:.2f}  (not reached: {fails})")
    lines.append(f"median seconds per click: {s['median_seconds']:.3f}")
    return "\n".join(lines)


def plot_dice(path: str | Path, results: Sequence[tuple[str, ProtocolResult]], n_clicks: int,
              title: str = "Dice vs clicks") -> None:
    """Mean Dice per click (bold) over the per-case curves (thin), PNG via the Agg backend."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MSAMError("plotting needs matplotlib (pip install matplotlib)") from exc

    from .atomic import atomic_write

    fig = Figure(figsize=(5, 3.5), dpi=120)
    FigureCanvasAgg(fig)  # render off-screen; never touches the global (possibly Qt) backend
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(1, n_clicks + 1)
    for _, r in results:
        c = r.dice_curve()
        ax.plot(x[: len(c)], c, color="0.7", lw=0.8)
    s = summary(results, n_clicks)
    ax.plot(x, s["mean_dice"], color="C0", lw=2, marker="o", label="mean")
    ax.set_xlabel("clicks")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_xticks(x)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())
