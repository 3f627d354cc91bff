"""One entry point for every format: :func:`read_volume`, and :func:`can_read` for plugins."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import modality as _modality
from ..errors import InvalidVolumeError, MSAMError
from .dicom import is_dicom_file, read_dicom
from .nifti_tiff import read_nifti, read_tiff
from .nrrd_meta import read_metaimage, read_nrrd
from .volume import (
    DICOM_SUFFIXES,
    METAIMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    NRRD_SUFFIXES,
    READ_SUFFIXES,
    TIFF_SUFFIXES,
    Volume,
    file_suffix,
)

_MAX_DIR_PROBE = 200  # can_read() looks at this many entries of a folder at most


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
    suffix = "" if path.is_dir() else file_suffix(path)
    dicom = path.is_dir() or suffix in DICOM_SUFFIXES or (suffix not in READ_SUFFIXES and is_dicom_file(path))
    if series is not None and not dicom:
        raise MSAMError(f"{path}: series= only applies to DICOM folders")
    if dicom:
        if channel is not None:
            raise MSAMError(f"{path}: channel= does not apply to DICOM series")
        vol = read_dicom(path if path.is_dir() else path.parent, series, is_label, None if path.is_dir() else path)
    elif suffix in NIFTI_SUFFIXES:
        vol = read_nifti(path, channel, is_label)
    elif suffix in TIFF_SUFFIXES:
        vol = read_tiff(path, channel, is_label)
    elif suffix in NRRD_SUFFIXES:
        vol = read_nrrd(path, channel, is_label)
    elif suffix in METAIMAGE_SUFFIXES:
        vol = read_metaimage(path, channel, is_label)
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
    suffix = file_suffix(path)
    return suffix in READ_SUFFIXES or (path.is_file() and is_dicom_file(path))


def guess_modality(name: str, data: np.ndarray | None = None) -> str:
    """'ct', 'mr' or 'other' by the project's one rule (:mod:`napari_msam.modality`)."""
    return _modality.guess_modality(name, data)


def volume_modality(vol: Volume, name: str) -> str:
    """What "auto" means for a read volume: the file's own word (DICOM), else name and intensities."""
    return _modality.guess(name, vol.data, declared=vol.modality).modality
