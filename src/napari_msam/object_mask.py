"""The current object's mask over the whole volume, written ROI by ROI, with undo patches.

Paste-back writes only the part of a ROI's box that can change (where the new logits can be positive plus
the object's previous extent inside the box) and records the old voxels of exactly that part, so undo is
exact and costs the size of the change, not of the volume.
"""

from __future__ import annotations

import time

import numpy as np

from .boxes import Box, contains, intersect, is_empty, relative, tight_box, union
from .predictor import Window
from .preprocess import RoiGeometry, paste_back

Patch = tuple[Box, np.ndarray]  # a written box and the voxels it held before


class ObjectMask:
    """``mask`` (bool, the volume's shape) and ``extent``: a box holding every True voxel (None: empty),
    possibly loose, never too small. ``full=True`` pastes every voxel of a ROI's box and keeps its logits
    (``Session(return_probabilities=True)``)."""

    def __init__(self, shape: tuple[int, ...], full: bool = False) -> None:
        self.mask = np.zeros(shape, bool)
        self.extent: Box | None = None
        self.full = full

    def clear(self) -> None:
        if self.extent is not None:
            self.mask[self.extent] = False
        self.extent = None

    def restore(self, patches: list[Patch], extent: Box | None) -> None:
        """Undo ``patches`` (newest first) and set the extent recorded before them."""
        for box, old in reversed(patches):
            self.mask[box] = old
        self.extent = extent

    def object_box(self) -> Box | None:
        """The tight box of the object (None: empty)."""
        return None if self.extent is None else tight_box(self.mask[self.extent], self.extent)

    def paste(self, window: Window, patches: list[Patch], timings: dict[str, float], *,
              keep: list[Box] | None = None) -> tuple[Box, np.ndarray]:
        """Write the window's prediction into its native box; voxels inside any box of ``keep`` stay.

        Everything in the box outside the written part is False before and after. Returns the written box
        and the float logits (``full`` only).
        """
        t0 = time.perf_counter()
        assert window.low_res is not None
        full = self.full
        pasted = paste_back(window.low_res, window.geometry, full=full, mask_only=not full)
        box = pasted.bbox
        region = pasted.region if pasted.region is not None else box
        has_new = not is_empty(region)
        prev = None if self.extent is None else intersect(self.extent, box)
        if full:
            write = box
        elif has_new:
            write = region if prev is None else union(region, prev)
        else:
            write = prev if prev is not None else box
        old = self.mask[write].copy()
        if write == box:
            new = pasted.mask
        else:
            new = np.zeros(old.shape, bool)
            if has_new:
                inner = pasted.region_mask if pasted.region_mask is not None else pasted.logits > 0
                new[relative(region, write)] = inner
        if keep:
            protect = np.zeros(new.shape, bool)
            for k in keep:
                inter = intersect(write, k)
                if inter is not None:
                    protect[relative(inter, write)] = True
            new = np.where(protect, old, new)
        patches.append((write, old))
        self.mask[write] = new
        if self.extent is not None and (keep or not contains(write, self.extent)):
            self.extent = union(self.extent, region) if has_new else self.extent
        else:  # every old voxel was inside the written box: the new object lies inside ``region``
            self.extent = region if has_new else None
        timings["paste"] += time.perf_counter() - t0
        return write, pasted.logits

    def clear_outside(self, old: RoiGeometry, new: RoiGeometry, patches: list[Patch]) -> None:
        """After a ROI moved: the part of the old box the new ROI does not cover no longer has a window."""
        ob = old.bbox
        keep = np.ones(self.mask[ob].shape, bool)
        inter = intersect(ob, new.bbox)
        if inter is not None:
            keep[relative(inter, ob)] = False
        if not (self.mask[ob] & keep).any():
            return
        patches.append((ob, self.mask[ob].copy()))
        self.mask[ob] &= ~keep
