"""The Session against the padded reference path on the full ``msam`` model, in one run (docs/performance.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reference_speed.py --threads 1 --repeats 3

A 128^3 MR-like volume at 1.5 mm (exactly one ROI of reference weights, RAS axis order) is segmented with
3 clicks, the first at the model's centre voxel:

* **session**: ``Session(loaded)`` as a user runs it (fast folded window attention, prepared embedding,
  paste-back), ``set_image`` + encode + 3 clicks;
* **reference**: what the reference code computes: the padded 14^3 window attention and, for each click,
  the unfolded adapter on the plain embedding (:func:`reference_refine`) and ``F.interpolate`` to 128^3.

Runs alternate (session, reference, session, ...) so load changes hit both; each is timed by wall clock and
by the CPU time of the calling thread (with ``--threads 1`` the whole cost, and the stable number on a
shared machine). Also reported: one refinement iteration of the full model (``refine`` with the prepared
embedding + ``upsample``), and the masks' agreement (the paths differ only by float rounding).
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
import torch.nn.functional as F  # noqa: E402

from napari_msam.model import REFERENCE_PREPROCESS, LoadedModel, attention_impl, zscore_positive  # noqa: E402
from napari_msam.model.testing import golden_model  # noqa: E402
from napari_msam.preprocess import array_to_model, model_to_array, point_to_model  # noqa: E402
from napari_msam.session import Session  # noqa: E402

SIDE = 128
MODEL_CLICKS = [((64, 64, 64), 1), ((70, 58, 66), 0), ((60, 68, 61), 1)]


def _volume() -> np.ndarray:
    """Model-order 128^3: positive noise with a bright off-centre ellipsoid."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.arange(SIDE, dtype=np.float32)] * 3, indexing="ij")
    blob = ((z - 62) / 18) ** 2 + ((y - 66) / 14) ** 2 + ((x - 63) / 20) ** 2 <= 1
    return (rng.uniform(50, 150, (SIDE,) * 3) + 200 * blob).astype(np.float32)


DEVICE = "cpu"


def _clock() -> tuple[float, float]:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter(), time.thread_time()


def _since(t: tuple[float, float]) -> dict[str, float]:
    w, c = _clock()
    return {"wall_s": w - t[0], "thread_cpu_s": c - t[1]}


def run_session(loaded, array: np.ndarray, clicks) -> tuple[dict, np.ndarray]:
    t = _clock()
    s = Session(loaded, device=DEVICE)
    s.set_image(array, (1.5, 1.5, 1.5), "mr")
    for voxel, pos in clicks:
        s.add_click(voxel, bool(pos))
    out = _since(t)
    assert s.additions == {} and s.n_windows == 1
    return out, s.current_mask.copy()


def reference_refine(model, e: torch.Tensor, point, label: int, low: torch.Tensor | None) -> torch.Tensor:
    """The reference's click iteration, literally: prompt encoder, ``adapter(E, dense)`` as the decoder's
    image source (no prepared cache, no folded mask stream), ``F.interpolate`` to the input size."""
    pe, lr, s = model.prompt_encoder, model.config.low_res, model.config.img_size
    prev = torch.zeros((1, 1, lr, lr, lr), device=DEVICE) if low is None else low
    sparse, dense = pe(torch.tensor([[point]], device=DEVICE), torch.tensor([[label]], device=DEVICE), prev)
    low, _ = model.mask_decoder(e, pe.get_dense_pe(), sparse, dense, False, model.adapter)
    return low, F.interpolate(low, size=(s, s, s), mode="trilinear", align_corners=False)


def run_reference(model, x_model: np.ndarray) -> tuple[dict, np.ndarray]:
    t = _clock()
    with torch.inference_mode(), attention_impl(model, "padded"):
        x = zscore_positive(torch.from_numpy(x_model)).reshape(1, 1, SIDE, SIDE, SIDE).to(DEVICE)
        e = model.encode(x)
        low = None
        for p, lab in MODEL_CLICKS:
            low, up = reference_refine(model, e, p, lab, low)
            mask = (up > 0).cpu()
    return _since(t), mask[0, 0].numpy()


def iteration(model, repeats: int) -> dict:
    """One click iteration with the prepared embedding (what a later click costs), refine + upsample."""
    with torch.inference_mode():
        g = torch.Generator().manual_seed(0)
        prepared = model.prepare(model.encode(torch.randn((1, 1, SIDE, SIDE, SIDE), generator=g).to(DEVICE)))
        pts, lab = torch.tensor([[[64, 67, 62]]], device=DEVICE), torch.tensor([[1]], device=DEVICE)
        low = model.refine(prepared, pts, lab, None)
        walls, cpus = [], []
        for _ in range(repeats + 1):
            t = _clock()
            model.upsample(model.refine(prepared, pts, lab, low))
            d = _since(t)
            walls.append(d["wall_s"])
            cpus.append(d["thread_cpu_s"])
    return {"wall_ms": round(1000 * statistics.median(walls[1:]), 1),
            "thread_cpu_ms": round(1000 * statistics.median(cpus[1:]), 1),
            "wall_runs_ms": [round(1000 * w, 1) for w in walls[1:]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iteration-repeats", type=int, default=15)
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (CPU times are then the host's share)")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    torch.set_num_threads(args.threads)
    model = golden_model("msam").eval().to(DEVICE)
    loaded = LoadedModel(model, model.config, REFERENCE_PREPROCESS, {"kind": "msam-train"})
    x_model = _volume()
    order = REFERENCE_PREPROCESS.axis_order
    array = model_to_array(torch.from_numpy(x_model), order).numpy()
    inverse = {point_to_model(a, SIDE, order): a for a in np.ndindex(SIDE, SIDE, SIDE)}
    clicks = [(inverse[p], lab) for p, lab in MODEL_CLICKS]
    out: dict = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "device": DEVICE,
                 "torch": torch.__version__,
                 "threads": args.threads, "load_average_start": [round(v, 2) for v in os.getloadavg()],
                 "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    sess, ref = [], []
    masks: dict[str, np.ndarray] = {}
    run_session(loaded, array, clicks)  # warm-up: library initialisation, not part of either path
    for _ in range(args.repeats):
        r, m = run_session(loaded, array, clicks)
        sess.append(r)
        masks["session"] = array_to_model(torch.from_numpy(m), order).numpy()
        r, masks["reference"] = run_reference(model, x_model)
        ref.append(r)
    for name, runs in (("session", sess), ("reference", ref)):
        out[name] = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
        out[name]["wall_runs_s"] = [round(r["wall_s"], 2) for r in runs]
    out["speedup_wall"] = round(out["reference"]["wall_s"] / out["session"]["wall_s"], 1)
    out["speedup_thread_cpu"] = round(out["reference"]["thread_cpu_s"] / out["session"]["thread_cpu_s"], 1)
    a, b = masks["session"], masks["reference"]
    out["mask_voxels"] = int(b.sum())
    out["mask_voxels_differing"] = int((a != b).sum())
    out["iteration"] = iteration(model, args.iteration_repeats)
    out["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
