"""Where a click in the 3-D view lands: the brightest voxel along the ray under the cursor.

Why the brightest: the 3-D view shows the volume as a maximum-intensity projection, so what the user sees
under the cursor is the brightest voxel along that ray; the slider plane napari would use is invisible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def ray_voxels(start: np.ndarray, end: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The voxels (N x 3 ints, in order from ``start``) a straight segment passes through, inside ``shape``."""
    start, end = np.asarray(start, dtype=float)[-3:], np.asarray(end, dtype=float)[-3:]
    n = int(np.ceil(np.linalg.norm(end - start) * 2.0)) + 1
    pts = np.rint(start + (end - start) * np.linspace(0.0, 1.0, n)[:, None]).astype(int)
    inside = np.all((pts >= 0) & (pts < np.asarray(shape)[None, :]), axis=1)
    pts = pts[inside]
    if len(pts) == 0:
        return pts.reshape(0, 3)
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
    return pts[keep]


def brightest_voxel_on_ray(image: Any, data: np.ndarray, position: Sequence[float],
                           view_direction: Sequence[float], dims_displayed: Sequence[int]
                           ) -> tuple[int, int, int] | None:
    """The voxel of ``image`` a 3-D click at world ``position`` looking along ``view_direction`` shows.

    None when the ray misses the volume. Ties go to the voxel nearest the camera.
    """
    start, end = image.get_ray_intersections(np.asarray(position, dtype=float),
                                             np.asarray(view_direction, dtype=float), list(dims_displayed),
                                             world=True)
    if start is None or end is None:
        return None
    vox = ray_voxels(start, end, data.shape)
    if len(vox) == 0:
        return None
    values = np.asarray(data[vox[:, 0], vox[:, 1], vox[:, 2]], dtype=float)
    k = int(np.argmax(values))
    return int(vox[k, 0]), int(vox[k, 1]), int(vox[k, 2])
