"""What a training run is given (:class:`TrainConfig`), what it reports (:class:`TrainEvent`,
:class:`TrainResult`) and how it fails (:class:`TrainingError`, :class:`RunLockedError`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_msam.errors import MSAMError
from napari_msam.training.data import CaseSpec

__all__ = ["RunLockedError", "TrainConfig", "TrainEvent", "TrainResult", "TrainingError"]


class TrainingError(MSAMError):
    """A readable training failure (out of memory, incompatible resume state, bad config)."""


class RunLockedError(TrainingError):
    """Another training run holds the output folder: two runs would mix their checkpoints."""


@dataclass
class TrainConfig:
    """Everything a run needs; stored in the checkpoints' metadata (minus in-memory arrays)."""

    data: list[str] = field(default_factory=list)  # data folders (MSD, name pairs, per-patient sub-folders)
    cases: list[CaseSpec] | None = None  # in-memory cases (the widget's layers)
    out_dir: str = "runs/train"
    model_config: str = "msam-small"
    init_checkpoint: str | None = None  # fine-tune from this checkpoint (its config + preprocessing win)
    spacing_mm: tuple[float, float, float] | None = None  # from-scratch preprocessing overrides
    normalization: str | None = None
    modalities: tuple[str, ...] | None = None  # e.g. ("ct", "mr"); None = all found
    label_id: int | None = None  # None = every non-zero label voxel is the object
    exclude_patients: tuple[str, ...] = ()
    val_patients: tuple[str, ...] | None = None
    val_fraction: float = 0.0
    epochs: int = 10
    steps_per_epoch: int | None = None  # None = one pass over the training cases
    batch_size: int = 2
    accumulation: int = 1
    lr: float = 8e-4
    weight_decay: float = 0.1
    decoder_lr_factor: float | None = None  # None: 0.1 when fine-tuning (reference), 1.0 from scratch
    milestones: tuple[int, ...] = ()  # epochs where lr *= gamma (MultiStepLR semantics)
    gamma: float = 0.1
    warmup_steps: int = 0  # linear lr warm-up over the first optimizer steps
    grad_clip: float | None = None
    clicks: int = 11
    val_clicks: int | None = None  # None = clicks
    # "crops": the training interaction on tumour-centred crops at zoom 1 (fast, reference-like);
    # "session": the Auto protocol through the Session (ROI at a random first click, zoom, paste-back)
    val_protocol: str = "crops"
    val_seeds: int = 1  # click seeds per case for val_protocol="session"
    click_strategy: str = "random"
    multi_click: bool = False  # reference: only the newest click is fed
    dice_weight: float = 0.5
    bce_weight: float = 0.5
    jitter: int | None = None  # crop-centre jitter in voxels; None = img_size // 8
    flips: bool = True
    # > 0: paint clicks into the mask input (model.click_prior); 0 = reference; None = what --init had
    click_prior_radius: float | None = None
    click_prior_value: float | None = None
    click_centre_prob: float = 0.5  # share of training crops centred on a random tumour voxel (as inference)
    # > 1: zoom augmentation up to this ROI-spacing multiple (model.roi_zoom); 1 = off; None = what --init had
    max_zoom: float | None = None
    zoom_prob: float = 0.5  # share of training crops drawn zoomed out
    intensity_prob: float = 0.0  # share of training crops with contrast / brightness / noise (augment_intensity)
    rot90_prob: float = 0.0  # share of training crops turned 90 degrees in the axial plane (rotate_axial)
    rotate_prob: float = 0.0  # share of training crops turned by a random angle (rotate_in_plane)
    rotate_max_deg: float = 30.0  # ... drawn uniformly from +- this many degrees
    min_fg: int = 10
    val_every: int = 1
    seed: int = 2023
    device: str = "auto"
    num_threads: int | None = None
    # threads that make a batch's crops side by side; 0 = one per core (this process's share), at most one
    # per sample; 1 = one after another on the training thread. The crops are the same for any number.
    crop_workers: int = 0
    amp: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast on the CPU too (pays off with AVX512-BF16 / AMX GEMMs)
    time_limit_s: float | None = None  # stop cleanly (checkpoint written) after this much training time
    resume: bool = False
    cache: bool = True  # .npz cache of resampled cases in out_dir/cache

    def validate(self) -> None:
        """Refuse every nonsensical value in one line naming the CLI option, before any work starts."""
        problems = _problems(self)
        if problems:
            raise TrainingError("; ".join(problems))

    def to_metadata(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "cases"}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        d["n_memory_cases"] = len(self.cases or [])
        return d


@dataclass
class TrainEvent:
    """Progress for callbacks. kind: start, data, step, val, epoch, checkpoint, done, cancelled."""

    kind: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    global_step: int = 0
    loss: float | None = None
    lr: float | None = None
    val_dice: list[float] | None = None
    message: str = ""
    elapsed_s: float = 0.0


@dataclass
class TrainResult:
    out_dir: Path
    last_path: Path | None
    best_path: Path | None
    history: dict
    global_step: int
    epoch: int
    cancelled: bool = False
    stopped_by_time: bool = False


