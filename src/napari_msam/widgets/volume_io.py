"""Open a CT/MR volume into the viewer and save the result beside it, from the Segment widget.

Why through the plugin's own reader and writer: spacing, orientation and modality come from the file the
same way as with File > Open, and the labels go back on the image file's own grid and affine, so they
overlay the original in any other tool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QFileDialog, QMessageBox

from ..errors import MSAMError

VOLUME_FILTER = ("Volumes (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.tif *.tiff *.dcm);;"
                 "DICOM series (any file of it) (*);;All files (*)")
GT_COLORS = {None: (0.0, 0.0, 0.0, 0.0), 1: (0.2, 0.9, 1.0, 1.0)}  # cyan: never the output's colour
OUTPUT_SEED = 0.77  # label colours of the output, unlike napari's default (seed 0.5) of a ground truth


def add_volume_layers(viewer: Any, path: str, gt_path: str | None = None) -> str:
    """Read ``path`` (and its ground truth ``gt_path``) with the plugin's reader; returns the image's layer name."""
    from .._reader import read_layers, volume_to_layer_data
    from ..io import read_volume

    layers = read_layers(path)
    images = [ld for ld in layers if ld[2] == "image"]
    if not images:
        raise MSAMError(f"{path}: this looks like a label file, not an image; open the image first")
    data, kwargs, _ = images[0]
    layer = viewer.add_image(data, **kwargs)
    if gt_path:
        vol = read_volume(gt_path, is_label=True)
        if tuple(vol.data.shape) != tuple(np.shape(data)):
            raise MSAMError(f"{gt_path}: shape {tuple(vol.data.shape)} differs from the image's "
                            f"{tuple(np.shape(data))}; the ground truth must be on the image's grid")
        gdata, gkw, _ = volume_to_layer_data(vol, f"{layer.name} ground truth", as_label=True)
        gkw.update(colormap=GT_COLORS, opacity=0.5)
        viewer.add_labels(gdata, **gkw)
    return layer.name


def open_volume_dialog(parent: Any, viewer: Any) -> str | None:
    """Ask for a volume (and optionally its ground truth), open them; the image layer's name or None."""
    path, _ = QFileDialog.getOpenFileName(parent, "Open a CT / MR volume (for DICOM: any file of the series)",
                                          "", VOLUME_FILTER)
    if not path:
        return None
    gt = None
    ans = QMessageBox.question(parent, "Ground truth", "Open a ground-truth mask of this volume too?")
    if ans == QMessageBox.StandardButton.Yes:
        gt, _ = QFileDialog.getOpenFileName(parent, "Ground-truth mask", str(Path(path).parent), VOLUME_FILTER)
    return add_volume_layers(viewer, path, gt or None)


def add_output_labels(viewer: Any, image: Any, base: str) -> Any:
    """A new empty Labels layer on ``image``'s grid, coloured unlike a ground truth's default colours."""
    from napari.utils.colormaps import label_colormap

    meta = {k: v for k, v in dict(image.metadata).items() if k != "modality"}
    meta["source_image"] = image.name
    name, n = base, 2
    while name in viewer.layers:
        name, n = f"{base} [{n}]", n + 1
    return viewer.add_labels(
        np.zeros(image.data.shape, dtype=np.uint16), name=name, scale=image.scale, translate=image.translate,
        rotate=image.rotate, shear=image.shear, metadata=meta, opacity=0.6,
        colormap=label_colormap(seed=OUTPUT_SEED),
    )


def save_labels(layer: Any, path: str, image_path: str | None, overwrite: bool = False) -> str:
    """Write ``layer`` to ``path`` (NIfTI on the source grid and affine, or TIFF) by the project's output
    rule: never over the image file, an existing file only with ``overwrite``."""
    from .._writer import write_labels
    from ..io import MASK_SUFFIXES, check_output

    check_output(path, inputs=[image_path], overwrite=overwrite, suffixes=MASK_SUFFIXES)
    attrs = {"metadata": dict(layer.metadata), "scale": tuple(layer.scale), "translate": tuple(layer.translate)}
    return write_labels(path, np.asarray(layer.data), attrs)[0]


def save_labels_dialog(parent: Any, layer: Any, image: Any) -> str | None:
    """Ask where to save the output ``layer`` (beside ``image``'s file), confirm a replacement, write it."""
    from ..errors import OutputExistsError
    from ..io import file_stem

    if layer is None:
        raise MSAMError("no output labels to save yet: click on an object first")
    source = (image.metadata or {}).get("source_path") or (layer.metadata or {}).get("source_path")
    folder = Path(source).parent if source else Path.cwd()
    stem = file_stem(source) if source else image.name.replace(" ", "_")
    path, _ = QFileDialog.getSaveFileName(parent, "Save labels", str(folder / f"{stem}_labels.nii.gz"),
                                          "NIfTI (*.nii.gz *.nii);;TIFF (*.tif *.tiff)")
    if not path:
        return None
    try:
        return save_labels(layer, path, source)
    except OutputExistsError:
        ans = QMessageBox.question(parent, "Replace file", f"{path} exists. Replace it?")
        if ans != QMessageBox.StandardButton.Yes:
            return None
        return save_labels(layer, path, source, overwrite=True)
