"""Pack a training set small enough to travel with the working tree to a lent GPU machine.

``python -m napari_msam.training.pack OUT_DIR`` reads the STS patients once (here, where nibabel and the
shared data are), resamples every case to the model spacing, keeps the tumour box plus the margin the
trainer's widest crop needs, quantises the image to 8 bits (offset and scale stored) and compresses it
with LZMA. The result is ``OUT_DIR/cases.npz`` + ``OUT_DIR/manifest.json`` (spacing, cases, shapes,
SHA-256), and :func:`load_packed` turns it back into in-memory cases with numpy and the standard library
alone, because the GPU machine has neither nibabel nor the data.

Why 8 bits and LZMA: the working tree that travels is capped at 64 MiB and the tracked files already take
most of it (:func:`tree_budget` says how much is left, docs/gpu-burst.md how big the set is); 8-bit steps
(8 HU inside the CT window, under 1 % of the range for MR) are far below the noise after the per-ROI
z-score.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_msam.errors import MSAMError

__all__ = ["PackError", "PackedSet", "pack_cases", "write_packed", "load_packed", "tree_budget", "main"]

FORMAT = "napari-msam-packed"
VERSION = 1
DATA_FILE = "cases.npz"
MANIFEST = "manifest.json"
TREE_LIMIT = 64 * 2**20  # what the device tool carries: tracked + untracked + carried files
#: The split every training recipe of the default model uses (scripts/train_default_model.sh,
#: benchmarks/evaluate_default_model.py): STS_024 is the shipped sample, never trained on.
VAL_PATIENTS = ("STS_003", "STS_008", "STS_013", "STS_018", "STS_022", "STS_027")
EXCLUDE_PATIENTS = ("STS_024",)


class PackError(MSAMError):
    """A packed set that cannot be written or read (missing, corrupt, over budget)."""


@dataclass
class PackedSet:
    """A loaded packed set: in-memory cases (``CaseSpec`` with arrays) and what the manifest says."""

    cases: list  # list[CaseSpec]
    manifest: dict

    @property
    def val_patients(self) -> list[str]:
        return list(self.manifest.get("val_patients") or [])

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.manifest["spacing_mm"])  # type: ignore[return-value]


def _quantise(image: np.ndarray, modality: str, ct_window, bits: int) -> tuple[np.ndarray, float, float]:
    """Image -> (unsigned ints, offset, scale); value = offset + scale * q. CT keeps only its window."""
    if modality == "ct" and ct_window is not None:
        lo, hi = float(ct_window[0]), float(ct_window[1])
    else:
        lo, hi = min(0.0, float(image.min())), float(image.max())
    levels = 2**bits - 1
    scale = (hi - lo) / levels if hi > lo else 1.0
    q = np.rint((np.clip(image, lo, hi) - lo) / scale)
    return q.astype(np.uint8 if bits == 8 else np.uint16), lo, scale


def pack_cases(prepared: Sequence, *, val_patients: Sequence[str], ct_window, bits: int = 8,
               preset: int = 6) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Quantise + compress prepared cases: (arrays for the npz, the manifest's case entries)."""
    if bits not in (8, 16):
        raise PackError(f"bits must be 8 or 16, got {bits}")
    arrays: dict[str, np.ndarray] = {}
    entries: list[dict] = []
    val = set(val_patients)
    for i, pc in enumerate(prepared):
        key = f"c{i:03d}"
        q, offset, scale = _quantise(np.asarray(pc.image, dtype=np.float32), pc.modality, ct_window, bits)
        arrays[f"{key}_image"] = np.frombuffer(lzma.compress(q.tobytes(), preset=preset), dtype=np.uint8)
        label_bits = np.packbits(np.asarray(pc.label, dtype=bool).ravel()).tobytes()
        arrays[f"{key}_label"] = np.frombuffer(lzma.compress(label_bits, preset=preset), dtype=np.uint8)
        entries.append({
            "key": key, "case_id": pc.case_id, "patient_id": pc.patient_id, "modality": pc.modality,
            "split": "val" if pc.patient_id in val else "train", "shape": [int(n) for n in q.shape],
            "dtype": str(q.dtype), "offset": offset, "scale": scale, "fg_voxels": int(pc.fg_voxels),
        })
    return arrays, entries


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_packed(out_dir: str | Path, arrays: dict[str, np.ndarray], entries: list[dict], info: dict) -> Path:
    """Write ``cases.npz`` then ``manifest.json`` (atomically; the manifest names the npz's SHA-256)."""
    from napari_msam.atomic import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # the images are LZMA streams already: deflate would gain nothing
    with atomic_write(out / DATA_FILE, "wb") as fh:
        fh.write(buf.getvalue())
    manifest = {"format": FORMAT, "version": VERSION, **info, "file": DATA_FILE,
                "bytes": (out / DATA_FILE).stat().st_size, "sha256": _sha256(out / DATA_FILE),
                "cases": entries}
    with atomic_write(out / MANIFEST, "w") as fh:
        json.dump(manifest, fh, indent=1)
    return out / MANIFEST


