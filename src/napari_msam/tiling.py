"""Which ROIs an object uses: click routing and the large-object strategy (docs/session.md).

A click goes to the object's ROI that holds it (nearest centre), else opens one centred on it. When the
mask reaches a ROI face that lies inside the volume, a single-ROI object is re-centred on its mask if that
fits, then zoomed out (checkpoints trained with zoom augmentation), and past that neighbour ROIs with 50 %
overlap are added with the current logits as their prior.
"""

from __future__ import annotations

import numpy as np

from .boxes import Box, intersect
from .clicks import deepest_voxel
from .object_mask import ObjectMask, Patch
from .predictor import Predictor, Window
from .preprocess import RoiGeometry, model_to_array, resample_logits

Click = tuple[tuple[int, int, int], bool]


class Tiler:
    """The current object's ROIs (``windows``) and ROI zoom, placed on ``canvas`` through ``predictor``."""

    def __init__(self, predictor: Predictor, canvas: ObjectMask, *, auto_extend: bool = True,
                 max_windows: int = 8) -> None:
        self.predictor = predictor
        self.canvas = canvas
        self.auto_extend = auto_extend
        self.max_windows = max(1, int(max_windows))
        self.windows: list[Window] = []
        self.zoom = 1.0  # the object's ROI spacing, as a multiple of the checkpoint's
        self._clicks: list[Click] = []

    def reset(self) -> None:
        self.windows, self.zoom = [], 1.0

    def click(self, voxel: tuple[int, int, int], label: int, clicks: list[Click], patches: list[Patch],
              timings: dict[str, float]) -> tuple[Box, np.ndarray, bool]:
        """Refine the ROI of a click (``clicks`` ends with it) and follow the object out of its ROI.
        Returns the clicked ROI's written box, its logits and whether no other ROI was touched."""
        self._clicks = clicks
        index, window = self._window_for(voxel)
        old_geometry = None
        if index is None and self.auto_extend:
            wider = self._zoom_to_include(voxel)
            if wider is not None:
                old_geometry = self.windows[0].geometry
                index = 0
                window, self.zoom = wider
        window = self.predictor.refine(window, window.geometry.to_model(voxel), label, timings)
        if index is None:
            self.windows.append(window)
            index = len(self.windows) - 1
        else:
            self.windows[index] = window
        if old_geometry is not None:
            self.canvas.clear_outside(old_geometry, window.geometry, patches)
        box, logits = self.canvas.paste(window, patches, timings)
        single = True
        if self.auto_extend and self._touching_faces(window):
            single = False
            if len(self.windows) == 1:
                self._try_recenter(index, voxel, label, patches, timings)
                while (self._touching_faces(self.windows[index])
                       and self._try_zoom_out(index, voxel, label, patches, timings)):
                    pass
            if self._touching_faces(self.windows[index]):
                self._extend(index, patches, timings)
        return box, logits, single

    def _geometry(self, center, zoom: float | None = None) -> RoiGeometry:
        return self.predictor.geometry(center, self.zoom if zoom is None else zoom)

    def _window_for(self, voxel: tuple[int, int, int]) -> tuple[int | None, Window]:
        p = self.predictor
        inside = [(p.distance(w.geometry, voxel), i) for i, w in enumerate(self.windows) if w.geometry.contains(voxel)]
        if inside:
            i = min(inside)[1]
            return i, self.windows[i]
        g = self._geometry(voxel)
        prior = None
        if self.windows:
            nearest = min(self.windows, key=lambda w: p.distance(w.geometry, voxel))
            if nearest.low_res is not None:
                prior = resample_logits(nearest.low_res, nearest.geometry, g, fill=0.0)
        return None, Window(geometry=g, low_res=prior)

    def _touching_faces(self, window: Window) -> list[tuple[int, int]]:
        assert window.low_res is not None
        arr = model_to_array(window.low_res[0, 0], window.geometry.axis_order) > 0
        faces = []
        for axis, d in window.geometry.border_faces():
            idx = 0 if d < 0 else arr.shape[axis] - 1
            if bool(arr.select(axis, idx).any()):
                faces.append((axis, d))
        return faces

    def _moved(self, w: Window, g2: RoiGeometry) -> Window:
        """Window ``w`` moved onto ROI ``g2`` (re-centre / zoom): its logits resampled as the prior, the
        object's earlier clicks inside ``g2`` replayed as its points (the newest click is refined next)."""
        prior = resample_logits(w.low_res, w.geometry, g2, fill=0.0)
        points = tuple((g2.to_model(v), int(pos)) for v, pos in self._clicks[:-1] if g2.contains(v))
        return Window(geometry=g2, low_res=prior, points=points)

    def _move_window(self, index: int, g2: RoiGeometry, voxel: tuple[int, int, int], label: int,
                     patches: list[Patch], timings: dict[str, float]) -> None:
        """Replace window ``index`` by one on ROI ``g2``, refine it with the click, clear what the old ROI
        covered outside the new one and paste the result."""
        w = self.windows[index]
        w2 = self.predictor.refine(self._moved(w, g2), g2.to_model(voxel), label, timings)
        self.windows[index] = w2
        self.canvas.clear_outside(w.geometry, g2, patches)
        self.canvas.paste(w2, patches, timings)

    def _wider_levels(self) -> list[float]:
        return [z for z in self.predictor.zoom_levels if z > self.zoom + 1e-6]

    def _try_recenter(self, index: int, voxel: tuple[int, int, int], label: int, patches: list[Patch],
                      timings: dict[str, float]) -> bool:
        """Single-window object cut by its ROI: move the ROI onto the mask's box if that fits."""
        w = self.windows[index]
        box = self.canvas.object_box()
        if box is None:
            return False
        sp = self.predictor.spacing
        fov = [self.predictor.img_size * self.predictor.model_spacing(self.zoom)[a] for a in range(3)]
        extent = [(box[a].stop - box[a].start) * sp[a] for a in range(3)]
        if any(extent[a] > 0.8 * fov[a] for a in range(3)):
            return False
        center = [(box[a].start + box[a].stop - 1) / 2.0 for a in range(3)]
        g2 = self._geometry(center)
        shift = max(abs(g2.start[a] - w.geometry.start[a]) / w.geometry.step[a] for a in range(3))
        if shift < 2.0 or not g2.contains(voxel):
            return False
        self._move_window(index, g2, voxel, label, patches, timings)
        return True

    def _try_zoom_out(self, index: int, voxel: tuple[int, int, int], label: int, patches: list[Patch],
                      timings: dict[str, float]) -> bool:
        """Single-window object still cut by its ROI: look again on the next coarser zoom level, centred on
        the mask's box, with every click of the object replayed into the new ROI (False: no level left)."""
        wider = self._wider_levels()
        if not wider:
            return False
        box = self.canvas.object_box()
        center = (self.windows[index].geometry.center if box is None
                  else [(box[a].start + box[a].stop - 1) / 2.0 for a in range(3)])
        g2 = self._geometry(center, wider[0])
        if not g2.contains(voxel):
            g2 = self._geometry(voxel, wider[0])
        self._move_window(index, g2, voxel, label, patches, timings)
        self.zoom = wider[0]
        return True

    def _zoom_to_include(self, voxel: tuple[int, int, int]) -> tuple[Window, float] | None:
        """A click outside the object's only ROI: rather than a second window, the first wider zoom level
        whose ROI (centred on the object's box + the click) holds both, with the old logits as the prior
        and the object's earlier clicks replayed into it (None: no zoom level left or none holds both)."""
        if len(self.windows) != 1 or self.windows[0].low_res is None:
            return None
        w = self.windows[0]
        box = self.canvas.object_box()
        lo = [min(voxel[a], box[a].start) if box else voxel[a] for a in range(3)]
        hi = [max(voxel[a] + 1, box[a].stop) if box else voxel[a] + 1 for a in range(3)]
        center = [(lo[a] + hi[a] - 1) / 2.0 for a in range(3)]
        for zoom in self._wider_levels():
            g2 = self._geometry(center, zoom)
            bb = g2.bbox
            if not all(bb[a].start <= lo[a] and hi[a] <= bb[a].stop for a in range(3)):
                continue
            return self._moved(w, g2), zoom
        return None

    def _extend(self, index: int, patches: list[Patch], timings: dict[str, float]) -> None:
        """Add 50 %-overlap windows where the mask leaves a ROI; their prompt is the deepest mask voxel of
        the overlap (positive) and their prior the current logits. Existing windows keep their voxels."""
        p = self.predictor
        size = p.img_size
        queue = [index]
        while queue and len(self.windows) < self.max_windows:
            w = self.windows[queue.pop(0)]
            for axis, d in self._touching_faces(w):
                if len(self.windows) >= self.max_windows:
                    break
                g = w.geometry
                c = list(g.center)
                c[axis] += d * (size / 2) * g.step[axis]
                g2 = self._geometry(c)
                if any(p.distance(o.geometry, g2.center) < 0.25 * size * min(p.model_spacing(self.zoom))
                       for o in self.windows):
                    continue
                overlap = intersect(g.bbox, g2.bbox)
                if overlap is None:
                    continue
                sub = self.canvas.mask[overlap]
                if not sub.any():
                    continue
                loc = deepest_voxel(sub, p.spacing)
                seed = tuple(int(loc[a] + overlap[a].start) for a in range(3))
                prior = resample_logits(w.low_res, g, g2, fill=0.0)
                keep = [o.geometry.bbox for o in self.windows]
                w2 = p.refine(Window(geometry=g2, low_res=prior), g2.to_model(seed), 1, timings)
                self.windows.append(w2)
                self.canvas.paste(w2, patches, timings, keep=keep)
                queue.append(len(self.windows) - 1)