_FLAGS = {
    "epochs": "--epochs", "steps_per_epoch": "--steps-per-epoch", "batch_size": "--batch-size",
    "accumulation": "--accumulation", "clicks": "--clicks", "val_clicks": "--val-clicks", "val_every": "--val-every",
    "val_seeds": "--val-seeds", "warmup_steps": "--warmup-steps", "jitter": "--jitter",
    "num_threads": "--threads", "crop_workers": "--crop-workers", "label_id": "--label-id", "seed": "--seed", "lr": "--lr",
    "weight_decay": "--weight-decay", "gamma": "--gamma", "decoder_lr_factor": "--decoder-lr-factor",
    "grad_clip": "--grad-clip", "dice_weight": "--dice-weight", "bce_weight": "--bce-weight",
    "time_limit_s": "--time-limit", "val_fraction": "--val-fraction", "max_zoom": "--zoom",
    "rotate_max_deg": "--rotate-deg", "click_centre_prob": "--click-centre-prob", "zoom_prob": "--zoom-prob",
    "intensity_prob": "--intensity-aug", "rot90_prob": "--rot90", "rotate_prob": "--rotate",
    "click_prior_radius": "--click-prior RADIUS", "click_prior_value": "--click-prior VALUE",
    "device": "--device", "val_protocol": "--val-protocol", "click_strategy": "--click-strategy",
    "spacing_mm": "--spacing", "milestones": "--milestones",
}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _name(key: str) -> str:
    """``key (--flag)``: the field for API users, the option for CLI users."""
    flag = _FLAGS.get(key)
    return f"{key} ({flag})" if flag and flag != key else key


def _int_at_least(cfg: TrainConfig, key: str, low: int, optional: bool = False) -> str | None:
    v = getattr(cfg, key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        return f"{_name(key)} must be an integer >= {low}, got {v!r}"
    return None


def _number_in(cfg: TrainConfig, key: str, low: float, high: float = math.inf, *, optional: bool = False,
               open_low: bool = False, open_high: bool = False) -> str | None:
    v = getattr(cfg, key)
    if v is None and optional:
        return None
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    if ok:
        ok = (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
    if not ok:
        lo, hi = ("(" if open_low else "[") + f"{low:g}", f"{high:g}" + (")" if open_high else "]")
        return f"{_name(key)} must be a number in {lo}, {hi}, got {v!r}"
    return None


def _problems(cfg: TrainConfig) -> list[str]:
    checks = [
        *(_int_at_least(cfg, k, 1) for k in ("epochs", "batch_size", "accumulation", "clicks", "val_every",
                                              "val_seeds")),
        *(_int_at_least(cfg, k, 1, optional=True) for k in ("steps_per_epoch", "val_clicks", "num_threads",
                                                             "label_id")),
        *(_int_at_least(cfg, k, 0) for k in ("warmup_steps", "min_fg", "seed", "crop_workers")),
        _int_at_least(cfg, "jitter", 0, optional=True),
        _number_in(cfg, "lr", 0.0, open_low=True),
        *(_number_in(cfg, k, 0.0) for k in ("weight_decay", "dice_weight", "bce_weight")),
        _number_in(cfg, "gamma", 0.0, open_low=True),
        _number_in(cfg, "decoder_lr_factor", 0.0, optional=True),
        _number_in(cfg, "grad_clip", 0.0, optional=True, open_low=True),
        _number_in(cfg, "time_limit_s", 0.0, optional=True, open_low=True),
        _number_in(cfg, "val_fraction", 0.0, 1.0, open_high=True),
        _number_in(cfg, "max_zoom", 1.0, 8.0, optional=True),
        _number_in(cfg, "rotate_max_deg", 0.0, 45.0),
        *(_number_in(cfg, k, 0.0, 1.0) for k in ("click_centre_prob", "zoom_prob", "intensity_prob", "rot90_prob",
                                                  "rotate_prob")),
        _number_in(cfg, "click_prior_radius", 0.0, optional=True),
        _number_in(cfg, "click_prior_value", -math.inf, optional=True),
    ]
    problems = [c for c in checks if c]
    if not _DEVICE.match(str(cfg.device)):
        problems.append(f"{_name('device')} must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.val_protocol not in ("crops", "session"):
        problems.append(f"{_name('val_protocol')} must be 'crops' or 'session', got {cfg.val_protocol!r}")
    if cfg.click_strategy not in ("random", "center"):
        problems.append(f"{_name('click_strategy')} must be 'random' or 'center', got {cfg.click_strategy!r}")
    if not problems and cfg.dice_weight == 0 and cfg.bce_weight == 0:
        problems.append("--dice-weight and --bce-weight cannot both be 0 (nothing to learn from)")
    if cfg.spacing_mm is not None:
        sp = list(cfg.spacing_mm)
        if len(sp) != 3 or not all(isinstance(s, int | float) and math.isfinite(s) and s > 0 for s in sp):
            problems.append(f"--spacing must be 1 or 3 positive numbers, got {cfg.spacing_mm!r}")
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in cfg.milestones):
        problems.append(f"--milestones must be epochs >= 1, got {list(cfg.milestones)}")
    if not str(cfg.out_dir).strip():
        problems.append("--out must name a folder")
    return problems
