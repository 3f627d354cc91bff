"""Session latency and memory on a CT-sized volume (random weights; numbers go to docs/performance.md).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_session.py --config msam --clicks 6

Measures, on a synthetic CT-like volume (default 300 x 512 x 512 int16, 1.0 x 0.8 x 0.8 mm):
* first click: ROI crop + resample + normalise + encode + prepare + refine + paste back;
* later clicks (same ROI): median of refine + paste;
* peak resident memory beyond what the process held with the model and the volume loaded
  (VmHWM - VmRSS before the first click, Linux /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _proc_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def ct_like(shape, rng) -> np.ndarray:
    """Air outside a body ellipse, fat/soft tissue inside, a bright 'bone' ring and a 40 mm lesion."""
    z, y, x = (np.arange(n, dtype=np.float32) for n in shape)
    yy, xx = np.meshgrid((y - shape[1] / 2) / (shape[1] * 0.42), (x - shape[2] / 2) / (shape[2] * 0.36), indexing="ij")
    body = (yy**2 + xx**2) <= 1.0
    sl = np.where(body, 40, -1000).astype(np.int16)
    sl[body & ((yy**2 + xx**2) > 0.8)] = -100
    vol = np.repeat(sl[None], shape[0], axis=0)
    zc, yc, xc = shape[0] // 2, shape[1] // 2, shape[2] // 2
    r = 25
    vol[zc - r : zc + r, yc - r : yc + r, xc - r : xc + r] += 60
    vol += rng.integers(-20, 21, size=vol.shape, dtype=np.int16)
    return vol


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="msam")
    ap.add_argument("--shape", default="300,512,512")
    ap.add_argument("--spacing", default="1.0,0.8,0.8")
    ap.add_argument("--clicks", type=int, default=6)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--auto-extend", action="store_true", help="allow re-centring / extra windows")
    args = ap.parse_args()

    from napari_msam.model import (
        DEFAULT_PREPROCESS,
        REFERENCE_PREPROCESS,
        LoadedModel,
        build_model,
        get_config,
    )
    from napari_msam.session import Session

    torch.manual_seed(0)
    cfg = get_config(args.config)
    model = build_model(cfg).eval()
    pre = REFERENCE_PREPROCESS if cfg.img_size == 128 else DEFAULT_PREPROCESS
    loaded = LoadedModel(model=model, config=cfg, preprocess=pre, metadata={"kind": "own"})
    shape = tuple(int(s) for s in args.shape.split(","))
    spacing = tuple(float(s) for s in args.spacing.split(","))
    rng = np.random.default_rng(0)
    vol = ct_like(shape, rng)
    session = Session(loaded, device=args.device, threads=args.threads, auto_extend=args.auto_extend)
    session.set_image(vol, spacing, "ct")
    if session.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:  # reset the peak-RSS counter (Linux >= 4.0) so VmHWM measures from here
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    rss0 = _proc_kb("VmRSS")
    c = [s // 2 for s in shape]
    t0 = time.perf_counter()
    first = session.add_click(tuple(c), True)
    t_first = time.perf_counter() - t0
    later, parts = [], []
    for k in range(1, args.clicks):
        v = (c[0] + (k % 3) - 1, c[1] + 3 * k, c[2] - 2 * k)
        t0 = time.perf_counter()
        r = session.add_click(v, k % 2 == 0)
        later.append(time.perf_counter() - t0)
        parts.append(r.timings)
    peak_mb = (_proc_kb("VmHWM") - rss0) / 1024.0
    out = {
        "config": args.config,
        "device": session.device,
        "threads": torch.get_num_threads(),
        "shape": shape,
        "volume_mb": round(vol.nbytes / 2**20, 1),
        "first_click_s": round(t_first, 3),
        "first_click_timings": {k: round(v, 3) for k, v in first.timings.items()},
        "later_click_median_ms": round(1000 * statistics.median(later), 1) if later else None,
        "later_clicks_ms": [round(1000 * t, 1) for t in later],
        "later_median_parts_ms": {k: round(1000 * statistics.median(p[k] for p in parts), 1) for k in parts[0]}
        if parts else None,
        "mask_voxels": int(session.current_mask.sum()),
        "peak_rss_beyond_model_and_volume_mb": round(peak_mb, 1),
        "windows": session.n_windows,
    }
    if session.device.startswith("cuda"):
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
