"""Writing masks, and the one rule for every file written for the user (:func:`check_output`)."""

from __future__ import annotations

import gzip
import io as _io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import MSAMError, OutputError, OutputExistsError
from .volume import NIFTI_SUFFIXES, TIFF_SUFFIXES, c_contiguous, file_suffix, spacing_from_affine


def _mask_dtype(mask: np.ndarray) -> np.dtype:
    if mask.dtype == bool:
        return np.dtype(np.uint8)
    if mask.dtype.kind not in "biu":
        raise MSAMError(f"a mask must be boolean or integer, got dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 65535):
        raise MSAMError("mask values must lie in 0..65535")
    return np.dtype(np.uint8) if (mask.size == 0 or mask.max() <= 255) else np.dtype(np.uint16)


def write_mask(
    path: str | Path,
    mask: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    spacing: tuple[float, float, float] | None = None,
) -> Path:
    """Write a label/mask volume atomically as NIfTI (with ``affine``) or TIFF (ZYX, ImageJ spacing).

    The array is stored as uint8 when its values fit, else uint16.
    """
    from ..atomic import atomic_write

    path = Path(path)
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise MSAMError(f"a mask must be 3-D, got shape {mask.shape}")
    dtype = _mask_dtype(mask)
    data = c_contiguous(mask.astype(dtype, copy=False))
    suffix = file_suffix(path)
    if not path.parent.exists():
        raise MSAMError(f"{path}: the folder {path.parent} does not exist")
    if suffix in NIFTI_SUFFIXES:
        import nibabel as nib

        if affine is None:
            sp = spacing or (1.0, 1.0, 1.0)
            affine = np.diag([sp[0], sp[1], sp[2], 1.0])
        img = nib.Nifti1Image(data, np.asarray(affine, dtype=float))
        img.set_data_dtype(dtype)
        img.header.set_xyzt_units("mm")
        payload = img.to_bytes()
        if suffix == ".nii.gz":
            payload = gzip.compress(payload, compresslevel=6)
        with atomic_write(path, "wb") as fh:
            fh.write(payload)
    elif suffix in TIFF_SUFFIXES:
        import tifffile

        if spacing is None and affine is not None:
            spacing = spacing_from_affine(affine)
        sp = spacing or (1.0, 1.0, 1.0)
        buf = _io.BytesIO()
        tifffile.imwrite(
            buf,
            data,
            imagej=True,
            resolution=(1.0 / sp[2], 1.0 / sp[1]),
            metadata={"spacing": float(sp[0]), "unit": "mm", "axes": "ZYX"},
        )
        with atomic_write(path, "wb") as fh:
            fh.write(buf.getvalue())
    else:
        raise MSAMError(f"{path}: unsupported output type {suffix!r} (use .nii.gz, .nii, .tif)")
    return path


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file: the same path, a symlink to it or a hard link of it."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.expanduser().resolve() == b.expanduser().resolve()


def check_output(
    path: str | Path,
    *,
    inputs: Sequence[str | Path | None] = (),
    overwrite: bool = False,
    suffixes: Sequence[str] | None = None,
) -> Path:
    """The one rule for every file the project writes for the user (masks, CSV, plots).

    Refuses, with one line naming ``path``: a path that is (or links to) one of ``inputs``, whatever
    ``overwrite`` says; an existing folder; a missing or unwritable parent folder (missing folders are
    never created: a typo should not scatter results); a name without one of ``suffixes``; and an
    existing file unless ``overwrite`` (raises :class:`OutputExistsError`, so a GUI can ask and retry).
    Call it before any long computation. Returns ``path`` as a ``Path``.
    """
    out = Path(path).expanduser()
    for source in inputs:
        if source is not None and _same_file(out, Path(source)):
            raise OutputError(f"{out}: this is the input file {source}; choose another output name")
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; give a file name")
    if suffixes is not None and not out.name.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise OutputError(f"{out}: unsupported output type (use {', '.join(suffixes)})")
    folder = out.parent
    if not folder.is_dir():
        raise OutputError(f"{out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: the folder {folder} is not writable")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{out}: exists; pass --overwrite to replace it")
    return out
