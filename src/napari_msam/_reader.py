"""npe2 reader: NIfTI / TIFF / NRRD / MetaImage / DICOM volumes as napari layers with their geometry.

All file logic lives in :mod:`napari_msam.io`; this module only decides Image vs Labels and turns a
:class:`~napari_msam.io.Volume` into a layer-data tuple (spacing -> ``scale``, affine -> ``metadata``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MSAMError
from .io import (
    DICOM_SUFFIXES,
    READ_SUFFIXES,
    DicomSeries,
    Volume,
    can_read,
    file_stem,
    guess_modality,  # noqa: F401  (re-exported: code and tests import it from here)
    is_dicom_file,
    list_dicom_series,
    read_volume,
    volume_modality,
)

# "mask", "label(s)" anywhere; "seg" / "segs" / "segm(entation)" (not "segundo"); "gt", "gtv", "roi" as words.
_LABEL_NAME = re.compile(
    r"(mask|label|seg(?:$|[_\-. 0-9]|m|s(?:$|[_\-. 0-9]))|(?:^|[_\-. ])(?:gt|gtv|roi)(?:[_\-. 0-9]|$))",
    re.IGNORECASE,
)
_MAX_LABEL_VALUES = 64  # more distinct integer values than this look like an image, not a label map

LayerData = tuple[Any, dict[str, Any], str]


def _supported(path: str | Path) -> bool:
    """Cheap: a known suffix, a DICOM file, or a folder holding DICOM files (no pixel data read)."""
    if not isinstance(path, str | Path):
        return False
    try:
        return can_read(path)
    except Exception:  # e.g. permission problems: not ours rather than a crash in napari's reader lookup
        return False


def _is_dicom_path(path: Path) -> bool:
    """A DICOM folder or a DICOM file (by suffix or, for suffix-less files, by its preamble)."""
    if path.is_dir():
        return True
    name = path.name.lower()
    if name.endswith(DICOM_SUFFIXES):
        return True
    return not name.endswith(READ_SUFFIXES) and is_dicom_file(path)


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return :func:`read_layers` when every path is a volume we read, else ``None`` (not ours).

    Folders are claimed only when they hold DICOM files, so other plugins can open other folders.
    """
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(_supported(p) for p in paths):
        return None
    return read_layers


def name_looks_like_label(path: str | Path) -> bool:
    """True for file names such as ``CT_mask.nii.gz``, ``labels.tif``, ``case1_seg.nii``."""
    return bool(_LABEL_NAME.search(file_stem(Path(path))))


def data_looks_like_label(data: np.ndarray) -> bool:
    """Small non-negative integers (a handful of distinct values) look like a label map.

    Checked on a strided subsample first so large images are rejected cheaply.
    """
    if data.dtype.kind not in "biuf" or data.size == 0:
        return False
    step = max(1, int(round((data.size / 200_000) ** (1 / 3))))
    sample = data[::step, ::step, ::step]
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(sample)) or not np.array_equal(sample, np.round(sample)):
            return False
    if sample.min() < 0 or sample.max() > 65535:
        return False
    if np.unique(sample).size > _MAX_LABEL_VALUES:
        return False
    values = np.unique(data)
    if data.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        return False
    return values.size <= _MAX_LABEL_VALUES and values.min() >= 0


def volume_metadata(vol: Volume) -> dict[str, Any]:
    """Geometry the writer needs to put a mask back on the file's own grid."""
    return {
        "affine": np.asarray(vol.affine, dtype=float).copy(),
        "spacing": tuple(float(s) for s in vol.spacing),
        "source_path": vol.path,
        "ornt": np.asarray(vol.ornt, dtype=float).copy(),
        "original_affine": None if vol.original_affine is None else np.asarray(vol.original_affine, float).copy(),
        "original_shape": vol.original_shape,
    }


