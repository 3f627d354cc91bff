"""Helpers for the napari widget tests (owned by the widget tests; imported, not a conftest).

* ``BallSession``: a deterministic stand-in for ``napari_msam.session.Session`` (same methods) whose
  object is the union of balls around positive clicks minus balls around negative ones, so tests of the
  widget's label-writing rules know exactly which voxels the "model" claims.
* ``blob_volume()``: a small synthetic 3-D image with one bright ellipsoid and its ground truth.
"""

from __future__ import annotations

import numpy as np

from napari_msam.session import ClickResult


def blob_volume(shape=(20, 40, 36), center=(10, 20, 18), radii=(5, 9, 8), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    r = ((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 + ((xx - center[2]) / radii[2]) ** 2
    gt = r <= 1.0
    img = (rng.normal(0, 5, shape) + 100 * gt + 50).astype(np.float32)
    return img, gt.astype(np.uint8)


class BallSession:
    """Stand-in for Session: balls of ``radius`` voxels around clicks (positive add, negative cut)."""

    radius = 3
    delay = 0.0          # seconds per click (to test queueing / cancelling)
    instances: list = []

    def __init__(self, loaded, device=None, threads=None):
        self.loaded = loaded
        self.device = "cpu"
        self._shape = None
        self._clicks: list = []
        self._next_id = 1
        self.calls: list = []
        BallSession.instances.append(self)

    def set_image(self, volume, spacing=(1, 1, 1), modality="other"):
        self._shape = np.asarray(volume).shape
        self.spacing = spacing
        self.modality = modality
        self._clicks = []
        self.calls.append(("set_image", self._shape, modality))

    def _mask_for(self, clicks):
        mask = np.zeros(self._shape, bool)
        idx = np.indices(self._shape)
        for v, pos in clicks:
            ball = sum((idx[a] - v[a]) ** 2 for a in range(3)) <= self.radius**2
            mask = (mask | ball) if pos else (mask & ~ball)
        return mask

    @property
    def shape(self):
        return tuple(self._shape)

    @property
    def current_mask(self):
        return self._mask_for(self._clicks)

    @property
    def clicks(self):
        return list(self._clicks)

    def add_click(self, voxel, positive=True):
        if self._shape is None:
            raise ValueError("no image")
        if self.delay:
            import time

            time.sleep(self.delay)
        self.calls.append(("click", tuple(voxel), positive))
        self._clicks.append((tuple(int(v) for v in voxel), bool(positive)))
        full = (slice(0, self._shape[0]), slice(0, self._shape[1]), slice(0, self._shape[2]))
        return ClickResult(full, self.current_mask, None, {"total": 0.001}, self._next_id)

    def undo(self):
        if not self._clicks:
            return None
        self._clicks.pop()
        full = tuple(slice(0, n) for n in self._shape)
        return ClickResult(full, self.current_mask, None, {"total": 0.0}, self._next_id)

    def reset(self):
        self.calls.append(("reset",))
        self._clicks = []

    def accept(self):
        self.calls.append(("accept",))
        oid = self._next_id
        self._next_id += 1
        self._clicks = []
        return oid
