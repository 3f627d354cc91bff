"""The "M-SAM prompts" Points layer: creation, polarity colours, point <-> voxel mapping, key bindings.

Why a separate owner: the widget must tell its own edits of the layer (``updating``) from the user's
clicks, and every edit has to keep the per-point polarity feature and colours consistent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import MSAMError

log = logging.getLogger(__name__)

PROMPTS_NAME = "M-SAM prompts"
POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"

SHORTCUTS = {"t": "toggle positive / negative", "u": "undo last click", "r": "reset object",
             "n": "accept object, next label id"}

Click = tuple[tuple[int, int, int], bool]


def layer_token(layer: Any) -> Any:
    """A stable identity for a layer (ids of deleted layers can be reused)."""
    return getattr(layer, "unique_id", None) or id(layer)


def set_points(layer: Any, data: np.ndarray, positive: np.ndarray, default: bool) -> None:
    """Replace the points (and their polarity); new points keep getting ``default`` polarity."""
    colors = np.asarray([[0.0, 1.0, 0.0, 1.0] if p else [1.0, 0.0, 0.0, 1.0] for p in positive]).reshape(-1, 4)
    layer.selected_data = set()
    layer.data = np.asarray(data, dtype=float).reshape(-1, 3)
    layer.features = {"positive": np.asarray(positive, dtype=bool)}
    if len(data):
        layer.face_color = colors
    layer.feature_defaults = {"positive": bool(default)}   # assigning features resets the defaults
    layer.current_face_color = POSITIVE_COLOR if default else NEGATIVE_COLOR


def bind_layer_keys(layer: Any, actions: dict[str, Callable[..., Any]]) -> None:
    """Bind the shortcut keys on a layer (overriding napari's), so they work while it is active."""
    for key, fn in actions.items():
        try:
            layer.bind_key(key, fn, overwrite=True)
        except Exception:  # key binding is a convenience; buttons always work
            log.debug("could not bind %s on %s", key, layer.name)


def bind_viewer_keys(viewer: Any, actions: dict[str, Callable[..., Any]]) -> list[str]:
    """Bind the keys viewer-wide where still free; returns the keys bound (to unbind on close)."""
    bound = []
    for key, fn in actions.items():
        try:
            viewer.bind_key(key, fn, overwrite=False)
            bound.append(key)
        except Exception:
            log.debug("viewer key %s already taken", key)
    return bound


def unbind_viewer_keys(viewer: Any, keys: Sequence[str]) -> None:
    for key in keys:
        try:
            viewer.bind_key(key, None)
        except Exception:
            pass


class Prompts:
    """Owns the prompts Points layer of one viewer (the clicks and the polarity are kept in ``segment_clicks``)."""

    def __init__(self, viewer: Any, on_data: Callable[[Any], None],
                 bind_keys: Callable[[Any], None]) -> None:
        self.viewer = viewer
        self._on_data = on_data          # connected to the layer's data events
        self._bind_keys = bind_keys
        self.layer: Any = None
        self.updating = False            # True while we edit the layer ourselves
        self._ray: tuple | None = None   # (position, view direction, displayed dims) of the last 3-D press

    def ensure(self, image: Any, positive: bool) -> Any:
        """The prompts layer with the image's transform (made or adopted when missing), kept on top."""
        from napari.layers import Points

        layer = self.layer
        if layer is None or layer not in self.viewer.layers:
            if PROMPTS_NAME in self.viewer.layers and isinstance(self.viewer.layers[PROMPTS_NAME], Points):
                layer = self.viewer.layers[PROMPTS_NAME]
                if layer.ndim != 3:
                    raise MSAMError(f"the layer {PROMPTS_NAME!r} is not 3-D; rename or delete it")
            else:
                layer = Points(
                    np.zeros((0, 3)), ndim=3, name=PROMPTS_NAME, scale=image.scale, translate=image.translate,
                    rotate=image.rotate, shear=image.shear, size=3, border_color="white", border_width=0.15,
                    face_color=POSITIVE_COLOR if positive else NEGATIVE_COLOR,
                    features={"positive": np.zeros(0, dtype=bool)},
                    feature_defaults={"positive": positive},
                )
                self.updating = True
                try:
                    self.viewer.layers.append(layer)
                finally:
                    self.updating = False
            layer.events.data.connect(self._on_data)
            if self._record_press not in layer.mouse_drag_callbacks:  # before napari's own "add"
                layer.mouse_drag_callbacks.insert(0, self._record_press)
            self._bind_keys(layer)
            self.layer = layer
            self.apply_polarity(positive)
        elif self.viewer.layers.index(layer) != len(self.viewer.layers) - 1:
            self.viewer.layers.move(self.viewer.layers.index(layer), len(self.viewer.layers))
        return layer

    def _record_press(self, layer: Any, event: Any) -> None:
        """Remember the ray of a press in the 3-D view: the point napari adds lies on the slider plane."""
        dims = list(getattr(event, "dims_displayed", []) or [])
        direction = getattr(event, "view_direction", None)
        if len(dims) == 3 and direction is not None:
            self._ray = (np.asarray(event.position, dtype=float), np.asarray(direction, dtype=float), dims)
        else:
            self._ray = None

    def take_ray(self) -> tuple | None:
        """The ray of the press that made the newest point (once)."""
        ray, self._ray = self._ray, None
        return ray

    def move_point(self, i: int, image: Any, voxel: Sequence[int]) -> None:
        """Put point ``i`` on ``voxel`` of ``image`` (not counted as a user edit)."""
        layer = self.layer
        data = np.array(layer.data, dtype=float)
        data[i] = self.voxel_to_data(image, voxel)
        self.set(data, layer.features["positive"].to_numpy(), bool(layer.feature_defaults["positive"].iloc[0]))

    def forget_if_removed(self) -> bool:
        """Drop the layer when the user deleted it; True when that happened."""
        if self.layer is not None and self.layer not in self.viewer.layers:
            self.layer = None
            return True
        return False

    def apply_polarity(self, positive: bool) -> None:
        """New points get this polarity's feature and colour (existing points keep theirs)."""
        layer = self.layer
        if layer is None:
            return
        self.updating = True
        try:
            layer.selected_data = set()   # so the new colour does not repaint selected points
            layer.feature_defaults = {"positive": positive}
            layer.current_face_color = POSITIVE_COLOR if positive else NEGATIVE_COLOR
        finally:
            self.updating = False

    def set(self, data: np.ndarray, positive: np.ndarray, default: bool) -> None:
        """Replace the points without it counting as a user edit."""
        self.updating = True
        try:
            set_points(self.layer, data, positive, default)
        finally:
            self.updating = False

    def remove(self, indices: list[int], default: bool) -> None:
        layer = self.layer
        if layer is None:
            return
        keep = np.ones(len(layer.data), dtype=bool)
        keep[[i for i in indices if 0 <= i < len(keep)]] = False
        self.set(layer.data[keep], layer.features["positive"].to_numpy()[keep], default)

    def show_clicks(self, image: Any, clicks: list[Click], default: bool) -> None:
        """Make the layer show exactly these clicks (voxels of ``image``)."""
        layer = self.layer
        if clicks:
            vox = np.asarray([c[0] for c in clicks], dtype=float)
            world = np.asarray([image.data_to_world(v) for v in vox])
            data = np.asarray([layer.world_to_data(w) for w in world])[:, -3:]
            pos = np.asarray([c[1] for c in clicks], dtype=bool)
        else:
            data, pos = np.zeros((0, 3)), np.zeros(0, dtype=bool)
        self.set(data, pos, default)
        self.apply_polarity(default)

    def voxel_to_data(self, image: Any, voxel: Sequence[int]) -> np.ndarray:
        """Layer coordinates of an image voxel (the two layers may have different transforms)."""
        world = image.data_to_world(np.asarray(voxel, dtype=float))
        return np.asarray(self.layer.world_to_data(world), dtype=float)[-3:]

    def point_voxel(self, image: Any, i: int) -> tuple[int, int, int] | None:
        """The image voxel under point ``i``, or None when it lies outside the image."""
        layer = self.layer
        world = layer.data_to_world(layer.data[i])
        data = np.asarray(image.world_to_data(world), dtype=float)[-3:]
        vox = tuple(int(np.round(v)) for v in data)
        shape = image.data.shape
        if not all(0 <= v < n for v, n in zip(vox, shape, strict=True)):
            return None
        return (vox[0], vox[1], vox[2])

    def polarity(self, i: int, default: bool) -> bool:
        layer = self.layer
        return bool(layer.features["positive"].iloc[i]) if "positive" in layer.features else default

    def match_transform(self, image: Any) -> None:
        """Give the layer the image's transform, so clicks map to the voxels the user sees."""
        layer = self.layer
        for attr in ("scale", "translate", "rotate", "shear"):
            try:
                if not np.allclose(np.asarray(getattr(layer, attr)), np.asarray(getattr(image, attr))):
                    setattr(layer, attr, getattr(image, attr))
            except (ValueError, TypeError):
                pass

    def disconnect(self) -> None:
        if self.layer is not None:
            try:
                self.layer.events.data.disconnect(self._on_data)
            except Exception:
                pass
