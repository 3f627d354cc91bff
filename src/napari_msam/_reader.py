"""npe2 reader: NIfTI / TIFF volumes as napari layers with their physical geometry.

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
from .io import Volume, read_volume

_SUFFIXES = (".nii.gz", ".nii", ".tiff", ".tif")
# "mask", "label(s)" anywhere; "seg" / "segs" / "segm(entation)" (not "segundo"); "gt", "gtv", "roi" as words.
_LABEL_NAME = re.compile(
    r"(mask|label|seg(?:$|[_\-. 0-9]|m|s(?:$|[_\-. 0-9]))|(?:^|[_\-. ])(?:gt|gtv|roi)(?:[_\-. 0-9]|$))",
    re.IGNORECASE,
)
_MAX_LABEL_VALUES = 64  # more distinct integer values than this look like an image, not a label map

LayerData = tuple[Any, dict[str, Any], str]


def _stem(path: Path) -> str:
    name = path.name
    for s in _SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def _supported(path: str) -> bool:
    return isinstance(path, str | Path) and str(path).lower().endswith(_SUFFIXES)


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return :func:`read_layers` when every path is a NIfTI/TIFF file, else ``None`` (not ours)."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(_supported(p) for p in paths):
        return None
    if any(Path(p).is_dir() for p in paths):
        return None
    return read_layers


def name_looks_like_label(path: str | Path) -> bool:
    """True for file names such as ``CT_mask.nii.gz``, ``labels.tif``, ``case1_seg.nii``."""
    return bool(_LABEL_NAME.search(_stem(Path(path))))


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


def guess_modality(name: str, data: np.ndarray | None = None) -> str:
    """'ct', 'mr' or 'other' from a layer/file name, else from the intensities (HU go far below 0)."""
    low = name.lower()
    tokens = set(re.split(r"[^a-z0-9]+", low))
    if "ct" in tokens or low.startswith("ct") or "_ct" in low:
        return "ct"
    if tokens & {"mr", "mri", "t1", "t2", "flair", "dwi", "adc", "t1w", "t2w"} or "mr_" in low or "_mr" in low:
        return "mr"
    if data is not None and data.size and data.dtype.kind in "if":
        step = max(1, int(round((data.size / 100_000) ** (1 / 3))))
        sample = np.asarray(data[::step, ::step, ::step], dtype=np.float32)
        lo = float(np.percentile(sample, 1))
        hi = float(np.percentile(sample, 99))
        if lo <= -500 and hi >= 0:
            return "ct"
    return "other"


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
    kwargs: dict[str, Any] = {"name": name, "scale": tuple(float(s) for s in vol.spacing), "metadata": meta}
    if as_label:
        data = vol.data
        if data.dtype.kind == "f" or data.dtype == bool:
            data = data.astype(np.uint16 if data.size and data.max() > 255 else np.uint8)
        return (data, kwargs, "labels")
    meta["modality"] = guess_modality(name, vol.data)
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


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read every path into one layer; a file that cannot be read raises a readable ``MSAMError``."""
    paths = path if isinstance(path, list) else [path]
    layers: list[LayerData] = []
    for p in paths:
        is_label = name_looks_like_label(p)
        try:
            vol = read_volume(p, is_label=is_label)
        except MSAMError:
            raise
        except Exception as exc:  # keep napari's error dialog to one readable line
            raise MSAMError(f"{p}: cannot open ({type(exc).__name__}: {exc})") from exc
        layers.append(volume_to_layer_data(vol, _stem(Path(p)), as_label=True if is_label else None))
    return layers
