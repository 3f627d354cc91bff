"""Training data, as one import path: the cases (:mod:`.cases`) and the crops made from them (:mod:`.crops`).

Qt-free. Every case is read once, reoriented by ``io.read_volume``, windowed/resampled to the model spacing
and kept in memory (optionally also in an ``.npz`` cache), so an epoch only crops, flips and normalises.
"""

from __future__ import annotations

from napari_msam.training.cases import (
    MODALITY_FOR_PREPROCESS,
    CaseSpec,
    NormalizationView,
    PreparedCase,
    TrainingDataError,
    array_case,
    discover_cases,
    guess_modality,
    prepare_cases,
    preprocess_normalization,
    resample_to_spacing,
    split_by_patient,
    validate_cases,
)
from napari_msam.training.crops import (
    augment_intensity,
    rotate_axial,
    rotate_in_plane,
    rotation_support,
    sample_crop,
)

__all__ = [
    "MODALITY_FOR_PREPROCESS", "CaseSpec", "NormalizationView", "PreparedCase", "TrainingDataError",
    "array_case", "augment_intensity", "discover_cases", "guess_modality", "prepare_cases",
    "preprocess_normalization", "resample_to_spacing", "rotate_axial", "rotate_in_plane", "rotation_support",
    "sample_crop", "split_by_patient", "validate_cases",
]
