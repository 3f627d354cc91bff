"""``napari-msam train`` / ``python -m napari_msam.training``: argument parsing and progress lines.

Qt-free. The top-level CLI calls :func:`add_train_arguments` on its ``train`` sub-parser and
:func:`run_train` with the parsed namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence

__all__ = ["EXIT_SIGINT", "EXIT_SIGTERM", "add_train_arguments", "config_from_args", "run_train", "main"]


def _floats3(text: str) -> tuple[float, float, float]:
    parts = [p for p in text.replace(",", " ").split() if p]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected 1 or 3 numbers, got {text!r}")
    return tuple(float(p) for p in parts)  # type: ignore[return-value]


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the training options to ``parser`` (shared by the top-level CLI and ``-m napari_msam.training``)."""
    parser.add_argument("data", nargs="+", metavar="DATA_DIR",
                        help="data folder(s): MSD (imagesTr/labelsTr), X + X_label pairs, or one folder per patient")
    parser.add_argument("--out", required=True, help="output folder (last/best.safetensors, state.pt, cache/)")
    parser.add_argument("--config", default="msam-small", help="model config for training from scratch; with --init an adapter-less checkpoint gets a fresh adapter when this config has one")
    parser.add_argument("--init", default=None, metavar="CHECKPOINT",
                        help="fine-tune from this checkpoint (its config and preprocessing are used)")
    parser.add_argument("--resume", action="store_true", help="continue exactly from OUT/state.pt")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass over the cases")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--decoder-lr-factor", type=float, default=None,
                        help="lr factor of prompt encoder + decoder (default 0.1 fine-tuning, 1.0 from scratch)")
    parser.add_argument("--milestones", type=int, nargs="*", default=[], help="epochs where lr *= --gamma")
    parser.add_argument("--gamma", type=float, default=0.1)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--grad-clip", type=float, default=None)
    parser.add_argument("--clicks", type=int, default=11, help="click iterations per sample (reference: 11)")
    parser.add_argument("--val-clicks", type=int, default=None)
    parser.add_argument("--val-protocol", choices=["crops", "session"], default="crops",
                        help="validation: the training interaction on tumour-centred crops (crops, default) or "
                             "the Auto protocol through the Session (session; picks best.safetensors the way "
                             "users are served; about 1 min for 12 cases on one CPU thread)")
    parser.add_argument("--val-seeds", type=int, default=1, help="click seeds per case for --val-protocol session")
    parser.add_argument("--click-strategy", default="random", choices=["random", "center"])
    parser.add_argument("--multi-click", action="store_true", help="feed all clicks, not only the newest")
    parser.add_argument("--dice-weight", type=float, default=0.5)
    parser.add_argument("--bce-weight", type=float, default=0.5)
    parser.add_argument("--spacing", type=_floats3, default=None, metavar="MM",
                        help="model spacing for from-scratch training (1 or 3 numbers)")
    parser.add_argument("--normalization", default=None, help="zscore_positive (reference) or zscore over the ROI")
    parser.add_argument("--modalities", nargs="*", default=None, help="keep only these (ct mr pet other)")
    parser.add_argument("--label-id", type=int, default=None, help="object label value (default: all non-zero)")
    parser.add_argument("--exclude-patients", nargs="*", default=[])
    parser.add_argument("--val-patients", nargs="*", default=None)
    parser.add_argument("--val-fraction", type=float, default=0.0)
    parser.add_argument("--val-every", type=int, default=1)
    parser.add_argument("--jitter", type=int, default=None, help="crop-centre jitter in voxels (default S/8)")
    parser.add_argument("--no-flips", action="store_true")
    parser.add_argument("--click-prior", type=float, nargs=2, default=None, metavar=("RADIUS", "VALUE"),
                        help="paint every click into the mask input as a ball of RADIUS low-res voxels set to "
                             "+/-VALUE logits (see model/click_prior.py); stored in the checkpoint. Default: the "
                             "--init checkpoint's prior (none from scratch); '0 0' turns it off")
    parser.add_argument("--click-centre-prob", type=float, default=0.5,
                        help="share of training crops centred on a random tumour voxel, as the Session centres "
                             "its ROI on the first click (the rest centre on the tumour's bounding box)")
    parser.add_argument("--zoom", type=float, default=None, metavar="MAX",
                        help="zoom augmentation: a share (--zoom-prob) of crops at up to MAX x the spacing, so "
                             "the Session may zoom out on tumours larger than the ROI (model/roi_zoom.py); "
                             "stored in the checkpoint. Default: the --init checkpoint's (none from scratch); "
                             "1 turns it off")
    parser.add_argument("--zoom-prob", type=float, default=0.5, help="share of zoomed-out crops (with --zoom)")
    parser.add_argument("--intensity-aug", type=float, default=0.0, metavar="P",
                        help="share of training crops with random contrast, brightness and noise (0: off)")
    parser.add_argument("--rot90", type=float, default=0.0, metavar="P",
                        help="share of training crops turned 90 degrees in the axial plane (0: off)")
    parser.add_argument("--rotate", type=float, default=0.0, metavar="P",
                        help="share of training crops turned by a random angle in the axial plane (0: off)")
    parser.add_argument("--rotate-deg", type=float, default=30.0, metavar="A",
                        help="largest angle of --rotate, degrees (0-45; default 30)")
    parser.add_argument("--seed", type=int, default=2023)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--crop-workers", type=int, default=0,
                        help="threads that make a batch's crops side by side (0: one per core, at most the "
                             "batch size; 1: one after another); the crops are the same for any number")
    parser.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="bf16 autocast on the CPU (about 1.3x faster steps on an AVX512-BF16 CPU, "
                             "benchmarks/bench_training.py; slower on CPUs without bf16 GEMMs)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                        help="stop cleanly (checkpoint written, resumable) after MIN minutes of training")
    parser.add_argument("--no-cache", action="store_true", help="do not write OUT/cache/*.npz")
    return parser


