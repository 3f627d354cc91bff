"""Reading images and writing masks with their geometry (spacing, affine, orientation).

One reader module per format family (``nifti_tiff``, ``nrrd_meta``, ``dicom``), one entry point
(:func:`read_volume`), one output rule (:func:`check_output`) and one dataset finder
(:func:`find_pairs`). NIfTI, NRRD, MetaImage and DICOM data are reoriented to the (S, P, L) axis codes of
``docs/architecture.md``; NRRD needs ``pynrrd`` and DICOM ``pydicom`` (``pip install napari-msam[formats]``).
"""

from __future__ import annotations

from .datasets import DatasetPair, find_pairs
from .dicom import DicomSeries, is_dicom_file, list_dicom_series
from .output import check_output, same_file, write_mask
from .reader import can_read, guess_modality, read_volume, volume_modality
from .volume import (
    DICOM_SUFFIXES,
    FORMATS_HINT,
    LPS_TO_RAS,
    MASK_SUFFIXES,
    METAIMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    NRRD_SUFFIXES,
    READ_SUFFIXES,
    TARGET_AXCODES,
    TIFF_SUFFIXES,
    Volume,
    c_contiguous,
    check_finite,
    check_segmentable,
    check_volume_array,
    checked_spacing,
    file_stem,
    file_suffix,
    inverse_ornt,
    spacing_from_affine,
)

__all__ = [
    "DICOM_SUFFIXES", "FORMATS_HINT", "LPS_TO_RAS", "MASK_SUFFIXES", "METAIMAGE_SUFFIXES", "NIFTI_SUFFIXES",
    "NRRD_SUFFIXES", "READ_SUFFIXES", "TARGET_AXCODES", "TIFF_SUFFIXES", "DatasetPair", "DicomSeries", "Volume",
    "c_contiguous", "can_read", "check_finite", "check_output", "check_segmentable", "check_volume_array",
    "checked_spacing", "file_stem",
    "file_suffix", "find_pairs", "guess_modality", "inverse_ornt", "is_dicom_file", "list_dicom_series",
    "read_volume", "same_file", "spacing_from_affine", "volume_modality", "write_mask",
]
