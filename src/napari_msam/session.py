"""The Qt-free interactive segmentation session (see docs/session.md).

One :class:`Session` holds an image, the current object (its clicks, ROIs and mask) and the accepted
objects (``labels``). Each click is one refinement iteration of the model, as in M-SAM: the newest click
plus the previous low-resolution logits. The model side (device, embeddings, flipped views, zoom levels)
is a :class:`~napari_msam.predictor.Predictor`; which ROIs an object uses is a
:class:`~napari_msam.tiling.Tiler`; the object's mask and its undo patches an
:class:`~napari_msam.object_mask.ObjectMask`. With edge refinement on, what the user sees is the model's
mask snapped to image edges (:mod:`napari_msam.edge_refine`); the model's own chain of logits is not
changed by it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .boxes import Box, tight_box, union
from .edge_refine import EDGE_MODES, EdgeRefiner, applies
from .errors import ClickOutsideError, InvalidVolumeError, MSAMError
from .io import check_finite, check_volume_array, checked_spacing
from .object_mask import ObjectMask, Patch
from .predictor import MAX_TTA, TTA_FLIPS, Predictor, Window, pick_device, window_on_cpu
from .preprocess import MODALITIES, guess_modality
from .session_like import ClickResult, SessionLike
from .tiling import Click, Tiler

__all__ = ["MAX_TTA", "TTA_FLIPS", "ClickResult", "Session", "SessionLike", "pick_device"]

MIN_SIDE = 2  # a side of one voxel has no boundary to find: the model's ROI needs some extent on every axis


@dataclass
class _Step:
    """Undo record of one click: the ROIs, clicks and object extent before it, and the old mask voxels of
    every box it overwrote (only those boxes, never the whole volume)."""

    windows: list[Window]
    clicks: list[Click]
    extent: Box | None = None
    zoom: float = 1.0
    patches: list[Patch] = field(default_factory=list)
    shown_extent: Box | None = None  # edge refinement: the refined object's box before the click
    shown_patch: Patch | None = None  # and the refined voxels the click overwrote
    pending: bool = False  # whether edge refinement was pending before the click


def _checked_image(volume: Any, spacing: Sequence[float], modality: str
                   ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A private, C-contiguous copy of a usable image (later changes to the caller's array cannot reach
    the session) and its spacing; InvalidVolumeError for anything the model cannot segment."""
    volume = np.asarray(volume)
    check_volume_array(volume, "image")
    if min(volume.shape) < MIN_SIDE:
        raise InvalidVolumeError(f"the image of shape {volume.shape} is too small to segment: every side "
                                 f"needs at least {MIN_SIDE} voxels")
    check_finite(volume, "image")
    sp = checked_spacing(spacing)
    if modality not in MODALITIES + ("auto",):
        raise MSAMError(f"unknown modality {modality!r}; expected one of {MODALITIES + ('auto',)}")
    lo, hi = volume.min(), volume.max()
    if lo == hi:
        raise InvalidVolumeError(f"the image is constant (every voxel is {lo.item()!r}): there is nothing to "
                                 "segment")
    return np.array(volume, order="C", copy=True), sp


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
        tta: flipped views, 1 (off) to 4: the ROI is also encoded flipped along w, then h, then d, each
            click refined in every view and the logits averaged. Default: what the checkpoint was
            validated with (:mod:`napari_msam.additions`), else 1.
        edge_refine: "auto" (default: images of the modalities the checkpoint was validated on, none for
            reference checkpoints), "on" or "off": snap the model's mask to image edges after every click
            (``napari_msam.edge_refine``); an :class:`~napari_msam.edge_refine.EdgeRefiner` sets its
            parameters (and means "on").
    """

    def __init__(self, loaded: Any, device: str | None = None, threads: int | None = None, *,
                 multi_click: bool = False, auto_extend: bool = True, max_zoom: float | None = None,
                 max_windows: int = 8, cache_size: int = 8, return_probabilities: bool = False,
                 tta: int | None = None, edge_refine: str | EdgeRefiner = "auto") -> None:
        if threads is not None:
            if int(threads) < 1:
                raise MSAMError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        if isinstance(edge_refine, EdgeRefiner):
            self.edge_refiner, self.edge_refine = edge_refine, "on"
        elif isinstance(edge_refine, str) and edge_refine in EDGE_MODES:
            self.edge_refiner, self.edge_refine = EdgeRefiner(), edge_refine
        else:
            raise MSAMError(f"edge_refine must be one of {EDGE_MODES} or an EdgeRefiner, got {edge_refine!r}")
        self.loaded = loaded
        self.predictor = Predictor(loaded, device, multi_click=multi_click, max_zoom=max_zoom, tta=tta,
                                   cache_size=cache_size)
        self.predictor.on_cpu_fallback = self._windows_to_cpu
        self.auto_extend, self.max_windows = auto_extend, max(1, int(max_windows))
        self.return_probabilities = return_probabilities
        self.modality = "other"
        self.labels: np.ndarray = np.zeros((0, 0, 0), np.uint16)
        self._volume: np.ndarray | None = None
        self._shown: np.ndarray | None = None  # the edge-refined object (None: refinement off for this image)
        self._next_id = 1
        self._accepted: list[int] = []
        self._new_canvas((0, 0, 0))
        self._reset_object()

    # ------------------------------------------------------------------ the model side
    device = property(lambda self: self.predictor.device,
                      lambda self, v: setattr(self.predictor, "device", v), doc="where the model runs")
    model = property(lambda self: self.predictor.model)
    config = property(lambda self: self.predictor.config)
    preprocess = property(lambda self: self.predictor.preprocess)
    img_size = property(lambda self: self.predictor.img_size)
    tta = property(lambda self: self.predictor.tta)
    click_prior = property(lambda self: self.predictor.click_prior)
    zoom_levels = property(lambda self: self.predictor.zoom_levels)
    warning = property(lambda self: self.predictor.warning)
    fell_back_to_cpu = property(lambda self: self.predictor.fell_back_to_cpu)
    spacing = property(lambda self: self.predictor.spacing)

    @property
    def additions(self) -> dict[str, str]:
        """The inference additions that are not M-SAM and are active now (name -> what it does); edge
        refinement is listed for the current image, or, before one is set, when it would apply to some."""
        p, out = self.predictor, {}
        if self._volume is not None and self._shown is not None:
            out["edge_refine"] = f"edge refinement ({self.modality} image)"
        elif self._volume is None and self.edge_refine != "off":
            where = p.validated.edge_refine if self.edge_refine == "auto" else ("every",)
            if where:
                out["edge_refine"] = f"edge refinement ({', '.join(where)} images)"
        if p.tta > 1:
            out["tta"] = f"{p.tta} flipped views"
        if p.click_prior is not None:
            out["click_prior"] = "click prior (every click painted into the mask prompt)"
        if len(p.zoom_levels) > 1:
            out["roi_zoom"] = f"zoom-out up to {p.zoom_levels[-1]:g}x for large objects"
        return out

    # ------------------------------------------------------------------ image / state
    def set_image(self, volume: np.ndarray, spacing: Sequence[float] = (1, 1, 1), modality: str = "other") -> None:
        """Use a new 3-D image (array axes as ``io.read_volume`` gives them; copied); clears every object."""
        volume, sp = _checked_image(volume, spacing, modality)
        if modality == "auto":
            modality = guess_modality(volume)
        self._volume = volume
        self.predictor.set_image(volume, sp, modality)
        self.modality = modality
        self.labels = np.zeros(volume.shape, np.uint16)
        self._new_canvas(volume.shape)
        refine = applies(self.edge_refine, modality, self.predictor.validated.edge_refine)
        self._shown = np.zeros(volume.shape, bool) if refine else None
        self._next_id = 1
        self._accepted = []
        self._reset_object()

    def _new_canvas(self, shape: tuple[int, ...]) -> None:
        self._canvas = ObjectMask(shape, full=self.return_probabilities)
        self._tiler = Tiler(self.predictor, self._canvas, auto_extend=self.auto_extend, max_windows=self.max_windows)

    def _reset_object(self) -> None:
        self._tiler.reset()
        self._clicks: list[Click] = []
        self._history: list[_Step] = []
        self._shown_extent: Box | None = None  # a box holding every True voxel of ``_shown``
        self._pending = False  # the latest step's edge refinement is deferred (``refine_edges``)

    def _windows_to_cpu(self) -> None:
        self._tiler.windows = [window_on_cpu(w) for w in self._tiler.windows]
        for step in self._history:
            step.windows = [window_on_cpu(w) for w in step.windows]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._canvas.mask.shape)

    @property
    def current_mask(self) -> np.ndarray:
        """Bool mask of the current object over the whole volume (a read-only view, no copy); edge-refined
        when refinement applies to this image (``refining``) and is not pending (``edges_pending``)."""
        v = (self._canvas.mask if self._shows_model() else self._shown).view()
        v.flags.writeable = False
        return v

    @property
    def model_mask(self) -> np.ndarray:
        """The model's own mask of the current object (before edge refinement; read-only view)."""
        v = self._canvas.mask.view()
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
        return self._canvas.extent if self._shows_model() else self._shown_extent

    clicks = property(lambda self: list(self._clicks), doc="the current object's clicks, oldest first")
    current_object_id = property(lambda self: self._next_id)
    objects = property(lambda self: list(self._accepted), doc="ids of the accepted objects, in order")
    n_windows = property(lambda self: len(self._tiler.windows))
    zoom = property(lambda self: self._tiler.zoom,
                    doc="the current object's ROI zoom (1: the checkpoint's spacing; 2: twice as coarse and wide)")
    _windows = property(lambda self: self._tiler.windows)

    def reset(self) -> None:
        """Forget the current object (its clicks, mask and undo history)."""
        self._canvas.clear()
        if self._shown is not None and self._shown_extent is not None:
            self._shown[self._shown_extent] = False
        self._reset_object()

    def accept(self) -> int:
        """Freeze the current object into ``labels`` under its id and start the next object. A pending
        edge refinement is applied first, so the frozen object does not depend on when it ran."""
        self._require_image()
        if self._pending:
            self.refine_edges()
        c = self._canvas
        mask, box = (c.mask, c.extent) if self._shown is None else (self._shown, self._shown_extent)
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
        if not self._clicks and not positive:
            raise MSAMError("the first click of an object must be positive (it defines the object)")
        timings = {"encode": 0.0, "refine": 0.0, "paste": 0.0}
        step = _Step(windows=list(self._tiler.windows), clicks=list(self._clicks), extent=self._canvas.extent,
                     zoom=self._tiler.zoom, shown_extent=self._shown_extent, pending=self._pending)
        shows_model, shown_before = self._shows_model(), self._display_extent()
        self._clicks.append((v, bool(positive)))
        try:
            box, logits, single = self._tiler.click(v, 1 if positive else 0, self._clicks, step.patches, timings)
            if self._shown is not None:
                if refine_edges:
                    self._refine_edges(step, timings)
                self._pending = not refine_edges
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
        changed = _union_opt(shown_before, step.shown_patch[0] if step.shown_patch is not None else None)
        timings["total"] = time.perf_counter() - t0
        return ClickResult(bbox=changed, mask=self.current_mask[changed].copy(), probabilities=None,
                           timings=timings, object_id=self._next_id)

    def _refine_edges(self, step: _Step, timings: dict[str, float]) -> None:
        """Re-derive the shown (edge-refined) object from the model's mask and every click."""
        assert self._shown is not None and self._volume is not None
        t0 = time.perf_counter()
        # the extent may be loose; the walker's box follows the mask itself
        box, seg = self.edge_refiner.refine(self._volume, self._canvas.mask, self._clicks, self.spacing,
                                            self.modality, mask_box=self._canvas.object_box())
        write = box if self._shown_extent is None else union(box, self._shown_extent)
        step.shown_patch = (write, self._shown[write].copy())
        self._shown[write] = False
        self._shown[box] = seg
        self._shown_extent = tight_box(seg, box)
        timings["edges"] = time.perf_counter() - t0

    def _changed(self, step: _Step, shows_model: bool, shown_before: Box | None) -> Box | None:
        """The box a click or an undo changed in ``current_mask``: the written boxes, plus both objects'
        boxes when what is shown switched between the model's and the edge-refined mask."""
        changed: Box | None = None
        for b, _ in step.patches:
            changed = union(changed, b)
        if step.shown_patch is not None:
            changed = union(changed, step.shown_patch[0])
        if shows_model != self._shows_model():
            for b in (shown_before, self._display_extent()):
                if b is not None:
                    changed = union(changed, b)
        return changed

    def _restore(self, step: _Step) -> None:
        if step.shown_patch is not None and self._shown is not None:
            self._shown[step.shown_patch[0]] = step.shown_patch[1]
        self._shown_extent = step.shown_extent
        self._pending = step.pending
        self._canvas.restore(step.patches, step.extent)
        self._tiler.windows = list(step.windows)
        self._tiler.zoom = step.zoom
        self._clicks = list(step.clicks)

    def undo(self) -> ClickResult | None:
        """Exactly restore the state before the last click (mask, logits, ROIs); None if nothing to undo."""
        if not self._history:
            return None
        t0 = time.perf_counter()
        step = self._history.pop()
        shows_model, shown_before = self._shows_model(), self._display_extent()
        self._restore(step)
        changed = _union_opt(self._changed(step, shows_model, shown_before), None)
        return ClickResult(bbox=changed, mask=self.current_mask[changed].copy(), probabilities=None,
                           timings={"encode": 0.0, "refine": 0.0, "paste": 0.0, "total": time.perf_counter() - t0},
                           object_id=self._next_id)


def _union_opt(a: Box | None, b: Box | None) -> Box:
    """``a`` and ``b`` joined; an empty box when both are None."""
    if a is None and b is None:
        return (slice(0, 0),) * 3  # type: ignore[return-value]
    if a is None or b is None:
        return a if b is None else b  # type: ignore[return-value]
    return union(a, b)
