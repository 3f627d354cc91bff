"""The :class:`Volume` (an array with its geometry), the project's axis convention and the checks every reader shares.

Every oriented format ends in :func:`reoriented`, which turns the array to the (S, P, L) axis codes of
``docs/architecture.md`` and keeps the transform, so results can be written back in the file's own array
order. NRRD, MetaImage and DICOM store geometry in LPS world coordinates; :func:`lps_affine` converts it
to the RAS+ affine NIfTI uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidVolumeError, MSAMError

TARGET_AXCODES = ("S", "P", "L")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
TIFF_SUFFIXES = (".tif", ".tiff")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
METAIMAGE_SUFFIXES = (".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: the file types :func:`write_mask` writes
MASK_SUFFIXES = (".nii.gz", ".nii", ".tif", ".tiff")
#: every file suffix :func:`read_volume` accepts (a DICOM file may also have no suffix; folders = DICOM)
READ_SUFFIXES = NIFTI_SUFFIXES + TIFF_SUFFIXES + NRRD_SUFFIXES + METAIMAGE_SUFFIXES + DICOM_SUFFIXES
FORMATS_HINT = "pip install napari-msam[formats]"
# LPS world (DICOM, ITK, NRRD/MetaImage) -> RAS+ world (NIfTI, ours): negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A 3-D array with its geometry.

    ``data`` is indexed (axis0, axis1, axis2); ``spacing`` is in mm in the same order; ``affine`` maps
    indices of ``data`` to RAS+ world mm. ``ornt`` is the nibabel orientation transform that took the
    file's array to ``data`` (identity for TIFF); ``original_shape``/``original_affine`` describe the
    file's own array (for NRRD/MetaImage/DICOM: indexed (i, j, k) = (column, row, slice) like NIfTI,
    with the affine already in RAS+).
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    path: str | None = None
    is_label: bool = False
    ornt: np.ndarray = field(default_factory=lambda: np.array([[0, 1], [1, 1], [2, 1]], dtype=float))
    original_shape: tuple[int, int, int] | None = None
    original_affine: np.ndarray | None = None
    modality: str | None = None  # "ct" / "mr" / "other" when the file says so (DICOM), else None

    def to_original(self, array: np.ndarray) -> np.ndarray:
        """Return ``array`` (same grid as ``data``) in the file's original array orientation."""
        from nibabel.orientations import apply_orientation

        if array.shape != self.data.shape:
            raise MSAMError(f"array shape {array.shape} does not match the volume's shape {self.data.shape}")
        return c_contiguous(apply_orientation(array, inverse_ornt(self.ornt)))

    def original_index_to_array(self, index: tuple[int, int, int]) -> tuple[int, int, int]:
        """Convert a voxel index of the file's own array to an index of ``data``."""
        shape = self.original_shape or self.data.shape
        if len(index) != 3:
            raise MSAMError(f"a voxel index needs 3 numbers, got {len(index)}")
        for i, (v, n) in enumerate(zip(index, shape, strict=True)):
            if not 0 <= int(v) < n:
                raise MSAMError(f"voxel index {tuple(index)} is outside the image (axis {i} has size {n})")
        out = [0, 0, 0]
        for axis, (new_axis, flip) in enumerate(np.asarray(self.ornt)):
            v = int(index[axis])
            out[int(new_axis)] = v if flip > 0 else shape[axis] - 1 - v
        return (out[0], out[1], out[2])


def inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    """Inverse of a nibabel orientation transform (input axis i -> [output axis, flip])."""
    ornt = np.asarray(ornt, dtype=float)
    inv = np.zeros_like(ornt)
    for axis, (new_axis, flip) in enumerate(ornt):
        inv[int(new_axis)] = [axis, flip]
    return inv


def file_suffix(path: str | Path) -> str:
    """The lower-case file type of ``path``, a double suffix (``.nii.gz``) counted as one."""
    name = Path(path).name.lower()
    for s in _SUFFIXES_LONGEST_FIRST:
        if name.endswith(s):
            return s
    return Path(name).suffix


def file_stem(path: str | Path) -> str:
    """The file name without its volume file type (``CT_image.nii.gz`` -> ``CT_image``): the one stripper."""
    name = Path(path).name
    suffix = file_suffix(name)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