def config_from_args(args: argparse.Namespace):
    from napari_msam.training.trainer import TrainConfig

    return TrainConfig(
        data=list(args.data), out_dir=args.out, model_config=args.config, init_checkpoint=args.init,
        spacing_mm=args.spacing, normalization=args.normalization,
        modalities=tuple(m.lower() for m in args.modalities) if args.modalities else None,
        label_id=args.label_id, exclude_patients=tuple(args.exclude_patients or ()),
        val_patients=tuple(args.val_patients) if args.val_patients else None, val_fraction=args.val_fraction,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        accumulation=args.accumulation, lr=args.lr, weight_decay=args.weight_decay,
        decoder_lr_factor=args.decoder_lr_factor, milestones=tuple(args.milestones or ()), gamma=args.gamma,
        warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, clicks=args.clicks, val_clicks=args.val_clicks,
        val_protocol=args.val_protocol, val_seeds=args.val_seeds,
        click_strategy=args.click_strategy, multi_click=args.multi_click, dice_weight=args.dice_weight,
        bce_weight=args.bce_weight, jitter=args.jitter, flips=not args.no_flips, click_centre_prob=args.click_centre_prob,
        max_zoom=args.zoom, zoom_prob=args.zoom_prob, intensity_prob=args.intensity_aug,
        rot90_prob=args.rot90,
        rotate_prob=args.rotate,
        rotate_max_deg=args.rotate_deg,
        click_prior_radius=args.click_prior[0] if args.click_prior else None,
        click_prior_value=args.click_prior[1] if args.click_prior else None, val_every=args.val_every,
        seed=args.seed, device=args.device, num_threads=args.threads,
        crop_workers=args.crop_workers, amp=not args.no_amp, cpu_bf16=args.cpu_bf16,
        time_limit_s=args.time_limit * 60.0 if args.time_limit else None, resume=args.resume,
        cache=not args.no_cache,
    )


