"""Reading images and writing masks with their geometry (spacing, affine, orientation).

NIfTI, NRRD, MetaImage and DICOM data are reoriented to the (S, P, L) axis codes of
``docs/architecture.md`` so every array in the project follows one convention; the transform is kept so
results can be written back in the file's own array order (and so CLI voxel indices given in the file's
order can be converted). NRRD, MetaImage and DICOM store geometry in LPS world coordinates; they are
converted to the RAS+ affine that NIfTI uses (x and y negated) and then take the NIfTI code path.
NRRD needs ``pynrrd`` and DICOM ``pydicom`` (``pip install napari-msam[formats]``); MetaImage is parsed
here (text header + raw/zlib data).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import modality as _modality
from .errors import InvalidVolumeError, MSAMError, OutputError, OutputExistsError

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
_MAX_DIR_PROBE = 200  # can_read() looks at this many entries of a folder at most
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


def _reoriented(
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


def _read_nifti(path: Path, channel: int | None, is_label: bool) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        raise MSAMError(f"{path}: cannot read this NIfTI file ({type(exc).__name__}: {exc})") from exc
    while data.ndim > 4 and data.shape[-1] == 1:
        data = data[..., 0]
    data = _pick_channel(data, path, channel, channel_axis=3)
    return _reoriented(data, np.asarray(img.affine, dtype=float), path, is_label)


def _lps_affine(directions: np.ndarray, spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """RAS+ affine from LPS geometry: ``directions`` columns are the unit axis directions, in mm units."""
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(directions, dtype=float) @ np.diag(np.asarray(spacing, dtype=float))
    aff[:3, 3] = np.asarray(origin, dtype=float)
    return LPS_TO_RAS @ aff


# ----------------------------------------------------------------------------------------------- NRRD

# NRRD "space" -> sign of (x, y, z) that takes it to RAS. Without a space the ITK convention (LPS) is used.
_NRRD_SPACE_SIGNS = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}
_NRRD_NONSPATIAL_KINDS = {
    "list", "point", "vector", "covariant-vector", "normal", "stub", "scalar", "complex", "2-vector",
    "3-color", "rgb-color", "hsv-color", "xyz-color", "4-color", "rgba-color", "3-vector",
    "3-gradient", "3-normal", "4-vector", "quaternion", "2d-symmetric-matrix", "2d-masked-symmetric-matrix",
    "2d-matrix", "2d-masked-matrix", "3d-symmetric-matrix", "3d-masked-symmetric-matrix", "3d-matrix",
    "3d-masked-matrix", "time",
}


def _read_nrrd(path: Path, channel: int | None, is_label: bool) -> Volume:
    try:
        import nrrd
    except ImportError as exc:
        raise MSAMError(f"{path}: reading NRRD needs the optional package pynrrd ({FORMATS_HINT})") from exc
    try:
        data, header = nrrd.read(str(path), index_order="F")
    except Exception as exc:
        raise MSAMError(f"{path}: cannot read this NRRD file ({type(exc).__name__}: {exc})") from exc
    data = np.asarray(data)
    ndim = data.ndim
    directions = header.get("space directions")
    kinds = [str(k).lower() for k in (header.get("kinds") or [])]
    if directions is not None:
        dirs = np.array([[np.nan] * 3 if d is None else d for d in directions], dtype=float)
        if dirs.ndim != 2 or dirs.shape[0] != ndim:
            raise InvalidVolumeError(f"{path}: 'space directions' does not match the {ndim} axes")
        if dirs.shape[1] != 3:
            raise InvalidVolumeError(f"{path}: a 3-D space is needed, this NRRD has a {dirs.shape[1]}-D space")
        spatial = [i for i in range(ndim) if np.all(np.isfinite(dirs[i]))]
    else:
        dirs = None
        spatial = [i for i in range(ndim) if not kinds or kinds[i] not in _NRRD_NONSPATIAL_KINDS]
    if ndim == 4 and len(spatial) == 3:
        caxis = next(i for i in range(4) if i not in spatial)
        data = _pick_channel(data, path, channel, channel_axis=caxis)
    elif ndim == 4 and len(spatial) == 4 and data.shape[3] == 1:
        data, spatial = data[..., 0], spatial[:3]
    elif ndim == 3 and len(spatial) != 3:
        raise InvalidVolumeError(f"{path}: only {len(spatial)} of the 3 NRRD axes are spatial (kinds {kinds})")
    check_volume_array(data, "label" if is_label else "image")
    if dirs is not None:
        matrix = dirs[spatial].T  # column a = step in world mm along spatial axis a
    else:
        raw = header.get("spacings")
        sp = [1.0] * 3
        if raw is not None:
            vals = [float(v) for v in np.asarray(raw, dtype=float)[spatial]]
            sp = [v if np.isfinite(v) and v > 0 else 1.0 for v in vals]
        matrix = np.diag(sp)
    origin = np.zeros(3)
    if header.get("space origin") is not None:
        origin = np.nan_to_num(np.asarray(header["space origin"], dtype=float).reshape(-1)[:3])
    space = str(header.get("space", "left-posterior-superior")).lower().replace("-time", "")
    signs = _NRRD_SPACE_SIGNS.get(space, (-1.0, -1.0, 1.0))  # scanner-xyz, 3D-right-handed: as ITK, LPS
    aff = np.eye(4)
    aff[:3, :3] = matrix
    aff[:3, 3] = origin
    aff = np.diag([*signs, 1.0]) @ aff
    return _reoriented(data, aff, path, is_label)


# ------------------------------------------------------------------------------------------ MetaImage

_MET_TYPES = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
    "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4", "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8",
    "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
_MET_ALIASES = {"position": "offset", "origin": "offset", "rotation": "transformmatrix",
                "orientation": "transformmatrix", "elementbyteordermsb": "binarydatabyteordermsb"}
_MAX_META_HEADER = 1 << 20


def _parse_metaimage_header(path: Path, raw: bytes) -> tuple[dict[str, str], int]:
    """``key -> value`` (lower-case keys, aliases folded) and the byte offset just after the header."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < min(len(raw), _MAX_META_HEADER):
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end
        line = raw[pos:end].decode("latin-1").strip()
        pos = end + 1
        if not line:
            continue
        if "=" not in line:
            raise MSAMError(f"{path}: not a MetaImage header (line {line[:40]!r} has no '=')")
        key, value = (t.strip() for t in line.split("=", 1))
        key = _MET_ALIASES.get(key.lower(), key.lower())
        fields[key] = value
        if key == "elementdatafile":
            return fields, pos
    raise MSAMError(f"{path}: not a MetaImage header (no ElementDataFile line)")


