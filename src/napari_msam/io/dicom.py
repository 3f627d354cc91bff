"""DICOM series (needs pydicom): listing the series of a folder and reading one as a volume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MSAMError
from .volume import FORMATS_HINT, LPS_TO_RAS, Volume, reoriented

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


def read_dicom(folder: Path, series: str | int | None, is_label: bool, file: Path | None = None) -> Volume:
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
    return reoriented(data, LPS_TO_RAS @ aff, folder, is_label, modality=modality)
