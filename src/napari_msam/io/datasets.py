"""The one dataset finder: image/label pairs of a data folder, for evaluation and training alike.

Layouts, checked in this order:

* MSD / nnU-Net: ``imagesTr/X[_0000].ext`` with ``labelsTr/X.ext`` (modality from ``dataset.json``);
* in any folder at any depth: ``P_image*.ext`` with ``P_mask.ext``, ``X.ext`` with ``X_label.ext``,
  or ``X.ext`` with ``X_mask.ext``.

A pair below the root is named ``sub/.../X`` and belongs to patient ``sub`` (the first folder), so a
per-patient layout (``STS_024/MR_T1_image.nii.gz``) never puts one patient on both sides of a split.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .. import modality as _modality
from ..errors import MSAMError
from .volume import DICOM_SUFFIXES, READ_SUFFIXES, file_stem, file_suffix

#: file types a dataset pair may use (DICOM series are folders, not pairs of files)
PAIR_SUFFIXES = tuple(s for s in READ_SUFFIXES if s not in DICOM_SUFFIXES)
_LABEL_ENDINGS = ("_label", "_mask")


@dataclass(frozen=True)
class DatasetPair:
    """One image and its label file (``label`` is None for an MSD image without one)."""

    name: str
    patient: str
    image: Path
    label: Path | None
    kind: str  # "ct", "mr", "pet" or "other" (modality.guess on dataset.json or the image name)


def _volumes(folder: Path) -> dict[str, Path]:
    """``stem -> path`` of the volume files directly in ``folder`` (hidden files skipped)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and file_suffix(p) in PAIR_SUFFIXES:
            out.setdefault(file_stem(p), p)
    return out


def _pairs_in_folder(folder: Path) -> list[tuple[str, Path, Path]]:
    by_stem = _volumes(folder)
    pairs: list[tuple[str, Path, Path]] = []
    used: set[str] = set()
    for stem in sorted(by_stem):
        if stem.endswith(_LABEL_ENDINGS):
            continue
        found = None
        starts = [m.start() for m in re.finditer("_image", stem)]
        for start in reversed(starts):  # longest prefix first: P_image_x_image -> P_image_x + _mask
            if f"{stem[:start]}_mask" in by_stem:
                found = (stem[:start], f"{stem[:start]}_mask")
                break
        if found is None:
            for ending in _LABEL_ENDINGS:
                if stem + ending in by_stem:
                    found = (stem, stem + ending)
                    break
        if found is None or found[1] in used:
            continue
        used.add(found[1])
        pairs.append((found[0], by_stem[stem], by_stem[found[1]]))
    return pairs


def _msd_kind(root: Path) -> str | None:
    ds = root / "dataset.json"
    if not ds.is_file():
        return None
    try:
        meta = json.loads(ds.read_text())
        mods = meta.get("modality") or meta.get("channel_names") or {}
        first = str(next(iter(mods.values()), "")) if isinstance(mods, dict) else ""
    except (OSError, ValueError, AttributeError):
        return None
    return _modality.guess(first).kind if first else None


def _msd_pairs(root: Path) -> list[DatasetPair]:
    kind = _msd_kind(root) or "other"
    labels = _volumes(root / "labelsTr")
    pairs = []
    for stem, image in _volumes(root / "imagesTr").items():
        key = stem if stem in labels else re.sub(r"_\d{4}$", "", stem)
        pairs.append(DatasetPair(key, key, image, labels.get(key), kind))
    return pairs


def find_pairs(data_dir: str | Path) -> list[DatasetPair]:
    """Every image/label pair under ``data_dir`` (see the module docstring for the layouts)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise MSAMError(f"{root}: data folder not found (not a folder)")
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        pairs = _msd_pairs(root)
    else:
        folders = [root] + sorted(
            p for p in root.rglob("*")
            if p.is_dir() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        pairs = []
        for folder in folders:
            rel = folder.relative_to(root).parts
            for case, image, label in _pairs_in_folder(folder):
                name = "/".join([*rel, case])
                pairs.append(DatasetPair(name, rel[0] if rel else case, image, label,
                                         _modality.guess(image.name).kind))
    if not pairs:
        raise MSAMError(
            f"no image/label pairs found in {root} (expected imagesTr/+labelsTr/, X + X_label, "
            "or P_image* + P_mask files, directly or in one sub-folder per patient)"
        )
    return pairs
