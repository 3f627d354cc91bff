"""Overlap metrics and number-of-clicks (NoC) for the interactive protocol."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import MSAMError


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise MSAMError(f"prediction shape {pred.shape} does not match ground-truth shape {gt.shape}")
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P∩G| / (|P|+|G|); 1.0 when both are empty (nothing to find, nothing found)."""
    p, g = _pair(pred, gt)
    inter = np.count_nonzero(p & g)
    total = np.count_nonzero(p) + np.count_nonzero(g)
    return 1.0 if total == 0 else 2.0 * inter / total


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """|P∩G| / |P∪G|; 1.0 when both are empty."""
    p, g = _pair(pred, gt)
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else np.count_nonzero(p & g) / union


def noc(dices: Sequence[float], threshold: float) -> int | None:
    """Clicks needed to first reach ``threshold`` Dice (1-based); None if never reached.

    ``threshold`` may be a fraction (0.85) or a percentage (85).
    """
    t = threshold / 100.0 if threshold > 1.0 else float(threshold)
    for k, d in enumerate(dices, start=1):
        if d >= t:
            return k
    return None
