"""Inference-time variants of the Session, measured with the Auto protocol on the validation patients.

Why: before training anything, check whether the shipped weights can do better with a different decision
rule at inference. Each variant changes one thing and is a prototype (a subclass or a patched view), not a
Session option; docs/model-card.md has the results.

    python benchmarks/inference_variants.py base thr:0.5 cc tta:2 rot:4 pr:1.0/4 --seeds 0 1 2 --out R.jsonl
    python benchmarks/inference_variants.py --summary R.jsonl

Variants: ``base`` (the shipped Session, edge refinement ``auto``); ``thr:T`` (mask = logits > T instead of
> 0; the chain of logits is unchanged); ``cc`` (keep only the connected components that hold a positive
click); ``tta:K`` (the Session's K flip views); ``rot:K`` (K axial views instead: identity, the in-plane
transpose, the 180-degree turn and both, all in the training distribution of ``--rot90``); ``pr:R/V`` (a
click prior of radius R low-res cells and value V instead of the trained 1.5 / 4).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import evaluate_default_model as ev  # noqa: E402

import napari_msam.session as S  # noqa: E402
from napari_msam.evaluation import run_protocol  # noqa: E402
from napari_msam.model.click_prior import ClickPrior  # noqa: E402

VALIDATION = ["STS_003", "STS_008", "STS_013", "STS_018", "STS_022", "STS_027"]
_ORIGINAL = (S._flip, S._flip_points, S.TTA_FLIPS)
_LOADED: dict[str, object] = {}


class ThresholdSession(S.Session):
    """Shows logits > ``threshold``; the logits fed back to the model are not changed."""

    threshold = 0.0

    def _paste(self, window, step, timings, *, keep=None):
        shifted = dataclasses.replace(window, low_res=window.low_res - self.threshold)
        return super()._paste(shifted, step, timings, keep=keep)


class ComponentSession(S.Session):
    """Shows only the connected components (26-neighbourhood) of the mask that hold a positive click."""

    @property
    def current_mask(self) -> np.ndarray:
        from scipy import ndimage

        mask = super().current_mask
        positives = [v for v, positive in self._clicks if positive]
        if not positives or not mask.any():
            return mask
        lab, _ = ndimage.label(mask, np.ones((3, 3, 3), bool))
        keep = {int(lab[v]) for v in positives} - {0}
        if not keep:
            return mask
        out = np.isin(lab, sorted(keep))
        out.flags.writeable = False
        return out


def _view(t, axes):
    """Flips of ``axes`` (ints), then the in-plane transpose when "T" is among them (self-inverse views)."""
    if t is None:
        return None
    flips = tuple(a for a in axes if a != "T")
    out = _ORIGINAL[0](t, flips) if flips else t
    return out.transpose(-1, -2) if "T" in axes else out


def _view_points(points, axes, size):
    flips = tuple(a for a in axes if a != "T")
    out = _ORIGINAL[1](points, flips, size) if flips else points.clone()
    return out[..., [0, 2, 1]] if "T" in axes else out


def make_session(variant: str, checkpoint: str) -> S.Session:
    from napari_msam.model import load_checkpoint

    if checkpoint not in _LOADED:
        _LOADED[checkpoint] = load_checkpoint(checkpoint, device="cpu")
    loaded = _LOADED[checkpoint]
    kind, _, value = variant.partition(":")
    S._flip, S._flip_points, S.TTA_FLIPS = _ORIGINAL  # a worker runs variants one after another
    if kind == "base":
        return S.Session(loaded, device="cpu", edge_refine="auto")
    if kind == "thr":
        s = ThresholdSession(loaded, device="cpu", edge_refine="auto")
        s.threshold = float(value)
        return s
    if kind == "cc":
        return ComponentSession(loaded, device="cpu", edge_refine="auto")
    if kind == "tta":
        return S.Session(loaded, device="cpu", edge_refine="auto", tta=int(value))
    if kind == "rot":
        S._flip, S._flip_points = _view, _view_points
        S.TTA_FLIPS = ((), ("T",), (1, 2), ("T", 1, 2))
        return S.Session(loaded, device="cpu", edge_refine="auto", tta=int(value))
    if kind == "pr":
        radius, val = (float(x) for x in value.split("/"))
        s = S.Session(loaded, device="cpu", edge_refine="auto")
        s.click_prior = ClickPrior(radius, val)
        return s
    raise SystemExit(f"unknown variant {variant!r}")


def run_task(task: tuple) -> dict:
    variant, checkpoint, data, patient, modality, seed, strategy = task
    img, gt = ev.load_pair(ev.case_files(Path(data), patient, modality))
    session = make_session(variant, checkpoint)
    session.set_image(img.data, img.spacing, modality)
    res = run_protocol(session, gt, n_clicks=10, strategy=strategy, seed=seed)
    return {"variant": variant, "patient": patient, "modality": modality, "seed": seed, "strategy": strategy,
            "curve": res.dice_curve()}


def summarize(paths: list[str]) -> None:
    """Dice@1/3/5/10 per variant, modality and strategy (per-case means over seeds, then over cases)."""
    groups: dict = collections.defaultdict(lambda: collections.defaultdict(list))
    for p in paths:
        for line in open(p):
            r = json.loads(line)
            c = r["curve"] + [r["curve"][-1]] * (10 - len(r["curve"]))
            groups[(r["variant"], r["modality"], r["strategy"])][r["patient"]].append(c)
    for key in sorted(groups):
        per_case = [np.mean(v, 0) for v in groups[key].values()]
        m = np.mean(per_case, 0)
        print(*key, f"cases={len(per_case)}", " ".join(f"{m[i]:.3f}" for i in (0, 2, 4, 9)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="*")
    p.add_argument("--checkpoint", default=str(ROOT / "src/napari_msam/weights/default.safetensors"))
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/sts"))
    p.add_argument("--patients", nargs="+", default=VALIDATION)
    p.add_argument("--modalities", nargs="+", default=["ct", "mr"])
    p.add_argument("--strategy", nargs="+", default=["random"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="runs/eval/inference_variants.jsonl")
    p.add_argument("--summary", nargs="+", metavar="JSONL", help="only print the summary of these files")
    a = p.parse_args()
    if a.summary:
        summarize(a.summary)
        return 0
    tasks = [(v, a.checkpoint, a.data, pt, m, s, st) for v in a.variants for st in a.strategy
             for pt in a.patients for m in a.modalities for s in (a.seeds if st == "random" else [0])]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with Pool(a.jobs) as pool, open(a.out, "a") as fh:
        for rec in pool.imap_unordered(run_task, tasks):
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
    summarize([a.out])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
