"""A classical baseline with the same click interface: the random walker (Grady 2006, scikit-image).

Positive clicks seed the object (a ball of ``seed_mm``), negative clicks and the faces of a box around the
clicks seed the background; the walker runs inside that box only (a margin of ``margin_mm`` around the clicks), so a
click costs about as much on a 512^3 CT as on a small crop. Defaults (beta 4000, 8 mm seeds, 60 mm margin)
were picked by hand on the sample MR crop; seeds of a single voxel barely move the walker,
hence the balls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from .boxes import union
from .errors import ClickOutsideError, MSAMError
from .io import check_finite, check_volume_array, checked_spacing
from .session_like import ClickResult
from .walker import click_ball, walk, zscore


class RandomWalkerSession:
    """A :class:`~napari_msam.session_like.SessionLike` for ``run_protocol`` and the CLI."""

    device = "cpu"
    zoom = 1.0  # no ROI: the walker's box follows the clicks

    def __init__(self, beta: float = 4000.0, margin_mm: float = 60.0, seed_mm: float = 8.0,
                 mode: str = "cg_j", tol: float = 1e-4) -> None:
        self.beta, self.margin_mm, self.seed_mm, self.mode, self.tol = beta, margin_mm, seed_mm, mode, tol
        self._volume: np.ndarray | None = None
        self.spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
        self._mask = np.zeros((0, 0, 0), bool)
        self._clicks: list[tuple[tuple[int, int, int], bool]] = []
        self._history: list[tuple[tuple[slice, ...], np.ndarray]] = []
        self._box: tuple[slice, ...] | None = None

    def set_image(self, volume: np.ndarray, spacing: Sequence[float] = (1, 1, 1), modality: str = "other") -> None:
        volume = np.asarray(volume)
        check_volume_array(volume)
        check_finite(volume)
        self._volume = volume
        self.spacing = checked_spacing(spacing)
        self.modality = modality
        self._mask = np.zeros(volume.shape, bool)
        self.reset()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._mask.shape)

    @property
    def current_mask(self) -> np.ndarray:
        v = self._mask.view()
        v.flags.writeable = False
        return v

    @property
    def clicks(self) -> list[tuple[tuple[int, int, int], bool]]:
        return list(self._clicks)

    def reset(self) -> None:
        self._mask[...] = False
        self._clicks = []
        self._history = []
        self._box = None

    def _crop(self) -> tuple[slice, ...]:
        assert self._volume is not None
        pts = np.array([c for c, _ in self._clicks])
        out = []
        for a in range(3):
            m = int(math.ceil(self.margin_mm / self.spacing[a]))
            lo = max(int(pts[:, a].min()) - m, 0)
            hi = min(int(pts[:, a].max()) + m + 1, self._volume.shape[a])
            out.append(slice(lo, hi))
        return tuple(out)

    def add_click(self, voxel: Sequence[int], positive: bool = True) -> ClickResult:
        if self._volume is None:
            raise MSAMError("no image: call set_image() first")
        v = tuple(int(round(float(x))) for x in voxel)
        if len(v) != 3 or not all(0 <= v[a] < self._volume.shape[a] for a in range(3)):
            raise ClickOutsideError(f"click {tuple(voxel)} is outside the image of shape {self._volume.shape}")
        t0 = time.perf_counter()
        self._clicks.append((v, bool(positive)))  # type: ignore[arg-type]
        box = self._crop()
        img = zscore(self._volume[box].astype(np.float32))
        seeds = np.zeros(img.shape, np.int32)
        seeds[0, :, :] = seeds[-1, :, :] = 2
        seeds[:, 0, :] = seeds[:, -1, :] = 2
        seeds[:, :, 0] = seeds[:, :, -1] = 2
        # each click seeds a ball of ``seed_mm`` (a single voxel barely influences the walker)
        origin = [b.start for b in box]
        for (c, pos) in self._clicks:
            seeds[click_ball(img.shape, origin, (1, 1, 1), c, self.spacing, max(self.seed_mm, min(self.spacing)))] = \
                1 if pos else 2
        if not (seeds == 1).any():
            seg = np.zeros(img.shape, bool)
        else:
            seg = walk(img, seeds, self.beta, self.mode, self.tol, self.spacing, "the random-walker baseline")
        changed = union(self._box, box)
        self._history.append((changed, self._mask[changed].copy()))
        self._mask[changed] = False
        self._mask[box] = seg
        self._box = box
        dt = time.perf_counter() - t0
        return ClickResult(bbox=changed, mask=self._mask[changed].copy(), probabilities=None,  # type: ignore[arg-type]
                           timings={"encode": 0.0, "refine": dt, "paste": 0.0, "total": dt}, object_id=1)

    def undo(self) -> ClickResult | None:
        if not self._history:
            return None
        box, old = self._history.pop()
        self._mask[box] = old
        self._clicks.pop()
        return ClickResult(bbox=box, mask=old.copy(), probabilities=None,  # type: ignore[arg-type]
                           timings={"total": 0.0}, object_id=1)
