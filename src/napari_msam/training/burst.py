"""One timed training burst on a lent GPU, and the command that joins what it hands back.

    python -m napari_msam.training.burst train --packed packed --out $OUT --budget-s 420
    python -m napari_msam.training.burst join PARTS_DIR -o model.safetensors

``train`` fine-tunes (or trains from scratch) with the project's ``Trainer`` and interaction loop on the
set ``training.pack`` made, for a fixed wall-clock budget, and keeps ``--out`` fit for the device tool's
return path: the checkpoint in parts of at most 15 MiB with a SHA-256 manifest (``parts.json``) plus
``log.json`` (loss per step, validation Dice per click), refreshed during the run, so a run cut short
still hands back its latest checkpoint. ``join`` checks every part and the whole file against the
manifest and loads the result strictly before keeping it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from napari_msam.errors import MSAMError

__all__ = ["BurstError", "split_file", "join_parts", "trial_step", "batch_from_peaks", "probe_batch_size",
           "run_burst", "main"]

PARTS_MANIFEST = "parts.json"
PART_MIB = 15.0  # the device tool returns files of at most 16 MiB
MAX_PARTS = 5  # 8 files come back: the parts, parts.json, log.json and the shell's train.log


class BurstError(MSAMError):
    """A burst that cannot run, or parts that cannot be joined (missing, damaged, not a checkpoint)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes | str) -> None:
    from napari_msam.atomic import atomic_write

    with atomic_write(path, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)


