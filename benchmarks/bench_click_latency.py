"""Per-click latency as the Segment widget shows it: time to the network's mask, and to the edge-refined one.

The widget runs ``Session.add_click(refine_edges=False)`` (what appears at once) and then
``Session.refine_edges()`` (what replaces it when ready). This times both for 10 centre-strategy clicks
on a case, with edge refinement on and off, and prints p50 / p95 over the clicks and the repeats.

    python benchmarks/bench_click_latency.py [--case sample|large|PATH_IMAGE PATH_MASK] [--repeats 2]

``sample``: the plugin's STS_024 T1 MR; ``large``: STS_020 T1 MR from the shared data (748k-voxel tumour).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STS = ROOT.parent / "shared" / "data" / "sts"  # the shared data beside the checkout
CASES = {
    "sample": (str(ROOT / "sample_data" / "MR_T1_image.nii.gz"), str(ROOT / "sample_data" / "MR_T1_mask.nii.gz")),
    "large": (str(STS / "STS_020" / "MR_T1_image_from_dicom.nii.gz"), str(STS / "STS_020" / "MR_T1_mask.nii.gz")),
}


def run(image: str, mask: str, edge: str, n_clicks: int, repeats: int) -> dict[str, list[float]]:
    from napari_msam.clicks import next_click
    from napari_msam.default_model import load_default_model
    from napari_msam.io import read_volume
    from napari_msam.session import Session

    img, gt = read_volume(image), read_volume(mask, is_label=True)
    gt_mask = np.asarray(gt.data) > 0
    loaded = load_default_model()
    shown, refined = [], []
    for rep in range(repeats):
        session = Session(loaded, device="cpu", edge_refine=edge)
        session.set_image(img.data, spacing=img.spacing, modality="mr")
        rng = np.random.default_rng(rep)
        for _ in range(n_clicks):
            click = next_click(gt_mask, np.asarray(session.current_mask, bool), rng, "center", img.spacing)
            if click is None:
                break
            t0 = time.perf_counter()
            session.add_click(click[0], positive=click[1], refine_edges=False)
            t1 = time.perf_counter()
            session.refine_edges()
            t2 = time.perf_counter()
            shown.append(t1 - t0)
            refined.append(t2 - t0)
    return {"network mask shown": shown, "final mask (edges refined)": refined}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", nargs="+", default=["sample"])
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    image, mask = CASES[args.case[0]] if len(args.case) == 1 else args.case
    print(f"{Path(image).name} ({args.case[0]}), {args.clicks} centre clicks x {args.repeats}, "
          f"CPU {platform.processor() or platform.machine()}")
    for edge in ("off", "on"):
        for what, times in run(image, mask, edge, args.clicks, args.repeats).items():
            if edge == "off" and what.startswith("final"):
                continue
            t = np.asarray(times)
            print(f"  edge refinement {edge:3s} · {what:27s}: p50 {np.percentile(t, 50):.2f} s, "
                  f"p95 {np.percentile(t, 95):.2f} s (n={t.size})")


if __name__ == "__main__":
    main()
