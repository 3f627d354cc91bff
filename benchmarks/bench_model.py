"""Model benchmark: encoder (fast vs padded reference path) and one click iteration.

Usage:  .venv/bin/python benchmarks/bench_model.py [--threads 2] [--repeats 5] [--padded-repeats 2]
        [--skip-padded] [--small-only] [--json out.json]

Full ``msam`` at 128^3 with golden-rule weights (well conditioned, no download needed), fp32, batch 1;
``msam-small`` at 64^3. Peak memory is the growth of the process's max RSS (``ru_maxrss``) over each phase:
tracemalloc cannot see torch's allocations. On CUDA (if present) the same timings plus
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch

from napari_msam.model import attention_impl, build_model
from napari_msam.model.testing import golden_model


def _maxrss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median(
    fn: Callable[[], object], repeats: int, device: str, warmup: int = 1
) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def bench(model, device: str, repeats: int, padded_repeats: int, skip_padded: bool) -> dict:
    c = model.config
    model = model.to(device).eval()
    s = c.img_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn((1, 1, s, s, s), generator=g).to(device)
    pts = torch.tensor([[[s // 2, s // 2 + 3, s // 2 - 2]]], device=device)
    lab = torch.tensor([[1]], device=device)
    out: dict = {"config": c.name, "img_size": s, "device": device}
    with torch.no_grad():
        rss0 = _maxrss_mb()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        med, times = _median(lambda: model.encode(x), repeats, device)
        out["encode_fast_s"] = med
        out["encode_fast_runs_s"] = times
        out["encode_fast_peak_rss_growth_mb"] = _maxrss_mb() - rss0
        if device.startswith("cuda"):
            out["encode_fast_cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        e = model.encode(x)
        low = model.refine(e, pts, lab, None)

        def plain() -> None:
            model.upsample(model.refine(e, pts, lab, low))

        prepared = model.prepare(e)

        def cached() -> None:
            model.upsample(model.refine(prepared, pts, lab, low))

        out["iteration_s"], _ = _median(plain, max(repeats, 5), device)
        out["iteration_prepared_s"], _ = _median(cached, max(repeats, 5), device)
        out["prepare_s"], _ = _median(lambda: model.prepare(e), max(repeats, 3), device)
        has_windows = any(blk.window_size > 0 for blk in model.image_encoder.blocks)
        if not skip_padded and has_windows:
            rss1 = _maxrss_mb()
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            with attention_impl(model, "padded"):
                med, times = _median(lambda: model.encode(x), padded_repeats, device, warmup=0)
                ref = model.encode(x) if padded_repeats == 0 else None
            out["encode_padded_s"] = med
            out["encode_padded_runs_s"] = times
            out["encode_padded_peak_rss_growth_mb"] = _maxrss_mb() - rss1
            if device.startswith("cuda"):
                out["encode_padded_cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["speedup_fast_vs_padded"] = out["encode_padded_s"] / out["encode_fast_s"]
            del ref
    out["max_rss_mb"] = _maxrss_mb()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--padded-repeats", type=int, default=2)
    ap.add_argument("--skip-padded", action="store_true")
    ap.add_argument("--small-only", action="store_true")
    ap.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                    help="all: the CPU, then CUDA when present")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "runs": [],
    }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "all":
        if args.device == "cuda" and not torch.cuda.is_available():
            ap.error("--device cuda: CUDA is not available")
        devices = [args.device]
    if torch.cuda.is_available():
        results["cuda_device"] = torch.cuda.get_device_name(0)
    for device in devices:
        if not args.small_only:
            r = bench(golden_model("msam"), device, args.repeats, args.padded_repeats, args.skip_padded)
            results["runs"].append(r)
            print(json.dumps(r), flush=True)
        torch.manual_seed(0)
        r = bench(build_model("msam-small"), device, args.repeats, 0, True)
        results["runs"].append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        from napari_msam.atomic import atomic_write

        with atomic_write(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
