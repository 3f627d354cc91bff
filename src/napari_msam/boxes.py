"""Axis-aligned boxes of a 3-D volume as tuples of slices: the few operations paste-back and undo need."""

from __future__ import annotations

import numpy as np

Box = tuple[slice, slice, slice]


def is_empty(b: Box) -> bool:
    return any(s.stop <= s.start for s in b)


def relative(inner: Box, outer: Box) -> Box:
    """``inner`` (absolute indices) relative to ``outer``'s origin."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True))  # type: ignore[return-value]


def contains(outer: Box, inner: Box) -> bool:
    return all(o.start <= i.start and i.stop <= o.stop for o, i in zip(outer, inner, strict=True))


def union(a: Box | None, b: Box) -> Box:
    """The smallest box holding both (``a`` None: ``b``)."""
    if a is None:
        return b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def intersect(a: Box, b: Box) -> Box | None:
    """The common part of two boxes, None when they do not overlap."""
    out = []
    for x, y in zip(a, b, strict=True):
        lo, hi = max(x.start, y.start), min(x.stop, y.stop)
        if hi <= lo:
            return None
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


def box_of(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel of ``mask`` (None: all False)."""
    sl = []
    for axis in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        if nz.size == 0:
            return None
        sl.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(sl)


def tight_box(mask: np.ndarray, where: Box) -> Box | None:
    """The smallest box (absolute indices) holding every True voxel of ``mask``, the volume's ``where`` part."""
    inner = box_of(mask)
    if inner is None:
        return None
    return tuple(slice(i.start + w.start, i.stop + w.start) for i, w in zip(inner, where, strict=True))  # type: ignore[return-value]
