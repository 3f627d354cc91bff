"""ROI zoom: how far a checkpoint may widen its ROI for objects larger than it.

The model sees a fixed grid of ``img_size`` voxels at the checkpoint's spacing (64 x 2.5 mm = 160 mm for
msam-small). A tumour larger than that is cut by the ROI, and stitching extra windows of cut tumours
works poorly (every window sees a wall-to-wall object it was never shown whole). A model trained with
*zoom augmentation* (ROIs at ``zoom`` x the spacing, zoom in [1, max]) can instead look at a large object
whole on a coarser grid: the Session zooms out when the mask reaches the ROI's faces. A checkpoint records
it as ``"roi_zoom": {"max": m}``; without it the Session never zooms (reference weights, older models).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RoiZoom:
    max: float = 2.0  # widest ROI, as a multiple of the checkpoint's spacing
    prob: float = 0.5  # training: share of crops drawn zoomed out

    def to_metadata(self) -> dict[str, float]:
        return {"max": float(self.max), "prob": float(self.prob)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> RoiZoom | None:
        """The zoom a checkpoint was trained with, or None (fixed spacing)."""
        d = (metadata or {}).get("roi_zoom") if isinstance(metadata, Mapping) else None
        if not d or float(d.get("max", 1.0)) <= 1.0:
            return None
        return cls(max=float(d["max"]), prob=float(d.get("prob", 0.5)))

    def sample(self, rng: np.random.Generator) -> float:
        """Training zoom: 1 with probability 1 - prob, else log-uniform in [1, max]."""
        if self.max <= 1.0 or rng.random() >= self.prob:
            return 1.0
        return float(math.exp(rng.uniform(0.0, math.log(self.max))))

    def steps(self, factor: float = 1.5) -> list[float]:
        """The Session's zoom levels: 1, factor, factor^2, ... capped at max."""
        out = [1.0]
        while out[-1] < self.max - 1e-6:
            out.append(min(self.max, out[-1] * factor))
        return out
