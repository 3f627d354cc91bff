"""Simulated user clicks: the paper's protocol and a deterministic "center" variant.

First click: a foreground voxel (positive). Later clicks come from the error region: a false-negative voxel
is a positive click, a false-positive voxel a negative one.

* "random" (the reference): a voxel drawn uniformly from the whole error region (FN ∪ FP).
* "center": the deepest voxel (largest spacing-aware distance to the component's boundary, the volume
  border counting as boundary) of the largest connected error component; deterministic, ties -> the first
  voxel in C order. Closer to how a person clicks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .boxes import box_of
from .errors import MSAMError

STRATEGIES = ("random", "center")
Click = tuple[tuple[int, int, int], bool]


def deepest_voxel(component: np.ndarray, spacing: Sequence[float]) -> tuple[int, int, int]:
    """The voxel of ``component`` farthest (in mm) from its outside, the volume's border counting as outside:
    the most interior point, where a click is least ambiguous."""
    padded = np.pad(component, 1)
    dist = ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]
    flat = int(np.argmax(dist))
    idx = np.unravel_index(flat, component.shape)
    return (int(idx[0]), int(idx[1]), int(idx[2]))


def next_click(
    gt: np.ndarray,
    pred: np.ndarray,
    rng: np.random.Generator,
    strategy: str = "random",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> Click | None:
    """Next simulated click ``((i, j, k), positive)``, or None when ``pred`` equals ``gt``."""
    if strategy not in STRATEGIES:
        raise MSAMError(f"unknown click strategy {strategy!r}; expected one of {STRATEGIES}")
    gt = np.asarray(gt).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    if gt.shape != pred.shape:
        raise MSAMError(f"prediction shape {pred.shape} does not match ground-truth shape {gt.shape}")
    if gt.ndim != 3:
        raise MSAMError(f"clicks need 3-D masks, got shape {gt.shape}")
    box = box_of(gt | pred)
    if box is None:
        return None
    g, p = gt[box], pred[box]
    fn = g & ~p
    fp = p & ~g
    offset = np.array([s.start for s in box])
    if strategy == "random":
        err = fn | fp
        idx = np.flatnonzero(err)
        if idx.size == 0:
            return None
        flat = int(idx[int(rng.integers(idx.size))])
        loc = np.unravel_index(flat, err.shape)
        voxel = tuple(int(v) for v in np.asarray(loc) + offset)
        return (voxel, bool(fn[loc]))  # type: ignore[return-value]
    best: tuple[int, np.ndarray, bool] | None = None
    for region, positive in ((fn, True), (fp, False)):
        if not region.any():
            continue
        lab, n = ndimage.label(region)
        sizes = np.bincount(lab.ravel())[1:]
        k = int(np.argmax(sizes))
        if best is None or sizes[k] > best[0]:
            best = (int(sizes[k]), lab == (k + 1), positive)
    if best is None:
        return None
    _, comp, positive = best
    cb = box_of(comp)
    assert cb is not None
    d = deepest_voxel(comp[cb], spacing)
    voxel = tuple(int(d[a] + cb[a].start + offset[a]) for a in range(3))
    return (voxel, positive)  # type: ignore[return-value]
