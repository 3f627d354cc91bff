"""Trainer: data, model, optimizer, the interaction loop, validation, checkpoints, exact resume.

Qt-free; the widget and the CLI are clients that pass a callback (progress events) and may call
``cancel()`` from another thread (the CLI does so on SIGINT / SIGTERM). Every random draw of a step
comes from generators seeded by (seed, epoch, step, micro-batch, rank), each crop's from a child keyed by
its place in the micro-batch (``batches``), so resuming from ``state.pt`` replays exactly the same steps
whatever the number of crop workers. The output folder is locked for the whole run.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import napari_msam.training.distributed as D
from napari_msam.training.batches import CROP_STREAM, CropPool, resolve_workers, sample_rngs
from napari_msam.training.checkpoints import STATE_VERSION, load_state, run_lock, save_state
from napari_msam.training.config import RunLockedError, TrainConfig, TrainEvent, TrainingError, TrainResult
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
from napari_msam.training.model_setup import build_model_for, param_groups
from napari_msam.training.validation import validate

__all__ = ["RunLockedError", "TrainConfig", "TrainEvent", "TrainResult", "Trainer", "TrainingError",
           "STATE_VERSION"]


def _resolve_device(device: str, info: D.DistInfo) -> str:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(f"--device {device}: CUDA is not available (use --device cpu)")
        if info.enabled:
            device = f"cuda:{info.local_rank}"
        elif ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise TrainingError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s)")
    return device


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@dataclass
class _Run:
    """What one fit works on, once set up."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    params: list
    train: list[PreparedCase]
    val: list[PreparedCase]
    jitter: int
    img_size: int
    device: str
    use_amp: bool
    steps: int
    per_step: int


