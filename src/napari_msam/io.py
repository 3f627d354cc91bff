"""Reading images and writing masks with their geometry (spacing, affine, orientation).

NIfTI data are reoriented to the (S, P, L) axis codes of ``docs/architecture.md`` so every array in the
project follows one convention; the transform is kept so results can be written back in the file's own
array order (and so CLI voxel indices given in the file's order can be converted).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InvalidVolumeError, MSAMError

TARGET_AXCODES = ("S", "P", "L")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class Volume:
    """A 3-D array with its geometry.

    ``data`` is indexed (axis0, axis1, axis2); ``spacing`` is in mm in the same order; ``affine`` maps
    indices of ``data`` to RAS+ world mm. ``ornt`` is the nibabel orientation transform that took the
    file's array to ``data`` (identity for TIFF); ``original_shape``/``original_affine`` describe the
    file's own array.
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    path: str | None = None
    is_label: bool = False
    ornt: np.ndarray = field(default_factory=lambda: np.array([[0, 1], [1, 1], [2, 1]], dtype=float))
    original_shape: tuple[int, int, int] | None = None
    original_affine: np.ndarray | None = None

    def to_original(self, array: np.ndarray) -> np.ndarray:
        """Return ``array`` (same grid as ``data``) in the file's original array orientation."""
        from nibabel.orientations import apply_orientation

        if array.shape != self.data.shape:
            raise MSAMError(f"array shape {array.shape} does not match the volume's shape {self.data.shape}")
        return np.ascontiguousarray(apply_orientation(array, inverse_ornt(self.ornt)))

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


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".nii.gz", ".nii", ".tiff", ".tif"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size per array axis = length of each affine column."""
    sp = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    return (float(sp[0]), float(sp[1]), float(sp[2]))


def _pick_channel(data: np.ndarray, path: Path, channel: int | None, channel_axis: int) -> np.ndarray:
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


def _read_nifti(path: Path, channel: int | None, is_label: bool) -> Volume:
    import nibabel as nib
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        raise MSAMError(f"{path}: cannot read this NIfTI file ({type(exc).__name__}: {exc})") from exc
    while data.ndim > 4 and data.shape[-1] == 1:
        data = data[..., 0]
    data = _pick_channel(data, path, channel, channel_axis=3)
    check_volume_array(data, "label" if is_label else "image")
    affine = np.asarray(img.affine, dtype=float)
    src = io_orientation(affine)
    transform = ornt_transform(src, axcodes2ornt(TARGET_AXCODES))
    out = np.ascontiguousarray(apply_orientation(data, transform))
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
    )


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


def _read_tiff(path: Path, channel: int | None, is_label: bool) -> Volume:
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
        data = _pick_channel(data, path, channel, channel_axis=caxis)
    check_volume_array(data, "label" if is_label else "image")
    affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    return Volume(
        data=np.ascontiguousarray(data),
        spacing=spacing,
        affine=affine,
        path=str(path),
        is_label=is_label,
        original_shape=tuple(int(s) for s in data.shape),
        original_affine=affine,
    )


def read_volume(path: str | Path, *, channel: int | None = None, is_label: bool = False) -> Volume:
    """Read a 3-D image (NIfTI or TIFF) as a :class:`Volume`.

    Label files keep their integer values; a 4-D multi-channel file needs ``channel=``.
    """
    path = Path(path)
    if not path.exists():
        raise MSAMError(f"{path}: no such file")
    if path.is_dir():
        raise MSAMError(f"{path}: is a folder, expected an image file (.nii, .nii.gz, .tif)")
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        vol = _read_nifti(path, channel, is_label)
    elif suffix in TIFF_SUFFIXES:
        vol = _read_tiff(path, channel, is_label)
    else:
        raise MSAMError(f"{path}: unsupported file type {suffix!r} (use .nii, .nii.gz, .tif or .tiff)")
    if is_label:
        data = vol.data
        if data.dtype.kind == "f":
            if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
                raise InvalidVolumeError(f"{path}: a label file must hold integer values")
            data = data.astype(np.int32)
        vol.data = data
    return vol


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
    from .atomic import atomic_write

    path = Path(path)
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise MSAMError(f"a mask must be 3-D, got shape {mask.shape}")
    dtype = _mask_dtype(mask)
    data = np.ascontiguousarray(mask.astype(dtype, copy=False))
    suffix = _suffix(path)
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
        import io as _io

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
