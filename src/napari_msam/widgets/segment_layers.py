"""Which layers the Segment widget works on: the image and the output Labels layer.

Why apart: the rules for what can be segmented (3-D, single channel, numbers), which Labels layer
receives the objects and how the layer lists follow the viewer are one concern, independent of the click
loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox

from ..errors import MSAMError
from ._utils import fill_combo
from .segment_ui import NEW_OUTPUT, OUTPUT_NAME
from .volume_io import add_output_labels


class LayerChoice:
    """The image and output layer choosers and the lookups behind them.

    ``on_changed()`` runs when the viewer's layers change (added, removed, moved, renamed);
    ``on_labels(names)`` hears the Labels layers after each refresh; ``on_output_added(layer)`` runs
    when an output layer had to be made.
    """

    def __init__(self, viewer: Any, image_combo: QComboBox, output_combo: QComboBox, *,
                 on_changed: Callable[[], None], on_labels: Callable[[list[str]], None],
                 on_output_added: Callable[[Any], None]) -> None:
        self.viewer = viewer
        self.image_combo = image_combo
        self.output_combo = output_combo
        self._on_changed = on_changed
        self._on_labels = on_labels
        self._on_output_added = on_output_added
        self._image_cache: tuple[int, np.ndarray] | None = None

    def _changed(self, event: Any = None) -> None:
        self._on_changed()

    def watch(self) -> None:
        """Follow the viewer's layer list (``on_changed``)."""
        ev = self.viewer.layers.events
        for e in (ev.inserted, ev.removed, ev.moved):
            e.connect(self._changed)

    def unwatch(self) -> None:
        ev = self.viewer.layers.events
        for e in (ev.inserted, ev.removed, ev.moved):
            try:
                e.disconnect(self._changed)
            except Exception:
                pass
        for layer in self.viewer.layers:
            try:
                layer.events.name.disconnect(self._changed)
            except Exception:
                pass

    def _layers_of(self, kind: str) -> list[Any]:
        from napari.layers import Image, Labels

        cls = {"image": Image, "labels": Labels}[kind]
        return [lay for lay in self.viewer.layers if isinstance(lay, cls)]

    def refresh(self) -> None:
        """Repopulate the layer choosers, keeping the current choices when they still exist."""
        for layer in self.viewer.layers:
            layer.events.name.connect(self._changed)
        images = [lay.name for lay in self._layers_of("image")]
        labels = [lay.name for lay in self._layers_of("labels")]
        fill_combo(self.image_combo, images, keep=True)
        outs = [n for n in labels if "ground truth" not in n.lower() and "mask" not in n.lower()] + \
               [n for n in labels if "ground truth" in n.lower() or "mask" in n.lower()]
        fill_combo(self.output_combo, [NEW_OUTPUT, *outs], keep=True,
                   prefer=OUTPUT_NAME if OUTPUT_NAME in labels else None)
        self._on_labels(labels)

    def image_name(self) -> str:
        return self.image_combo.currentText()

    def image_layer(self) -> Any:
        """The chosen image layer, or raise MSAMError with what to do."""
        from napari.layers import Image

        name = self.image_combo.currentText()
        if not name:
            raise MSAMError("no image layer: open a 3-D image (Open volume…, File > Open, or File > Open Sample)")
        if name not in self.viewer.layers:
            raise MSAMError(f"the image layer {name!r} no longer exists")
        layer = self.viewer.layers[name]
        if not isinstance(layer, Image):
            raise MSAMError(f"{name!r} is a {type(layer).__name__} layer, not an image")
        if getattr(layer, "multiscale", False):
            raise MSAMError(f"{name!r} is a multiscale image; open a single-resolution 3-D volume")
        if getattr(layer, "rgb", False):
            raise MSAMError(f"{name!r} is an RGB image; M-SAM needs a single-channel 3-D volume")
        if layer.ndim != 3:
            raise MSAMError(f"{name!r} has {layer.ndim} dimensions; M-SAM needs a 3-D volume "
                            + ("(this is a 2-D image)" if layer.ndim == 2 else "(choose one channel / time point)"))
        return layer

    def image_array(self, layer: Any) -> np.ndarray:
        """``layer``'s data as a numeric array (kept while the layer's data object stays the same)."""
        key = id(layer.data)
        if self._image_cache is None or self._image_cache[0] != key:
            arr = np.asarray(layer.data)
            if arr.dtype.kind not in "biuf":
                raise MSAMError(f"{layer.name!r} has data of type {arr.dtype}, not numbers")
            self._image_cache = (key, arr)
        return self._image_cache[1]

    def output_layer(self, create: bool = True) -> Any:
        """The chosen output Labels layer (created to match the image when missing)."""
        from napari.layers import Labels

        image = self.image_layer()
        name = self.output_combo.currentText()
        if name and name != NEW_OUTPUT and name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if not isinstance(layer, Labels):
                raise MSAMError(f"the output {name!r} is not a Labels layer")
            if tuple(layer.data.shape) != tuple(image.data.shape):
                raise MSAMError(f"the output {name!r} has shape {tuple(layer.data.shape)} but the image "
                                f"{image.name!r} has {tuple(image.data.shape)}; choose <new> to make one")
            return layer
        if not create:
            return None
        layer = add_output_labels(self.viewer, image, OUTPUT_NAME)
        self.refresh()
        self.output_combo.setCurrentText(layer.name)
        self._on_output_added(layer)
        return layer
