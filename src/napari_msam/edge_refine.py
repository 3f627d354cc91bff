"""Edge refinement: the image's edges decide the last millimetres of the model's boundary.

Why: the model sees the ROI at 2.5 mm and predicts on 5 mm cells, and it reacts weakly to late corrective
clicks. A random walker (Grady 2006, scikit-image) on the native grid, seeded with the model's confident
interior and exterior (voxels farther than ``band_mm`` from the model's boundary) and with a ball around
every click, re-decides the band in between along image edges, and a click always wins over the model
near it. It helps on MR and not on CT with the default model (docs/model-card.md), so the Session's
``"auto"`` mode refines only images of the modalities a checkpoint was validated on
(:mod:`napari_msam.additions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .boxes import Box
from .errors import MSAMError
from .walker import click_ball, walk, zscore

EDGE_MODES = ("auto", "on", "off")
AUTO_MODALITIES = ("mr",)  # where it was measured to help the default model (not on CT)


def applies(mode: str, modality: str, validated: Sequence[str] = AUTO_MODALITIES) -> bool:
    """Whether a Session in ``mode`` refines an image of ``modality``; ``"auto"`` refines the modalities
    the checkpoint was ``validated`` on."""
    if mode not in EDGE_MODES:
        raise MSAMError(f"edge_refine must be one of {EDGE_MODES}, got {mode!r}")
    return mode == "on" or (mode == "auto" and modality in tuple(validated))


@dataclass(frozen=True)
class EdgeRefiner:
    """The random-walker refinement of one object's mask (defaults picked on the validation MR, see module).

    band_mm: voxels closer than this to the model's boundary (inside or outside) are left to the walker.
    seed_mm: radius of the ball each click seeds (positive: object, negative: background).
    margin_mm: the walker's box is the object's box grown by this much (its faces seed the background).
    beta: the walker's edge sensitivity on the z-scored box (scikit-image's ``beta``).
    grid_mm: the walker runs on blocks of about this size (block means of the image; the in-plane 0.98 mm
        voxels of the STS scans become 2 x 2 blocks), 4x faster than the native grid and smoother.
    max_voxels: a box with more blocks than this gets coarser blocks (finest axis first) to bound the time.
    """

    band_mm: float = 10.0
    seed_mm: float = 5.0
    margin_mm: float = 15.0
    beta: float = 4000.0
    tol: float = 1e-3
    grid_mm: float = 2.0
    max_voxels: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("band_mm", "seed_mm", "margin_mm", "beta", "tol", "grid_mm"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise MSAMError(f"EdgeRefiner.{name} must be a positive number, got {getattr(self, name)!r}")
        if int(self.max_voxels) < 1000:
            raise MSAMError(f"EdgeRefiner.max_voxels must be >= 1000, got {self.max_voxels!r}")

    def box(self, mask_box: Box | None, clicks: Sequence[tuple[Sequence[int], bool]], shape: Sequence[int],
            spacing: Sequence[float]) -> Box:
        """The walker's box: the model's object box and every click, grown by ``margin_mm``, clipped."""
        pts = np.array([c for c, _ in clicks], dtype=np.int64).reshape(-1, 3)
        if len(pts) == 0:
            raise MSAMError("edge refinement needs at least one click")
        lo, hi = pts.min(0), pts.max(0) + 1
        if mask_box is not None:
            lo = np.minimum(lo, [s.start for s in mask_box])
            hi = np.maximum(hi, [s.stop for s in mask_box])
        out = []
        for a in range(3):
            m = int(math.ceil(self.margin_mm / float(spacing[a])))
            out.append(slice(max(int(lo[a]) - m, 0), min(int(hi[a]) + m, int(shape[a]))))
        return (out[0], out[1], out[2])

    def factors(self, shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, int, int]:
        """Per-axis block sizes: about ``grid_mm`` blocks, then coarser on the finest axis while the box has
        more than ``max_voxels`` blocks."""
        f = [max(1, int(round(self.grid_mm / float(spacing[a])))) for a in range(3)]
        while math.prod(-(-int(n) // k) for n, k in zip(shape, f, strict=True)) > self.max_voxels:
            a = min(range(3), key=lambda i: float(spacing[i]) * f[i])
            f[a] += 1
        return (f[0], f[1], f[2])

    def refine(self, image: np.ndarray, mask: np.ndarray, clicks: Sequence[tuple[Sequence[int], bool]],
               spacing: Sequence[float], modality: str = "other", mask_box: Box | None = None
               ) -> tuple[Box, np.ndarray]:
        """The refined object inside the walker's box (False outside it).

        ``image`` and ``mask`` are full volumes (array axes), ``clicks`` the object's clicks in order,
        ``mask_box`` a box holding every True voxel of ``mask`` (None: the mask is empty or unknown and is
        searched in the clicks' box only).
        """
        if image.shape != mask.shape:
            raise MSAMError(f"image {image.shape} and mask {mask.shape} differ in shape")
        box = self.box(mask_box, clicks, image.shape, spacing)
        shape = tuple(b.stop - b.start for b in box)
        f = self.factors(shape, spacing)
        sp = tuple(float(spacing[a]) * f[a] for a in range(3))
        img = zscore(_block_mean(image[box].astype(np.float32), f, modality))
        model = _block_mean(np.asarray(mask[box], dtype=np.float32), f) >= 0.5
        seeds = np.zeros(model.shape, np.int32)
        if model.any():
            seeds[ndimage.distance_transform_edt(model, sampling=sp) > self.band_mm] = 1
        seeds[ndimage.distance_transform_edt(~model, sampling=sp) > self.band_mm] = 2
        origin = [b.start for b in box]
        for c, positive in clicks:  # later clicks win over earlier ones and over the model
            ball = click_ball(model.shape, origin, f, c, spacing, max(self.seed_mm, min(sp)))
            ball[tuple(min((int(c[a]) - box[a].start) // f[a], model.shape[a] - 1) for a in range(3))] = True
            seeds[ball] = 1 if positive else 2
        for a in range(3):  # the box's faces are background unless something says otherwise
            for end in (0, -1):
                face = seeds[(slice(None),) * a + (end,)]
                face[face == 0] = 2
        if not (seeds == 1).any():
            seg = np.zeros(model.shape, bool)
        elif not (seeds == 0).any():
            seg = seeds == 1
        else:
            seg = walk(img, seeds, self.beta, "cg_j", self.tol, sp, "edge refinement")
        for a in range(3):  # back onto every native voxel of the box
            if f[a] > 1:
                seg = np.repeat(seg, f[a], axis=a)
        return box, np.ascontiguousarray(seg[: shape[0], : shape[1], : shape[2]])


def _block_mean(a: np.ndarray, f: Sequence[int], modality: str = "other") -> np.ndarray:
    """Means over blocks of ``f`` voxels (the last partial block of an axis averages what it has); CT is
    clamped to [-1000, 1000] HU first, as the model's preprocessing."""
    if modality == "ct":
        a = np.clip(a, -1000.0, 1000.0)
    for axis, k in enumerate(f):
        if k == 1:
            continue
        n = a.shape[axis]
        starts = np.arange(0, n, k)
        sums = np.add.reduceat(a, starts, axis=axis)
        counts = np.minimum(starts + k, n) - starts
        a = sums / counts.reshape([-1 if i == axis else 1 for i in range(a.ndim)]).astype(np.float32)
    return a
