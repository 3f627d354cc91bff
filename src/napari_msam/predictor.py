"""The model side of an interactive session: one image, ROIs on it, cached embeddings and refinement.

Like segment-anything's ``SamPredictor``, a :class:`Predictor` owns the model and its device: it places a
ROI (the model's grid at the checkpoint's spacing, or a zoomed-out one), encodes it once (cached, LRU),
refines a ROI's logits with a click, averages flipped views when asked, paints the click prior a checkpoint
was trained with, and moves to the CPU when the GPU runs out of memory. It knows nothing about objects,
undo or the volume's mask: that is the Session's part.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .additions import Validated
from .errors import MSAMError
from .model.click_prior import ClickPrior
from .model.roi_zoom import RoiZoom
from .preprocess import RoiGeometry, prepare_roi, roi_geometry

TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (0,))  # test-time views: spatial axes flipped
MAX_TTA = len(TTA_FLIPS)


@dataclass(frozen=True)
class Window:
    """One model ROI of the current object; replaced (never mutated) so undo snapshots stay valid."""

    geometry: RoiGeometry
    low_res: torch.Tensor | None = None
    points: tuple[tuple[tuple[int, int, int], int], ...] = ()  # model-grid points fed so far (+ label)
    views: tuple[torch.Tensor, ...] | None = None  # tta > 1: each view's own logits (low_res is their mean)


def window_on_cpu(w: Window) -> Window:
    """``w`` with its logits (and every flipped view's) moved to the CPU: the GPU out-of-memory fallback."""
    return dataclasses.replace(w, low_res=None if w.low_res is None else w.low_res.cpu(),
                               views=None if w.views is None else tuple(v.cpu() for v in w.views))


def flip(t: torch.Tensor | None, axes: tuple[int, ...]) -> torch.Tensor | None:
    """``t`` (B, C, D, H, W) flipped along spatial ``axes``; flipping twice is the identity."""
    return t if t is None or not axes else torch.flip(t, [2 + a for a in axes])


def flip_points(points: torch.Tensor, axes: tuple[int, ...], size: int) -> torch.Tensor:
    """(B, N, 3) voxel indices of an S^3 ROI, mirrored along ``axes`` as :func:`flip` mirrors the image."""
    if not axes:
        return points
    out = points.clone()
    for a in axes:
        out[..., a] = size - 1 - out[..., a]
    return out


def pick_device(device: str | None = None) -> str:
    """"cuda" when available unless a device is given; asking for an absent GPU is a clear error."""
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise MSAMError(f"device {device!r} requested but no CUDA GPU is available (use --device cpu)")
    if not (str(device) == "cpu" or str(device).startswith("cuda") or str(device) == "mps"):
        raise MSAMError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    return str(device)


def _check_tta(tta: Any) -> int:
    if isinstance(tta, bool) or not isinstance(tta, (int, float)) or int(tta) != tta or not 1 <= tta <= MAX_TTA:
        raise MSAMError(f"tta must be an integer from 1 to {MAX_TTA}, got {tta!r}")
    return int(tta)


class Predictor:
    """Model calls for one image (see the module docstring).

    Arguments:
        loaded: a ``LoadedModel`` (model, config, preprocess, metadata).
        device: "cuda" / "cpu"; default: CUDA when available.
        multi_click: feed every click of the object inside the ROI (default: only the newest, as M-SAM).
        max_zoom: widest ROI as a multiple of the checkpoint's spacing; default: what the checkpoint was
            trained with (``"roi_zoom"`` metadata; none: 1, never zoom out).
        tta: flipped views, 1 (off) to 4; default: what the checkpoint was validated with (1 if nothing).
        cache_size: embeddings kept (LRU).
    """

    def __init__(self, loaded: Any, device: str | None = None, *, multi_click: bool = False,
                 max_zoom: float | None = None, tta: int | None = None, cache_size: int = 8) -> None:
        metadata = getattr(loaded, "metadata", None)
        self.validated = Validated.from_metadata(metadata)
        self.device = pick_device(device)
        self.model = loaded.model.to(self.device).eval()
        self.config = loaded.config
        self.preprocess = loaded.preprocess
        self.img_size = int(self.config.img_size)
        self.multi_click = multi_click
        self.click_prior = ClickPrior.from_metadata(metadata)
        trained = RoiZoom.from_metadata(metadata)
        if max_zoom is not None and not (math.isfinite(float(max_zoom)) and float(max_zoom) >= 1.0):
            raise MSAMError(f"max_zoom must be >= 1, got {max_zoom}")
        zmax = float(max_zoom) if max_zoom is not None else (trained.max if trained is not None else 1.0)
        self.zoom_levels = RoiZoom(max=zmax).steps() if zmax > 1.0 else [1.0]
        self.tta = _check_tta(self.validated.tta if tta is None else tta)
        self.cache_size = max(1, int(cache_size))
        self.warning: str | None = None
        self.fell_back_to_cpu = False
        self.on_cpu_fallback: Callable[[], None] | None = None  # the owner moves its own tensors
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self.volume: np.ndarray | None = None
        self.spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
        self.modality = "other"

    def set_image(self, volume: np.ndarray, spacing: tuple[float, float, float], modality: str) -> None:
        """Use a checked image (``Session.set_image`` validates it); forgets every embedding."""
        self.volume, self.spacing, self.modality = volume, spacing, modality
        self._cache.clear()

    # ------------------------------------------------------------------ ROIs
    def model_spacing(self, zoom: float = 1.0) -> tuple[float, float, float]:
        sp = self.preprocess.spacing_mm
        return (float(sp[0]) * zoom, float(sp[1]) * zoom, float(sp[2]) * zoom)

    def geometry(self, center: Sequence[float], zoom: float = 1.0) -> RoiGeometry:
        """The ROI whose model centre voxel sits at ``center`` (clipped into the volume), at ``zoom``."""
        vol = self.volume
        assert vol is not None
        c = [min(max(float(center[a]), 0.0), vol.shape[a] - 1.0) for a in range(3)]
        return roi_geometry(vol.shape, self.spacing, c, self.model_spacing(zoom), self.img_size,
                            getattr(self.preprocess, "axis_order", "SPL"))

    def distance(self, g: RoiGeometry, voxel: Sequence[float]) -> float:
        """Distance in mm from a ROI's centre to a voxel."""
        c = g.center
        return math.sqrt(sum(((voxel[a] - c[a]) * self.spacing[a]) ** 2 for a in range(3)))

    # ------------------------------------------------------------------ model calls
    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _fallback_to_cpu(self, exc: BaseException) -> None:
        self.warning = f"GPU out of memory ({exc}); continuing on the CPU"
        warnings.warn(self.warning, RuntimeWarning, stacklevel=4)
        self.fell_back_to_cpu = True
        self.device = "cpu"
        self.model = self.model.to("cpu")
        self._cache = OrderedDict((k, tuple(p.to("cpu") for p in v)) for k, v in self._cache.items())
        if self.on_cpu_fallback is not None:
            self.on_cpu_fallback()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _guarded(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except torch.cuda.OutOfMemoryError as exc:
            if self.device == "cpu":
                raise
            self._fallback_to_cpu(exc)
            return fn()

    def embedding(self, geometry: RoiGeometry, timings: dict[str, float]) -> tuple[Any, ...]:
        """The prepared embedding of every view of the ROI (cached)."""
        key = (tuple(round(s, 6) for s in geometry.start), tuple(round(s, 6) for s in geometry.step))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        t0 = time.perf_counter()

        def run() -> tuple[Any, ...]:
            roi = prepare_roi(self.volume, self.spacing, geometry.center, self.preprocess, self.img_size,
                              self.modality, self.device, geometry=geometry)
            with torch.inference_mode():
                prepared = tuple(self.model.prepare(self.model.encode(flip(roi.image, f)))
                                 for f in TTA_FLIPS[: self.tta])
            self._sync()
            return prepared

        prepared = self._guarded(run)
        timings["encode"] += time.perf_counter() - t0
        self._cache[key] = prepared
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return prepared

    def refine(self, window: Window, point: tuple[int, int, int], label: int, timings: dict[str, float]) -> Window:
        """One refinement of ``window`` with a click at model voxel ``point``; the window's logits are the prior."""
        prepared = self.embedding(window.geometry, timings)
        points = window.points + ((point, label),) if self.multi_click else ((point, label),)
        t0 = time.perf_counter()

        def run() -> list[torch.Tensor]:
            pts = torch.tensor([[p for p, _ in points]], dtype=torch.int64, device=self.device)
            lab = torch.tensor([[lb for _, lb in points]], dtype=torch.int64, device=self.device)
            # each flipped view continues its own chain of logits (a shared, averaged prior derails the loop)
            priors = window.views if window.views is not None else (window.low_res,) * self.tta
            every = window.points + ((point, label),)  # all of the object's clicks in this ROI, as in training
            every_pts = torch.tensor([[p for p, _ in every]], dtype=torch.int64, device=self.device)
            every_lab = torch.tensor([[lb for _, lb in every]], dtype=torch.int64, device=self.device)
            lows = []
            for f, view, prior in zip(TTA_FLIPS[: self.tta], prepared, priors, strict=True):
                prev = None if prior is None else prior.to(self.device)
                if self.click_prior is not None:
                    prev = self.click_prior.apply(prev, every_pts, every_lab, self.img_size,
                                                  4 * (self.img_size // self.config.patch_size))
                with torch.inference_mode():
                    lows.append(flip(self.model.refine(view, flip_points(pts, f, self.img_size), lab,
                                                       flip(prev, f)), f))
            self._sync()
            return lows

        lows = self._guarded(run)
        timings["refine"] += time.perf_counter() - t0
        low = lows[0] if len(lows) == 1 else torch.stack(lows).mean(0)
        if not bool(torch.isfinite(low).all()):
            raise MSAMError("the model produced NaN or infinite logits: the checkpoint's weights are broken "
                            "(e.g. a diverged training run); use another checkpoint")
        return dataclasses.replace(window, low_res=low, views=None if len(lows) == 1 else tuple(lows),
                                   points=window.points + ((point, label),))
