"""The random-walker pieces shared by the classical baseline and edge refinement (scikit-image's walker)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from .errors import MSAMError


def zscore(img: np.ndarray) -> np.ndarray:
    """Zero mean, unit std over the box (a flat box is only shifted): the walker's beta is set for this."""
    std = float(img.std())
    return (img - float(img.mean())) / (std if std > 1e-6 else 1.0)


def click_ball(shape: Sequence[int], origin: Sequence[int], factors: Sequence[int], center: Sequence[int],
               spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    """Cells of a grid of ``shape`` (blocks of ``factors`` native voxels, the first at native ``origin``)
    whose centres lie within ``radius_mm`` of the native voxel ``center``."""
    grids = np.ogrid[tuple(slice(0, int(n)) for n in shape)]
    d2 = sum((((g + 0.5) * factors[a] - 0.5 + origin[a] - int(center[a])) * float(spacing[a])) ** 2
             for a, g in enumerate(grids))
    return d2 <= radius_mm ** 2


def walk(img: np.ndarray, seeds: np.ndarray, beta: float, mode: str, tol: float, spacing: Sequence[float],
         who: str) -> np.ndarray:
    """Label 1 of scikit-image's random walker (seeds: 0 unknown, 1 object, 2 background) as a bool array."""
    try:
        from skimage.segmentation import random_walker
    except ImportError as exc:  # a core dependency; a broken install gets a clear message
        raise MSAMError(f"{who} needs scikit-image (pip install scikit-image)") from exc
    with warnings.catch_warnings():
        # the CG solver's probabilities may overshoot [0, 1] slightly; only the argmax is used
        warnings.filterwarnings("ignore", message="The probability range is outside")
        return random_walker(img, seeds, beta=beta, mode=mode, tol=tol, spacing=tuple(spacing)) == 1
