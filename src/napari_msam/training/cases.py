"""Training cases: discovery, validation, resampling to the model spacing once, an ``.npz`` cache, the split.

Qt-free. Every case is read once, reoriented by ``io.read_volume``, windowed/resampled to the model spacing
and kept in memory (optionally also in an ``.npz`` cache), so an epoch only crops, flips and normalises.
The crop is normalised with the same function the inference preprocessing uses, because a model only
works on inputs distributed like its training inputs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_msam import modality as _modality
from napari_msam.errors import MSAMError

__all__ = [
    "TrainingDataError",
    "CaseSpec",
    "PreparedCase",
    "discover_cases",
    "array_case",
    "validate_cases",
    "prepare_cases",
    "split_by_patient",
    "resample_to_spacing",
    "preprocess_normalization",
    "guess_modality",
    "MODALITY_FOR_PREPROCESS",
    "NormalizationView",
]


class TrainingDataError(MSAMError):
    """Raised with ALL problems found in the training inputs, one per line."""

    def __init__(self, problems: Sequence[str] | str):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} with the training data:"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class CaseSpec:
    """One image/label pair, on disk (paths) or in memory (arrays)."""

    case_id: str
    patient_id: str
    modality: str = "other"  # "ct", "mr", "pet" or "other"
    image_path: Path | None = None
    label_path: Path | None = None
    image: np.ndarray | None = None
    label: np.ndarray | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # only for in-memory arrays


@dataclass
class PreparedCase:
    """A case windowed and resampled to the model spacing, cropped to the tumour plus a margin."""

    case_id: str
    patient_id: str
    modality: str
    image: np.ndarray  # float32, model spacing
    label: np.ndarray  # bool, model spacing
    pad_value: float = 0.0  # unused: prepare_roi pads with zeros, as at inference
    fg_voxels: int = 0
    centre: tuple[int, int, int] = field(default=(0, 0, 0))  # label bbox centre


# ----------------------------------------------------------------------------- discovery


def guess_modality(name: str) -> str:
    """A case's kind ("ct", "mr", "pet" or "other") from its file or channel name, by the one rule."""
    return _modality.guess(name).kind


def discover_cases(data_dir: str | Path, modalities: Iterable[str] | None = None) -> list[CaseSpec]:
    """The cases of one data folder, found by the one dataset finder (:func:`napari_msam.io.find_pairs`).

    In the per-patient layout (STS: ``STS_0xx/{CT,MR_T1}_image*.nii.gz`` + ``*_mask.nii.gz``) the sub-folder
    name is the patient id, so a split never puts one patient's CT and MR on both sides.
    """
    from napari_msam.io import find_pairs

    try:
        pairs = find_pairs(data_dir)
    except MSAMError as exc:
        raise TrainingDataError(str(exc)) from exc
    cases = [CaseSpec(p.name, p.patient, p.kind, p.image, p.label) for p in pairs]
    if modalities is not None:
        wanted = {m.lower() for m in modalities}
        cases = [c for c in cases if c.modality in wanted]
        if not cases:
            raise TrainingDataError(f"no image/label pairs with modality in {sorted(wanted)} found in {data_dir}")
    return cases


def array_case(
    image: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    modality: str = "other",
    case_id: str = "layer",
    patient_id: str | None = None,
) -> CaseSpec:
    """A case from in-memory arrays (the widget's image + Labels layers)."""
    return CaseSpec(
        case_id,
        patient_id or case_id,
        modality,
        image=np.asarray(image),
        label=np.asarray(label),
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------- loading + validation


def _read(path: Path, is_label: bool = False):
    from napari_msam.io import read_volume

    return read_volume(path, is_label=is_label)


def _load_arrays(case: CaseSpec) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], list[str]]:
    """Read one case; returns (image, label, spacing, problems)."""
    problems: list[str] = []
    if case.image is not None or case.label is not None:
        img, lab, spacing = case.image, case.label, case.spacing
        if img is None or lab is None:
            return None, None, spacing, [f"{case.case_id}: image or label array missing"]  # type: ignore[return-value]
        img = np.asarray(img)
        lab = np.asarray(lab)
        if img.ndim != 3 or lab.ndim != 3:
            problems.append(f"{case.case_id}: image {img.shape} and label {lab.shape} must both be 3-D")
        elif img.shape != lab.shape:
            problems.append(f"{case.case_id}: image shape {img.shape} != label shape {lab.shape}")
        return img, lab, spacing, problems
    if case.label_path is None:
        return None, None, (1.0, 1.0, 1.0), [f"{case.case_id}: no label file for {case.image_path}"]  # type: ignore[return-value]
    vols = []
    for what, p in (("image", case.image_path), ("label", case.label_path)):
        try:
            vols.append(_read(Path(p), is_label=what == "label"))  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - any reader failure is reported, not raised
            problems.append(f"{case.case_id}: cannot read {what} {p}: {exc}")
            vols.append(None)
    if problems:
        return None, None, (1.0, 1.0, 1.0), problems  # type: ignore[return-value]
    vi, vl = vols
    img = np.asarray(vi.data)
    lab = np.asarray(vl.data)
    if img.ndim == 4 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim != 3:
        problems.append(f"{case.case_id}: image {case.image_path} is {img.ndim}-D, expected 3-D")
    if lab.ndim != 3:
        problems.append(f"{case.case_id}: label {case.label_path} is {lab.ndim}-D, expected 3-D")
    if not problems and img.shape != lab.shape:
        problems.append(f"{case.case_id}: image shape {img.shape} != label shape {lab.shape} (grid mismatch)")
    ai = getattr(vi, "affine", None)
    al = getattr(vl, "affine", None)
    if not problems and ai is not None and al is not None and not np.allclose(ai, al, atol=1e-2):
        problems.append(f"{case.case_id}: image and label affines differ (grid mismatch)")
    return img, lab, tuple(float(s) for s in vi.spacing), problems  # type: ignore[return-value]


