"""Training-step benchmark: fp32 against bf16 autocast, one optimizer step of the real interaction loop;
with ``--crops``, the batch's training crops made one after another against side by side.

Usage:  .venv/bin/python benchmarks/bench_training.py [--config msam-small] [--threads 1] [--clicks 7]
        [--batch 2] [--repeats 5] [--device cpu]
        .venv/bin/python benchmarks/bench_training.py --crops [--workers 2] [--batch 8] [--clicks 10]
        [--threads 2] [--patients 4] [--repeats 7] [--step-repeats 3] [--ceiling]

``--crops`` prepares real STS cases (``../shared/data/sts``, cached under ``runs/bench-crops``) at the
shipped model's spacing, then times ``Trainer.batch`` with the burst's augmentations, serial (1 worker)
and with ``--workers`` threads interleaved in one process, checks that both give the same batch, and times
one optimizer step of the shipped model on that batch, so the crops' share of a step is visible.

Both variants run interleaved in one process on the same batch (a sphere in noise at the config's input
size), so the ratio is fair even on a loaded machine. bf16 pays off on CPUs with bf16 GEMMs (AVX512-BF16 or
AMX, e.g. AMD Zen 4, Intel Sapphire Rapids) and on CUDA; elsewhere it can be slower.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from napari_msam.model import build_model
from napari_msam.model.click_prior import ClickPrior
from napari_msam.model.config import get_config
from napari_msam.training.loop import interaction_loss


def _batch(size: int, batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ax = torch.arange(size, dtype=torch.float32) - size / 2
    r = (ax.view(-1, 1, 1) ** 2 + ax.view(1, -1, 1) ** 2 + ax.view(1, 1, -1) ** 2).sqrt()
    gt = (r < size / 5).float().expand(batch, 1, size, size, size).contiguous()
    img = gt * 1.5 + torch.randn(gt.shape, generator=g)
    return img.to(device), gt.to(device)


def _ceiling(trainer, cases, idx, size, jitter, args) -> tuple[float, float, float]:
    """Serial against threads against forked processes, each worker making whole batches: what the
    machine allows in parallel (processes share no GIL) and how close the threads come to it."""
    import multiprocessing as mp
    import threading

    from napari_msam.training.batches import CropPool, sample_rngs

    trainer._crops = CropPool(1)

    def batches(seed: int) -> None:
        for step in range(3):
            trainer.batch(cases, idx, sample_rngs(seed, 0, step, 0, 0, len(idx)), size, jitter, True, "cpu")

    def timed(start) -> float:
        t0 = time.perf_counter()
        runners = [start(w) for w in range(args.workers)]
        for r in runners:
            r.join()
        return time.perf_counter() - t0

    def thread(w):
        t = threading.Thread(target=batches, args=(w,))
        t.start()
        return t

    ctx = mp.get_context("fork")
    done = ctx.Queue()

    def child(w: int) -> None:
        t0 = time.perf_counter()
        batches(w)
        done.put((t0, time.perf_counter()))

    def processes() -> float:
        """From the first child's start to the last one's end, the fork itself left out."""
        ps = [ctx.Process(target=child, args=(w,)) for w in range(args.workers)]
        for p in ps:
            p.start()
        spans = [done.get() for _ in ps]
        for p in ps:
            p.join()
        return max(e for _, e in spans) - min(s for s, _ in spans)

    out: list[list[float]] = [[], [], []]
    for _ in range(max(3, args.repeats // 3)):
        t0 = time.perf_counter()
        for w in range(args.workers):
            batches(w)
        out[0].append(time.perf_counter() - t0)
        out[1].append(timed(thread))
        out[2].append(processes())
    return tuple(statistics.median(v) for v in out)  # type: ignore[return-value]


def _crop_bench(args: argparse.Namespace) -> None:
    from pathlib import Path

    from napari_msam.default_model import default_checkpoint_path
    from napari_msam.training.batches import CropPool, sample_rngs
    from napari_msam.training.data import discover_cases, prepare_cases
    from napari_msam.training.model_setup import build_model_for
    from napari_msam.training.trainer import TrainConfig, Trainer

    root = Path(__file__).resolve().parents[1]
    sts = root.parent / "shared" / "data" / "sts"
    specs = [c for c in discover_cases(sts, ("ct", "mr")) if c.patient_id != "STS_024"][: 2 * args.patients]
    cfg = TrainConfig(init_checkpoint=str(default_checkpoint_path()), out_dir=str(root / "runs" / "bench-crops"),
                      batch_size=args.batch, intensity_prob=0.5, rot90_prob=0.5, device="cpu")
    model, preprocess, _ = build_model_for(cfg, "cpu")  # also takes the checkpoint's zoom range
    trainer = Trainer(cfg)
    trainer.preprocess = preprocess
    size = int(model.config.img_size)
    jitter = size // 8
    cases = prepare_cases(specs, preprocess, img_size=size, max_jitter=jitter, cache_dir=Path(cfg.out_dir) / "cache",
                          max_zoom=trainer.roi_zoom.max if trainer.roi_zoom is not None else 1.0)
    idx = [k % len(cases) for k in range(args.batch)]
    pools = {1: CropPool(1), args.workers: CropPool(args.workers)}

    def make(workers: int, step: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        trainer._crops = pools[workers]
        t0 = time.perf_counter()
        x, y = trainer.batch(cases, idx, sample_rngs(cfg.seed, 0, step, 0, 0, len(idx)), size, jitter, True, "cpu")
        return time.perf_counter() - t0, x, y

    times: dict[int, list[float]] = {1: [], args.workers: []}
    same = True
    make(1, 0), make(args.workers, 0)  # warm-up (thread start, first-call costs)
    for r in range(args.repeats):
        t1, x1, y1 = make(1, r + 1)
        tn, xn, yn = make(args.workers, r + 1)
        times[1].append(t1)
        times[args.workers].append(tn)
        same = same and torch.equal(x1, xn) and torch.equal(y1, yn)
    serial, par = statistics.median(times[1]), statistics.median(times[args.workers])
    # the same crops at a 4^3 ROI: what a crop costs besides its voxels (Python, op dispatch), an upper
    # bound of the part the GIL keeps serial
    trainer._crops = pools[1]
    fixed = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        trainer.batch(cases, idx, sample_rngs(cfg.seed, 0, r + 1, 0, 0, len(idx)), 4, jitter, True, "cpu")
        fixed.append(time.perf_counter() - t0)
    fixed_ms = statistics.median(fixed) / len(idx) * 1e3
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    step_times = []
    for r in range(args.step_repeats + 1 if args.step_repeats else 0):
        _, x, y = make(args.workers, 100 + r)
        t0 = time.perf_counter()
        res = interaction_loss(model, x, y, n_clicks=args.clicks, rng=np.random.default_rng(r),
                               click_prior=trainer.click_prior)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        opt.step()
        step_times.append(time.perf_counter() - t0)
    for p in pools.values():
        p.close()
    ceiling = _ceiling(trainer, cases, idx, size, jitter, args) if args.ceiling else None
    print(f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} torch thread(s); {model.config.name} ({size}^3), "
          f"{len(cases)} cases, batch {args.batch}, burst augmentations")
    print(f"crops serial     median {serial * 1e3:.0f} ms/batch = {args.batch / serial:.0f} crops/s "
          f"({', '.join(f'{t * 1e3:.0f}' for t in times[1])})")
    print(f"crops {args.workers} workers  median {par * 1e3:.0f} ms/batch = {args.batch / par:.0f} crops/s "
          f"({', '.join(f'{t * 1e3:.0f}' for t in times[args.workers])})")
    print(f"speed-up serial/{args.workers} workers: {serial / par:.2f}x; same batch: {same}")
    share = fixed_ms / (serial / len(idx) * 1e3)
    print(f"fixed cost a crop (4^3 ROI) {fixed_ms:.2f} ms = {share:.0%} of a {size}^3 crop; Amdahl bound for "
          f"16 workers {1 / (share + (1 - share) / 16):.1f}x")
    if ceiling:
        print(f"{args.workers} x {args.batch} crops in one batch each, serial / {args.workers} threads / "
              f"{args.workers} processes: median {ceiling[0]:.2f} / {ceiling[1]:.2f} / {ceiling[2]:.2f} s; "
              f"speed-up threads {ceiling[0] / ceiling[1]:.2f}x, processes (no GIL) {ceiling[0] / ceiling[2]:.2f}x")
    if step_times:
        step = statistics.median(step_times[1:])  # the first step pays one-time costs
        print(f"model step (fp32, {args.clicks} clicks, crops excluded) median {step:.2f} s "
              f"({', '.join(f'{t:.2f}' for t in step_times)}); crops serial = {serial / step:.1%} of it")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="msam-small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clicks", type=int, default=7)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--crops", action="store_true", help="time the batch's crops, serial against --workers")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ceiling", action="store_true",
                    help="--crops: also serial vs threads vs processes, each worker making whole batches")
    ap.add_argument("--step-repeats", type=int, default=3, help="--crops: model steps timed (0: none)")
    ap.add_argument("--patients", type=int, default=4, help="--crops: STS patients (CT + MR each) to crop from")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.crops:
        _crop_bench(args)
        return
    torch.manual_seed(0)
    cfg = get_config(args.config)
    model = build_model(cfg).to(args.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    img, gt = _batch(cfg.img_size, args.batch, args.device)
    prior = ClickPrior(1.5, 4.0)

    def step(amp: bool) -> float:
        t0 = time.perf_counter()
        res = interaction_loss(model, img, gt, n_clicks=args.clicks, rng=np.random.default_rng(0),
                               autocast=amp, click_prior=prior)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[bool, list[float]] = {False: [], True: []}
    step(False), step(True)  # warm-up
    for _ in range(args.repeats):
        for amp in (False, True):
            times[amp].append(step(amp))
    f32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    print(f"{platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.device}, {args.threads} thread(s); {args.config} batch {args.batch}, {args.clicks} clicks")
    print(f"fp32  median {f32:.2f} s/step  ({', '.join(f'{t:.2f}' for t in times[False])})")
    print(f"bf16  median {bf16:.2f} s/step  ({', '.join(f'{t:.2f}' for t in times[True])})")
    print(f"speed-up fp32/bf16: {f32 / bf16:.2f}x")


if __name__ == "__main__":
    main()
