"""NIfTI (nibabel) and TIFF (tifffile, ImageJ spacing) readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MSAMError
from .volume import Volume, c_contiguous, check_volume_array, pick_channel, reoriented


def read_nifti(path: Path, channel: int | None, is_label: bool) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        raise MSAMError(f"{path}: cannot read this NIfTI file ({type(exc).__name__}: {exc})") from exc
    while data.ndim > 4 and data.shape[-1] == 1:
        data = data[..., 0]
    data = pick_channel(data, path, channel, channel_axis=3)
    return reoriented(data, np.asarray(img.affine, dtype=float), path, is_label)


def _tiff_spacing(tif) -> tuple[float, float, float]:
    """(z, y, x) spacing from ImageJ 'spacing' and the X/YResolution tags (pixels per unit)."""
    sz = sy = sx = 1.0
    ij = tif.imagej_metadata or {}
    if "spacing" in ij:
        try:
            sz = float(ij["spacing"])
        except (TypeError, ValueError):
            pass
    page = tif.pages[0]
    for tag_name, which in (("YResolution", "y"), ("XResolution", "x")):
        tag = page.tags.get(tag_name)
        if tag is None:
            continue
        num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
        if num and den:
            px_per_unit = float(num) / float(den)
            if px_per_unit > 0 and abs(px_per_unit - 1.0) > 1e-12:
                if which == "y":
                    sy = 1.0 / px_per_unit
                else:
                    sx = 1.0 / px_per_unit
    return (sz, sy, sx)


def read_tiff(path: Path, channel: int | None, is_label: bool) -> Volume:
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
            spacing = _tiff_spacing(tif)
    except Exception as exc:
        raise MSAMError(f"{path}: cannot read this TIFF file ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4:
        caxis = axes.find("C") if "C" in axes else (3 if data.shape[-1] <= 4 else 0)
        data = pick_channel(data, path, channel, channel_axis=caxis)
    check_volume_array(data, "label" if is_label else "image")
    affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    return Volume(
        data=c_contiguous(data),
        spacing=spacing,
        affine=affine,
        path=str(path),
        is_label=is_label,
        original_shape=tuple(int(s) for s in data.shape),
        original_affine=affine,
    )
