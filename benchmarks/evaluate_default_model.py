"""Evaluate M-SAM checkpoints against the random-walker baseline on the STS validation patients.

Every method runs the same Auto protocol as the widget and the CLI (``napari_msam.evaluation.run_protocol``):
10 simulated clicks per (case, modality, seed), the first one a random foreground voxel, each later one a
random voxel of the error region (``--strategy center`` for the deterministic variant). M-SAM runs through
``napari_msam.session.Session`` on a checkpoint loaded with ``napari_msam.model.load_checkpoint``; images
come from ``napari_msam.io.read_volume`` (reoriented to S,P,L as in training).

    # the full evaluation (random walker + two checkpoints), ~CPU, one thread
    .venv/bin/python benchmarks/evaluate_default_model.py \
        --checkpoint msam-small=runs/default/best.safetensors \
        --checkpoint sam-med3d-small=runs/ablation/best.safetensors

    # a smoke test: 1 seed, 2 cases
    .venv/bin/python benchmarks/evaluate_default_model.py --quick --checkpoint m=runs/default/last.safetensors

Each (method, case, modality, strategy, seed) run is cached as one JSON file under ``--cache``
(``runs/eval/cache``), keyed by the checkpoint's SHA-256 (or the random walker's parameters), so an
interrupted run continues where it stopped and a new checkpoint file is never confused with an old one.
Outputs: a CSV of every click (``--csv``) and a Markdown report (``--markdown``, ``docs/evaluation.md``).

The random walker is solved on ~2 mm blocks (``--rw-grid-mm``, see ``CoarseRandomWalker``) inside its box of
60 mm around the clicks: on the native 0.98 mm grid it is ~5x slower and no better on these cases.
The cache does not see code changes in the session or the walker: use ``--recompute`` after such changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from napari_msam.atomic import atomic_write  # noqa: E402
from napari_msam.edge_refine import EDGE_MODES, EdgeRefiner  # noqa: E402
from napari_msam.errors import MSAMError  # noqa: E402
from napari_msam.evaluation import NOC_THRESHOLDS, ProtocolResult, run_protocol  # noqa: E402
from napari_msam.session import MAX_TTA  # noqa: E402

VAL_PATIENTS = ("STS_003", "STS_008", "STS_013", "STS_018", "STS_022", "STS_027")
SAMPLE_PATIENT = "STS_024"
MODALITIES = {"ct": "CT", "mr": "MR_T1"}  # session modality -> file prefix
REPORT_CLICKS = (1, 3, 5, 10)
RW_NAME = "random-walker"
CACHE_VERSION = 1
ROOT = Path(__file__).resolve().parents[1]


class EvalError(MSAMError):
    """A bad argument or missing file for this benchmark."""


# ------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class CaseFiles:
    patient: str
    modality: str  # "ct" / "mr"
    image: Path
    mask: Path


def case_files(data_dir: Path, patient: str, modality: str) -> CaseFiles:
    """The image / mask pair of one patient and modality (``X_image.nii.gz`` or ``X_image_from_dicom.nii.gz``)."""
    prefix = MODALITIES[modality]
    folder = data_dir / patient
    mask = folder / f"{prefix}_mask.nii.gz"
    for name in (f"{prefix}_image.nii.gz", f"{prefix}_image_from_dicom.nii.gz"):
        if (folder / name).is_file() and mask.is_file():
            return CaseFiles(patient, modality, folder / name, mask)
    raise EvalError(f"{folder}: no {prefix}_image[_from_dicom].nii.gz + {prefix}_mask.nii.gz pair")


def load_pair(case: CaseFiles):
    """Image and bool mask through ``read_volume`` (the training reader); refuses differing grids."""
    from napari_msam.io import read_volume

    img = read_volume(case.image)
    lab = read_volume(case.mask, is_label=True)
    if img.data.shape != lab.data.shape or not np.allclose(img.affine, lab.affine, atol=1e-3):
        raise EvalError(f"{case.patient}/{case.modality}: image and mask are not on the same grid")
    gt = lab.data > 0
    if not gt.any():
        raise EvalError(f"{case.patient}/{case.modality}: the mask is empty")
    return img, gt


def orientation_codes(case: CaseFiles) -> tuple[str, str]:
    """(axis codes of the file, axis codes after ``read_volume``): the latter must be S,P,L."""
    import nibabel as nib
    from nibabel.orientations import aff2axcodes

    from napari_msam.io import read_volume

    src = "".join(aff2axcodes(nib.load(str(case.image)).affine))
    dst = "".join(aff2axcodes(read_volume(case.image).affine))
    return src, dst


@dataclass
class Method:
    name: str
    key: str                 # cache key: checkpoint hash or baseline parameters
    checkpoint: Path | None  # the snapshot that is evaluated (None for the baseline)
    source: str              # where it came from (the path given, or the baseline's parameters)
    info: dict


def snapshot_checkpoint(name: str, path: Path, snap_dir: Path) -> Method:
    """Copy the checkpoint (training may replace it meanwhile) to ``snap_dir/<sha12>.safetensors``."""
    if not path.is_file():
        raise EvalError(f"checkpoint {name}={path}: no such file")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    snap = snap_dir / f"{digest[:16]}{path.suffix}"
    if not snap.exists():
        snap_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(snap, "wb") as fh:
            fh.write(data)
    info: dict = {"sha256": digest, "size": len(data),
                  "mtime": datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")}
    try:
        from napari_msam.model import load_checkpoint

        loaded = load_checkpoint(snap)
        meta = dict(loaded.metadata or {})
        info["config"] = loaded.config.name
        info["preprocess"] = loaded.preprocess.to_dict()
        if meta.get("roi_zoom"):
            info["trained_zoom"] = meta["roi_zoom"].get("max")
        for k in ("step", "global_step", "epoch", "val_dice", "best_val", "kind"):
            if k in meta:
                info[k] = meta[k]
        tr = meta.get("training")
        if isinstance(tr, dict):
            for k in ("step", "global_step", "epoch", "val_dice", "best_val"):
                if k in tr:
                    info[k] = tr[k]
    except Exception as exc:  # reported as a clear error below, when the run needs it
        raise EvalError(f"checkpoint {name}={path}: cannot load ({type(exc).__name__}: {exc})") from exc
    return Method(name, digest[:16], snap, str(path), info)


def rw_method(args) -> Method:
    params = {"beta": args.rw_beta, "margin_mm": args.rw_margin_mm, "seed_mm": args.rw_seed_mm,
              "mode": args.rw_mode, "tol": args.rw_tol, "grid_mm": args.rw_grid_mm}
    key = "rw-" + hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return Method(RW_NAME, key, None, json.dumps(params), params)


# ------------------------------------------------------------------------------------------ running
def coarse_factors(spacing: Sequence[float], target_mm: float) -> tuple[int, int, int]:
    """Integer block factors per axis so the coarse spacing is about ``target_mm`` (1 = keep the axis)."""
    if target_mm <= 0:
        return (1, 1, 1)
    return tuple(max(1, int(round(target_mm / float(s)))) for s in spacing)  # type: ignore[return-value]


class CoarseRandomWalker:
    """The random-walker baseline solved on a block-averaged grid, its labels repeated back to full resolution.

    Why: scikit-image's walker costs ~10-20 s per click on a 1 mm in-plane box of these volumes (one CPU
    thread), which makes 3 seeds x 10 clicks x 14 cases take hours. Averaging 2 x 2 in-plane blocks
    (0.98 mm -> 1.95 mm; the 3.3 mm axis is kept) makes each solve ~5x cheaper. The walker itself is
    ``napari_msam.baselines.RandomWalkerSession``, unchanged; only its input grid is coarser.
    """

    device = "cpu"

    def __init__(self, inner, target_mm: float = 2.0) -> None:
        self.inner = inner
        self.target_mm = float(target_mm)
        self.factors = (1, 1, 1)
        self.spacing = (1.0, 1.0, 1.0)
        self._mask = np.zeros((0, 0, 0), bool)
        self._idx: tuple[np.ndarray, ...] = ()

    def set_image(self, volume: np.ndarray, spacing: Sequence[float] = (1, 1, 1), modality: str = "other") -> None:
        volume = np.asarray(volume, dtype=np.float32)
        self.spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
        f = self.factors = coarse_factors(self.spacing, self.target_mm)
        pad = [(0, (-n) % k) for n, k in zip(volume.shape, f, strict=True)]
        v = np.pad(volume, pad, mode="edge")
        c = v.reshape(v.shape[0] // f[0], f[0], v.shape[1] // f[1], f[1], v.shape[2] // f[2], f[2]).mean((1, 3, 5))
        self.inner.set_image(c, tuple(s * k for s, k in zip(self.spacing, f, strict=True)), modality)
        self._idx = tuple(np.arange(n) // k for n, k in zip(volume.shape, f, strict=True))
        self._mask = np.zeros(volume.shape, bool)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._mask.shape)

    @property
    def current_mask(self) -> np.ndarray:
        return self._mask

    def reset(self) -> None:
        self.inner.reset()
        self._mask[...] = False

    def _sync(self, bbox: tuple[slice, ...]) -> tuple[slice, ...]:
        """Repeat the coarse mask inside its changed box back onto the full grid; returns the full box."""
        f = self.factors
        full = tuple(slice(b.start * k, min(b.stop * k, n)) for b, k, n in zip(bbox, f, self._mask.shape, strict=True))
        m = np.asarray(self.inner.current_mask)
        i0, i1, i2 = (self._idx[a][full[a]] for a in range(3))
        self._mask[full] = m[np.ix_(i0, i1, i2)]
        return full

    def add_click(self, voxel: Sequence[int], positive: bool = True):
        v = tuple(int(x) // k for x, k in zip(voxel, self.factors, strict=True))
        res = self.inner.add_click(v, positive)
        res.bbox = self._sync(res.bbox)
        return res

    def undo(self):
        res = self.inner.undo()
        if res is not None:
            res.bbox = self._sync(res.bbox)
        return res


_MODELS: dict[str, object] = {}


def make_session(method: Method, args):
    """A fresh session per run (no state shared between runs); the loaded model is kept per process."""
    if method.checkpoint is None:
        from napari_msam.baselines import RandomWalkerSession

        rw = RandomWalkerSession(beta=args.rw_beta, margin_mm=args.rw_margin_mm, seed_mm=args.rw_seed_mm,
                                 mode=args.rw_mode, tol=args.rw_tol)
        return CoarseRandomWalker(rw, args.rw_grid_mm) if args.rw_grid_mm > 0 else rw
    from napari_msam.model import load_checkpoint
    from napari_msam.session import Session

    loaded = _MODELS.get(method.key)
    if loaded is None:
        loaded = _MODELS[method.key] = load_checkpoint(method.checkpoint, device=args.device or "cpu")
    return Session(loaded, device=args.device, threads=args.threads, max_zoom=method.info.get("max_zoom"),
                   tta=int(method.info.get("tta", 1)), edge_refine=method.info.get("edge_refine", "off"))


def cache_path(cache_dir: Path, method: Method, case: CaseFiles, strategy: str, seed: int, n_clicks: int) -> Path:
    return cache_dir / method.key / f"{case.patient}_{case.modality}_{strategy}_s{seed}_n{n_clicks}.json"


def run_one(method: Method, case: CaseFiles, strategy: str, seed: int, args) -> dict:
    """One protocol run -> a JSON-able record (also what the cache holds)."""
    img, gt = load_pair(case)
    session = make_session(method, args)
    session.set_image(img.data, img.spacing, case.modality)
    t0 = time.perf_counter()
    res: ProtocolResult = run_protocol(session, gt, n_clicks=args.clicks, strategy=strategy, seed=seed)
    wall = time.perf_counter() - t0
    curve = res.dice_curve()
    return {
        "version": CACHE_VERSION, "method": method.name, "key": method.key, "patient": case.patient,
        "modality": case.modality, "strategy": strategy, "seed": seed, "n_clicks": args.clicks,
        "shape": list(img.data.shape), "spacing": list(img.spacing), "gt_voxels": int(gt.sum()),
        "stopped": res.stopped, "wall_s": wall,
        "clicks": [{"click": r.click, "voxel": list(r.voxel), "positive": r.positive, "dice": r.dice,
                    "iou": r.iou, "seconds": r.seconds, "timings": r.timings} for r in res.records],
        "dice_curve": curve,
        "noc": {str(t): res.noc(t) for t in NOC_THRESHOLDS},
        "n_windows": int(getattr(session, "n_windows", 0) or 0),
    }


def _worker(task):
    method, case, strategy, seed, args, path = task
    rec = run_one(method, case, strategy, seed, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as fh:
        json.dump(rec, fh)
    return rec


def run_all(methods: Sequence[Method], cases: Sequence[CaseFiles], strategies: Sequence[str],
            seeds: Sequence[int], args) -> list[dict]:
    """Every (method, case, strategy, seed) run, from the cache where it is there."""
    records: list[dict] = []
    todo = []
    for m in methods:
        for c in cases:
            for st in strategies:
                # "center" is deterministic: every seed would give the same run
                for s in (seeds[:1] if st == "center" else seeds):
                    p = cache_path(args.cache, m, c, st, s, args.clicks)
                    if p.is_file() and not args.recompute:
                        try:
                            rec = json.loads(p.read_text())
                            if rec.get("version") == CACHE_VERSION:
                                rec["method"] = m.name  # the display name may change between runs
                                records.append(rec)
                                continue
                        except (OSError, ValueError):
                            pass  # a broken cache file: run it again
                    todo.append((m, c, st, s, args, p))
    print(f"{len(records)} runs cached, {len(todo)} to run", flush=True)
    t_start = time.perf_counter()

    def progress(i: int, rec: dict) -> None:
        el = time.perf_counter() - t_start
        eta = el / i * (len(todo) - i)
        print(f"[{i}/{len(todo)}] {rec['method']:>18} {rec['patient']} {rec['modality']} {rec['strategy']} "
              f"seed {rec['seed']}: Dice@1 {rec['dice_curve'][0]:.3f} @{len(rec['dice_curve'])} "
              f"{rec['dice_curve'][-1]:.3f}, {rec['wall_s']:.1f} s (elapsed {el:.0f} s, eta {eta:.0f} s)",
              flush=True)

    if args.jobs > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.jobs) as ex:
            for i, rec in enumerate(ex.map(_worker, todo), start=1):
                records.append(rec)
                progress(i, rec)
    else:
        for i, task in enumerate(todo, start=1):
            rec = _worker(task)
            records.append(rec)
            progress(i, rec)
    return records


# ------------------------------------------------------------------------------------------ report
def write_csv(path: Path, records: Sequence[dict]) -> None:
    cols = ("method", "case", "modality", "strategy", "seed", "click", "dice", "iou", "positive", "seconds")
    lines = [",".join(cols)]
    for r in sorted(records, key=lambda r: (r["method"], r["patient"], r["modality"], r["strategy"], r["seed"])):
        for c in r["clicks"]:
            lines.append(",".join(str(v) for v in (
                r["method"], r["patient"], r["modality"], r["strategy"], r["seed"], c["click"],
                f"{c['dice']:.6f}", f"{c['iou']:.6f}", int(c["positive"]), f"{c['seconds']:.4f}")))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def summarize(records: Sequence[dict], n_clicks: int) -> dict:
    """Mean Dice per click (mean over cases of the per-case mean over seeds), std over cases, NoC, seconds."""
    by_case: dict[str, list[list[float]]] = {}
    for r in records:
        by_case.setdefault(r["patient"], []).append((list(r["dice_curve"]) + [np.nan] * n_clicks)[:n_clicks])
    case_means = np.array([np.nanmean(np.array(v, float), axis=0) for v in by_case.values()])
    mean = np.nanmean(case_means, axis=0)
    if len(case_means) > 1:
        std = np.nanstd(case_means, axis=0, ddof=1)
    else:  # one case (the sample case): the spread over its seeds instead
        runs = np.array([(list(r["dice_curve"]) + [np.nan] * n_clicks)[:n_clicks] for r in records], float)
        std = np.nanstd(runs, axis=0, ddof=1) if len(runs) > 1 else np.zeros(n_clicks)
    nocs = {}
    for t in NOC_THRESHOLDS:
        vals = [r["noc"][str(t)] for r in records]
        nocs[t] = (float(np.mean([n_clicks if v is None else v for v in vals])), sum(v is None for v in vals))
    secs = [c["seconds"] for r in records for c in r["clicks"]]
    first = [r["clicks"][0]["seconds"] for r in records if r["clicks"]]
    return {"runs": len(records), "cases": len(by_case), "mean": mean, "std": std, "noc": nocs,
            "sec_mean": float(np.mean(secs)) if secs else float("nan"),
            "sec_first": float(np.mean(first)) if first else float("nan"),
            "sec_max": float(np.max(secs)) if secs else float("nan")}


def table(summaries: dict[str, dict], n_clicks: int) -> list[str]:
    ks = [k for k in REPORT_CLICKS if k <= n_clicks]
    head = (["method", "runs"] + [f"Dice@{k}" for k in ks] + [f"NoC@{t}" for t in NOC_THRESHOLDS]
            + ["s/click", "s 1st click"])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summaries.items():
        row = [f"`{name}`", f"{s['runs']} ({s['cases']} case{'' if s['cases'] == 1 else 's'})"]
        row += [f"{s['mean'][k - 1]:.3f} ± {s['std'][k - 1]:.3f}" for k in ks]
        row += [f"{s['noc'][t][0]:.1f} ({s['noc'][t][1]} ✗)" for t in NOC_THRESHOLDS]
        row += [f"{s['sec_mean']:.2f}", f"{s['sec_first']:.2f}"]
        out.append("| " + " | ".join(row) + " |")
    return out


def ahead(ms: dict, rw: dict, n_clicks: int, start: int = 3) -> tuple[bool, list[int]]:
    """M-SAM's mean Dice above the random walker's at every click count from ``start`` on; the clicks where not."""
    behind = [k for k in range(start, n_clicks + 1) if not ms["mean"][k - 1] > rw["mean"][k - 1]]
    return not behind, behind


def per_case_table(records: Sequence[dict], methods: Sequence[str], n_clicks: int) -> list[str]:
    ks = [k for k in REPORT_CLICKS if k <= n_clicks]
    head = ["case", "method"] + [f"Dice@{k}" for k in ks]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    patients = sorted({r["patient"] for r in records})
    for p in patients:
        for m in methods:
            rs = [r for r in records if r["patient"] == p and r["method"] == m]
            if not rs:
                continue
            c = np.nanmean(np.array([(r["dice_curve"] + [np.nan] * n_clicks)[:n_clicks] for r in rs], float), axis=0)
            out.append("| " + " | ".join([p, f"`{m}`"] + [f"{c[k - 1]:.3f}" for k in ks]) + " |")
    return out


def patients_label(patients: Sequence[str]) -> str:
    """What the evaluated patients are: the training's validation split, or patients given by hand (the
    training patients, say), so that a report never calls training patients validation patients."""
    if sorted(patients) == sorted(VAL_PATIENTS):
        return "Validation patients"
    if not set(patients) & set(VAL_PATIENTS):
        return "Patients given with --patients (none of them a validation patient)"
    return "Patients given with --patients"


def report(records: Sequence[dict], methods: Sequence[Method], args, orient: dict, argv: Sequence[str]) -> str:
    n = args.clicks
    names = [m.name for m in methods]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Evaluation: M-SAM checkpoints vs the random-walker baseline",
        "",
        f"Generated {now} by `benchmarks/evaluate_default_model.py` on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} CPUs, `--threads {args.threads}`, device `{args.device or 'auto'}`):",
        "",
        "```",
        "python " + " ".join(shlex.quote(a) for a in argv),
        "```",
        "",
    ]
    if all(m.checkpoint is None for m in methods):
        lines += ["**Baseline only**: no M-SAM checkpoint was given to this run; add "
                  "`--checkpoint NAME=PATH` (see *Running it*) and the walker's runs come from the cache.", ""]
    lines += [
        "## Protocol",
        "",
        f"* The Auto protocol of the widget and the CLI (`napari_msam.evaluation.run_protocol`): {n} simulated "
        "clicks per run; the first is a foreground voxel, each later one a voxel of the error region (false "
        "negative -> positive click, false positive -> negative click). Strategy "
        f"{', '.join('`' + s + '`' for s in args.strategy)}; seeds {', '.join(map(str, args.seeds))} "
        "(the same seed gives every method the same first click; `center` is deterministic and runs once).",
        f"* {patients_label(args.patients)}: {', '.join(args.patients)}; modalities "
        f"{', '.join(MODALITIES[m] for m in args.modalities)}. Images read with `napari_msam.io.read_volume` "
        "(reoriented to S,P,L, the reader the training used), modality `ct` / `mr`.",
        "* Dice@k: mean over cases of the per-case mean over seeds, ± the standard deviation over cases "
        "(ddof 1; for the single sample case, over its seeds). After a perfect segmentation the last Dice "
        "carries forward.",
        f"* NoC@t: mean number of clicks to reach Dice ≥ t %, over all runs; a run that never reaches it "
        f"counts as {n} (the count of such runs is given as ✗).",
        "* s/click: mean wall-clock seconds of `add_click` over all clicks; for M-SAM the first click of an "
        "ROI includes the image encoding (s 1st click). Timings were taken on a shared, loaded CPU machine: "
        "compare methods within one run only.",
        f"* Random walker (`napari_msam.baselines.RandomWalkerSession`, scikit-image, mode `cg_j`): beta "
        f"{args.rw_beta:g}, {args.rw_seed_mm:g} mm seed balls around each click, solved only inside a box of "
        f"{args.rw_margin_mm:g} mm around the clicks whose faces are background seeds, CG tolerance "
        f"{args.rw_tol:g}"
        + (f", on a grid of {args.rw_grid_mm:g} mm blocks (in-plane 2 x 2 block means of the 0.98 mm voxels; "
           "the 3.3 mm axis kept), its labels repeated back onto the full grid for Dice. Why: on the native "
           "grid a click costs up to ~20 s (one thread; STS_003 CT), too slow for 3 seeds x 14 cases. Checked "
           "on the 8 smallest cases (STS_003/008/018/024 CT+MR, seed 0, same first click): native grid Dice@5 "
           "0.657, Dice@10 0.658, 3.7 s/click; 2 mm grid Dice@5 0.703, Dice@10 0.727, 0.7 s/click. The coarse "
           "walker is, if anything, the stronger baseline (block means smooth the noise), so the comparison "
           "does not flatter M-SAM (`--rw-grid-mm 0` runs the native grid)"
           if args.rw_grid_mm > 0 else ", on the native grid")
        + ". The box already spans nearly the whole volume: the IBSI crops end 5 cm around the tumour.",
        "* Data notes: every volume is an IBSI crop 5 cm around the tumour (so the tumour is always near "
        "the centre of the field of view), and the CT and MR_T1 masks of a patient are the same contour "
        "(same spacing and voxel count), so the two modalities of a patient are not independent samples.",
    ]
    if any(m.info.get("edge_refine") for m in methods):
        lines.append(
            "* `edge_refine auto` / `on` (the Session's edge refinement, docs/session.md, parameters "
            f"{dataclasses.asdict(EdgeRefiner())}): the mask scored after every click, and the one the next "
            "click is drawn against, is the model's mask snapped to image edges by a random walker seeded with "
            "the model's sure inside / outside and the clicks; `auto` refines MR only (CT runs are the model's "
            "own mask). Without the option a method is the network alone (`edge_refine off`).")
    lines += [
        "",
        "## Methods",
        "",
        "| method | source | details |",
        "|---|---|---|",
    ]
    for m in methods:
        det = ", ".join(f"{k} {v}" for k, v in m.info.items() if k not in ("preprocess", "sha256"))
        if "sha256" in m.info:
            det = f"sha256 {m.info['sha256'][:16]}, " + det
        lines.append(f"| `{m.name}` | `{m.source}` | {det} |")
    for label, patients in ((patients_label(args.patients), list(args.patients)),
                            (f"Sample case {SAMPLE_PATIENT} (not in training)", [SAMPLE_PATIENT])):
        sel = [r for r in records if r["patient"] in patients]
        if not sel:
            continue
        lines += ["", f"## {label}", ""]
        for mod in args.modalities:
            rs = [r for r in sel if r["modality"] == mod]
            if not rs:
                continue
            for st in args.strategy:
                rss = [r for r in rs if r["strategy"] == st]
                summ = {nm: summarize([r for r in rss if r["method"] == nm], n) for nm in names
                        if any(r["method"] == nm for r in rss)}
                if not summ:
                    continue
                lines += [f"### {MODALITIES[mod]} — strategy `{st}`", ""]
                lines += table(summ, n)
                if RW_NAME in summ:
                    for nm, s in summ.items():
                        if nm == RW_NAME:
                            continue
                        ok, behind = ahead(s, summ[RW_NAME], n)
                        extra = "" if ok else f" (not at click {', '.join(map(str, behind))})"
                        lines += ["", f"Is `{nm}` ahead of the random walker at every click count from 3 on? "
                                      f"**{'yes' if ok else 'no'}**{extra}"]
                lines.append("")
                lines += ["<details><summary>mean Dice after every click" + (", per case" if len(patients) > 1 else "")
                          + "</summary>", ""]
                lines += ["| method | " + " | ".join(str(k) for k in range(1, n + 1)) + " |",
                          "|" + "---|" * (n + 1)]
                for nm, sm in summ.items():
                    lines.append(f"| `{nm}` | " + " | ".join(f"{v:.3f}" for v in sm["mean"]) + " |")
                lines.append("")
                if len(patients) > 1:
                    lines += per_case_table(rss, list(summ), n)
                lines += ["", "</details>", ""]
    if orient:
        lines += ["", "## Orientation check", "",
                  "Axis codes of each image file and after `read_volume` (must be `SPL`; the training data "
                  "loader uses the same reader, so the models see the same axes):", "",
                  "| case | file | read_volume |", "|---|---|---|"]
        for k, (a, b) in sorted(orient.items()):
            lines.append(f"| {k} | {a} | {b}{'' if b == 'SPL' else ' **(!)**'} |")
    lines += ["", "## Running it", "",
              "```",
              "# the baseline alone (cached under runs/eval/cache/rw-*; independent of the training)",
              "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evaluate_default_model.py --strategy random center",
              "# the trained checkpoints (the walker's runs come from the cache)",
              "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evaluate_default_model.py --strategy random center \\",
              "    --checkpoint msam-small=runs/default/best.safetensors \\",
              "    --checkpoint sam-med3d-small=runs/ablation/best.safetensors",
              "# smoke test: 1 seed, 2 patients, report in runs/eval/evaluation_quick.md",
              "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evaluate_default_model.py --quick \\",
              "    --checkpoint m=runs/default/last.safetensors",
              "```",
              "",
              "Each run (method, case, modality, strategy, seed) is cached as JSON under "
              f"`{_rel(args.cache)}/<key>/`, the key being the first 16 hex digits of the checkpoint's SHA-256 "
              "(the evaluated file is copied to `runs/eval/snapshots/` first, as training may replace it) or "
              "a hash of the walker's parameters; an interrupted run continues, `--recompute` ignores the cache, "
              "`--jobs N` runs N processes. "
              f"Per-click rows of every run: `{_rel(args.csv)}`.", ""]
    return "\n".join(lines)


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


# ------------------------------------------------------------------------------------------ main
def _named_option(methods: Sequence[Method], spec: str, flag: str, parse, valid, value: str, rule: str):
    """``NAME=VALUE`` of a per-checkpoint Session option -> (the method of --checkpoint NAME, the value)."""
    name, _, raw = spec.partition("=")
    match = [m for m in methods if m.name == name and m.checkpoint is not None]
    try:
        parsed = parse(raw)
    except ValueError:
        parsed = None
    if not match or parsed is None or not valid(parsed):
        raise EvalError(f"{flag} {spec!r}: expected NAME={value} with a --checkpoint NAME and {rule}")
    return match[0], parsed


def parse_checkpoint(spec: str) -> tuple[str, Path]:
    if "=" not in spec:
        raise EvalError(f"--checkpoint expects NAME=PATH, got {spec!r}")
    name, path = spec.split("=", 1)
    name = name.strip()
    if not name or name == RW_NAME or any(ch in name for ch in "/\\,|`"):
        raise EvalError(f"--checkpoint: bad method name {name!r}")
    return name, Path(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="an M-SAM checkpoint to evaluate (repeatable)")
    p.add_argument("--max-zoom", action="append", default=[], metavar="NAME=Z",
                   help="run checkpoint NAME with the Session's max_zoom=Z instead of what it was trained with "
                        "(1: never zoom out); cached separately")
    p.add_argument("--tta", action="append", default=[], metavar="NAME=K",
                   help=f"run checkpoint NAME with K test-time flip views (Session tta=K, 1-{MAX_TTA}); cached separately")
    p.add_argument("--edge-refine", action="append", default=[], metavar="NAME=MODE",
                   help="run checkpoint NAME with the Session's edge_refine=MODE (auto: MR only, on, off); "
                        "default here: off (the network alone); cached separately")
    p.add_argument("--no-random-walker", action="store_true", help="skip the random-walker baseline")
    p.add_argument("--data", type=Path, default=Path("/work/shared/data/sts"))
    p.add_argument("--patients", nargs="+", default=list(VAL_PATIENTS))
    p.add_argument("--no-sample", action="store_true", help=f"do not also evaluate the sample case {SAMPLE_PATIENT}")
    p.add_argument("--modalities", nargs="+", default=["ct", "mr"], choices=sorted(MODALITIES))
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--strategy", nargs="+", default=["random"], choices=["random", "center"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu / cuda / auto (default cpu)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (each with --threads)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, the first 2 patients, no sample case")
    p.add_argument("--recompute", action="store_true", help="ignore the cache")
    p.add_argument("--cache", type=Path, default=ROOT / "runs/eval/cache")
    p.add_argument("--csv", type=Path, default=None, help="default runs/eval/results.csv (results_quick.csv)")
    p.add_argument("--markdown", type=Path, default=None,
                   help="default docs/evaluation.md (runs/eval/evaluation_quick.md with --quick)")
    p.add_argument("--rw-beta", type=float, default=4000.0)
    p.add_argument("--rw-margin-mm", type=float, default=60.0)
    p.add_argument("--rw-seed-mm", type=float, default=8.0)
    p.add_argument("--rw-grid-mm", type=float, default=2.0,
                   help="solve the walker on blocks of about this size (0: native grid)")
    p.add_argument("--rw-mode", default="cg_j", help="scikit-image random_walker mode (cg_mg needs pyamg)")
    p.add_argument("--rw-tol", type=float, default=1e-3,
                   help="CG tolerance (1e-3: 2.5x faster than the baseline's 1e-4, Dice within 0.003)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.clicks < 1:
            raise EvalError("--clicks must be >= 1")
        if args.threads < 1 or args.jobs < 1:
            raise EvalError("--threads and --jobs must be >= 1")
        if args.device == "auto":
            args.device = None
        if args.quick:
            args.seeds = args.seeds[:1]
            args.patients = args.patients[:2]
            args.no_sample = True
        args.csv = args.csv or ROOT / ("runs/eval/results_quick.csv" if args.quick else "runs/eval/results.csv")
        args.markdown = args.markdown or (ROOT / "runs/eval/evaluation_quick.md" if args.quick
                                          else ROOT / "docs/evaluation.md")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        methods: list[Method] = []
        if not args.no_random_walker:
            methods.append(rw_method(args))
        seen = {RW_NAME}
        for spec in args.checkpoint:
            name, path = parse_checkpoint(spec)
            if name in seen:
                raise EvalError(f"--checkpoint: the name {name!r} is used twice")
            seen.add(name)
            methods.append(snapshot_checkpoint(name, path, args.cache.parent / "snapshots"))
        for spec in args.max_zoom:
            m, zoom = _named_option(methods, spec, "--max-zoom", float, lambda z: z >= 1.0, "Z", "Z >= 1")
            m.key += f"-z{zoom:g}"
            m.info["max_zoom"] = zoom
        for spec in args.tta:
            m, k = _named_option(methods, spec, "--tta", int, lambda k: 1 <= k <= MAX_TTA, "K", f"K in 1-{MAX_TTA}")
            if k > 1:
                m.key += f"-tta{k}"
                m.info["tta"] = k
        for spec in args.edge_refine:
            m, mode = _named_option(methods, spec, "--edge-refine", str, lambda v: v in EDGE_MODES, "MODE",
                                    f"MODE in {'/'.join(EDGE_MODES)}")
            if mode != "off":  # the key names the refiner's parameters too: changing a default re-runs
                params = json.dumps(dataclasses.asdict(EdgeRefiner()), sort_keys=True)
                m.key += f"-edges-{mode}-{hashlib.sha256(params.encode()).hexdigest()[:8]}"
                m.info["edge_refine"] = mode
        if not methods:
            raise EvalError("nothing to evaluate: give --checkpoint NAME=PATH or drop --no-random-walker")
        patients = list(args.patients) + ([] if args.no_sample or SAMPLE_PATIENT in args.patients
                                          else [SAMPLE_PATIENT])
        cases = [case_files(args.data, p, m) for p in patients for m in args.modalities]
        orient = {f"{c.patient} {MODALITIES[c.modality]}": orientation_codes(c) for c in cases}
        bad = {k: v for k, v in orient.items() if v[1] != "SPL"}
        if bad:
            raise EvalError(f"read_volume did not give S,P,L axes for {bad}")
        records = run_all(methods, cases, args.strategy, args.seeds, args)
        write_csv(args.csv, records)
        text = report(records, methods, args, orient, ["benchmarks/evaluate_default_model.py", *argv])
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.markdown, "w") as fh:
            fh.write(text)
        print(text)
        print(f"\nwrote {args.csv} and {args.markdown}")
    except MSAMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
