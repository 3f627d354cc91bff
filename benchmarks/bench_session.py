"""Session latency and memory on a CT-sized volume (random weights; numbers go to docs/performance.md).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_session.py --config msam --threads 2

Measures, on a synthetic CT-like volume (default 300 x 512 x 512 int16, 1.0 x 0.8 x 0.8 mm), for two kinds
of prediction (``--prediction``):

* ``tumour``: the random model's decoder output is scaled by 0.01 and a ball of 60 mm diameter (centred in
  the ROI) is added, so the mask looks like a tumour and the paste costs what it costs in real use. The
  model still runs in full (the bias is a forward hook on the decoder's output).
* ``worst``: the plain random model, which predicts "object" over most of the ROI (millions of voxels):
  the worst case for the paste.

Per variant: the first click (ROI crop + resample + normalise + encode + prepare + refine + paste; the
very first click of the process also pays one-time library warm-up), later clicks in the same ROI (median
of refine + paste) and a click outside the ROI (a new ROI with a warm model: encode again). Every click is
timed three ways: wall clock, CPU time of the calling thread (``time.thread_time``) and CPU time of the
process (``time.process_time``, all threads). On a shared machine the CPU times are the stable numbers;
with ``--threads 1`` thread CPU time is the whole cost. Peak resident memory is reported beyond what the
process held with the model and the volume loaded (VmHWM - VmRSS before the variant's first click, Linux).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _proc_kb(field: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak() -> None:
    try:  # reset the peak-RSS counter (Linux >= 4.0) so VmHWM measures from here
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ct_like(shape, rng) -> np.ndarray:
    """Air outside a body ellipse, fat/soft tissue inside, a bright 'bone' ring and a 50-voxel lesion."""
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


def tumour_hook(low_res: int, radius_vox: float):
    """Forward hook for ``MaskDecoder3D``: 0.01 x the model's logits + a ball of ``radius_vox`` low-res voxels
    (positive inside, ~1 logit per voxel of distance), centred in the ROI."""
    r = torch.arange(low_res, dtype=torch.float32) - (low_res / 2 - 0.5)
    d = torch.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2)
    ball = (radius_vox - d).reshape(1, 1, low_res, low_res, low_res)

    def hook(_module, _inputs, output):
        low, iou = output
        return 0.01 * low + ball.to(low.device, low.dtype), iou

    return hook


def _clock():
    return time.perf_counter(), time.thread_time(), time.process_time()


def _since(t) -> dict[str, float]:
    w, th, pr = _clock()
    return {"wall": w - t[0], "thread_cpu": th - t[1], "process_cpu": pr - t[2]}


def _ms(d: dict[str, float]) -> dict[str, float]:
    return {k: round(1000 * v, 1) for k, v in d.items()}


def run_variant(loaded, vol, spacing, args) -> dict:
    from napari_msam.session import Session

    session = Session(loaded, device=args.device, auto_extend=args.auto_extend)
    session.set_image(vol, spacing, "ct")
    if session.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    _reset_peak()
    rss0 = _proc_kb("VmRSS")
    shape = vol.shape
    c = [s // 2 for s in shape]
    t = _clock()
    first = session.add_click(tuple(c), True)
    first_t = _since(t)
    later, parts = [], []
    for k in range(1, args.clicks):
        v = (c[0] + (k % 3) - 1, c[1] + 3 * k, c[2] - 2 * k)
        t = _clock()
        r = session.add_click(v, k % 2 == 0)
        later.append(_since(t))
        parts.append(r.timings)
    roi_voxels = int(session.current_mask.sum())
    # a click outside the first ROI: a new ROI, with a warm model (what every later object's first click costs)
    box = session._windows[0].geometry.bbox
    far = None
    for a in (2, 1, 0):
        if box[a].stop + 2 < shape[a] or box[a].start > 2:
            far = list(c)
            far[a] = box[a].stop + 2 if box[a].stop + 2 < shape[a] else box[a].start - 3
            break
    new_roi = new_roi_t = None
    if far is not None:
        t = _clock()
        new_roi = session.add_click(tuple(far), True)
        new_roi_t = _since(t)
    peak_mb = (_proc_kb("VmHWM") - rss0) / 1024.0
    out = {
        "first_click_ms": _ms(first_t),
        "first_click_parts_ms": _ms(first.timings),
        "later_click_median_ms": {k: round(1000 * statistics.median(x[k] for x in later), 1) for k in later[0]}
        if later else None,
        "later_clicks_thread_cpu_ms": [round(1000 * x["thread_cpu"], 1) for x in later],
        "later_clicks_wall_ms": [round(1000 * x["wall"], 1) for x in later],
        "later_median_parts_ms": {k: round(1000 * statistics.median(p[k] for p in parts), 1) for k in parts[0]}
        if parts else None,
        "new_roi_click_ms": None if new_roi_t is None else _ms(new_roi_t),
        "new_roi_click_parts_ms": None if new_roi is None else _ms(new_roi.timings),
        "mask_voxels_first_roi": roi_voxels,
        "mask_voxels": int(session.current_mask.sum()),
        "peak_rss_beyond_model_and_volume_mb": round(peak_mb, 1),
        "windows": session.n_windows,
    }
    if session.device.startswith("cuda"):
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="msam")
    ap.add_argument("--shape", default="300,512,512")
    ap.add_argument("--spacing", default="1.0,0.8,0.8")
    ap.add_argument("--clicks", type=int, default=6, help="clicks in the first ROI (the first + later ones)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prediction", choices=("tumour", "worst", "both"), default="both")
    ap.add_argument("--tumour-mm", type=float, default=60.0, help="diameter of the biased 'tumour' prediction")
    ap.add_argument("--auto-extend", action="store_true", help="allow re-centring / extra windows")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from napari_msam.model import (
        DEFAULT_PREPROCESS,
        REFERENCE_PREPROCESS,
        LoadedModel,
        build_model,
        get_config,
    )

    torch.manual_seed(0)
    cfg = get_config(args.config)
    model = build_model(cfg).eval()
    pre = REFERENCE_PREPROCESS if cfg.img_size == 128 else DEFAULT_PREPROCESS
    loaded = LoadedModel(model=model, config=cfg, preprocess=pre, metadata={"kind": "own"})
    shape = tuple(int(s) for s in args.shape.split(","))
    spacing = tuple(float(s) for s in args.spacing.split(","))
    vol = ct_like(shape, np.random.default_rng(0))
    low = int(cfg.low_res)
    low_mm = float(pre.spacing_mm[0]) * cfg.img_size / low
    out: dict = {
        "config": args.config,
        "cpu": _cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": shape,
        "spacing": spacing,
        "volume_mb": round(vol.nbytes / 2**20, 1),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    variants = ("tumour", "worst") if args.prediction == "both" else (args.prediction,)
    for name in variants:
        handle = None
        if name == "tumour":
            handle = model.mask_decoder.register_forward_hook(tumour_hook(low, args.tumour_mm / 2 / low_mm))
        try:
            res = run_variant(loaded, vol, spacing, args)
        finally:
            if handle is not None:
                handle.remove()
        out[name] = res
    out["device"] = str(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1).replace("\n   ", " ").replace("\n  ]", " ]").replace("\n  }", " }"))


if __name__ == "__main__":
    main()