def _meta_numbers(fields: dict[str, str], key: str, n: int, path: Path, default: list[float] | None = None):
    if key not in fields:
        if default is None:
            raise MSAMError(f"{path}: the MetaImage header has no {key!r}")
        return default
    try:
        vals = [float(v) for v in fields[key].split()]
    except ValueError as exc:
        raise MSAMError(f"{path}: MetaImage {key} = {fields[key]!r} is not a list of numbers") from exc
    if len(vals) < n:
        raise MSAMError(f"{path}: MetaImage {key} needs {n} numbers, got {fields[key]!r}")
    return vals[:n]


def _meta_bool(fields: dict[str, str], key: str) -> bool:
    return fields.get(key, "False").strip().lower() in ("true", "1", "yes")


def _read_metaimage(path: Path, channel: int | None, is_label: bool) -> Volume:
    """MetaImage (.mha with LOCAL data, .mhd + a raw/zraw file): a small parser of the ITK text header."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise MSAMError(f"{path}: cannot read ({exc})") from exc
    fields, data_start = _parse_metaimage_header(path, raw)
    if fields.get("objecttype", "Image").lower() != "image":
        raise MSAMError(f"{path}: MetaImage ObjectType {fields['objecttype']!r} is not an image")
    ndims = int(_meta_numbers(fields, "ndims", 1, path)[0])
    if ndims not in (3, 4):
        raise InvalidVolumeError(f"{path}: the image must be 3-D, this MetaImage has NDims = {ndims}")
    dims = [int(v) for v in _meta_numbers(fields, "dimsize", ndims, path)]
    if min(dims) <= 0:
        raise InvalidVolumeError(f"{path}: the image is empty (DimSize {dims})")
    spacing = _meta_numbers(fields, "elementspacing", ndims, path, None if "elementsize" in fields else [1.0] * ndims)
    if "elementspacing" not in fields and "elementsize" in fields:
        spacing = _meta_numbers(fields, "elementsize", ndims, path)
    offset = _meta_numbers(fields, "offset", ndims, path, [0.0] * ndims)
    eye = np.eye(ndims).ravel().tolist()
    tm = np.asarray(_meta_numbers(fields, "transformmatrix", ndims * ndims, path, eye)).reshape(ndims, ndims)
    directions = tm[:3, :3].T  # ITK writes one axis direction after the other: rows of tm are columns
    etype = fields.get("elementtype", "").upper().replace("_ARRAY", "")
    if etype not in _MET_TYPES:
        raise MSAMError(f"{path}: unsupported MetaImage ElementType {fields.get('elementtype')!r}")
    dtype = np.dtype(_MET_TYPES[etype]).newbyteorder(">" if _meta_bool(fields, "binarydatabyteordermsb") else "<")
    nchan = int(fields.get("elementnumberofchannels", "1").split()[0])
    if "binarydata" in fields and not _meta_bool(fields, "binarydata"):
        raise MSAMError(f"{path}: ASCII MetaImage data (BinaryData = False) are not supported")
    # the data: LOCAL (after the header) or one file next to it
    source = fields["elementdatafile"]
    if source.upper() == "LOCAL":
        payload = raw[data_start:]
    elif source.upper().startswith("LIST") or len(source.split()) > 1:
        raise MSAMError(f"{path}: MetaImage data split over several files ({source!r}) are not supported")
    else:
        data_path = Path(source) if Path(source).is_absolute() else path.parent / source
        try:
            with open(data_path, "rb") as fh:
                payload = fh.read()
        except OSError as exc:
            raise MSAMError(f"{path}: cannot read its data file {data_path} ({exc})") from exc
    expected = int(np.prod(dims)) * nchan * dtype.itemsize
    if _meta_bool(fields, "compresseddata"):
        try:
            payload = zlib.decompress(payload, 47)  # 32 + 15: zlib or gzip stream
        except zlib.error as exc:
            raise MSAMError(f"{path}: cannot decompress the MetaImage data ({exc})") from exc
    else:
        header_size = int(fields.get("headersize", "0").split()[0])
        if header_size == -1:
            payload = payload[len(payload) - expected:] if len(payload) >= expected else payload
        elif header_size > 0:
            payload = payload[header_size:]
    if len(payload) < expected:
        raise MSAMError(f"{path}: the MetaImage data are truncated ({len(payload)} bytes, {expected} expected)")
    shape = tuple(dims[::-1]) + ((nchan,) if nchan > 1 else ())
    arr = np.frombuffer(payload, dtype=dtype, count=expected // dtype.itemsize).reshape(shape)
    # x runs fastest in the file: reverse the spatial axes to index (x, y, z[, t]) like NIfTI
    arr = np.transpose(arr, tuple(range(ndims))[::-1] + ((ndims,) if nchan > 1 else ()))
    arr = arr.astype(dtype.newbyteorder("="), copy=False)
    if ndims == 4 and nchan > 1:
        if arr.shape[3] != 1:
            raise InvalidVolumeError(f"{path}: a 4-D MetaImage with {nchan} channels per voxel is not supported")
        arr = arr[:, :, :, 0]
    arr = _pick_channel(arr, path, channel, channel_axis=3)
    return _reoriented(np.ascontiguousarray(arr), _lps_affine(directions, spacing[:3], offset[:3]), path, is_label)


# ---------------------------------------------------------------------------------------------- DICOM


@dataclass
class DicomSeries:
    """One series found in a DICOM folder (what :func:`list_dicom_series` returns)."""

    uid: str
    description: str
    number: int | None
    modality: str
    files: list[Path]

    def summary(self) -> str:
        num = "" if self.number is None else f" #{self.number}"
        return f"uid={self.uid}{num} {self.modality} {self.description!r}: {len(self.files)} files"


def _import_pydicom(path: Path):
    try:
        import pydicom
    except ImportError as exc:
        raise MSAMError(f"{path}: reading DICOM needs the optional package pydicom ({FORMATS_HINT})") from exc
    return pydicom


def is_dicom_file(path: str | Path) -> bool:
    """True when ``path`` starts with the DICOM preamble (128 bytes then ``DICM``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _scan_dicom_folder(folder: Path) -> dict[str, tuple[DicomSeries, list]]:
    """Headers of every DICOM image in ``folder`` (not its sub-folders), grouped by SeriesInstanceUID."""
    pydicom = _import_pydicom(folder)
    groups: dict[str, tuple[DicomSeries, list]] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise MSAMError(f"{folder}: cannot list the folder ({exc})") from exc
    for f in entries:
        if not f.is_file() or f.name.startswith(".") or f.name.upper() == "DICOMDIR" or not is_dicom_file(f):
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:  # an unreadable or non-DICOM file in the folder is skipped
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid or "Rows" not in ds:  # not an image (report, presentation state, ...)
            continue
        if uid not in groups:
            number = ds.get("SeriesNumber")
            try:
                number = None if number in (None, "") else int(number)
            except (TypeError, ValueError):
                number = None
            info = DicomSeries(uid, str(ds.get("SeriesDescription", "") or ""), number,
                               str(ds.get("Modality", "") or "?"), [])
            groups[uid] = (info, [])
        groups[uid][0].files.append(f)
        groups[uid][1].append(ds)
    return groups


def _sorted_series(groups: dict[str, tuple[DicomSeries, list]]) -> list[DicomSeries]:
    return sorted((g[0] for g in groups.values()), key=lambda s: (s.number is None, s.number or 0, s.uid))


def list_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """The image series in a DICOM folder, ordered by series number (the order ``series=<int>`` uses)."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    return _sorted_series(_scan_dicom_folder(folder))


def _choose_series(
    folder: Path, groups: dict[str, tuple[DicomSeries, list]], series: str | int | None, file: Path | None
) -> str:
    ordered = _sorted_series(groups)
    if not ordered:
        raise MSAMError(
            f"{folder}: no DICOM image files in this folder (sub-folders are not searched); other formats "
            "are opened as files (.nii, .nii.gz, .tif, .nrrd, .nhdr, .mha, .mhd)"
        )
    listing = "\n".join(f"  [{i}] {s.summary()}" for i, s in enumerate(ordered))
    if series is None and file is not None:
        for info, _ in groups.values():
            if any(f.name == file.name for f in info.files):
                return info.uid
        raise MSAMError(f"{file}: not a readable DICOM image")
    if series is None:
        if len(ordered) == 1:
            return ordered[0].uid
        raise MSAMError(
            f"{folder}: the folder holds {len(ordered)} DICOM series; choose one with series=<index or uid> "
            f"(CLI: --series):\n{listing}"
        )
    if isinstance(series, int) and not isinstance(series, bool):
        if not 0 <= series < len(ordered):
            raise MSAMError(f"{folder}: series={series} is out of range 0..{len(ordered) - 1}:\n{listing}")
        return ordered[series].uid
    key = str(series).strip()
    if key in groups:
        return key
    if key.isdigit() and 0 <= int(key) < len(ordered):
        return ordered[int(key)].uid
    raise MSAMError(f"{folder}: no DICOM series {series!r}; the folder holds:\n{listing}")


def _floats(ds, keyword: str, n: int, where: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise MSAMError(f"{where}: missing or invalid {keyword} ({value!r}); cannot place the slices in 3-D")
    return arr


def _read_dicom(folder: Path, series: str | int | None, is_label: bool, file: Path | None = None) -> Volume:
    """A DICOM series: slices sorted along the slice normal, rescaled (CT: HU), geometry from IPP/IOP."""
    pydicom = _import_pydicom(folder)
    groups = _scan_dicom_folder(folder)
    uid = _choose_series(folder, groups, series, file)
    info, headers = groups[uid]
    first = headers[0]
    for ds, f in zip(headers, info.files, strict=True):
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise MSAMError(f"{f}: multi-frame (enhanced) DICOM is not supported; convert it to NIfTI first")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise MSAMError(f"{f}: colour DICOM images (SamplesPerPixel > 1) are not supported")
    rows, cols = int(first.Rows), int(first.Columns)
    iop = _floats(first, "ImageOrientationPatient", 6, info.files[0])
    row_dir, col_dir = iop[:3], iop[3:]  # row_dir: along a row (column index grows); col_dir: row index grows
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 1e-3:
        raise MSAMError(f"{info.files[0]}: ImageOrientationPatient {iop.tolist()} is degenerate")
    normal /= np.linalg.norm(normal)
    positions = []
    for ds, f in zip(headers, info.files, strict=True):
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise MSAMError(f"{folder}: series {uid} mixes slice sizes ({rows}x{cols} and {ds.Rows}x{ds.Columns})")
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, f), iop, atol=1e-4):
            raise MSAMError(f"{folder}: series {uid} mixes slice orientations (e.g. {f.name}); not one volume")
        positions.append(_floats(ds, "ImagePositionPatient", 3, f))
    pos = np.asarray(positions)
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    pos, dist = pos[order], dist[order]
    n = len(order)
    if n > 1:
        gaps = np.diff(dist)
        if np.any(gaps < 1e-3):
            raise MSAMError(
                f"{folder}: series {uid} has several slices at the same position ({n} files); it may hold "
                "several volumes (time points, echoes) - split them first"
            )
        med = float(np.median(gaps))
        if np.max(np.abs(gaps - med)) > 0.05 * med + 1e-3:
            raise MSAMError(
                f"{folder}: series {uid} slices are not evenly spaced ({gaps.min():.3f}..{gaps.max():.3f} mm); "
                "slices may be missing"
            )
        step = (pos[-1] - pos[0]) / (n - 1)  # keeps a gantry tilt as a sheared affine
    else:
        thick = first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0
        step = normal * float(thick)
    ps = first.get("PixelSpacing") or first.get("ImagerPixelSpacing") or [1.0, 1.0]
    row_sp, col_sp = float(ps[0]), float(ps[1])  # (between rows, between columns)
    aff = np.eye(4)
    aff[:3, 0] = row_dir * col_sp
    aff[:3, 1] = col_dir * row_sp
    aff[:3, 2] = step
    aff[:3, 3] = pos[0]
    # pixel data, sorted; rescale to output units (CT: Hounsfield units)
    files = [info.files[i] for i in order]
    slices, params = [], []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
        except Exception as exc:
            raise MSAMError(f"{f}: cannot read this DICOM file ({type(exc).__name__}: {exc})") from exc
        try:
            arr = np.asarray(ds.pixel_array)
        except Exception as exc:
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
            raise MSAMError(
                f"{f}: cannot decode the DICOM pixel data (transfer syntax {ts}; {type(exc).__name__}: {exc}). "
                "Compressed DICOM needs extra decoders, e.g. pip install pylibjpeg pylibjpeg-libjpeg"
            ) from exc
        if arr.shape != (rows, cols):
            raise MSAMError(f"{f}: pixel data of shape {arr.shape}, expected ({rows}, {cols})")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        inter = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        slices.append(arr)
        params.append((slope, inter))
    integral = all(s == round(s) and i == round(i) for s, i in params) and all(a.dtype.kind in "biu" for a in slices)
    dtype = np.dtype(np.float32)
    if integral:
        lo = min(min(s * float(a.min()), s * float(a.max())) + i for a, (s, i) in zip(slices, params, strict=True))
        hi = max(max(s * float(a.min()), s * float(a.max())) + i for a, (s, i) in zip(slices, params, strict=True))
        for cand in (np.int16, np.int32):
            if np.iinfo(cand).min <= lo and hi <= np.iinfo(cand).max:
                dtype = np.dtype(cand)
                break
    data = np.empty((cols, rows, n), dtype=dtype)
    for k, (arr, (slope, inter)) in enumerate(zip(slices, params, strict=True)):
        if integral:
            data[:, :, k] = (arr.astype(np.int64) * int(slope) + int(inter)).T
        else:
            data[:, :, k] = (arr.astype(np.float64) * slope + inter).T
    modality = {"CT": "ct", "MR": "mr"}.get(info.modality.upper(), "other")
    return _reoriented(data, LPS_TO_RAS @ aff, folder, is_label, modality=modality)


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
        data=c_contiguous(data),
        spacing=spacing,
        affine=affine,
        path=str(path),
        is_label=is_label,
        original_shape=tuple(int(s) for s in data.shape),
        original_affine=affine,
    )


def read_volume(
    path: str | Path,
    *,
    channel: int | None = None,
    is_label: bool = False,
    series: str | int | None = None,
) -> Volume:
    """Read a 3-D image as a :class:`Volume`.

    Formats: NIfTI, TIFF, NRRD (``.nrrd``/``.nhdr``), MetaImage (``.mha``/``.mhd``) and DICOM (a folder
    holding one series, or a file of it: then its own series is read). A folder with several series
    needs ``series=`` (its index in :func:`list_dicom_series` or its SeriesInstanceUID). Label files keep
    their integer values; a 4-D multi-channel file needs ``channel=``.
    """
    path = Path(path)
    if not path.exists():
        raise MSAMError(f"{path}: no such file or folder")
    suffix = "" if path.is_dir() else _suffix(path)
    dicom = path.is_dir() or suffix in DICOM_SUFFIXES or (suffix not in READ_SUFFIXES and is_dicom_file(path))
    if series is not None and not dicom:
        raise MSAMError(f"{path}: series= only applies to DICOM folders")
    if dicom:
        if channel is not None:
            raise MSAMError(f"{path}: channel= does not apply to DICOM series")
        vol = _read_dicom(path if path.is_dir() else path.parent, series, is_label, None if path.is_dir() else path)
    elif suffix in NIFTI_SUFFIXES:
        vol = _read_nifti(path, channel, is_label)
    elif suffix in TIFF_SUFFIXES:
        vol = _read_tiff(path, channel, is_label)
    elif suffix in NRRD_SUFFIXES:
        vol = _read_nrrd(path, channel, is_label)
    elif suffix in METAIMAGE_SUFFIXES:
        vol = _read_metaimage(path, channel, is_label)
    else:
        raise MSAMError(
            f"{path}: unsupported file type {suffix!r} (use .nii, .nii.gz, .tif, .tiff, .nrrd, .nhdr, .mha, "
            ".mhd, or a DICOM folder)"
        )
    if is_label:
        data = vol.data
        if data.dtype.kind == "f":
            if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
                raise InvalidVolumeError(f"{path}: a label file must hold integer values")
            data = data.astype(np.int32)
        vol.data = data
    return vol


def can_read(path: str | Path) -> bool:
    """Cheap check (no pixel data read) that :func:`read_volume` handles ``path``: for readers/plugins."""
    path = Path(path)
    if path.is_dir():  # a DICOM folder: one of its first files has the DICOM preamble
        try:
            for i, f in enumerate(path.iterdir()):
                if i >= _MAX_DIR_PROBE:
                    return False
                if f.is_file() and is_dicom_file(f):
                    return True
        except OSError:
            pass
        return False
    suffix = _suffix(path)
    return suffix in READ_SUFFIXES or (path.is_file() and is_dicom_file(path))


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
    data = c_contiguous(mask.astype(dtype, copy=False))
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


def guess_modality(name: str, data: np.ndarray | None = None) -> str:
    """'ct', 'mr' or 'other' by the project's one rule (:mod:`napari_msam.modality`)."""
    return _modality.guess_modality(name, data)


def volume_modality(vol: Volume, name: str) -> str:
    """What "auto" means for a read volume: the file's own word (DICOM), else name and intensities."""
    return _modality.guess(name, vol.data, declared=vol.modality).modality
