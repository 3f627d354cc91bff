"""A run's output folder: its lock, its checkpoints and the exact-resume state.

Files: ``state.pt`` (weights, optimizer, step counters, random state, history: all ``--resume`` needs),
``last.safetensors`` / ``best.safetensors`` (loadable models). ``state.pt`` is written first, so a run
killed between two writes still resumes exactly from it. Each file is written atomically; the
temporaries a killed write leaves behind are removed when the next run takes the folder's lock.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from napari_msam.atomic import atomic_write, stale_temporaries
from napari_msam.training.config import RunLockedError, TrainingError

__all__ = ["LOCK_NAME", "STATE_VERSION", "ResumePoint", "load_state", "run_lock", "save_state"]

#: 2: ``state.pt`` also holds the model weights (1: the weights were only in last.safetensors)
STATE_VERSION = 2
LOCK_NAME = ".train.lock"


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir``'s lock for a whole run; a second run on the same folder is refused at once.

    The operating system drops the lock when its process dies, so a killed run never leaves a stale lock.
    """
    from filelock import FileLock, Timeout

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"--out {out_dir}: cannot create the folder ({exc.strerror or exc})") from None
    lock = FileLock(str(out_dir / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunLockedError(
            f"--out {out_dir} is in use by another training run; wait for it to finish or choose another --out"
        ) from None
    except OSError as exc:
        raise TrainingError(f"--out {out_dir}: cannot lock the folder ({exc.strerror or exc})") from None
    try:
        for folder in (out_dir, out_dir / "cache"):
            for tmp in stale_temporaries(folder):
                with contextlib.suppress(OSError):
                    tmp.unlink()
        yield
    finally:
        lock.release()


class ResumePoint(NamedTuple):
    """Where a resumed run continues."""

    epoch: int
    step_in_epoch: int
    global_step: int
    best_score: float
    #: the crop random streams the run was made with (``batches.CROP_STREAM``; 1: before per-sample streams)
    crop_stream: int = 1


def save_state(out_dir: Path, model, preprocess, optimizer, metadata: dict, counters: dict[str, Any],
               history: dict, milestones: tuple[int, ...], gamma: float, warmup_steps: int,
               is_best: bool) -> None:
    """Write ``state.pt`` (first: the truth for ``--resume``), then ``last`` (and ``best``) ``.safetensors``."""
    from napari_msam.model.weights import save_checkpoint

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "version": STATE_VERSION,
        "model_config": model.config.name,
        **counters,
        "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": {"milestones": list(milestones), "gamma": gamma, "warmup_steps": warmup_steps,
                      "last_epoch": counters["epoch"]},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "history": history,
    }
    with atomic_write(out_dir / "state.pt", "wb") as fh:
        torch.save(state, fh)
    save_checkpoint(out_dir / "last.safetensors", model, preprocess, metadata)
    if is_best:
        save_checkpoint(out_dir / "best.safetensors", model, preprocess, metadata)


def _weights_from_last(lp: Path, sp: Path, state: dict) -> dict:
    """Weights of a version-1 state: last.safetensors, which must be from the same step."""
    from napari_msam.model.weights import load_checkpoint

    if not lp.is_file():
        raise TrainingError(f"--resume: {lp} is missing; run again without --resume to start over")
    loaded = load_checkpoint(lp, device="cpu")
    step_meta = (loaded.metadata.get("training") or {}).get("global_step") if isinstance(
        loaded.metadata, dict) else None
    if step_meta is not None and int(step_meta) != int(state["global_step"]):
        raise TrainingError(
            f"--resume: {lp.name} (step {step_meta}) and {sp.name} (step {state['global_step']}) are from "
            f"different steps (the run was killed while saving); run again without --resume to start over, "
            f"or add --init {lp} to start from those weights"
        )
    return loaded.model.state_dict()


def load_state(out_dir: Path, model, optimizer) -> tuple[ResumePoint, dict]:
    """Restore weights, optimizer and random state from ``out_dir``; returns where to go on and the history."""
    sp = out_dir / "state.pt"
    lp = out_dir / "last.safetensors"
    if not sp.is_file():
        raise TrainingError(f"--resume: no state.pt in {out_dir} (no checkpoint to resume from); "
                            "run without --resume to start a new run there")
    try:
        state = torch.load(sp, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"--resume: cannot read {sp} ({first}); run without --resume to start over") from None
    if not isinstance(state, dict) or "global_step" not in state:
        raise TrainingError(f"--resume: {sp} is not a napari-msam training state; run without --resume")
    if state.get("model_config") != model.config.name:
        raise TrainingError(f"--resume: {sp} is for model {state.get('model_config')!r}, not "
                            f"{model.config.name!r}; pass the same --config (or --init) as the first run")
    weights = state["model"] if "model" in state else _weights_from_last(lp, sp, state)
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise TrainingError(f"--resume: {sp} does not fit this run ({first}); use the first run's options") from None
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and state.get("cuda_rng"):
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    best = state.get("best_score", -math.inf)
    point = ResumePoint(int(state["epoch"]), int(state["step_in_epoch"]), int(state["global_step"]), float(best),
                        int(state.get("crop_stream", 1)))
    return point, state.get("history") or {"epochs": [], "steps": []}