class _Printer:
    """Progress lines on stdout (rank 0 only under torchrun)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.t_last = time.perf_counter()
        self.last_step = 0

    def __call__(self, ev) -> None:
        import os

        if int(os.environ.get("RANK", "0")) != 0:
            return
        if ev.kind == "data":
            if ev.step == ev.steps or ev.step % 10 == 0:
                self._p(f"data: prepared {ev.step}/{ev.steps} cases")
        elif ev.kind == "start":
            self._p(f"start: {ev.message}; {ev.steps} steps/epoch, epochs {ev.epoch + 1}..{ev.epochs}")
            self.t_last, self.last_step = time.perf_counter(), ev.global_step
        elif ev.kind == "step":
            now = time.perf_counter()
            dt = (now - self.t_last) / max(1, ev.global_step - self.last_step)
            self.t_last, self.last_step = now, ev.global_step
            self._p(f"epoch {ev.epoch}/{ev.epochs} step {ev.step}/{ev.steps} (global {ev.global_step}) "
                    f"loss {ev.loss:.4f} lr {ev.lr:.2e} {dt:.2f} s/step")
        elif ev.kind == "epoch":
            val = ""
            if ev.val_dice:
                d = ev.val_dice
                val = (f" val dice@1 {d[0]:.3f} @{len(d)} {d[-1]:.3f} mean {sum(d) / len(d):.3f}"
                       + (" (best)" if ev.message == "best" else ""))
            self._p(f"epoch {ev.epoch}/{ev.epochs} done: train loss {ev.loss:.4f}{val} [{ev.elapsed_s:.0f} s]")
        elif ev.kind == "checkpoint":
            self._p(f"checkpoint: {ev.message} (step {ev.global_step})")
        elif ev.kind in ("done", "cancelled"):
            extra = f" ({ev.message})" if ev.message else ""
            self._p(f"{ev.kind}: epoch {ev.epoch}, global step {ev.global_step}{extra} [{ev.elapsed_s:.0f} s]")

    def _p(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


#: exit status of a run stopped by SIGINT / SIGTERM (128 + the signal's number, as shells report it)
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
PROG = "napari-msam"


@contextlib.contextmanager
def _signals_cancel(trainer) -> Iterator[list[int]]:
    """SIGINT and SIGTERM ask ``trainer`` to stop as Cancel does (step finished, checkpoint written); a
    second signal of the same kind stops at once. Yields the signals received."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        received.append(signum)
        trainer.cancel()
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_train(args: argparse.Namespace) -> int:
    """Run training from parsed arguments; returns the exit status (0 done, 2 bad input, 130/143 stopped
    by SIGINT/SIGTERM with a resumable checkpoint written). Errors are one line on stderr."""
    from napari_msam.errors import MSAMError, one_line
    from napari_msam.training.config import TrainingError
    from napari_msam.training.data import TrainingDataError
    from napari_msam.training.trainer import Trainer

    try:
        cfg = config_from_args(args)
        trainer = Trainer(cfg, callback=_Printer())
        with _signals_cancel(trainer) as received:
            result = trainer.fit()
    except (TrainingDataError, TrainingError, MSAMError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once (files are written atomically or not at all)
        print(f"{PROG}: interrupted; --resume continues from the last checkpoint written, if any", file=sys.stderr)
        return EXIT_SIGINT
    if received and result.cancelled:
        name = signal.Signals(received[0]).name
        print(f"{PROG}: stopped by {name} at epoch {result.epoch + 1}, global step {result.global_step}; "
              f"checkpoint in {result.out_dir}: run the same command with --resume to continue", file=sys.stderr)
        return EXIT_SIGINT if received[0] == signal.SIGINT else EXIT_SIGTERM
    if result.best_path:
        print(f"best: {result.best_path}")
    if result.last_path:
        print(f"last: {result.last_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_msam.training",
                                     description="Train or fine-tune an M-SAM model with the interaction loop.")
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))
