"""The Qt-free interactive segmentation session (see docs/session.md).

One :class:`Session` holds an image, the current object (its clicks, model windows and mask) and the
accepted objects (``labels``). Each click is one refinement iteration of the model, as in M-SAM: the
newest click plus the previous low-resolution logits. The image embedding of a ROI is computed once and
cached. Large objects: when the mask reaches a ROI face that lies inside the volume, the ROI is re-centred
on the mask if the mask fits; a checkpoint trained with zoom augmentation (``model.roi_zoom``) then zooms
out (the same grid at a coarser spacing, so the model sees the object whole); past that, overlapping
windows (50 % overlap) are added with the current logits as their prior. With edge refinement on (by
default for MR, ``edge_refine``), what the user sees is the model's mask snapped to image edges
(:mod:`napari_msam.edge_refine`); the model's own chain of logits is not changed by it.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from .edge_refine import EDGE_MODES, EdgeRefiner, applies
from .errors import ClickOutsideError, InvalidVolumeError, MSAMError
from .io import check_volume_array
from .model.click_prior import ClickPrior
from .model.roi_zoom import RoiZoom
from .preprocess import (
    MODALITIES,
    RoiGeometry,
    guess_modality,
    model_to_array,
    paste_back,
    prepare_roi,
    resample_logits,
    roi_geometry,
)

Box = tuple[slice, slice, slice]


@dataclass
class ClickResult:
    """What one click (or undo) changed: the box of the full volume and the object's mask inside it."""

    bbox: Box
    mask: np.ndarray
    probabilities: np.ndarray | None
    timings: dict[str, float]
    object_id: int


@dataclass(frozen=True)
class _Window:
    """One model ROI of the current object; replaced (never mutated) so history snapshots stay valid."""

    geometry: RoiGeometry
    low_res: torch.Tensor | None = None
    points: tuple[tuple[tuple[int, int, int], int], ...] = ()  # model-grid points fed so far (+ label)
    views: tuple[torch.Tensor, ...] | None = None  # tta > 1: each view's own logits (low_res is their mean)


@dataclass
class _Step:
    """Undo record of one click: the ROIs, clicks and object extent before it, and the old mask voxels of
    every box it overwrote (only those boxes, never the whole volume)."""

    windows: list[_Window]
    clicks: list[tuple[tuple[int, int, int], bool]]
    extent: Box | None = None
    zoom: float = 1.0
    patches: list[tuple[Box, np.ndarray]] = field(default_factory=list)
    shown_extent: Box | None = None  # edge refinement: the refined object's box before the click
    shown_patch: tuple[Box, np.ndarray] | None = None  # and the refined voxels the click overwrote
    pending: bool = False  # whether edge refinement was pending before the click


def _empty(b: Box) -> bool:
    return any(s.stop <= s.start for s in b)


def _rel(inner: Box, outer: Box) -> Box:
    """``inner`` (absolute indices) relative to ``outer``'s origin."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True))  # type: ignore[return-value]


def _contains(outer: Box, inner: Box) -> bool:
    return all(o.start <= i.start and i.stop <= o.stop for o, i in zip(outer, inner, strict=True))


def _union(a: Box | None, b: Box) -> Box:
    if a is None:
        return b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _intersect(a: Box, b: Box) -> Box | None:
    out = []
    for x, y in zip(a, b, strict=True):
        lo, hi = max(x.start, y.start), min(x.stop, y.stop)
        if hi <= lo:
            return None
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


def _box_of(mask: np.ndarray) -> tuple[slice, ...] | None:
    sl = []
    for axis in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        if nz.size == 0:
            return None
        sl.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(sl)


def _tight_box(mask: np.ndarray, where: Box) -> Box | None:
    """The smallest box (absolute indices) holding every True voxel of ``mask``, the volume's ``where`` part."""
    inner = _box_of(mask)
    if inner is None:
        return None
    return tuple(slice(i.start + w.start, i.stop + w.start) for i, w in zip(inner, where, strict=True))  # type: ignore[return-value]


def _window_on_cpu(w: _Window) -> _Window:
    """``w`` with its logits (and every TTA view's) moved to the CPU: the GPU out-of-memory fallback."""
    return dataclasses.replace(w, low_res=None if w.low_res is None else w.low_res.cpu(),
                               views=None if w.views is None else tuple(v.cpu() for v in w.views))


TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (0,))  # test-time views: spatial axes flipped
MAX_TTA = len(TTA_FLIPS)


def _flip(t: torch.Tensor | None, axes: tuple[int, ...]) -> torch.Tensor | None:
    """``t`` (B, C, D, H, W) flipped along spatial ``axes``; flipping twice is the identity."""
    return t if t is None or not axes else torch.flip(t, [2 + a for a in axes])


def _flip_points(points: torch.Tensor, axes: tuple[int, ...], size: int) -> torch.Tensor:
    """(B, N, 3) voxel indices of an S^3 ROI, mirrored along ``axes`` as ``_flip`` mirrors the image."""
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


class Session:
    """Interactive segmentation of one image with one model.

    Arguments:
        loaded: a ``napari_msam.model.weights.LoadedModel`` (model, config, preprocess, metadata).
        device: "cuda" / "cpu"; default: CUDA when available. A CUDA out-of-memory error switches the
            session to the CPU with a warning (``self.warning``, ``self.fell_back_to_cpu``).
        threads: ``torch.set_num_threads`` for CPU inference.
        multi_click: feed all clicks of the object inside the ROI at each step (default: only the newest,
            as the reference).
        auto_extend: re-centre / zoom out / add windows when the mask reaches a ROI face (large objects).
        max_zoom: widest ROI as a multiple of the checkpoint's spacing; default: what the checkpoint was
            trained with (``"roi_zoom"`` metadata; none means 1 = never zoom out).
        max_windows: cap on ROIs per object.
        return_probabilities: fill ``ClickResult.probabilities`` (sigmoid inside the box; costs a pass over
            the box on the CPU, so off by default).
        tta: test-time flips, 1 (off) to 4: the ROI is also encoded flipped along w, then h, then d, each
            click refined in every view and the logits averaged (the model was trained with random flips).
            Costs ``tta`` x the encoder and refine time.
        edge_refine: "auto" (default: MR images only, where it was measured to help), "on" or "off":
            snap the model's mask to image edges after every click (``napari_msam.edge_refine``); an
            :class:`~napari_msam.edge_refine.EdgeRefiner` sets its parameters (and means "on").
    """

    def __init__(
        self,
        loaded: Any,
        device: str | None = None,
        threads: int | None = None,
        *,
        multi_click: bool = False,
        auto_extend: bool = True,
        max_zoom: float | None = None,
        max_windows: int = 8,
        cache_size: int = 8,
        return_probabilities: bool = False,
        tta: int = 1,
        edge_refine: str | EdgeRefiner = "auto",
    ) -> None:
        if threads is not None:
            if int(threads) < 1:
                raise MSAMError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        self.loaded = loaded
        self.device = pick_device(device)
        self.model = loaded.model.to(self.device).eval()
        self.config = loaded.config
        self.preprocess = loaded.preprocess
        self.img_size = int(self.config.img_size)
        self.multi_click = multi_click
        self.click_prior = ClickPrior.from_metadata(getattr(loaded, "metadata", None))
        trained = RoiZoom.from_metadata(getattr(loaded, "metadata", None))
        if max_zoom is not None and not (math.isfinite(float(max_zoom)) and float(max_zoom) >= 1.0):
            raise MSAMError(f"max_zoom must be >= 1, got {max_zoom}")
        zmax = float(max_zoom) if max_zoom is not None else (trained.max if trained is not None else 1.0)
        self.zoom_levels = RoiZoom(max=zmax).steps() if zmax > 1.0 else [1.0]
        if isinstance(tta, bool) or not isinstance(tta, (int, float)) or int(tta) != tta or not 1 <= tta <= MAX_TTA:
            raise MSAMError(f"tta must be an integer from 1 to {MAX_TTA}, got {tta!r}")
        self.tta = int(tta)
        if isinstance(edge_refine, EdgeRefiner):
            self.edge_refiner, self.edge_refine = edge_refine, "on"
        elif isinstance(edge_refine, str) and edge_refine in EDGE_MODES:
            self.edge_refiner, self.edge_refine = EdgeRefiner(), edge_refine
        else:
            raise MSAMError(f"edge_refine must be one of {EDGE_MODES} or an EdgeRefiner, got {edge_refine!r}")
        self.auto_extend = auto_extend
        self.max_windows = max(1, int(max_windows))
        self.cache_size = max(1, int(cache_size))
        self.return_probabilities = return_probabilities
        self.warning: str | None = None
        self.fell_back_to_cpu = False
        self._volume: np.ndarray | None = None
        self.spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
        self.modality = "other"
        self.labels: np.ndarray = np.zeros((0, 0, 0), np.uint16)
        self._mask = np.zeros((0, 0, 0), bool)
        self._shown: np.ndarray | None = None  # the edge-refined object (None: refinement off for this image)
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._next_id = 1
        self._accepted: list[int] = []
        self._reset_object()

    # ------------------------------------------------------------------ image / state
    def set_image(self, volume: np.ndarray, spacing: Sequence[float] = (1, 1, 1), modality: str = "other") -> None:
        """Use a new 3-D image (array axes as ``io.read_volume`` gives them); clears every object."""
        volume = np.asarray(volume)
        check_volume_array(volume, "image")
        if volume.dtype.kind == "f":
            bad = int(np.count_nonzero(~np.isfinite(volume)))
            if bad:
                raise InvalidVolumeError(f"the image has {bad} NaN or infinite voxels; replace them first")
        if len(spacing) != 3 or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing):
            raise InvalidVolumeError(f"spacing must be 3 positive numbers, got {tuple(spacing)}")
        if modality == "auto":
            modality = guess_modality(volume)
        if modality not in MODALITIES:
            raise MSAMError(f"unknown modality {modality!r}; expected one of {MODALITIES + ('auto',)}")
        self._volume = volume
        self.spacing = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
        self.modality = modality
        self.labels = np.zeros(volume.shape, np.uint16)
        self._mask = np.zeros(volume.shape, bool)
        self._shown = np.zeros(volume.shape, bool) if applies(self.edge_refine, modality) else None
        self._cache.clear()
        self._next_id = 1
        self._accepted = []
        self._reset_object()

    def _reset_object(self) -> None:
        self._zoom = 1.0  # the current object's ROI spacing, as a multiple of the checkpoint's
        self._windows: list[_Window] = []
        self._clicks: list[tuple[tuple[int, int, int], bool]] = []
        self._history: list[_Step] = []
        # a box holding every True voxel of the current object (None: empty); may be loose, never too small
        self._extent: Box | None = None
        self._shown_extent: Box | None = None  # a box holding every True voxel of ``_shown``
        self._pending = False  # the latest step's edge refinement is deferred (``refine_edges``)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._mask.shape)

    @property
    def current_mask(self) -> np.ndarray:
        """Bool mask of the current object over the whole volume (a read-only view, no copy); edge-refined
        when refinement applies to this image (``refining``) and is not pending (``edges_pending``)."""
        v = (self._mask if self._shows_model() else self._shown).view()
        v.flags.writeable = False
        return v

    @property
    def model_mask(self) -> np.ndarray:
        """The model's own mask of the current object (before edge refinement; read-only view)."""
        v = self._mask.view()
        v.flags.writeable = False
        return v

    @property
    def refining(self) -> bool:
        """Whether the current image's masks are edge-refined (``edge_refine`` and the image's modality)."""
        return self._shown is not None

    @property
    def edges_pending(self) -> bool:
        """Whether the latest click's edge refinement was deferred (``add_click(refine_edges=False)``):
        until :meth:`refine_edges` runs, ``current_mask`` is the model's mask."""
        return self._pending

    def _shows_model(self) -> bool:
        return self._shown is None or self._pending

    def _display_extent(self) -> Box | None:
        return self._extent if self._shows_model() else self._shown_extent

    @property
    def clicks(self) -> list[tuple[tuple[int, int, int], bool]]:
        return list(self._clicks)

    @property
    def current_object_id(self) -> int:
        return self._next_id

    @property
    def objects(self) -> list[int]:
        """Ids of the accepted objects, in order."""
        return list(self._accepted)

    @property
    def n_windows(self) -> int:
        return len(self._windows)

    @property
    def zoom(self) -> float:
        """The current object's ROI zoom (1: the checkpoint's spacing; 2: twice as coarse, twice as wide)."""
        return self._zoom

    def reset(self) -> None:
        """Forget the current object (its clicks, mask and undo history)."""
        if self._extent is not None:
            self._mask[self._extent] = False
        if self._shown is not None and self._shown_extent is not None:
            self._shown[self._shown_extent] = False
        self._reset_object()

    def accept(self) -> int:
        """Freeze the current object into ``labels`` under its id and start the next object. A pending
        edge refinement is applied first, so the frozen object does not depend on when it ran."""
        self._require_image()
        if self._pending:
            self.refine_edges()
        mask, box = (self._mask, self._extent) if self._shown is None else (self._shown, self._shown_extent)
        if box is None or not mask[box].any():
            raise MSAMError("the current object is empty: add a click before accepting")
        oid = self._next_id
        if oid > np.iinfo(self.labels.dtype).max:
            raise MSAMError("too many objects for the label volume")
        self.labels[box][mask[box]] = oid
        self._accepted.append(oid)
        self._next_id += 1
        self.reset()
        return oid

    def _require_image(self) -> np.ndarray:
        if self._volume is None:
            raise MSAMError("no image: call set_image() first")
        return self._volume

    def _check_voxel(self, voxel: Sequence[float]) -> tuple[int, int, int]:
        vol = self._require_image()
        try:
            vals = [float(v) for v in voxel]
        except (TypeError, ValueError) as exc:
            raise ClickOutsideError(f"a click needs 3 numeric voxel indices, got {voxel!r}") from exc
        if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
            raise ClickOutsideError(f"a click needs 3 finite voxel indices, got {tuple(voxel)}")
        out = tuple(int(round(v)) for v in vals)
        if not all(0 <= out[a] < vol.shape[a] for a in range(3)):
            raise ClickOutsideError(f"click {tuple(voxel)} is outside the image of shape {vol.shape}")
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ model calls
    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _fallback_to_cpu(self, exc: BaseException) -> None:
        self.warning = f"GPU out of memory ({exc}); continuing on the CPU"
        warnings.warn(self.warning, RuntimeWarning, stacklevel=3)
        self.fell_back_to_cpu = True
        self.device = "cpu"
        self.model = self.model.to("cpu")
        self._cache = OrderedDict((k, tuple(p.to("cpu") for p in v)) for k, v in self._cache.items())
        self._windows = [_window_on_cpu(w) for w in self._windows]
        for step in self._history:
            step.windows = [_window_on_cpu(w) for w in step.windows]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _guarded(self, fn, *args):
        try:
            return fn(*args)
        except torch.cuda.OutOfMemoryError as exc:
            if self.device == "cpu":
                raise
            self._fallback_to_cpu(exc)
            return fn(*args)

    def _embedding(self, geometry: RoiGeometry, timings: dict[str, float]):
        key = (tuple(round(s, 6) for s in geometry.start), tuple(round(s, 6) for s in geometry.step))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        t0 = time.perf_counter()

        def run():
            roi = prepare_roi(
                self._volume, self.spacing, geometry.center, self.preprocess, self.img_size,
                self.modality, self.device, geometry=geometry,
            )
            with torch.inference_mode():  # one prepared embedding per TTA view
                prepared = tuple(self.model.prepare(self.model.encode(_flip(roi.image, f)))
                                 for f in TTA_FLIPS[: self.tta])
            self._sync()
            return prepared

        prepared = self._guarded(run)
        timings["encode"] += time.perf_counter() - t0
        self._cache[key] = prepared
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return prepared

    def _refine(self, window: _Window, point: tuple[int, int, int], label: int,
                timings: dict[str, float]) -> _Window:
        prepared = self._embedding(window.geometry, timings)
        points = window.points + ((point, label),) if self.multi_click else ((point, label),)
        t0 = time.perf_counter()

        def run():
            pts = torch.tensor([[p for p, _ in points]], dtype=torch.int64, device=self.device)
            lab = torch.tensor([[lb for _, lb in points]], dtype=torch.int64, device=self.device)
            # each TTA view continues its own chain of logits (a shared, averaged prior derails the loop)
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
                    lows.append(_flip(self.model.refine(view, _flip_points(pts, f, self.img_size), lab,
                                                        _flip(prev, f)), f))
            self._sync()
            return lows

        lows = self._guarded(run)
        timings["refine"] += time.perf_counter() - t0
        low = lows[0] if len(lows) == 1 else torch.stack(lows).mean(0)
        return dataclasses.replace(window, low_res=low, views=None if len(lows) == 1 else tuple(lows),
                                   points=window.points + ((point, label),))

    # ------------------------------------------------------------------ pasting
    def _paste(self, window: _Window, step: _Step, timings: dict[str, float], *,
               keep: list[Box] | None = None) -> tuple[Box, np.ndarray]:
        """Write the window's prediction into its native box; voxels inside any box of ``keep`` stay.

        Only the part of the box that can change is written (and saved for undo): the region where the
        new logits can be > 0 plus the object's previous extent inside the box. Everything else in the box
        is False before and after. Returns the written box and the float logits (probabilities mode only).
        """
        t0 = time.perf_counter()
        assert window.low_res is not None
        full = self.return_probabilities
        pasted = paste_back(window.low_res, window.geometry, full=full, mask_only=not full)
        box = pasted.bbox
        region = pasted.region if pasted.region is not None else box
        has_new = not _empty(region)
        prev = None if self._extent is None else _intersect(self._extent, box)
        if full:
            write = box
        elif has_new:
            write = region if prev is None else _union(region, prev)
        else:
            write = prev if prev is not None else box
        old = self._mask[write].copy()
        if write == box:
            new = pasted.mask
        else:
            new = np.zeros(old.shape, bool)
            if has_new:
                inner = pasted.region_mask if pasted.region_mask is not None else pasted.logits > 0
                new[_rel(region, write)] = inner
        if keep:
            protect = np.zeros(new.shape, bool)
            for k in keep:
                inter = _intersect(write, k)
                if inter is not None:
                    protect[_rel(inter, write)] = True
            new = np.where(protect, old, new)
        step.patches.append((write, old))
        self._mask[write] = new
        if self._extent is not None and (keep or not _contains(write, self._extent)):
            self._extent = _union(self._extent, region) if has_new else self._extent
        else:  # every old voxel was inside the written box: the new object lies inside ``region``
            self._extent = region if has_new else None
        timings["paste"] += time.perf_counter() - t0
        return write, pasted.logits

    def _clear_outside(self, old: RoiGeometry, new: RoiGeometry, step: _Step) -> None:
        """After a re-centre: the part of the old box the new ROI does not cover no longer has a window."""
        ob = old.bbox
        keep = np.ones(self._mask[ob].shape, bool)
        inter = _intersect(ob, new.bbox)
        if inter is not None:
            keep[tuple(slice(i.start - b.start, i.stop - b.start) for i, b in zip(inter, ob, strict=True))] = False
        if not (self._mask[ob] & keep).any():
            return
        step.patches.append((ob, self._mask[ob].copy()))
        self._mask[ob] &= ~keep

    # ------------------------------------------------------------------ windows
    def _model_spacing(self, zoom: float | None = None) -> tuple[float, float, float]:
        z = self._zoom if zoom is None else zoom
        sp = self.preprocess.spacing_mm
        return (float(sp[0]) * z, float(sp[1]) * z, float(sp[2]) * z)

    def _geometry(self, center: Sequence[float], zoom: float | None = None) -> RoiGeometry:
        vol = self._require_image()
        c = [min(max(float(center[a]), 0.0), vol.shape[a] - 1.0) for a in range(3)]
        return roi_geometry(vol.shape, self.spacing, c, self._model_spacing(zoom), self.img_size,
                            getattr(self.preprocess, "axis_order", "SPL"))

    def _distance(self, g: RoiGeometry, voxel: Sequence[float]) -> float:
        c = g.center
        return math.sqrt(sum(((voxel[a] - c[a]) * self.spacing[a]) ** 2 for a in range(3)))

    def _window_for(self, voxel: tuple[int, int, int]) -> tuple[int | None, _Window]:
        inside = [(self._distance(w.geometry, voxel), i) for i, w in enumerate(self._windows)
                  if w.geometry.contains(voxel)]
        if inside:
            i = min(inside)[1]
            return i, self._windows[i]
        g = self._geometry(voxel)
        prior = None
        if self._windows:
            nearest = min(self._windows, key=lambda w: self._distance(w.geometry, voxel))
            if nearest.low_res is not None:
                prior = resample_logits(nearest.low_res, nearest.geometry, g, fill=0.0)
        return None, _Window(geometry=g, low_res=prior)

    def _touching_faces(self, window: _Window) -> list[tuple[int, int]]:
        assert window.low_res is not None
        arr = model_to_array(window.low_res[0, 0], window.geometry.axis_order) > 0
        faces = []
        for axis, d in window.geometry.border_faces():
            idx = 0 if d < 0 else arr.shape[axis] - 1
            if bool(arr.select(axis, idx).any()):
                faces.append((axis, d))
        return faces

    def _object_box(self) -> tuple[slice, ...] | None:
        if self._extent is None:
            return None
        b = _box_of(self._mask[self._extent])
        if b is None:
            return None
        return tuple(slice(s.start + e.start, s.stop + e.start) for s, e in zip(b, self._extent, strict=True))

    def _moved(self, w: _Window, g2: RoiGeometry) -> _Window:
        """Window ``w`` moved onto ROI ``g2`` (re-centre / zoom): its logits resampled as the prior, the
        object's earlier clicks inside ``g2`` replayed as its points (the newest click is refined next)."""
        prior = resample_logits(w.low_res, w.geometry, g2, fill=0.0)
        points = tuple((g2.to_model(v), int(pos)) for v, pos in self._clicks[:-1] if g2.contains(v))
        return _Window(geometry=g2, low_res=prior, points=points)

    def _move_window(self, index: int, g2: RoiGeometry, voxel: tuple[int, int, int], label: int, step: _Step,
                     timings: dict[str, float]) -> None:
        """Replace window ``index`` by one on ROI ``g2``, refine it with the click, clear what the old ROI
        covered outside the new one and paste the result."""
        w = self._windows[index]
        w2 = self._refine(self._moved(w, g2), g2.to_model(voxel), label, timings)
        self._windows[index] = w2
        self._clear_outside(w.geometry, g2, step)
        self._paste(w2, step, timings)

    def _wider_levels(self) -> list[float]:
        return [z for z in self.zoom_levels if z > self._zoom + 1e-6]

    def _try_recenter(self, index: int, voxel: tuple[int, int, int], label: int, step: _Step,
                      timings: dict[str, float]) -> bool:
        """Single-window object cut by its ROI: move the ROI onto the mask's box if that fits."""
        w = self._windows[index]
        box = self._object_box()
        if box is None:
            return False
        fov = [self.img_size * self._model_spacing()[a] for a in range(3)]
        extent = [(box[a].stop - box[a].start) * self.spacing[a] for a in range(3)]
        if any(extent[a] > 0.8 * fov[a] for a in range(3)):
            return False
        center = [(box[a].start + box[a].stop - 1) / 2.0 for a in range(3)]
        g2 = self._geometry(center)
        shift = max(abs(g2.start[a] - w.geometry.start[a]) / w.geometry.step[a] for a in range(3))
        if shift < 2.0 or not g2.contains(voxel):
            return False
        self._move_window(index, g2, voxel, label, step, timings)
        return True

    def _try_zoom_out(self, index: int, voxel: tuple[int, int, int], label: int, step: _Step,
                      timings: dict[str, float]) -> bool:
        """Single-window object still cut by its ROI: look again on the next coarser zoom level, centred on
        the mask's box, with every click of the object replayed into the new ROI (False: no level left)."""
        wider = self._wider_levels()
        if not wider:
            return False
        box = self._object_box()
        center = (self._windows[index].geometry.center if box is None
                  else [(box[a].start + box[a].stop - 1) / 2.0 for a in range(3)])
        g2 = self._geometry(center, wider[0])
        if not g2.contains(voxel):
            g2 = self._geometry(voxel, wider[0])
        self._move_window(index, g2, voxel, label, step, timings)
        self._zoom = wider[0]
        return True

    def _zoom_to_include(self, voxel: tuple[int, int, int]) -> tuple[_Window, float] | None:
        """A click outside the object's only ROI: rather than a second window, the first wider zoom level
        whose ROI (centred on the object's box + the click) holds both, with the old logits as the prior
        and the object's earlier clicks replayed into it (None: no zoom level left or none holds both)."""
        if len(self._windows) != 1 or self._windows[0].low_res is None:
            return None
        w = self._windows[0]
        box = self._object_box()
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

    def _extend(self, index: int, step: _Step, timings: dict[str, float]) -> None:
        """Add 50 %-overlap windows where the mask leaves a ROI; their prompt is the deepest mask voxel of
        the overlap (positive) and their prior the current logits. Existing windows keep their voxels."""
        queue = [index]
        while queue and len(self._windows) < self.max_windows:
            w = self._windows[queue.pop(0)]
            for axis, d in self._touching_faces(w):
                if len(self._windows) >= self.max_windows:
                    break
                g = w.geometry
                c = list(g.center)
                c[axis] += d * (self.img_size / 2) * g.step[axis]
                g2 = self._geometry(c)
                if any(self._distance(o.geometry, g2.center) < 0.25 * self.img_size * min(self._model_spacing())
                       for o in self._windows):
                    continue
                overlap = _intersect(g.bbox, g2.bbox)
                if overlap is None:
                    continue
                sub = self._mask[overlap]
                if not sub.any():
                    continue
                dist = ndimage.distance_transform_edt(np.pad(sub, 1), sampling=self.spacing)[1:-1, 1:-1, 1:-1]
                loc = np.unravel_index(int(np.argmax(dist)), sub.shape)
                seed = tuple(int(loc[a] + overlap[a].start) for a in range(3))
                prior = resample_logits(w.low_res, g, g2, fill=0.0)
                keep = [o.geometry.bbox for o in self._windows]
                w2 = self._refine(_Window(geometry=g2, low_res=prior), g2.to_model(seed), 1, timings)
                self._windows.append(w2)
                self._paste(w2, step, timings, keep=keep)
                queue.append(len(self._windows) - 1)

    # ------------------------------------------------------------------ public actions
    def add_click(self, voxel: tuple[int, int, int], positive: bool = True, *,
                  refine_edges: bool = True) -> ClickResult:
        """One refinement iteration with a click at ``voxel`` (array indices); returns what changed.

        ``refine_edges=False`` returns the model's mask at once and leaves the edge refinement of this click
        pending (``edges_pending``), so a viewer can show the network's answer before the slower walker
        runs; :meth:`refine_edges` then applies it. The default applies it before returning.
        """
        t0 = time.perf_counter()
        v = self._check_voxel(voxel)
        timings = {"encode": 0.0, "refine": 0.0, "paste": 0.0}
        step = _Step(windows=list(self._windows), clicks=list(self._clicks), extent=self._extent, zoom=self._zoom,
                     shown_extent=self._shown_extent, pending=self._pending)
        shows_model, shown_before = self._shows_model(), self._display_extent()
        self._clicks.append((v, bool(positive)))
        label = 1 if positive else 0
        try:
            index, window = self._window_for(v)
            old_geometry = None
            if index is None and self.auto_extend:
                wider = self._zoom_to_include(v)
                if wider is not None:
                    old_geometry = self._windows[0].geometry
                    index = 0
                    window, self._zoom = wider
            window = self._refine(window, window.geometry.to_model(v), label, timings)
            if index is None:
                self._windows.append(window)
                index = len(self._windows) - 1
            else:
                self._windows[index] = window
            if old_geometry is not None:
                self._clear_outside(old_geometry, window.geometry, step)
            box, logits = self._paste(window, step, timings)
            single = True
            if self.auto_extend and self._touching_faces(window):
                single = False
                if len(self._windows) == 1:
                    self._try_recenter(index, v, label, step, timings)
                    while (self._touching_faces(self._windows[index])
                           and self._try_zoom_out(index, v, label, step, timings)):
                        pass
                if self._touching_faces(self._windows[index]):
                    self._extend(index, step, timings)
            if self._shown is not None:
                if refine_edges:
                    self._refine_edges(step, timings)
                    self._pending = False
                else:
                    self._pending = True
        except BaseException:
            self._restore(step)
            raise
        self._history.append(step)
        changed = self._changed(step, shows_model, shown_before)
        assert changed is not None
        probs = None
        if self.return_probabilities and self._shown is None and (single or len(step.patches) == 1):
            probs = (1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))).astype(np.float32)
            if tuple(box) != tuple(changed):
                probs = None
        timings["total"] = time.perf_counter() - t0
        return ClickResult(bbox=changed, mask=self.current_mask[changed].copy(), probabilities=probs,
                           timings=timings, object_id=self._next_id)

    def _refine_edges(self, step: _Step, timings: dict[str, float]) -> None:
        """Re-derive the shown (edge-refined) object from the model's mask and every click."""
        assert self._shown is not None and self._volume is not None
        t0 = time.perf_counter()
        # the extent may be loose; the walker's box follows the mask itself
        tight = None if self._extent is None else _tight_box(self._mask[self._extent], self._extent)
        box, seg = self.edge_refiner.refine(self._volume, self._mask, self._clicks, self.spacing,
                                            self.modality, mask_box=tight)
        write = box if self._shown_extent is None else _union(box, self._shown_extent)
        step.shown_patch = (write, self._shown[write].copy())
        self._shown[write] = False
        self._shown[box] = seg
        self._shown_extent = _tight_box(seg, box)
        timings["edges"] = time.perf_counter() - t0

    def refine_edges(self) -> ClickResult | None:
        """Apply the pending edge refinement of the latest click (see ``add_click(refine_edges=False)``);
        returns what changed, as ``add_click`` does. None when this image is not refined (``refining``)
        or nothing is pending. Undo then restores the state before that click, as for an eager click."""
        if self._shown is None or not self._pending or not self._history:
            return None
        t0 = time.perf_counter()
        step = self._history[-1]
        shown_before = self._display_extent()
        timings = {"encode": 0.0, "refine": 0.0, "paste": 0.0}
        self._refine_edges(step, timings)
        self._pending = False
        changed = _union(shown_before, step.shown_patch[0]) if step.shown_patch is not None else shown_before
        if changed is None:
            changed = (slice(0, 0),) * 3  # type: ignore[assignment]
        assert changed is not None
        timings["total"] = time.perf_counter() - t0
        return ClickResult(bbox=changed, mask=self.current_mask[changed].copy(), probabilities=None,
                           timings=timings, object_id=self._next_id)

    def _changed(self, step: _Step, shows_model: bool, shown_before: Box | None) -> Box | None:
        """The box a click or an undo changed in ``current_mask``: the written boxes, plus both objects'
        boxes when what is shown switched between the model's and the edge-refined mask."""
        changed: Box | None = None
        for b, _ in step.patches:
            changed = _union(changed, b)
        if step.shown_patch is not None:
            changed = _union(changed, step.shown_patch[0])
        if shows_model != self._shows_model():
            for b in (shown_before, self._display_extent()):
                if b is not None:
                    changed = _union(changed, b)
        return changed

    def _restore(self, step: _Step) -> None:
        if step.shown_patch is not None and self._shown is not None:
            self._shown[step.shown_patch[0]] = step.shown_patch[1]
        self._shown_extent = step.shown_extent
        self._pending = step.pending
        for box, old in reversed(step.patches):
            self._mask[box] = old
        self._windows = list(step.windows)
        self._clicks = list(step.clicks)
        self._extent = step.extent
        self._zoom = step.zoom

    def undo(self) -> ClickResult | None:
        """Exactly restore the state before the last click (mask, logits, ROIs); None if nothing to undo."""
        if not self._history:
            return None
        t0 = time.perf_counter()
        step = self._history.pop()
        shows_model, shown_before = self._shows_model(), self._display_extent()
        self._restore(step)
        changed = self._changed(step, shows_model, shown_before)
        if changed is None:
            changed = (slice(0, 0),) * 3  # type: ignore[assignment]
        assert changed is not None
        return ClickResult(bbox=changed, mask=self.current_mask[changed].copy(), probabilities=None,
                           timings={"encode": 0.0, "refine": 0.0, "paste": 0.0, "total": time.perf_counter() - t0},
                           object_id=self._next_id)