_SUFFIXES_LONGEST_FIRST = tuple(sorted(set(READ_SUFFIXES), key=len, reverse=True))


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size per array axis = length of each affine column."""
    sp = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    return (float(sp[0]), float(sp[1]), float(sp[2]))


def pick_channel(data: np.ndarray, path: Path, channel: int | None, channel_axis: int) -> np.ndarray:
    """Reduce a 4-D array to 3-D: drop a singleton axis or take the requested channel."""
    if data.ndim == 4 and data.shape[channel_axis] == 1:
        return np.take(data, 0, axis=channel_axis)
    if data.ndim == 4:
        n = data.shape[channel_axis]
        if channel is None:
            raise InvalidVolumeError(
                f"{path}: the image has shape {data.shape} (multi-channel, {n} channels on axis "
                f"{channel_axis}); choose one with channel=0..{n - 1} (CLI: --channel)"
            )
        if not 0 <= channel < n:
            raise InvalidVolumeError(f"{path}: channel={channel} is out of range 0..{n - 1}")
        return np.take(data, channel, axis=channel_axis)
    return data


def check_volume_array(data: np.ndarray, what: str = "image") -> None:
    """Raise ``InvalidVolumeError`` unless ``data`` is a usable non-empty 3-D array."""
    if not isinstance(data, np.ndarray):
        raise InvalidVolumeError(f"the {what} must be a numpy array, got {type(data).__name__}")
    if data.ndim != 3:
        raise InvalidVolumeError(
            f"the {what} must be 3-D, got {data.ndim}-D with shape {data.shape}"
            + (" (a 2-D image: stack slices into a volume)" if data.ndim == 2 else "")
        )
    if data.size == 0 or min(data.shape) == 0:
        raise InvalidVolumeError(f"the {what} is empty (shape {data.shape})")
    if data.dtype.kind not in "biuf":
        raise InvalidVolumeError(f"the {what} has an unsupported dtype {data.dtype}")


def check_finite(data: np.ndarray, what: str = "image") -> None:
    """Raise ``InvalidVolumeError`` when a float array holds NaN or infinite voxels (the model cannot use them)."""
    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InvalidVolumeError(f"the {what} has {bad} NaN or infinite voxels; replace them first")


def checked_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """``spacing`` as 3 floats; ``InvalidVolumeError`` unless it is 3 finite positive numbers."""
    if len(spacing) != 3 or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing):
        raise InvalidVolumeError(f"spacing must be 3 positive numbers, got {tuple(spacing)}")
    return float(spacing[0]), float(spacing[1]), float(spacing[2])


def c_contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-ordered array with non-negative strides (numpy calls a flipped 1x1xN array contiguous
    although one stride is negative, and torch refuses negative strides)."""
    if a.flags.c_contiguous and all(s >= 0 for s in a.strides):
        return a
    return np.array(a, order="C", copy=True)


def check_segmentable(data: np.ndarray, where: str | Path = "the image") -> None:
    """Refuse volumes too small to hold an object: fewer than 2 voxels along two or more axes."""
    if sum(int(n) < 2 for n in data.shape) >= 2:
        raise InvalidVolumeError(
            f"{where}: the volume is too small to segment (shape {tuple(int(n) for n in data.shape)}); "
            "it needs at least 2 voxels along two axes"
        )


def reoriented(
    data: np.ndarray,
    affine: np.ndarray,
    path: Path,
    is_label: bool,
    modality: str | None = None,
) -> Volume:
    """Reorient ``data`` (RAS+ ``affine``) to the project's (S, P, L) codes; every oriented format ends here."""
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    check_volume_array(data, "label" if is_label else "image")
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InvalidVolumeError(f"{path}: the image geometry (affine) is invalid:\n{affine}")
    src = io_orientation(affine)
    transform = ornt_transform(src, axcodes2ornt(TARGET_AXCODES))
    out = c_contiguous(apply_orientation(data, transform))
    new_affine = affine @ inv_ornt_aff(transform, data.shape)
    return Volume(
        data=out,
        spacing=spacing_from_affine(new_affine),
        affine=new_affine,
        path=str(path),
        is_label=is_label,
        ornt=np.asarray(transform, dtype=float),
        original_shape=tuple(int(s) for s in data.shape),
        original_affine=affine,
        modality=modality,
    )


def lps_affine(directions: np.ndarray, spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """RAS+ affine from LPS geometry: ``directions`` columns are the unit axis directions, in mm units."""
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(directions, dtype=float) @ np.diag(np.asarray(spacing, dtype=float))
    aff[:3, 3] = np.asarray(origin, dtype=float)
    return LPS_TO_RAS @ aff
