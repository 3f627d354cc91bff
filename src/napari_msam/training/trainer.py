"""Trainer: data, model, optimizer, the interaction loop, validation, checkpoints, exact resume.

Qt-free; the widget and the CLI are clients that pass a callback (progress events) and may call
``cancel()`` from another thread. Every random draw of a step comes from a generator seeded by
(seed, epoch, step, micro-batch, rank), so resuming from ``state.pt`` replays exactly the same steps.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_msam.errors import MSAMError
from napari_msam.training import distributed as D
from napari_msam.training.data import (
    CaseSpec,
    PreparedCase,
    TrainingDataError,
    discover_cases,
    prepare_cases,
    sample_crop,
    split_by_patient,
)
from napari_msam.training.loop import interaction_loss

__all__ = ["TrainConfig", "TrainEvent", "TrainResult", "Trainer", "TrainingError", "STATE_VERSION"]

STATE_VERSION = 1


class TrainingError(MSAMError):
    """A readable training failure (out of memory, incompatible resume state, bad config)."""


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
    amp: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast on the CPU too (pays off with AVX512-BF16 / AMX GEMMs)
    time_limit_s: float | None = None  # stop cleanly (checkpoint written) after this much training time
    resume: bool = False
    cache: bool = True  # .npz cache of resampled cases in out_dir/cache

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


def _resolve_device(device: str, info: D.DistInfo) -> str:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError("device 'cuda' requested but CUDA is not available")
        if info.enabled:
            device = f"cuda:{info.local_rank}"
    return device


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class Trainer:
    """Train or fine-tune an MSAM model with the reference interaction loop."""

    def __init__(self, config: TrainConfig, callback: Callable[[TrainEvent], None] | None = None):
        self.config = config
        self.callback = callback
        self._cancel = threading.Event()
        self.out_dir = Path(config.out_dir).expanduser()
        self.model = None
        self.preprocess = None
        self.history: dict[str, list] = {"epochs": [], "steps": []}

    # ------------------------------------------------------------------ public
    def cancel(self) -> None:
        """Ask the run to stop at the next iteration; it writes a loadable checkpoint first."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def fit(self) -> TrainResult:
        cfg = self.config
        info = D.init_distributed("cuda" if cfg.device.startswith("cuda") or (
            cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
        try:
            return self._fit(info)
        except (TrainingDataError, TrainingError):
            raise
        except Exception as exc:
            if _is_oom(exc):
                raise TrainingError(
                    f"out of memory with batch size {cfg.batch_size} on {cfg.device}: lower --batch-size "
                    "(use --accumulation to keep the effective batch), fewer --clicks, or train on CPU"
                ) from exc
            raise
        finally:
            self._release()
            D.cleanup(info)

    # ------------------------------------------------------------------ internals
    def _emit(self, ev: TrainEvent) -> None:
        if self.callback is not None:
            self.callback(ev)

    def _release(self) -> None:
        self.optimizer = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _build_model(self, device: str):
        from napari_msam.model.builder import build_model
        from napari_msam.model.config import get_config

        cfg = self.config
        torch.manual_seed(cfg.seed)
        if cfg.init_checkpoint:
            from napari_msam.model.weights import load_checkpoint

            # An adapter-less init (SAM-Med3D or our ablation) gets a fresh adapter when the requested
            # config has one (the M-SAM recipe); with an adapter-less config it stays as it is.
            try:
                want_adapter = get_config(cfg.model_config).use_adapter
            except KeyError:
                want_adapter = True
            loaded = load_checkpoint(cfg.init_checkpoint, device="cpu", as_msam=want_adapter)
            model, preprocess = loaded.model, loaded.preprocess
            from_scratch = False
            self._inherit_click_prior(loaded.metadata)
            self._inherit_zoom(loaded.metadata)
        else:
            try:
                mcfg = get_config(cfg.model_config)
            except KeyError as exc:
                raise TrainingError(str(exc.args[0]) if exc.args else str(exc)) from exc
            model = build_model(mcfg)
            preprocess = _default_preprocess(mcfg)
            from_scratch = True
        overrides = {}
        if cfg.spacing_mm is not None:
            overrides["spacing_mm"] = tuple(float(s) for s in cfg.spacing_mm)
        if cfg.normalization is not None:
            overrides["normalization"] = cfg.normalization
        if overrides:
            preprocess = dataclasses.replace(preprocess, **overrides)
        model = model.to(device)
        return model, preprocess, from_scratch

    def _param_groups(self, model, from_scratch: bool) -> list[dict]:
        cfg = self.config
        mc = model.config
        enc = model.image_encoder
        if getattr(mc, "lora_rank", 0) > 0:  # frozen base encoder, only LoRA adapts
            for name, p in enc.named_parameters():
                p.requires_grad = any(k in name for k in ("linear_a", "linear_b", "lora"))
        else:
            for p in enc.parameters():
                p.requires_grad = True
        f = cfg.decoder_lr_factor if cfg.decoder_lr_factor is not None else (1.0 if from_scratch else 0.1)
        groups: list[dict] = []
        seen: set[int] = set()

        def add(mod, lr, name):
            if mod is None:
                return
            ps = [p for p in mod.parameters() if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in mod.parameters())
            if ps:
                groups.append({"params": ps, "lr": lr, "base_lr": lr, "name": name})

        add(enc, cfg.lr, "image_encoder")
        add(getattr(model, "adapter", None), cfg.lr, "adapter")
        add(model.prompt_encoder, cfg.lr * f, "prompt_encoder")
        add(model.mask_decoder, cfg.lr * f, "mask_decoder")
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
        if rest:
            groups.append({"params": rest, "lr": cfg.lr, "base_lr": cfg.lr, "name": "other"})
        return groups

    def _lr_factor(self, epoch: int, global_step: int) -> float:
        cfg = self.config
        f = cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
        if cfg.warmup_steps > 0:
            f *= min(1.0, (global_step + 1) / cfg.warmup_steps)
        return f

    def _load_data(self, preprocess, img_size: int, info: D.DistInfo):
        cfg = self.config
        cases: list[CaseSpec] = []
        problems: list[str] = []
        for d in cfg.data:
            try:
                cases += discover_cases(d, cfg.modalities)
            except TrainingDataError as exc:
                problems += exc.problems
        cases += list(cfg.cases or [])
        if problems:
            raise TrainingDataError(problems)
        if not cases:
            raise TrainingDataError("no training data given (a data folder or in-memory cases)")
        if cfg.exclude_patients:
            ex = set(cfg.exclude_patients)
            cases = [c for c in cases if c.patient_id not in ex]
        ids = [c.case_id for c in cases]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise TrainingDataError([f"case id {d} appears more than once" for d in dup])
        train_specs, val_specs = split_by_patient(cases, cfg.val_patients, cfg.val_fraction, cfg.seed)
        jitter = cfg.jitter if cfg.jitter is not None else img_size // 8
        cache_dir = self.out_dir / "cache" if cfg.cache else None

        def prog(i, n, cid):
            self._emit(TrainEvent("data", step=i, steps=n, message=f"prepared {cid}"))

        # rank 0 fills the cache first so the others only read it
        if info.enabled and not info.is_main:
            D.barrier(info)
        all_prepared = prepare_cases(train_specs + val_specs, preprocess, label_id=cfg.label_id,
                                     img_size=img_size, max_jitter=jitter, cache_dir=cache_dir,
                                     max_zoom=self.roi_zoom.max if self.roi_zoom is not None else 1.0,
                                     write_cache=info.is_main, progress=prog)
        if info.enabled and info.is_main:
            D.barrier(info)
        return all_prepared[: len(train_specs)], all_prepared[len(train_specs) :], jitter

    def _batch(self, cases: Sequence[PreparedCase], idx: Sequence[int], rng, img_size, jitter, flips, device):
        cfg = self.config
        imgs, gts = [], []
        for i in idx:
            zoom = self.roi_zoom.sample(rng) if (flips and self.roi_zoom is not None) else 1.0
            im, gt = sample_crop(cases[i], img_size, rng, preprocess=self.preprocess, jitter=jitter, flips=flips,
                                 min_fg=cfg.min_fg, click_centre_prob=cfg.click_centre_prob if flips else 0.0,
                                 zoom=zoom, intensity_prob=cfg.intensity_prob if flips else 0.0,
                                 rot90_prob=cfg.rot90_prob if flips else 0.0,
                                 rotate_prob=cfg.rotate_prob if flips else 0.0, rotate_max_deg=cfg.rotate_max_deg)
            imgs.append(im)
            gts.append(gt)
        x = torch.from_numpy(np.stack(imgs)[:, None]).to(device)
        y = torch.from_numpy(np.stack(gts)[:, None].astype(np.float32)).to(device)
        return x, y

    def _epoch_order(self, epoch: int, n_cases: int, n_needed: int) -> np.ndarray:
        rng = np.random.default_rng([self.config.seed, epoch, 7])
        reps = math.ceil(n_needed / n_cases)
        return np.concatenate([rng.permutation(n_cases) for _ in range(reps)])[:n_needed]

    def _validate(self, model, val: Sequence[PreparedCase], img_size: int, device: str, info: D.DistInfo,
                  use_amp: bool) -> tuple[list[float], float] | None:
        cfg = self.config
        if not val:
            return None
        if cfg.val_protocol == "session":
            return self._validate_session(model, val, device, info)
        n_clicks = cfg.val_clicks or cfg.clicks
        sums = [0.0] * n_clicks
        loss_sum = 0.0
        count = 0
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for j in D.shard(list(range(len(val))), info):
                rng = np.random.default_rng([cfg.seed, 99, j])
                x, y = self._batch(val, [j], rng, img_size, 0, False, device)
                res = interaction_loss(model, x, y, n_clicks=n_clicks, rng=rng, strategy=cfg.click_strategy,
                                       dice_weight=cfg.dice_weight, bce_weight=cfg.bce_weight,
                                       multi_click=cfg.multi_click, autocast=use_amp,
                                       click_prior=self.click_prior)
                for k in range(n_clicks):
                    sums[k] += float(np.mean(res.dice_per_click[k]))
                loss_sum += float(res.loss)
                count += 1
        model.train(was_training)
        tot = D.all_reduce_sum(sums + [loss_sum, count], info)
        count = tot[-1]
        if count == 0:
            return None
        return [s / count for s in tot[:n_clicks]], tot[n_clicks] / count

    def _validate_session(self, model, val: Sequence[PreparedCase], device: str,
                          info: D.DistInfo) -> tuple[list[float], float] | None:
        """Validation by the Auto protocol: a ``Session`` on each validation case (at the model's spacing, as
        cached), random clicks, network alone (no edge refinement); Dice per click averaged over cases.

        Why: the crop validation (tumour-centred, zoom 1) ranked the session-8 rotation runs above stage 9,
        the Auto protocol below it (docs/model-card.md), so it cannot pick what users get. The
        Session adds the parts the crops leave out: a first click anywhere in the tumour, re-centring and
        zoom-out for large tumours, paste-back. The val "loss" is 1 - mean Dice (there is no loss here).
        """
        from napari_msam.evaluation import run_protocol
        from napari_msam.model.weights import LoadedModel
        from napari_msam.session import Session
        from napari_msam.training.data import _MODALITY_FOR_PREPROCESS

        cfg = self.config
        n_clicks = cfg.val_clicks or cfg.clicks
        loaded = LoadedModel(model=model, config=model.config, preprocess=self.preprocess,
                             metadata=self._metadata(0, 0, 0, None))
        spacing = tuple(float(v) for v in self.preprocess.spacing_mm)
        sums = [0.0] * n_clicks
        count = 0
        was_training = model.training
        try:
            session = Session(loaded, device, edge_refine="off")
            for j in D.shard(list(range(len(val))), info):
                case = val[j]
                session.set_image(case.image, spacing, _MODALITY_FOR_PREPROCESS.get(case.modality, "other"))
                for seed in range(cfg.val_seeds):  # >= 1, checked in _fit
                    res = run_protocol(session, case.label, n_clicks, "random", seed=cfg.seed + 1000 * seed + j)
                    dice = [r.dice for r in res.records]
                    dice += [dice[-1]] * (n_clicks - len(dice))  # a perfect mask stops early: it carries on
                    for k in range(n_clicks):
                        sums[k] += dice[k]
                    count += 1
        finally:
            model.to(device)  # the Session moves the model to the CPU after a CUDA out-of-memory
            model.train(was_training)
        tot = D.all_reduce_sum(sums + [float(count)], info)
        count = tot[-1]
        if count == 0:
            return None
        per_click = [v / count for v in tot[:n_clicks]]
        return per_click, 1.0 - float(np.mean(per_click))

    def _inherit_click_prior(self, metadata) -> None:
        """Fine-tuning keeps the init checkpoint's click prior unless one was given: dropping it silently
        would train a model that no longer matches how the Session feeds clicks to its parent."""
        from napari_msam.model.click_prior import ClickPrior

        cfg = self.config
        prior = ClickPrior.from_metadata(metadata)
        if cfg.click_prior_radius is None and prior is not None:
            cfg.click_prior_radius = prior.radius
            if cfg.click_prior_value is None:
                cfg.click_prior_value = prior.value

    def _inherit_zoom(self, metadata) -> None:
        """Fine-tuning keeps the parent's zoom range unless one was given (as the click prior)."""
        from napari_msam.model.roi_zoom import RoiZoom

        zoom = RoiZoom.from_metadata(metadata)
        if self.config.max_zoom is None and zoom is not None:
            self.config.max_zoom = zoom.max

    @property
    def roi_zoom(self):
        """The zoom augmentation this run trains with (None: fixed spacing)."""
        from napari_msam.model.roi_zoom import RoiZoom

        cfg = self.config
        if cfg.max_zoom is None or cfg.max_zoom <= 1.0:
            return None
        return RoiZoom(max=float(cfg.max_zoom), prob=float(cfg.zoom_prob))

    @property
    def click_prior(self):
        """The click prior this run trains with (None: the reference's mask input)."""
        from napari_msam.model.click_prior import ClickPrior

        cfg = self.config
        if not cfg.click_prior_radius or cfg.click_prior_radius <= 0:
            return None
        if cfg.click_prior_value is None:  # the prior's own default value
            return ClickPrior(radius=cfg.click_prior_radius)
        return ClickPrior(radius=cfg.click_prior_radius, value=cfg.click_prior_value)

    def _metadata(self, epoch: int, step_in_epoch: int, global_step: int, val: list[float] | None) -> dict:
        prior = self.click_prior
        return {
            **({"click_prior": prior.to_metadata()} if prior is not None else {}),
            **({"roi_zoom": self.roi_zoom.to_metadata()} if self.roi_zoom is not None else {}),
            "kind": "own",
            "source": "napari-msam train",
            "training": {
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "val_dice_per_click": val,
                "config": self.config.to_metadata(),
            },
        }

    def _save(self, model, optimizer, epoch, step_in_epoch, global_step, best_score, val, is_best) -> None:
        from napari_msam.atomic import atomic_write
        from napari_msam.model.weights import save_checkpoint

        self.out_dir.mkdir(parents=True, exist_ok=True)
        meta = self._metadata(epoch, step_in_epoch, global_step, val)
        save_checkpoint(self.out_dir / "last.safetensors", model, self.preprocess, meta)
        if is_best:
            save_checkpoint(self.out_dir / "best.safetensors", model, self.preprocess, meta)
        state = {
            "version": STATE_VERSION,
            "model_config": model.config.name,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "best_score": best_score,
            "optimizer": optimizer.state_dict(),
            "scheduler": {"milestones": list(self.config.milestones), "gamma": self.config.gamma,
                          "warmup_steps": self.config.warmup_steps, "last_epoch": epoch},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": self.history,
        }
        with atomic_write(self.out_dir / "state.pt", "wb") as fh:
            torch.save(state, fh)
        self._emit(TrainEvent("checkpoint", epoch=epoch, global_step=global_step,
                              message=str(self.out_dir / "last.safetensors")))

    def _try_resume(self, model, optimizer) -> tuple[int, int, int, float]:
        from napari_msam.model.weights import load_checkpoint

        sp = self.out_dir / "state.pt"
        lp = self.out_dir / "last.safetensors"
        if not sp.is_file() or not lp.is_file():
            raise TrainingError(f"--resume: no state.pt + last.safetensors in {self.out_dir}")
        try:
            state = torch.load(sp, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise TrainingError(f"--resume: cannot read {sp}: {exc}") from exc
        if state.get("model_config") != model.config.name:
            raise TrainingError(f"--resume: {sp} is for model {state.get('model_config')!r}, "
                                f"not {model.config.name!r}")
        loaded = load_checkpoint(lp, device="cpu")
        step_meta = (loaded.metadata.get("training") or {}).get("global_step") if isinstance(
            loaded.metadata, dict) else None
        if step_meta is not None and int(step_meta) != int(state["global_step"]):
            raise TrainingError(f"--resume: {lp} (step {step_meta}) and {sp} (step {state['global_step']}) "
                                "are from different steps; the run was interrupted while saving")
        model.load_state_dict(loaded.model.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.history = state.get("history") or {"epochs": [], "steps": []}
        return int(state["epoch"]), int(state["step_in_epoch"]), int(state["global_step"]), float(
            state["best_score"])

    def _fit(self, info: D.DistInfo) -> TrainResult:
        cfg = self.config
        if cfg.batch_size < 1 or cfg.accumulation < 1 or cfg.clicks < 1 or cfg.epochs < 1:
            raise TrainingError("batch_size, accumulation, clicks and epochs must all be >= 1")
        if cfg.max_zoom is not None and not (1.0 <= cfg.max_zoom <= 8.0):
            raise TrainingError(f"max_zoom (--zoom) must be in [1, 8], got {cfg.max_zoom}")
        if cfg.val_protocol not in ("crops", "session"):
            raise TrainingError(f"val_protocol (--val-protocol) must be 'crops' or 'session', got {cfg.val_protocol!r}")
        if cfg.val_seeds < 1:
            raise TrainingError(f"val_seeds (--val-seeds) must be >= 1, got {cfg.val_seeds}")
        if not (0.0 <= cfg.rotate_max_deg <= 45.0):
            raise TrainingError(f"rotate_max_deg (--rotate-deg) must be in [0, 45], got {cfg.rotate_max_deg}")
        for name, flag in (("rot90_prob", "--rot90"), ("rotate_prob", "--rotate"),
                           ("intensity_prob", "--intensity-aug"), ("zoom_prob", "--zoom-prob")):
            value = getattr(cfg, name)
            if not (0.0 <= value <= 1.0):
                raise TrainingError(f"{name} ({flag}) must be in [0, 1], got {value}")
        device = _resolve_device(cfg.device, info)
        if cfg.num_threads:
            torch.set_num_threads(int(cfg.num_threads))
        t0 = time.perf_counter()
        model, self.preprocess, from_scratch = self._build_model(device)
        self.model = model
        img_size = int(model.config.img_size)
        train, val, jitter = self._load_data(self.preprocess, img_size, info)
        D.broadcast_parameters(model, info)
        groups = self._param_groups(model, from_scratch)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        self.optimizer = optimizer
        params = [p for g in groups for p in g["params"]]
        per_step = cfg.batch_size * cfg.accumulation * info.world_size
        steps = cfg.steps_per_epoch or max(1, math.ceil(len(train) / per_step))
        start_epoch, start_step, global_step, best_score = 0, 0, 0, -math.inf
        if cfg.resume:
            start_epoch, start_step, global_step, best_score = self._try_resume(model, optimizer)
        use_amp = (cfg.amp and device.startswith("cuda")) or (cfg.cpu_bf16 and device == "cpu")
        self._emit(TrainEvent("start", epoch=start_epoch, epochs=cfg.epochs, steps=steps, global_step=global_step,
                              message=f"{len(train)} train / {len(val)} val cases, {model.config.name} on "
                                      f"{device}, world size {info.world_size}"))
        model.train()
        cancelled = stopped_by_time = False
        epoch, step = start_epoch, start_step
        t_train = time.perf_counter()
        last_val: list[float] | None = None
        while epoch < cfg.epochs and not (cancelled or stopped_by_time):
            order = self._epoch_order(epoch, len(train), steps * per_step)
            ep_losses = [h["loss"] for h in self.history["steps"] if h["epoch"] == epoch]
            while step < steps:
                stop = self._cancel.is_set()
                timed = cfg.time_limit_s is not None and time.perf_counter() - t_train > cfg.time_limit_s
                if info.enabled:
                    stop = D.any_flag(stop, info, "cpu")
                    timed = D.any_flag(timed, info, "cpu")
                if stop or timed:
                    cancelled, stopped_by_time = stop, timed and not stop
                    break
                optimizer.zero_grad(set_to_none=True)
                loss_val = 0.0
                aborted = False
                for micro in range(cfg.accumulation):
                    if micro and self._cancel.is_set() and not info.enabled:
                        aborted = True
                        break
                    base = ((step * cfg.accumulation + micro) * info.world_size + info.rank) * cfg.batch_size
                    idx = order[base : base + cfg.batch_size]
                    rng = np.random.default_rng([cfg.seed, epoch, step, micro, info.rank])
                    x, y = self._batch(train, idx, rng, img_size, jitter, cfg.flips, device)
                    res = interaction_loss(model, x, y, n_clicks=cfg.clicks, rng=rng, strategy=cfg.click_strategy,
                                           dice_weight=cfg.dice_weight, bce_weight=cfg.bce_weight,
                                           multi_click=cfg.multi_click, autocast=use_amp,
                                           click_prior=self.click_prior)
                    (res.loss / cfg.accumulation).backward()
                    loss_val += float(res.loss.detach()) / cfg.accumulation
                if aborted:
                    optimizer.zero_grad(set_to_none=True)
                    cancelled = True
                    break
                D.average_gradients(params, info)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                lr_f = self._lr_factor(epoch, global_step)
                for g in optimizer.param_groups:
                    g["lr"] = g["base_lr"] * lr_f
                optimizer.step()
                if info.enabled:
                    loss_val = D.all_reduce_sum([loss_val], info)[0] / info.world_size
                global_step += 1
                step += 1
                ep_losses.append(loss_val)
                self.history["steps"].append({"epoch": epoch, "global_step": global_step, "loss": loss_val})
                self._emit(TrainEvent("step", epoch=epoch + 1, epochs=cfg.epochs, step=step, steps=steps,
                                      global_step=global_step, loss=loss_val, lr=cfg.lr * lr_f,
                                      elapsed_s=time.perf_counter() - t0))
            if not info.enabled and self._cancel.is_set():  # pressed during the epoch's last step
                cancelled = True
            if cancelled or stopped_by_time:
                break
            # end of epoch: validate, checkpoint
            vres = self._validate(model, val, img_size, device, info, use_amp) if (
                (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs) else None
            train_loss = float(np.mean(ep_losses)) if ep_losses else float("nan")
            rec = {"epoch": epoch + 1, "train_loss": train_loss, "lr": cfg.lr * self._lr_factor(epoch, global_step),
                   "time_s": time.perf_counter() - t0}
            if vres is not None:
                last_val, vloss = vres
                rec.update(val_dice=last_val, val_mean=float(np.mean(last_val)), val_loss=vloss)
                score = float(np.mean(last_val))
            else:
                score = -train_loss if math.isfinite(train_loss) else -math.inf
            self.history["epochs"].append(rec)
            is_best = score > best_score
            best_score = max(best_score, score)
            epoch += 1
            step = 0
            if info.is_main:
                self._save(model, optimizer, epoch, 0, global_step, best_score, last_val, is_best)
            D.barrier(info)
            self._emit(TrainEvent("epoch", epoch=epoch, epochs=cfg.epochs, steps=steps, global_step=global_step,
                                  loss=train_loss, val_dice=last_val if vres is not None else None,
                                  elapsed_s=time.perf_counter() - t0,
                                  message="best" if is_best else ""))
        if (cancelled or stopped_by_time) and info.is_main:
            # mid-epoch stop: save where we are so --resume continues exactly there
            no_best = not (self.out_dir / "best.safetensors").is_file()
            self._save(model, optimizer, epoch, step, global_step, best_score, last_val, no_best)
        D.barrier(info)
        kind = "cancelled" if cancelled else "done"
        msg = "stopped by the time limit" if stopped_by_time else ""
        self._emit(TrainEvent(kind, epoch=epoch, epochs=cfg.epochs, step=step, steps=steps, global_step=global_step,
                              elapsed_s=time.perf_counter() - t0, message=msg))
        last = self.out_dir / "last.safetensors"
        best = self.out_dir / "best.safetensors"
        self.model = model
        return TrainResult(self.out_dir, last if last.is_file() else None, best if best.is_file() else None,
                           self.history, global_step, epoch, cancelled, stopped_by_time)


def _default_preprocess(mcfg):
    """Preprocessing of a from-scratch model: our own SPL conventions (``DEFAULT_PREPROCESS``, 2.5 mm for
    the 64^3 small/tiny models; 1.5 mm like the reference for 128^3 inputs)."""
    from napari_msam.model import config as mc

    default = getattr(mc, "DEFAULT_PREPROCESS", None) or mc.PreprocessConfig(spacing_mm=(2.5, 2.5, 2.5))
    if mcfg.img_size >= 128:
        return dataclasses.replace(default, spacing_mm=(1.5, 1.5, 1.5))
    return default
