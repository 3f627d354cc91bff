"""How an object's mask is written into a Labels array: overwrite policies, per-object undo, CT windows.

Qt-free and napari-free (numpy only; a layer is anything with ``.data`` and ``.refresh()``), so the
label-writing rules are testable without a GUI.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import MSAMError

POLICIES = {
    "keep existing": "Never overwrite voxels that hold another label (default). Voxels of the current "
                     "label inside the model's box follow the model.",
    "only empty": "Only fill voxels that hold no label; never erase anything.",
    "overwrite": "The model's mask wins over any existing label inside its box.",
}

# name -> (window width, level) in HU
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue (W400 L40)": (400.0, 40.0),
    "lung (W1500 L-600)": (1500.0, -600.0),
    "bone (W1800 L400)": (1800.0, 400.0),
    "brain (W80 L40)": (80.0, 40.0),
}


def compose_labels(under: np.ndarray, mask: np.ndarray, label_id: int, policy: str) -> np.ndarray:
    """New label values for a box, given what lies under the current object (``under``) and its mask.

    ``under`` is the layer content without the current object's own writes. Pure numpy, so the policy
    rules are testable without Qt.
    """
    k = under.dtype.type(label_id)
    mask = np.asarray(mask, dtype=bool)
    if policy == "overwrite":
        out = np.where(mask, k, under)
        out[(under == k) & ~mask] = 0
    elif policy == "keep existing":
        writable = (under == 0) | (under == k)
        out = np.where(mask & writable, k, under)
        out[(under == k) & ~mask] = 0
    elif policy == "only empty":
        out = np.where(mask & (under == 0), k, under)
    else:
        raise MSAMError(f"unknown overwrite policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return out.astype(under.dtype, copy=False)


def window_to_limits(width: float, level: float) -> tuple[float, float]:
    """Display contrast limits for a CT window (width, level) in HU."""
    return (level - width / 2.0, level + width / 2.0)


def next_free_id(data: np.ndarray) -> int:
    """The label id after the largest one in use (1 for an empty layer)."""
    data = np.asarray(data)
    return max(1, int(data.max()) + 1 if data.size else 1)


def timing_text(timings: dict[str, float], seconds: float) -> str:
    """Short status text for a click's timings (only the stages that took noticeable time)."""
    total = timings.get("total", seconds)
    parts = [f"{k} {v:.2f}" for k, v in timings.items() if k in ("encode", "refine", "paste", "edges") and v >= 0.005]
    return f"{total:.2f} s" + (f" ({', '.join(parts)})" if parts else "")


class ObjectWrites:
    """Which voxels the current object changed and what lay under them.

    Why: undo, reset and a replayed object must put back exactly what was there before, and the
    policy must judge a new mask against the layer *without* the object's own earlier writes. The
    record covers only the bounding box of the object's writes (grown as it grows), so a tumour in a
    512 x 512 x 300 CT costs megabytes, not two copies of the volume.
    """

    def __init__(self) -> None:
        self.layer: Any = None
        self.shape: tuple[int, ...] | None = None
        self.box: tuple[slice, ...] | None = None  # the region ``written`` / ``under`` cover
        self.written: np.ndarray | None = None     # voxels the current object changed (inside ``box``)
        self.under: np.ndarray | None = None       # layer values under those voxels
        self.label_id: int | None = None           # the id the object's voxels carry now

    @property
    def active(self) -> bool:
        """True while an object is being tracked (between ``start`` and ``commit``)."""
        return self.layer is not None

    def start(self, layer: Any) -> None:
        """Track ``layer`` (a fresh record when the layer or its shape changed; otherwise keep going)."""
        if self.layer is not layer or self.shape != tuple(layer.data.shape):
            self.layer = layer
            self.shape = tuple(layer.data.shape)
            self.box = self.written = self.under = None
            self.label_id = None

    def valid(self, layers: Any) -> bool:
        """True while the tracked layer is still in ``layers`` with the shape it had."""
        layer = self.layer
        return layer is not None and layer in layers and tuple(layer.data.shape) == self.shape

    def _grow(self, bb: tuple[slice, ...]) -> tuple[slice, ...]:
        """Make the record cover ``bb``; returns ``bb`` relative to the record's box."""
        old = self.box
        new = bb if old is None else tuple(
            slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(old, bb, strict=True))
        if new != old:
            shape = tuple(s.stop - s.start for s in new)
            written = np.zeros(shape, dtype=bool)
            under = np.zeros(shape, dtype=self.layer.data.dtype)
            if old is not None:
                rel = tuple(slice(a.start - n.start, a.stop - n.start) for a, n in zip(old, new, strict=True))
                written[rel] = self.written
                under[rel] = self.under
            self.box, self.written, self.under = new, written, under
        return tuple(slice(a.start - n.start, a.stop - n.start) for a, n in zip(bb, self.box, strict=True))

    def relabel(self, label_id: int) -> None:
        """The label id changed mid-object: the object's earlier voxels take the new id too."""
        if self.box is None or self.label_id is None or label_id == self.label_id:
            return
        data = self.layer.data
        region = np.array(data[self.box])
        sel = self.written & (region == self.label_id)
        if sel.any():
            region[sel] = label_id
            data[self.box] = region
        self.label_id = int(label_id)

    def write(self, bbox: Any, mask: np.ndarray, label_id: int, policy: str) -> None:
        """Compose ``mask`` into the layer inside ``bbox`` and remember what changed."""
        data = self.layer.data
        bb = tuple(slice(*sl.indices(n)[:2]) for sl, n in zip(tuple(bbox), self.shape, strict=True))
        self.relabel(label_id)
        loc = self._grow(bb)
        cur = np.asarray(data[bb])
        wrote = self.written[loc]
        under = np.where(wrote, self.under[loc], cur)
        new = compose_labels(under, mask, label_id, policy)
        changed = new != under
        data[bb] = new
        self.under[loc] = np.where(changed, under, self.under[loc])
        self.written[loc] = changed
        self.label_id = int(label_id)

    def restore(self, refresh: bool = True) -> None:
        """Put back what was under the object (undo all its writes)."""
        if self.written is not None and self.written.any():
            data = self.layer.data
            region = np.array(data[self.box])
            region[self.written] = self.under[self.written]
            data[self.box] = region
            self.written[:] = False
        if refresh and self.layer is not None:
            self.layer.refresh()

    def commit(self) -> None:
        """Keep what is written and stop tracking (the object is accepted or abandoned as is)."""
        self.layer = self.shape = self.box = self.written = self.under = None
        self.label_id = None

    @property
    def voxels(self) -> int:
        return int(self.written.sum()) if self.written is not None else 0
