"""What edge refinement costs per click, and its walker grid as a variant (numbers go to docs/performance.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_edge_refine.py --threads 1 \
        --case ../shared/data/sts/STS_003/MR_T1 --case ../shared/data/sts/STS_027/MR_T1

Each case (``PATH`` = ``PATH_image.nii.gz`` + ``PATH_mask.nii.gz``; default: the packaged STS_024 MR) runs
the Auto protocol (10 random clicks, seed 0) with the embedded default model three times in one process:
refinement off, on with the default 2 mm walker grid, and on the native grid (``grid_mm=1``). Reported per
variant: median seconds of the model part and of the refinement per click (``ClickResult.timings``),
Dice@10, and the refinement's time as a ratio to the model's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from napari_msam.default_model import load_default_model  # noqa: E402
from napari_msam.edge_refine import EdgeRefiner  # noqa: E402
from napari_msam.evaluation import run_protocol  # noqa: E402
from napari_msam.io import read_volume  # noqa: E402
from napari_msam.session import Session  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_msam" / "sample_data" / "MR_T1"
VARIANTS = {"off": "off", "grid 2 mm (default)": EdgeRefiner(), "native grid": EdgeRefiner(grid_mm=1.0)}


def run_case(loaded, prefix: Path, threads: int | None) -> list[dict]:
    img = read_volume(f"{prefix}_image.nii.gz")
    gt = read_volume(f"{prefix}_mask.nii.gz", is_label=True).data > 0
    rows = []
    for name, refine in VARIANTS.items():
        s = Session(loaded, device="cpu", threads=threads, edge_refine=refine)
        s.set_image(img.data, img.spacing, "mr")
        res = run_protocol(s, gt, 10, "random", 0)
        edges = [r.timings.get("edges", 0.0) for r in res.records]
        model = [r.timings["total"] - r.timings.get("edges", 0.0) for r in res.records]
        case = "STS_024 (sample)" if prefix.parent.name == "sample_data" else prefix.parent.name or str(prefix)
        rows.append({"case": case, "variant": name, "voxels": int(gt.size),
                     "tumour_ml": float(gt.sum() * np.prod(img.spacing) / 1000),
                     "model_s": statistics.median(model), "edges_s": statistics.median(edges),
                     "dice10": res.final_dice})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", type=Path, default=[], metavar="PATH",
                    help="PATH_image.nii.gz + PATH_mask.nii.gz (repeatable; default: the packaged STS_024 MR)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    loaded = load_default_model("cpu")
    rows = [r for c in (args.case or [SAMPLE]) for r in run_case(loaded, c, args.threads)]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, python {sys.version.split()[0]}")
    print("| case | tumour mL | variant | model s/click | refinement s/click | refinement / model | Dice@10 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["edges_s"] / r["model_s"] if r["model_s"] > 0 else float("nan")
        print(f"| {r['case']} | {r['tumour_ml']:.0f} | {r['variant']} | {r['model_s']:.3f} | {r['edges_s']:.3f} | "
              f"{ratio:.1f}x | {r['dice10']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
