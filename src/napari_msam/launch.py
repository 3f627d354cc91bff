"""Open napari with the STS_024 sample case and the Segment (M-SAM) widget docked.

    python -m napari_msam.launch [--ct] [--model PATH] [--device cpu|cuda]
                                 [--auto N] [--strategy random|center] [--screenshot OUT.png]

``--auto N`` runs the automatic N-click protocol once the model is loaded; ``--screenshot`` (implies
``--auto 10`` unless ``--auto`` is given) saves the whole window when that run is done and quits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m napari_msam.launch", description=__doc__.splitlines()[0])
    p.add_argument("--ct", action="store_true", help="open the CT sample instead of the T1 MR")
    p.add_argument("--model", metavar="PATH", help="checkpoint to use instead of the embedded default model")
    p.add_argument("--device", choices=("cpu", "cuda"), help="where the model runs (default: CUDA if present)")
    p.add_argument("--auto", type=int, metavar="N", help="run the automatic N-click protocol at start")
    p.add_argument("--strategy", choices=("random", "center"), default="center", help="click strategy for --auto")
    p.add_argument("--screenshot", metavar="OUT.png", help="save a screenshot after --auto finishes, then quit")
    p.add_argument("--size", default="1500x950", help="window size WxH (default 1500x950)")
    args = p.parse_args(argv)
    if args.screenshot and args.auto is None:
        args.auto = 10
    return args


def _focus_on_object(viewer, labels_layer) -> None:
    """Show the axial slice with the most ground-truth voxels and outline the ground truth."""
    data = np.asarray(labels_layer.data)
    if data.ndim == 3 and data.any():
        z = int(np.argmax((data > 0).sum(axis=(1, 2))))
        world_z = labels_layer.data_to_world((z, 0, 0))[0]
        viewer.dims.set_point(0, world_z)
    try:  # a cyan outline, so the model's filled labels and the truth are both visible
        from napari.utils.colormaps import DirectLabelColormap

        labels_layer.colormap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 1: (0.2, 0.9, 1.0, 1.0)})
        labels_layer.contour = 1
        labels_layer.opacity = 1.0
    except Exception:  # cosmetic only
        pass


def save_window(viewer, path: str, max_bytes: int = 500_000) -> Path:
    """Grab the whole window (canvas + dock widgets) as PNG; palette-quantised if larger than ``max_bytes``."""
    import io

    from PIL import Image

    from .atomic import atomic_write

    rgba = viewer.window.screenshot(canvas_only=False, flash=False)  # public API: the whole window
    pil = Image.fromarray(rgba).convert("RGB")
    out = io.BytesIO()
    pil.save(out, "PNG", optimize=True)
    payload = out.getvalue()
    if len(payload) > max_bytes:
        out = io.BytesIO()
        pil.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
        payload = out.getvalue()
    with atomic_write(path, "wb") as fh:
        fh.write(payload)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-msam: interactive 3D tumour segmentation")
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
        viewer.window.resize(w, h)
    except (ValueError, AttributeError):
        pass
    sample = "sts024_ct" if args.ct else "sts024_mr"
    viewer.open_sample("napari-msam", sample)
    image_name = "STS_024 CT" if args.ct else "STS_024 MR"
    _focus_on_object(viewer, viewer.layers[f"{image_name} ground truth"])
    _, widget = viewer.window.add_plugin_dock_widget("napari-msam", "Segment (M-SAM)")
    widget.controls.image_combo.setCurrentText(image_name)
    if args.device:
        for i in range(widget.controls.device_combo.count()):
            if widget.controls.device_combo.itemText(i).startswith(args.device):
                widget.controls.device_combo.setCurrentIndex(i)
    if args.model:
        widget.set_model(str(Path(args.model).expanduser()))
    viewer.reset_view()
    QTimer.singleShot(300, viewer.reset_view)  # again once the dock widget has taken its width

    state = {"started": False}

    def tick() -> None:
        if not state["started"]:
            if widget.worker.pending:
                return
            if args.auto:
                widget.controls.tabs.setCurrentWidget(widget.auto_panel)
                widget.auto_panel.n_clicks.setValue(int(args.auto))
                widget.auto_panel.strategy.setCurrentText(args.strategy)
                widget.auto_panel.run()
            state["started"] = True
            if not args.screenshot:
                timer.stop()
            return
        if widget.worker.pending or widget.busy_auto:
            return
        timer.stop()
        viewer.layers.selection.active = widget.prompts_layer()
        rows = widget.auto_panel.rows
        if rows:  # show the slice of the first click (it lies inside the object)
            image = widget.image_layer()
            viewer.dims.set_point(0, image.data_to_world(rows[0].voxel)[0])
        QTimer.singleShot(800, shoot)

    def shoot() -> None:
        out = save_window(viewer, args.screenshot)
        print(f"screenshot saved: {out} ({out.stat().st_size // 1024} KB); status: {widget.controls.status.text()}")
        widget.close_worker()
        viewer.close()

    timer = QTimer()
    timer.setInterval(200)
    timer.timeout.connect(tick)
    if args.auto or args.screenshot:
        timer.start()
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