def volume_to_layer_data(vol: Volume, name: str, as_label: bool | None = None) -> LayerData:
    """A napari layer-data tuple for ``vol`` (Labels when ``as_label`` or when it looks like one)."""
    if as_label is None:
        as_label = vol.is_label or name_looks_like_label(name) or data_looks_like_label(vol.data)
    meta = volume_metadata(vol)
    meta["source_kind"] = "labels" if as_label else "image"  # the writer may replace a labels file, not an image
    kwargs: dict[str, Any] = {"name": name, "scale": tuple(float(s) for s in vol.spacing), "metadata": meta}
    if as_label:
        data = vol.data
        if data.dtype.kind == "f" or data.dtype == bool:
            data = data.astype(np.uint16 if data.size and data.max() > 255 else np.uint8)
        return (data, kwargs, "labels")
    meta["modality"] = volume_modality(vol, name)  # DICOM says; else guess
    data = vol.data
    if data.size:
        lo, hi = float(np.min(data)), float(np.max(data))
        if hi > lo:
            kwargs["contrast_limits"] = _default_contrast(data, meta["modality"], lo, hi)
    kwargs["colormap"] = "gray"
    return (data, kwargs, "image")


def _default_contrast(data: np.ndarray, modality: str, lo: float, hi: float) -> list[float]:
    """CT: soft-tissue window; otherwise the 0.5-99.5 percentiles (robust to a few bright voxels)."""
    if modality == "ct":
        return [max(lo, -160.0), min(hi, 240.0)] if min(hi, 240.0) > max(lo, -160.0) else [lo, hi]
    step = max(1, int(round((data.size / 200_000) ** (1 / 3))))
    sample = np.asarray(data[::step, ::step, ::step], dtype=np.float32)
    p_lo, p_hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    return [p_lo, p_hi] if p_hi > p_lo else [lo, hi]


def _read(p: str | Path, **kwargs: Any) -> Volume:
    try:
        return read_volume(p, **kwargs)
    except MSAMError:
        raise
    except Exception as exc:  # keep napari's error dialog to one readable line
        raise MSAMError(f"{p}: cannot open ({type(exc).__name__}: {exc})") from exc


def _dicom_layers(folder: Path, files: list[Path] | None) -> list[LayerData]:
    """One layer per DICOM series: of the whole folder (``files=None``) or of the series ``files`` belong to.

    Always Image layers: a DICOM image series is an image (segmentations are separate SEG objects), even
    when its values are few. ``files`` comes from napari's "Open Files as Stack" (a list of ``.dcm`` paths):
    each series they belong to is read once, not once per file.
    """
    if files is None:
        return [volume_to_layer_data(_read(folder), folder.name, as_label=False)]
    if len(files) == 1:
        return [volume_to_layer_data(_read(files[0]), folder.name, as_label=False)]
    series = list_dicom_series(folder)
    owner = {f.resolve(): s for s in series for f in s.files}
    chosen: dict[str, DicomSeries] = {}
    for f in files:
        s = owner.get(f.resolve())
        if s is None:
            raise MSAMError(f"{f}: not an image of any DICOM series in {folder}")
        chosen.setdefault(s.uid, s)
    layers = []
    for s in chosen.values():
        name = folder.name if len(chosen) == 1 else f"{folder.name} {s.description or s.uid[-8:]}"
        layers.append(volume_to_layer_data(_read(folder, series=s.uid), name, as_label=False))
    return layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read every path into one layer (a DICOM series once however many of its files are given).

    A file that cannot be read raises a readable ``MSAMError``.
    """
    paths = [Path(p) for p in (path if isinstance(path, list) else [path])]
    layers: list[LayerData] = []
    dicom_files: dict[Path, list[Path]] = {}  # parent folder -> selected files, in first-seen order
    for p in paths:
        if _is_dicom_path(p):
            if p.is_dir():
                layers.extend(_dicom_layers(p, None))
            else:
                dicom_files.setdefault(p.parent, []).append(p)
            continue
        is_label = name_looks_like_label(p)
        vol = _read(p, is_label=is_label)
        layers.append(volume_to_layer_data(vol, file_stem(p), as_label=True if is_label else None))
    for folder, files in dicom_files.items():
        layers.extend(_dicom_layers(folder, files))
    return layers