def load_packed(folder: str | Path, *, verify: bool = True) -> PackedSet:
    """The packed cases as in-memory ``CaseSpec`` s at the packed spacing (numpy + stdlib only)."""
    from napari_msam.training.data import CaseSpec

    root = Path(folder)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise PackError(f"no packed training set in {root} ({MANIFEST} missing): run "
                        "`python -m napari_msam.training.pack DIR` first")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise PackError(f"cannot read {mpath}: {exc}") from None
    if manifest.get("format") != FORMAT or int(manifest.get("version", 0)) > VERSION:
        raise PackError(f"{mpath} is not a {FORMAT} manifest of version <= {VERSION}")
    data = root / manifest.get("file", DATA_FILE)
    if not data.is_file():
        raise PackError(f"{data} is missing (the manifest names it)")
    if verify and _sha256(data) != manifest.get("sha256"):
        raise PackError(f"{data} does not match the SHA-256 in {mpath}: the copy is damaged, pack again")
    spacing = tuple(float(s) for s in manifest["spacing_mm"])
    cases = []
    try:
        with np.load(data, allow_pickle=False) as z:
            for e in manifest["cases"]:
                shape = tuple(int(n) for n in e["shape"])
                q = np.frombuffer(lzma.decompress(z[f"{e['key']}_image"].tobytes()), dtype=e["dtype"])
                image = np.float32(e["offset"]) + np.float32(e["scale"]) * q.astype(np.float32)
                image = image.reshape(shape)
                bits = np.frombuffer(lzma.decompress(z[f"{e['key']}_label"].tobytes()), dtype=np.uint8)
                label = np.unpackbits(bits, count=math.prod(shape)).astype(bool).reshape(shape)
                cases.append(CaseSpec(e["case_id"], e["patient_id"], e["modality"], image=image, label=label,
                                      spacing=spacing))  # type: ignore[arg-type]
    except (KeyError, ValueError, OSError, lzma.LZMAError) as exc:
        raise PackError(f"{data} is damaged or does not match its manifest: {exc}") from None
    return PackedSet(cases, manifest)