def split_file(path: str | Path, out_dir: str | Path, *, name: str | None = None,
               part_bytes: int = int(PART_MIB * 2**20), info: dict | None = None) -> dict:
    """Cut ``path`` into ``NAME.partNN`` files in ``out_dir`` and write ``parts.json`` last (so a
    manifest never names parts that are not there yet); older parts of the same name are removed."""
    src = Path(path)
    out = Path(out_dir)
    name = name or src.name
    data = src.read_bytes()
    n = max(1, math.ceil(len(data) / part_bytes))
    if n > MAX_PARTS:
        raise BurstError(f"{name} ({len(data) / 2**20:.1f} MiB) needs {n} parts of "
                         f"{part_bytes / 2**20:.1f} MiB; at most {MAX_PARTS} come back")
    parts = []
    for i in range(n):
        chunk = data[i * part_bytes:(i + 1) * part_bytes]
        part = f"{name}.part{i:02d}"
        _write(out / part, chunk)
        parts.append({"name": part, "bytes": len(chunk), "sha256": _sha256(chunk)})
    for stale in out.glob(f"{name}.part*"):
        if stale.name not in {p["name"] for p in parts}:
            stale.unlink()
    manifest = {"file": name, "bytes": len(data), "sha256": _sha256(data), "parts": parts, **(info or {})}
    _write(out / PARTS_MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def join_parts(parts_dir: str | Path, out_path: str | Path, *, force: bool = False):
    """Join and verify the parts named by ``parts_dir/parts.json``; keep the file only if it loads strictly.
    Returns the ``LoadedModel``."""
    from napari_msam.model.weights import CheckpointError, load_checkpoint

    src = Path(parts_dir)
    out = Path(out_path)
    if out.exists() and not force:
        raise BurstError(f"{out} exists; pass --force to replace it")
    try:
        manifest = json.loads((src / PARTS_MANIFEST).read_text())
        parts = manifest["parts"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BurstError(f"cannot read {src / PARTS_MANIFEST}: {exc}") from None
    chunks = []
    for p in parts:
        f = src / p["name"]
        if not f.is_file():
            raise BurstError(f"part {p['name']} is missing from {src}")
        chunk = f.read_bytes()
        if len(chunk) != p["bytes"] or _sha256(chunk) != p["sha256"]:
            raise BurstError(f"part {p['name']} is damaged ({len(chunk)} bytes, SHA-256 does not match "
                             f"{PARTS_MANIFEST}); fetch it again")
        chunks.append(chunk)
    data = b"".join(chunks)
    if len(data) != manifest["bytes"] or _sha256(data) != manifest["sha256"]:
        raise BurstError(f"the joined file does not match the SHA-256 in {PARTS_MANIFEST}")
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / manifest.get("file", "model.safetensors")
        trial.write_bytes(data)
        try:
            loaded = load_checkpoint(trial)
        except CheckpointError as exc:
            raise BurstError(f"the joined file is not a loadable checkpoint: {exc}") from None
    _write(out, data)
    loaded.path = str(out)
    return loaded


def trial_step(model, device: str, batch: int, *, clicks: int, amp: bool) -> tuple[int, float]:
    """One training step on synthetic spheres: (peak GPU bytes, 0 on the CPU; seconds)."""
    from napari_msam.training.loop import interaction_loss

    cuda = device.startswith("cuda")
    s = int(model.config.img_size)
    ball = np.linalg.norm(np.indices((s, s, s)) - s / 2, axis=0) < s / 5
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model.train()
    x = torch.randn(batch, 1, s, s, s, device=device)
    y = torch.from_numpy(np.broadcast_to(ball, (batch, 1, s, s, s)).astype(np.float32)).to(device)
    res = interaction_loss(model, x, y, n_clicks=clicks, rng=np.random.default_rng(batch), autocast=amp)
    res.loss.backward()
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() if cuda else 0), time.perf_counter() - t0


def batch_from_peaks(peak2: float, peak4: float, total: float, *, memory_fraction: float = 0.6,
                     max_batch: int = 32) -> tuple[int, int]:
    """(batch to use, largest that fits ``memory_fraction`` of ``total``): peak memory is affine in the
    batch, so two trial steps (batch 2 and 4) give its slope and intercept."""
    per_sample = max((peak4 - peak2) / 2, 1.0)
    base = peak2 - 2 * per_sample
    fits = int(max(1, (memory_fraction * total - base) // per_sample))
    return min(fits, max_batch), fits


def probe_batch_size(model, device: str, *, clicks: int, amp: bool, max_batch: int = 32) -> tuple[int, dict]:
    """The batch that fills the GPU (up to ``max_batch``); on the CPU 2, the CPU recipe's."""
    if not device.startswith("cuda"):
        return 2, {"device": device}
    (p2, t2), (p4, t4) = (trial_step(model, device, b, clicks=clicks, amp=amp) for b in (2, 4))
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    batch, fits = batch_from_peaks(p2, p4, total, max_batch=max_batch)
    return batch, {"peak_mib_batch2": p2 / 2**20, "peak_mib_batch4": p4 / 2**20, "total_mib": total / 2**20,
                   "step_s_batch2": t2, "step_s_batch4": t4, "fits_batch": fits}


class _Log:
    """``log.json`` in the output folder: the run's settings, loss per step, validation per epoch."""

    def __init__(self, out: Path, run: dict):
        self.path = out / "log.json"
        self.data = {"run": run, "steps": [], "epochs": [], "exports": [], "lr_drops_at_epoch": []}

    def save(self) -> None:
        _write(self.path, json.dumps(self.data, indent=1))


def _resolve_init(init: str) -> str | None:
    if init == "scratch":
        return None
    if init == "default":
        from napari_msam.default_model import default_checkpoint_path

        return str(default_checkpoint_path())
    return init


def run_burst(args: argparse.Namespace) -> dict:
    """Train for ``args.budget_s`` seconds of wall clock in all; returns the final parts manifest."""
    from napari_msam.model.builder import build_model
    from napari_msam.model.config import get_config
    from napari_msam.model.weights import load_checkpoint
    from napari_msam.predictor import pick_device
    from napari_msam.training.batches import resolve_workers
    from napari_msam.training.pack import load_packed
    from napari_msam.training.trainer import TrainConfig, Trainer

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="msam-burst-"))
    packed = load_packed(args.packed)
    device = pick_device(args.device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    init = _resolve_init(args.init)
    if init is not None:
        loaded = load_checkpoint(init)
        probe_model, spacing = loaded.model, loaded.preprocess.spacing_mm
    else:
        try:
            probe_model, spacing = build_model(get_config(args.config)), packed.spacing_mm
        except KeyError as exc:
            raise BurstError(str(exc.args[0])) from None
    config_name = probe_model.config.name
    if any(abs(a - b) > 1e-6 for a, b in zip(spacing, packed.spacing_mm, strict=True)):
        raise BurstError(f"the set in {args.packed} is packed at {packed.spacing_mm} mm but the model "
                         f"works at {spacing} mm: pack it again with --checkpoint")
    probe = {}
    batch = args.batch_size
    if batch <= 0:
        batch, probe = probe_batch_size(probe_model.to(device), device, clicks=args.clicks, amp=True,
                                        max_batch=args.max_batch)
    del probe_model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    scratch = init is None
    cfg = TrainConfig(
        cases=packed.cases, out_dir=str(work), model_config=args.config, init_checkpoint=init,
        spacing_mm=tuple(packed.spacing_mm) if scratch else None, normalization="zscore" if scratch else None,
        max_zoom=float(packed.manifest.get("max_zoom", 1.0)) if scratch else None,
        click_prior_radius=1.5 if scratch else None, click_prior_value=4.0 if scratch else None,
        val_patients=tuple(packed.val_patients), epochs=10**6, steps_per_epoch=args.steps_per_epoch,
        batch_size=batch, lr=args.lr, weight_decay=0.1, decoder_lr_factor=1.0, gamma=args.gamma,
        warmup_steps=args.warmup_steps, grad_clip=1.0, clicks=args.clicks, val_clicks=args.val_clicks,
        intensity_prob=0.5, rot90_prob=0.5, val_every=args.val_every, seed=args.seed, device=device,
        amp=True, cache=False, time_limit_s=1.0, crop_workers=args.crop_workers)
    run = {"device": device, "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
           "torch": torch.__version__, "init": init or "scratch", "config": config_name, "batch_size": batch,
           "probe": probe, "crop_workers": resolve_workers(args.crop_workers, batch),
           "budget_s": args.budget_s, "packed_sha256": packed.manifest.get("sha256"),
           "cases": len(packed.cases), "val_patients": packed.val_patients, "lr": args.lr}
    log = _Log(out, run)
    state = {"t_train": None, "last_export": -math.inf, "manifest": None}
    trainer = Trainer(cfg, callback=None)

    def export(path: Path, final: bool) -> None:
        info = {"global_step": log.data["steps"][-1][0] if log.data["steps"] else 0, "final": final,
                "elapsed_s": round(time.perf_counter() - t_start, 1)}
        state["manifest"] = split_file(path, out, name="model.safetensors",
                                       part_bytes=int(args.part_mib * 2**20), info=info)
        state["last_export"] = time.perf_counter()
        log.data["exports"].append(info)
        log.save()

    def on_event(ev) -> None:
        now = time.perf_counter()
        if ev.kind == "start":
            state["t_train"] = now
            print(f"[burst] {ev.message}; batch {batch}; {cfg.time_limit_s:.0f} s of training", flush=True)
        elif ev.kind == "step":
            log.data["steps"].append([ev.global_step, ev.epoch, round(ev.loss, 5), round(now - t_start, 2)])
            if ev.global_step % args.print_every == 0:
                print(f"[burst] step {ev.global_step} epoch {ev.epoch} loss {ev.loss:.4f} "
                      f"lr {ev.lr:.2e} t {now - t_start:.0f}s", flush=True)
        elif ev.kind == "epoch":
            rec = dict(trainer.history["epochs"][-1])
            log.data["epochs"].append(rec)
            frac = (now - state["t_train"]) / max(cfg.time_limit_s, 1e-6)
            drops = log.data["lr_drops_at_epoch"]
            if len(drops) < len(args.lr_drops) and frac >= args.lr_drops[len(drops)]:
                drops.append(ev.epoch)  # the next epoch on runs at lr * gamma (the trainer reads milestones)
                cfg.milestones = tuple(drops)
            val = rec.get("val_dice")
            print(f"[burst] epoch {ev.epoch} loss {rec['train_loss']:.4f}"
                  + (f" val Dice@1 {val[0]:.3f} @last {val[-1]:.3f}" if val else ""), flush=True)
            log.save()
        elif ev.kind == "checkpoint" and now - state["last_export"] >= args.export_every_s:
            export(Path(ev.message), final=False)

    trainer.callback = on_event
    previous = signal.signal(signal.SIGTERM, lambda *_: trainer.cancel())
    try:
        cfg.time_limit_s = max(1.0, args.budget_s - (time.perf_counter() - t_start) - args.reserve_s)
        result = trainer.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
    final = result.best_path if args.keep == "best" and result.best_path else result.last_path
    if final is None:
        raise BurstError("the run ended before its first checkpoint")
    log.data["done"] = {"global_step": result.global_step, "epochs": result.epoch, "kept": args.keep,
                        "samples": result.global_step * batch,
                        "wall_s": round(time.perf_counter() - t_start, 1),
                        "stopped_by_time": result.stopped_by_time, "cancelled": result.cancelled,
                        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device.startswith(
                            "cuda") else None}
    export(final, final=True)
    print(f"[burst] done: {result.global_step} steps x batch {batch} in "
          f"{time.perf_counter() - t_start:.0f} s; "
          f"{len(state['manifest']['parts'])} parts in {out}", flush=True)
    return state["manifest"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m napari_msam.training.burst",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train for a fixed wall-clock budget; parts + log.json into --out")
    t.add_argument("--packed", required=True, help="folder written by python -m napari_msam.training.pack")
    t.add_argument("--out", required=True, help="where the parts and log.json go (the device tool's $OUT)")
    t.add_argument("--budget-s", type=float, default=420.0,
                   help="wall clock for the whole run, loading included")
    t.add_argument("--reserve-s", type=float, default=15.0,
                   help="kept back for the last checkpoint and export")
    t.add_argument("--init", default="default",
                   help="default (the shipped weights: continue their training), scratch, or a "
                        "checkpoint path")
    t.add_argument("--config", default="msam-small", help="model config when --init scratch")
    t.add_argument("--batch-size", type=int, default=0, help="0: the largest that fits 60 %% of the GPU")
    t.add_argument("--max-batch", type=int, default=32,
                   help="cap of the automatic batch: crops and clicks are made on the CPU, so a bigger batch "
                        "buys fewer optimizer steps, not more samples")
    t.add_argument("--crop-workers", type=int, default=0,
                   help="threads that make a batch's crops side by side (0: one per CPU core, at most the batch)")
    t.add_argument("--lr", type=float, default=4e-4)
    t.add_argument("--gamma", type=float, default=0.3)
    t.add_argument("--lr-drops", type=float, nargs="*", default=[0.7, 0.9],
                   help="fractions of the training time after which lr *= gamma (at the next epoch)")
    t.add_argument("--warmup-steps", type=int, default=20)
    t.add_argument("--clicks", type=int, default=10)
    t.add_argument("--val-clicks", type=int, default=7)
    t.add_argument("--steps-per-epoch", type=int, default=40,
                   help="an epoch ends in a checkpoint (and every --val-every epochs a validation)")
    t.add_argument("--val-every", type=int, default=2)
    t.add_argument("--export-every-s", type=float, default=60.0, help="refresh the parts at most this often")
    t.add_argument("--part-mib", type=float, default=PART_MIB)
    t.add_argument("--keep", choices=["last", "best"], default="last",
                   help="which checkpoint the final parts hold (best: by the crop validation)")
    t.add_argument("--seed", type=int, default=2033)
    t.add_argument("--device", default="auto")
    t.add_argument("--work", default=None,
                   help="folder for the trainer's own checkpoints (default: a temp dir)")
    t.add_argument("--print-every", type=int, default=10)
    j = sub.add_parser("join", help="join and verify the parts a burst handed back; load the result strictly")
    j.add_argument("parts_dir")
    j.add_argument("-o", "--output", required=True)
    j.add_argument("--force", action="store_true", help="replace an existing output file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from napari_msam.model.weights import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            run_burst(args)
        else:
            loaded = join_parts(args.parts_dir, args.output, force=args.force)
            training = loaded.metadata.get("training") or {}
            n = sum(p.numel() for p in loaded.model.parameters())
            print(f"joined {args.output}: {loaded.config.name}, {n / 1e6:.2f} M parameters, "
                  f"step {training.get('global_step')}, loads strictly")
    except (MSAMError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
