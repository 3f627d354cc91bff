"""NRRD (needs pynrrd) and MetaImage (parsed here: ITK text header + raw/zlib data) readers.

Both store geometry in LPS (or a declared) world space; it is converted to RAS+ and reoriented like NIfTI.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from ..errors import InvalidVolumeError, MSAMError
from .volume import FORMATS_HINT, Volume, check_volume_array, lps_affine, pick_channel, reoriented

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


def read_nrrd(path: Path, channel: int | None, is_label: bool) -> Volume:
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
        data = pick_channel(data, path, channel, channel_axis=caxis)
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
    return reoriented(data, aff, path, is_label)


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


def read_metaimage(path: Path, channel: int | None, is_label: bool) -> Volume:
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
    arr = pick_channel(arr, path, channel, channel_axis=3)
    return reoriented(np.ascontiguousarray(arr), lps_affine(directions, spacing[:3], offset[:3]), path, is_label)
