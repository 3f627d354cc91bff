"""Jobs run on the inference worker thread (no Qt here): model loading, session set-up, clicks, undo.

Each job takes a :class:`~napari_msam.widgets.workers.JobContext` first and returns plain data
(:class:`ObjectUpdate`) that the Segment widget writes into the output layer on the GUI thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..boxes import box_of
from ..errors import MSAMError

if TYPE_CHECKING:  # the jobs themselves never touch Qt
    from .workers import JobContext


@dataclass(frozen=True)
class SessionSpec:
    """What the worker's session must be set up for (compared by value, the volume by identity key)."""

    model_key: tuple
    device: str
    image_key: tuple
    tta: int = 1  # Session(tta=): mirrored views averaged per click
    edge_refine: str = "auto"  # Session(edge_refine=): snap the mask to image edges (auto: where validated)


@dataclass
class ObjectUpdate:
    """The current object's new state inside ``bbox`` (None bbox = the object is empty)."""

    bbox: tuple[slice, slice, slice] | None
    mask: np.ndarray | None
    timings: dict[str, float]
    replace_all: bool = False   # True: forget earlier writes of this object first (undo / replay)
    zoom: float = 1.0           # the session's ROI zoom for this object (> 1: zoomed out on a large object)
    refine_pending: bool = False  # the network's mask; an edge-refined one follows (job_refine)


# ----------------------------------------------------------------------------- worker-thread jobs
def _load_model(source: tuple) -> Any:
    kind = source[0]
    if kind == "default":
        from ..default_model import load_default_model

        return load_default_model()
    from ..model.weights import load_checkpoint

    path = source[1]
    if not Path(path).is_file():
        raise MSAMError(f"checkpoint not found: {path}")
    return load_checkpoint(path, device="cpu")


def _model_summary(loaded: Any) -> str:
    cfg = loaded.config
    pre = loaded.preprocess
    meta = loaded.metadata or {}
    kind = meta.get("kind", "own")
    parts = [
        f"<b>{cfg.name}</b> ({kind})",
        f"input {cfg.img_size}³, patch {cfg.patch_size}, embed {cfg.embed_dim}×{cfg.depth}",
        "adapter" if cfg.use_adapter else "no adapter",
    ]
    if cfg.lora_rank:
        parts.append(f"LoRA r={cfg.lora_rank}")
    sp = "×".join(f"{s:g}" for s in pre.spacing_mm)
    parts.append(f"resampled to {sp} mm")
    src = loaded.path or meta.get("source")
    text = ", ".join(parts)
    if src:
        text += f"<br><small>{Path(str(src)).name}</small>"
    return text


def job_ensure(ctx: JobContext, spec: SessionSpec, source: tuple, image: np.ndarray | None,
               spacing: tuple, modality: str, session_factory: Any = None) -> dict[str, Any]:
    """Load the model / build the session / set the image, only what changed since last time."""
    from ..session import Session  # deferred: the worker imports torch, the widget module does not

    st = ctx.state
    info: dict[str, Any] = {}
    if st.model_key != spec.model_key or st.loaded is None:
        st.session = None
        st.image_key = None
        st.loaded = None
        st.loaded = _load_model(source)
        st.model_key = spec.model_key
    if (st.session is None or st.extra.get("device") != spec.device or st.extra.get("tta", 1) != spec.tta
            or st.extra.get("edge_refine", "auto") != spec.edge_refine):
        if session_factory is None:
            session_factory = Session
        extra: dict[str, Any] = {"tta": spec.tta} if spec.tta != 1 else {}  # stand-ins need not know these
        if spec.edge_refine != "auto":
            extra["edge_refine"] = spec.edge_refine
        st.session = session_factory(st.loaded, device=None if spec.device == "auto" else spec.device, **extra)
        st.extra["device"] = spec.device
        st.extra["tta"] = spec.tta
        st.extra["edge_refine"] = spec.edge_refine
        st.image_key = None
    if image is not None and st.image_key != spec.image_key:
        st.session.set_image(image, spacing=spacing, modality=modality)
        st.image_key = spec.image_key
    info["summary"] = _model_summary(st.loaded)  # also after a settings change: the box never stays "loading…"
    if isinstance(st.session, Session):  # stand-ins of the tests have no additions to report
        info["additions"] = st.session.additions
    info["device"] = str(getattr(st.session, "device", spec.device))
    return info


def _session(ctx: JobContext) -> Any:
    if ctx.state.session is None or ctx.state.image_key is None:
        raise MSAMError("no image is set up for segmentation yet (choose an image layer)")
    return ctx.state.session


def _full_object(session: Any, timings: dict | None = None) -> ObjectUpdate:
    mask = np.asarray(session.current_mask, dtype=bool)
    bbox = box_of(mask)
    return ObjectUpdate(bbox, None if bbox is None else mask[bbox].copy(), timings or {}, replace_all=True)


def supports_two_phase(session: Any) -> bool:
    """True when the session can hand out the network's mask first and refine its edges later."""
    return callable(getattr(session, "refine_edges", None)) and bool(getattr(session, "refining", False))


def job_click(ctx: JobContext, voxel: tuple[int, int, int], positive: bool,
              two_phase: bool = False) -> ObjectUpdate:
    """One click; with ``two_phase`` (and edge refinement active) the network's mask comes back at once
    and :func:`job_refine`, queued next by the widget, snaps it to the edges."""
    session = _session(ctx)
    vox = tuple(int(v) for v in voxel)
    later = two_phase and supports_two_phase(session)
    if later:
        res = session.add_click(vox, positive=bool(positive), refine_edges=False)
    else:
        res = session.add_click(vox, positive=bool(positive))
    return ObjectUpdate(tuple(res.bbox), np.asarray(res.mask, dtype=bool), dict(res.timings),
                        zoom=float(getattr(session, "zoom", 1.0)), refine_pending=later)


def job_refine(ctx: JobContext) -> ObjectUpdate | None:
    """Edge refinement of the last click's mask (None when there is nothing left to refine)."""
    res = _session(ctx).refine_edges()
    if res is None:
        return None
    return ObjectUpdate(tuple(res.bbox), np.asarray(res.mask, dtype=bool), dict(res.timings),
                        zoom=float(getattr(ctx.state.session, "zoom", 1.0)))


def job_undo(ctx: JobContext) -> ObjectUpdate:
    session = _session(ctx)
    session.undo()
    return _full_object(session)


def job_reset(ctx: JobContext) -> None:
    if ctx.state.session is not None:
        ctx.state.session.reset()


def job_accept(ctx: JobContext) -> int | None:
    session = ctx.state.session
    if session is None:
        return None
    if not np.asarray(session.current_mask).any():  # nothing the model made: just start over
        session.reset()
        return None
    return session.accept()


def job_replay(ctx: JobContext, clicks: list[tuple[tuple[int, int, int], bool]]) -> ObjectUpdate:
    """Rebuild the current object from a click list (after points were moved or deleted by hand)."""
    session = _session(ctx)
    session.reset()
    timings: dict[str, float] = {}
    for voxel, positive in clicks:
        ctx.check_cancel()
        res = session.add_click(tuple(int(v) for v in voxel), positive=bool(positive))
        timings = dict(res.timings)
    return _full_object(session, timings)