def _binary_label(case_id: str, lab: np.ndarray, label_id: int | None) -> tuple[np.ndarray | None, str | None]:
    if label_id is None:
        m = lab != 0
        if not m.any():
            return None, f"{case_id}: label is empty"
        return m, None
    m = lab == label_id
    if not m.any():
        present = np.unique(lab)
        present = present[present != 0][:10]
        return None, f"{case_id}: label id {label_id} not present (ids present: {present.tolist()})"
    return m, None


def validate_cases(cases: Sequence[CaseSpec], label_id: int | None = None) -> None:
    """Read every case and raise ONE TrainingDataError listing every problem (or return None)."""
    problems: list[str] = []
    for c in cases:
        img, lab, _, probs = _load_arrays(c)
        problems += probs
        if probs:
            continue
        _, p = _binary_label(c.case_id, lab, label_id)
        if p:
            problems.append(p)
        if not np.isfinite(img).all():
            problems.append(f"{c.case_id}: image contains NaN or inf")
    if problems:
        raise TrainingDataError(problems)


# ----------------------------------------------------------------------------- preprocessing
# Training inputs are made by ``preprocess.prepare_roi`` (the very function inference uses: zero padding
# outside the volume, CT window, normalisation statistics over in-volume voxels, model axis order). Each
# case is resampled once to the model spacing, so at train time every ROI is an exact integer crop.

MODALITY_FOR_PREPROCESS = {"ct": "ct", "mr": "mr"}
_NORM_ALIASES = {"zscore": "zscore_roi", "zscore_roi": "zscore_roi"}


def preprocess_normalization(preprocess) -> str:
    """The normalisation name ``preprocess.normalize`` understands for this PreprocessConfig."""
    from napari_msam import preprocess as pp

    name = getattr(preprocess, "normalization", "zscore_positive")
    if name in pp.NORMALIZATIONS:
        return name
    alias = _NORM_ALIASES.get(name)
    if alias in pp.NORMALIZATIONS:
        return alias
    return "zscore" if "zscore" in pp.NORMALIZATIONS and name == "zscore_roi" else name


class NormalizationView:
    """PreprocessConfig view with the normalisation name mapped for ``preprocess.normalize``."""

    def __init__(self, preprocess, normalization: str | None = None):
        self._p = preprocess
        self.normalization = normalization or preprocess_normalization(preprocess)

    def __getattr__(self, name):
        return getattr(self._p, name)


