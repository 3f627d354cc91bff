"""Zoom-out vs stitched windows on a tumour larger than the ROI: accuracy and cost per click, one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_zoom.py --patient STS_013 --threads 1

Runs the Auto protocol (random clicks, ``--seeds``) on one STS patient's CT and MR with the default model
twice, through the same :class:`~napari_msam.session.Session`: as trained (zoom out up to 2x before adding
windows) and with ``max_zoom=1`` (re-centre, then windows only, the behaviour before zoom). Reports Dice
after 1/3/5/10 clicks, the median wall time of a click, the encoder time per run and the ROIs per object,
and the ratios zoom / windows. Numbers go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_default_model import case_files, load_pair  # noqa: E402


def run(loaded, img, gt, modality: str, seed: int, max_zoom: float | None, n_clicks: int) -> dict:
    """One Auto-protocol run (``evaluation.run_protocol``, the widget's and the CLI's) on a fresh Session."""
    from napari_msam.evaluation import run_protocol
    from napari_msam.session import Session

    s = Session(loaded, device="cpu", max_zoom=max_zoom)
    s.set_image(img.data, img.spacing, modality)
    res = run_protocol(s, gt, n_clicks=n_clicks, strategy="random", seed=seed)
    return {"dice": res.dice_curve(), "secs": [r.seconds for r in res.records],
            "encode": sum(r.timings.get("encode", 0.0) for r in res.records), "windows": s.n_windows,
            "zoom": s.zoom}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("/work/shared/data/sts"))
    p.add_argument("--patient", default="STS_013")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    from napari_msam.default_model import load_default_model

    torch.set_num_threads(args.threads)
    loaded = load_default_model("cpu")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s); patient {args.patient}, seeds {args.seeds}")
    print("| modality | variant | Dice@1 | Dice@3 | Dice@5 | Dice@10 | median s/click | encode s/run | ROIs | zoom |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for modality in ("ct", "mr"):
        img, gt = load_pair(case_files(args.data, args.patient, modality))
        rows = {}
        for name, mz in (("zoom (as trained)", None), ("windows (max_zoom=1)", 1.0)):
            runs = [run(loaded, img, gt, modality, sd, mz, args.clicks) for sd in args.seeds]
            d = np.mean([r["dice"] for r in runs], axis=0)
            med = statistics.median(x for r in runs for x in r["secs"])
            enc = float(np.mean([r["encode"] for r in runs]))
            rows[name] = (d, med, enc)
            print(f"| {modality} | {name} | {d[0]:.3f} | {d[2]:.3f} | {d[4]:.3f} | {d[-1]:.3f} | {med:.3f} | "
                  f"{enc:.2f} | {np.mean([r['windows'] for r in runs]):.1f} | "
                  f"{np.mean([r['zoom'] for r in runs]):.2f} |", flush=True)
        (dz, mz_, ez), (dw, mw, ew) = rows.values()
        print(f"| {modality} | ratio zoom / windows | | | | {dz[-1] / dw[-1]:.2f}x | {mz_ / mw:.2f}x | "
              f"{ez / ew:.2f}x | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
