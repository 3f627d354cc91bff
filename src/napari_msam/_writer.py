"""npe2 writer: a Labels layer -> ``.nii.gz`` / ``.nii`` (with the source image's geometry) or ``.tif``.

The layer metadata written by the reader or by the Segment widget carry the source image's affine and
orientation; with them the mask is written back on the source file's own array grid, so it overlays the
original image in any other tool. Without them the layer's ``scale`` gives a diagonal affine.

napari asks before it replaces an existing file, so the writer may replace one; but never the image
the labels were drawn on (``source_path`` of an image layer, copied to its Labels layer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import MSAMError
from .io import MASK_SUFFIXES, c_contiguous, check_output, inverse_ornt, write_mask


def _geometry(shape: tuple[int, ...], attributes: dict[str, Any]) -> tuple[np.ndarray, tuple[float, ...]]:
    meta = attributes.get("metadata") or {}
    scale = tuple(float(s) for s in (attributes.get("scale") if attributes.get("scale") is not None else (1, 1, 1)))
    affine = meta.get("affine")
    if affine is not None:
        affine = np.asarray(affine, dtype=float)
        if affine.shape != (4, 4):
            affine = None
    if affine is None:
        translate = attributes.get("translate")
        affine = np.diag([*scale[-3:], 1.0])
        if translate is not None and len(translate) >= 3:
            affine[:3, 3] = np.asarray(translate, dtype=float)[-3:]
    spacing = meta.get("spacing") or scale[-3:]
    return affine, tuple(float(s) for s in spacing)


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one Labels layer; returns the written path (npe2 single-layer writer)."""
    if not str(path).lower().endswith(MASK_SUFFIXES):
        path = str(path) + ".nii.gz"
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise MSAMError(f"only 3-D label layers can be saved as a volume, this one has shape {arr.shape}")
    if arr.dtype.kind not in "biu":
        raise MSAMError(f"labels must be integers, got {arr.dtype}")
    affine, spacing = _geometry(arr.shape, attributes)
    meta = attributes.get("metadata") or {}
    image_source = meta.get("source_path") if meta.get("source_kind", "image") != "labels" else None
    out = check_output(path, inputs=[image_source], overwrite=True)
    if out.name.lower().endswith((".nii", ".nii.gz")):
        ornt, orig_affine = meta.get("ornt"), meta.get("original_affine")
        orig_shape = meta.get("original_shape")
        if ornt is not None and orig_affine is not None:
            from nibabel.orientations import apply_orientation

            back = c_contiguous(apply_orientation(arr, inverse_ornt(np.asarray(ornt, float))))
            if orig_shape is None or tuple(back.shape) == tuple(orig_shape):
                write_mask(out, back, np.asarray(orig_affine, dtype=float))
                return [str(out)]
        write_mask(out, arr, affine)
    else:
        write_mask(out, arr, affine, spacing=spacing)
    return [str(out)]