def tree_budget(folder: str | Path) -> dict | None:
    """Bytes the device tool would carry from the checkout holding ``folder`` (None outside git):
    tracked files plus untracked, not ignored ones; ``left`` is what remains of the 64 MiB."""
    try:
        top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        out = subprocess.run(["git", "-C", top, "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in {n for n in out.decode(errors="replace").split("\0") if n}:
        p = Path(top) / name
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return {"root": top, "tree_bytes": total, "limit_bytes": TREE_LIMIT, "left_bytes": TREE_LIMIT - total}


def _is_ignored(path: Path) -> bool:
    res = subprocess.run(["git", "-C", str(path.parent), "check-ignore", "-q", str(path)],
                         capture_output=True)
    return res.returncode == 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m napari_msam.training.pack",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder, inside the checkout and git-ignored (e.g. packed)")
    p.add_argument("--data", type=Path, default=Path("../shared/data/sts"),
                   help="per-patient data folder (default ../shared/data/sts, as in "
                        "scripts/train_default_model.sh)")
    p.add_argument("--checkpoint", default=None,
                   help="take spacing, CT window, input size and zoom range from this checkpoint "
                        "(default: the shipped default model)")
    p.add_argument("--modalities", nargs="+", default=["ct", "mr"], choices=["ct", "mr", "pet"],
                   help="default ct mr: PET as well does not fit the budget at 8 bits")
    p.add_argument("--val-patients", nargs="*", default=list(VAL_PATIENTS))
    p.add_argument("--exclude-patients", nargs="*", default=list(EXCLUDE_PATIENTS))
    p.add_argument("--patients", nargs="*", default=None, help="only these patients (a quick subset)")
    p.add_argument("--bits", type=int, choices=[8, 16], default=8)
    p.add_argument("--max-mib", type=float, default=12.0, help="refuse a set larger than this")
    return p


def _model_geometry(checkpoint: str | None):
    """(PreprocessConfig, img_size, max zoom) of the model the set is packed for."""
    from napari_msam.model.roi_zoom import RoiZoom
    from napari_msam.model.weights import load_checkpoint

    if checkpoint is None:
        from napari_msam.default_model import default_checkpoint_path

        checkpoint = str(default_checkpoint_path())
    loaded = load_checkpoint(checkpoint)
    zoom = RoiZoom.from_metadata(loaded.metadata)
    return loaded.preprocess, int(loaded.config.img_size), float(zoom.max) if zoom is not None else 1.0


def main(argv: Sequence[str] | None = None) -> int:
    from napari_msam.model.weights import CheckpointError
    from napari_msam.training.data import TrainingDataError, discover_cases, prepare_cases

    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        preprocess, img_size, max_zoom = _model_geometry(args.checkpoint)
        specs = discover_cases(args.data, args.modalities)
        specs = [c for c in specs if c.patient_id not in set(args.exclude_patients)]
        if args.patients:
            specs = [c for c in specs if c.patient_id in set(args.patients)]
        if not specs:
            raise PackError("no cases left to pack after --exclude-patients / --patients")
        jitter = img_size // 8  # the trainer's default crop jitter
        prepared = prepare_cases(specs, preprocess, img_size=img_size, max_jitter=jitter, max_zoom=max_zoom,
                                 progress=lambda i, n, cid: print(f"  {i}/{n} {cid}", flush=True))
        arrays, entries = pack_cases(prepared, val_patients=args.val_patients, ct_window=preprocess.ct_window,
                                     bits=args.bits)
        size = sum(a.nbytes for a in arrays.values())
        if size > args.max_mib * 2**20:
            raise PackError(f"the packed set would take {size / 2**20:.1f} MiB, over --max-mib "
                            f"{args.max_mib}: "
                            "pack fewer modalities or patients")
        info = {"spacing_mm": list(preprocess.spacing_mm), "ct_window": preprocess.ct_window and list(
                preprocess.ct_window), "axis_order": preprocess.axis_order, "img_size": img_size,
                "max_zoom": max_zoom, "jitter": jitter,
                "margin": math.ceil(img_size * max_zoom / 2) + jitter + 2,
                "bits": args.bits, "modalities": args.modalities, "val_patients": args.val_patients,
                "exclude_patients": args.exclude_patients, "source": str(args.data),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_packed(args.out, arrays, entries, info)
    except (TrainingDataError, MSAMError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    n_val = sum(e["split"] == "val" for e in entries)
    packed = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"packed {len(entries)} cases ({len(entries) - n_val} train, {n_val} val) at "
          f"{preprocess.spacing_mm[0]:g} mm into {out}: {packed / 2**20:.2f} MiB in "
          f"{time.perf_counter() - t0:.0f} s")
    budget = tree_budget(out)
    if budget is not None:
        left = budget["left_bytes"]
        ignored = _is_ignored(out)
        print(f"device tree budget: checkout {budget['tree_bytes'] / 2**20:.2f} MiB of 64 MiB "
              f"({'without' if ignored else 'WITH'} this set), {left / 2**20:.2f} MiB left"
              + (f" -> {(left - packed) / 2**20:.2f} MiB after carrying it" if ignored else ""))
        if (left - packed if ignored else left) < 0:
            print("error: the working tree plus this set exceed what the device tool carries",
                  file=sys.stderr)
            return 2
        if not ignored:
            print(f"warning: {out} is not git-ignored: it travels as an untracked file", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