class Trainer:
    """Train or fine-tune an MSAM model with the reference interaction loop."""

    def __init__(self, config: TrainConfig, callback: Callable[[TrainEvent], None] | None = None):
        self.config = config
        self.callback = callback
        self._cancel = threading.Event()
        self.out_dir = Path(config.out_dir).expanduser()
        self.model = None
        self.preprocess = None
        self.optimizer = None
        self.history: dict[str, list] = {"epochs": [], "steps": []}
        self._crops: CropPool | None = None

    # ------------------------------------------------------------------ public
    def cancel(self) -> None:
        """Ask the run to stop at the next step; it writes a loadable, resumable checkpoint first."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def fit(self) -> TrainResult:
        """Run to the end (or to a cancel / the time limit); raises :class:`TrainingError` subclasses, among
        them :class:`RunLockedError` when another run holds ``out_dir``."""
        cfg = self.config
        cfg.validate()
        info = D.init_distributed("cuda" if cfg.device.startswith("cuda") or (
            cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
        try:
            if info.is_main:
                with run_lock(self.out_dir):
                    return self._fit(info)
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
        if self._crops is not None:
            self._crops.close()
            self._crops = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _build_model(self, device: str):
        return build_model_for(self.config, device)

    def _param_groups(self, model, from_scratch: bool) -> list[dict]:
        return param_groups(self.config, model, from_scratch)

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

    def batch(self, cases: Sequence[PreparedCase], idx: Sequence[int], rngs, img_size, jitter, flips, device):
        """A batch of training (``flips``: augmented) or validation crops as (B,1,S,S,S) tensors on ``device``.

        ``rngs``: one generator per sample (``batches.sample_rngs``), the crops then made side by side on
        the run's crop pool; or one generator that the crops draw from one after another.
        """
        cfg = self.config

        def crop(i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
            zoom = self.roi_zoom.sample(rng) if (flips and self.roi_zoom is not None) else 1.0
            return sample_crop(cases[i], img_size, rng, preprocess=self.preprocess, jitter=jitter, flips=flips,
                               min_fg=cfg.min_fg, click_centre_prob=cfg.click_centre_prob if flips else 0.0,
                               zoom=zoom, intensity_prob=cfg.intensity_prob if flips else 0.0,
                               rot90_prob=cfg.rot90_prob if flips else 0.0,
                               rotate_prob=cfg.rotate_prob if flips else 0.0, rotate_max_deg=cfg.rotate_max_deg)

        if isinstance(rngs, np.random.Generator):
            pairs = [crop(int(i), rngs) for i in idx]
        else:
            if len(rngs) != len(idx):
                raise ValueError(f"{len(idx)} samples but {len(rngs)} generators")
            pool = self._crops or CropPool(1)
            pairs = pool.map([functools.partial(crop, int(i), r) for i, r in zip(idx, rngs, strict=True)])
        x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None]).to(device)
        y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None].astype(np.float32)).to(device)
        return x, y

    def _epoch_order(self, epoch: int, n_cases: int, n_needed: int) -> np.ndarray:
        rng = np.random.default_rng([self.config.seed, epoch, 7])
        reps = math.ceil(n_needed / n_cases)
        return np.concatenate([rng.permutation(n_cases) for _ in range(reps)])[:n_needed]

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

    def metadata(self, epoch: int, step_in_epoch: int, global_step: int, val: list[float] | None) -> dict:
        """The checkpoint metadata of this run at a given point (config, counters, click prior, zoom)."""
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

    def _save(self, run: _Run, epoch: int, step_in_epoch: int, global_step: int, best_score: float,
              val: list[float] | None, is_best: bool) -> None:
        counters = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                    "best_score": best_score, "crop_stream": CROP_STREAM}
        cfg = self.config
        save_state(self.out_dir, run.model, self.preprocess, run.optimizer,
                   self.metadata(epoch, step_in_epoch, global_step, val), counters, self.history,
                   cfg.milestones, cfg.gamma, cfg.warmup_steps, is_best)
        self._emit(TrainEvent("checkpoint", epoch=epoch, global_step=global_step,
                              message=str(self.out_dir / "last.safetensors")))

    def _setup(self, info: D.DistInfo) -> _Run:
        cfg = self.config
        device = _resolve_device(cfg.device, info)
        if cfg.num_threads:
            torch.set_num_threads(int(cfg.num_threads))
        model, self.preprocess, from_scratch = self._build_model(device)
        self.model = model
        img_size = int(model.config.img_size)
        train, val, jitter = self._load_data(self.preprocess, img_size, info)
        per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size if info.enabled else 1))
        self._crops = CropPool(resolve_workers(cfg.crop_workers, cfg.batch_size, per_machine))
        D.broadcast_parameters(model, info)
        groups = self._param_groups(model, from_scratch)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        self.optimizer = optimizer
        per_step = cfg.batch_size * cfg.accumulation * info.world_size
        steps = cfg.steps_per_epoch or max(1, math.ceil(len(train) / per_step))
        use_amp = (cfg.amp and device.startswith("cuda")) or (cfg.cpu_bf16 and device == "cpu")
        return _Run(model, optimizer, [p for g in groups for p in g["params"]], train, val, jitter, img_size,
                    device, use_amp, steps, per_step)

    def _step(self, run: _Run, order: np.ndarray, epoch: int, step: int, global_step: int,
              info: D.DistInfo) -> float | None:
        """One optimizer step (all micro-batches); None when a cancel arrived between micro-batches."""
        cfg = self.config
        run.optimizer.zero_grad(set_to_none=True)
        loss_val = 0.0
        for micro in range(cfg.accumulation):
            if micro and self._cancel.is_set() and not info.enabled:
                run.optimizer.zero_grad(set_to_none=True)
                return None
            base = ((step * cfg.accumulation + micro) * info.world_size + info.rank) * cfg.batch_size
            idx = order[base : base + cfg.batch_size]
            rngs = sample_rngs(cfg.seed, epoch, step, micro, info.rank, len(idx))
            x, y = self.batch(run.train, idx, rngs, run.img_size, run.jitter, cfg.flips, run.device)
            rng = np.random.default_rng([cfg.seed, epoch, step, micro, info.rank])  # the clicks'
            res = interaction_loss(run.model, x, y, n_clicks=cfg.clicks, rng=rng, strategy=cfg.click_strategy,
                                   dice_weight=cfg.dice_weight, bce_weight=cfg.bce_weight,
                                   multi_click=cfg.multi_click, autocast=run.use_amp,
                                   click_prior=self.click_prior)
            (res.loss / cfg.accumulation).backward()
            loss_val += float(res.loss.detach()) / cfg.accumulation
        D.average_gradients(run.params, info)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
        lr_f = self._lr_factor(epoch, global_step)
        for g in run.optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr_f
        run.optimizer.step()
        if info.enabled:
            loss_val = D.all_reduce_sum([loss_val], info)[0] / info.world_size
        return loss_val

    def _fit(self, info: D.DistInfo) -> TrainResult:
        cfg = self.config
        t0 = time.perf_counter()
        run = self._setup(info)
        model, steps = run.model, run.steps
        start_epoch, start_step, global_step, best_score = 0, 0, 0, -math.inf
        note = ""
        if cfg.resume:
            point, self.history = load_state(self.out_dir, model, run.optimizer)
            start_epoch, start_step, global_step, best_score = point[:4]
            if point.crop_stream != CROP_STREAM:
                note = ("; the run was begun by an older version whose crops drew from other random streams: "
                        "it goes on with this version's (resume with that version to replay it exactly)")
        workers = self._crops.workers if self._crops is not None else 1
        self._emit(TrainEvent("start", epoch=start_epoch, epochs=cfg.epochs, steps=steps, global_step=global_step,
                              message=f"{len(run.train)} train / {len(run.val)} val cases, {model.config.name} on "
                                      f"{run.device}, world size {info.world_size}, {workers} crop worker"
                                      f"{'s' if workers != 1 else ''}{note}"))
        model.train()
        cancelled = stopped_by_time = False
        epoch, step = start_epoch, start_step
        t_train = time.perf_counter()
        last_val: list[float] | None = None
        while epoch < cfg.epochs and not (cancelled or stopped_by_time):
            order = self._epoch_order(epoch, len(run.train), steps * run.per_step)
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
                loss_val = self._step(run, order, epoch, step, global_step, info)
                if loss_val is None:
                    cancelled = True
                    break
                global_step += 1
                step += 1
                ep_losses.append(loss_val)
                self.history["steps"].append({"epoch": epoch, "global_step": global_step, "loss": loss_val})
                self._emit(TrainEvent("step", epoch=epoch + 1, epochs=cfg.epochs, step=step, steps=steps,
                                      global_step=global_step, loss=loss_val,
                                      lr=cfg.lr * self._lr_factor(epoch, global_step - 1),
                                      elapsed_s=time.perf_counter() - t0))
            if not info.enabled and self._cancel.is_set():  # pressed during the epoch's last step
                cancelled = True
            if cancelled or stopped_by_time:
                break
            # end of epoch: validate, checkpoint
            vres = validate(self, model, run.val, run.img_size, run.device, info, run.use_amp) if (
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
                self._save(run, epoch, 0, global_step, best_score, last_val, is_best)
            D.barrier(info)
            self._emit(TrainEvent("epoch", epoch=epoch, epochs=cfg.epochs, steps=steps, global_step=global_step,
                                  loss=train_loss, val_dice=last_val if vres is not None else None,
                                  elapsed_s=time.perf_counter() - t0,
                                  message="best" if is_best else ""))
        if (cancelled or stopped_by_time) and info.is_main:
            # mid-epoch stop: save where we are so --resume continues exactly there
            no_best = not (self.out_dir / "best.safetensors").is_file()
            self._save(run, epoch, step, global_step, best_score, last_val, no_best)
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