def resample_to_spacing(
    image: np.ndarray, label: np.ndarray, spacing: Sequence[float], target: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Whole case on the model grid: model voxel j of an axis sits at native index j * (target / spacing).

    Trilinear for the image, nearest for the label -- the interpolations ``prepare_roi`` /
    ``prepare_label_roi`` use, so a crop of this is what inference would sample at that place.
    """
    from napari_msam.preprocess import RoiGeometry, sample_image, sample_labels

    step = tuple(float(t) / float(s) for t, s in zip(target, spacing, strict=True))
    out_shape = tuple(max(1, int(np.floor((n - 1) / st + 1e-6)) + 1) for n, st in zip(image.shape, step, strict=True))
    side = max(out_shape)
    geo = RoiGeometry(start=(0.0, 0.0, 0.0), step=step, size=side,  # type: ignore[arg-type]
                      native_shape=tuple(int(n) for n in image.shape))  # type: ignore[arg-type]
    img, _ = sample_image(image, geo)
    lab = sample_labels(np.ascontiguousarray(label, dtype=np.uint8), geo)
    sl = tuple(slice(0, n) for n in out_shape)
    return img[sl].numpy().astype(np.float32), lab[sl].numpy() > 0


def _prepare_one(
    case: CaseSpec, preprocess, label_id: int | None, margin: int
) -> tuple[PreparedCase | None, list[str]]:
    img, lab, spacing, problems = _load_arrays(case)
    if problems:
        return None, problems
    mask, p = _binary_label(case.case_id, lab, label_id)
    if p:
        return None, [p]
    target = tuple(float(s) for s in preprocess.spacing_mm)
    img_r, lab_r = resample_to_spacing(img.astype(np.float32), mask, spacing, target)
    if not lab_r.any():  # tiny object missed by the grid: keep the model voxel nearest its centre of mass
        com = np.argwhere(mask).mean(0) * np.asarray(spacing) / np.asarray(target)
        idx = tuple(int(min(max(round(c), 0), n - 1)) for c, n in zip(com, lab_r.shape, strict=True))
        lab_r[idx] = True
    # keep only the tumour bbox + margin (clipped to the volume, so in-volume/padding stays exact)
    nz = np.argwhere(lab_r)
    lo = np.maximum(nz.min(0) - margin, 0)
    hi = np.minimum(nz.max(0) + 1 + margin, lab_r.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    img_c, lab_c = img_r[sl], lab_r[sl]
    nz = np.argwhere(lab_c)
    centre = tuple(int(round((a + b) / 2)) for a, b in zip(nz.min(0), nz.max(0), strict=True))
    prepared = PreparedCase(
        case.case_id, case.patient_id, case.modality, np.ascontiguousarray(img_c), np.ascontiguousarray(lab_c),
        0.0, int(lab_c.sum()), centre,  # type: ignore[arg-type]
    )
    return prepared, []


def _cache_key(case: CaseSpec, preprocess, label_id, margin) -> str | None:
    if case.image_path is None or case.label_path is None:
        return None
    parts = [str(Path(case.image_path).resolve()), str(Path(case.label_path).resolve()), case.modality]
    for p in (case.image_path, case.label_path):
        st = Path(p).stat()
        parts += [str(st.st_size), str(int(st.st_mtime))]
    parts += [repr(tuple(preprocess.spacing_mm)), repr(getattr(preprocess, "ct_window", None)), repr(label_id),
              str(margin), "v2"]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]


def prepare_cases(
    cases: Sequence[CaseSpec],
    preprocess,
    *,
    label_id: int | None = None,
    img_size: int = 64,
    max_jitter: int = 8,
    max_zoom: float = 1.0,
    cache_dir: str | Path | None = None,
    write_cache: bool = True,
    progress=None,
) -> list[PreparedCase]:
    """Validate + resample every case once; raise ONE TrainingDataError listing every problem.

    Each case keeps its tumour box plus the half-width of the widest (zoomed-out) ROI and the jitter, so a
    crop never sees padding where the scan has tissue.
    """
    from napari_msam.atomic import atomic_write

    margin = math.ceil(img_size * max(1.0, float(max_zoom)) / 2) + max_jitter + 2
    out: list[PreparedCase] = []
    problems: list[str] = []
    cdir = Path(cache_dir) if cache_dir else None
    for i, c in enumerate(cases):
        key = _cache_key(c, preprocess, label_id, margin) if cdir else None
        f = cdir / f"{key}.npz" if (cdir and key) else None
        pc = None
        if f is not None and f.is_file():
            try:
                with np.load(f, allow_pickle=False) as z:
                    pc = PreparedCase(c.case_id, c.patient_id, c.modality, z["image"], z["label"].astype(bool),
                                      float(z["pad"]), int(z["label"].sum()),
                                      tuple(int(v) for v in z["centre"]))  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - truncated zip, bad entry, ...: a cache entry is rebuilt, never fatal
                pc = None
        if pc is None:
            pc, probs = _prepare_one(c, preprocess, label_id, margin)
            problems += probs
            if pc is not None and f is not None and write_cache:
                f.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(f, "wb") as fh:
                    np.savez(fh, image=pc.image, label=pc.label, pad=np.float32(pc.pad_value),
                             centre=np.asarray(pc.centre))
        if pc is not None:
            if not np.isfinite(pc.image).all():
                problems.append(f"{c.case_id}: image contains NaN or inf")
            else:
                out.append(pc)
        if progress is not None:
            progress(i + 1, len(cases), c.case_id)
    if problems:
        raise TrainingDataError(problems)
    return out


# ----------------------------------------------------------------------------- split


def split_by_patient(
    cases: Sequence,
    val_patients: Sequence[str] | None = None,
    val_fraction: float = 0.0,
    seed: int = 2023,
) -> tuple[list, list]:
    """Patient-wise split: an explicit list wins, else ``val_fraction`` of the patients drawn with ``seed``."""
    patients = sorted({c.patient_id for c in cases})
    if val_patients:
        missing = sorted(set(val_patients) - set(patients))
        if missing:
            raise TrainingDataError([f"validation patient {m} not found in the data" for m in missing])
        val = set(val_patients)
    elif val_fraction > 0 and len(patients) > 1:
        n = min(max(1, int(round(val_fraction * len(patients)))), len(patients) - 1)
        rng = np.random.default_rng(seed)
        val = set(rng.choice(patients, size=n, replace=False).tolist())
    else:
        val = set()
    train = [c for c in cases if c.patient_id not in val]
    valid = [c for c in cases if c.patient_id in val]
    if not train:
        raise TrainingDataError("no training cases left after the validation split")
    return train, valid
