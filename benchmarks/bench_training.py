"""Training-step benchmark: fp32 against bf16 autocast, one optimizer step of the real interaction loop.

Usage:  .venv/bin/python benchmarks/bench_training.py [--config msam-small] [--threads 1] [--clicks 7]
        [--batch 2] [--repeats 5] [--device cpu]

Both variants run interleaved in one process on the same batch (a sphere in noise at the config's input
size), so the ratio is fair even on a loaded machine. bf16 pays off on CPUs with bf16 GEMMs (AVX512-BF16 or
AMX, e.g. AMD Zen 4, Intel Sapphire Rapids) and on CUDA; elsewhere it can be slower.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="msam-small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clicks", type=int, default=7)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
