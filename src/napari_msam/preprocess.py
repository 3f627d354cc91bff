"""ROI geometry, resampling to the model grid, normalisation and the exact paste-back.

A click defines a cubic region of interest (ROI) of ``img_size`` model voxels per side at the model's
spacing. Only the native block under the ROI is read and resampled (trilinear, on the session device), so
large volumes never get resampled as a whole. The model's logits are mapped back with one trilinear step
(model grid -> native voxels) inside the ROI's native bounding box only.

Coordinates: native voxel ``i`` has its centre at continuous index ``i``. Model voxel ``j`` of the ROI
sits at native continuous index ``start + j * step`` per axis (``step`` = model / native spacing), so with
equal spacings and an integer centre the ROI is an exact integer crop and every step is the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import modality as _modality
from .errors import ClickOutsideError, MSAMError
from .io.volume import checked_spacing
from .model.config import AXIS_ORDERS

NORMALIZATIONS = ("zscore_positive", "zscore", "zscore_roi", "none")
MODALITIES = ("ct", "mr", "other")


# --------------------------------------------------------------------------------------------- axes
def array_to_model(t: torch.Tensor, axis_order: str) -> torch.Tensor:
    """Array (SPL) axes -> model axes on the last three dims ("RAS": permute (2,1,0), flip new 0 and 1)."""
    if axis_order == "SPL":
        return t
    if axis_order == "RAS":
        nd = t.ndim
        perm = list(range(nd - 3)) + [nd - 1, nd - 2, nd - 3]
        return t.permute(*perm).flip(nd - 3, nd - 2)
    raise MSAMError(f"unknown axis_order {axis_order!r}; expected one of {AXIS_ORDERS}")


def model_to_array(t: torch.Tensor, axis_order: str) -> torch.Tensor:
    """Inverse of :func:`array_to_model`."""
    if axis_order == "SPL":
        return t
    if axis_order == "RAS":
        nd = t.ndim
        perm = list(range(nd - 3)) + [nd - 1, nd - 2, nd - 3]
        return t.flip(nd - 3, nd - 2).permute(*perm)
    raise MSAMError(f"unknown axis_order {axis_order!r}; expected one of {AXIS_ORDERS}")


def model_centre_in_array(side: int, axis_order: str) -> tuple[int, int, int]:
    """Grid index, in array axes, of model voxel ``side // 2`` on every model axis: the ROI's anchor.

    The ROI is centred in the model's own axis order, so that a volume of exactly one ROI clicked at its
    model centre reaches the model unshifted whatever the axis order (RAS flips two axes, where the
    model's voxel ``side // 2`` is the array's ``side - 1 - side // 2``).
    """
    m = side // 2
    if axis_order == "SPL":
        return (m, m, m)
    if axis_order == "RAS":
        return (m, side - 1 - m, side - 1 - m)
    raise MSAMError(f"unknown axis_order {axis_order!r}; expected one of {AXIS_ORDERS}")


def point_to_model(p: Sequence[int], side: int, axis_order: str) -> tuple[int, int, int]:
    """Grid index (a, b, c) in array axes -> index in model axes on a grid of ``side``."""
    a, b, c = (int(v) for v in p)
    if axis_order == "SPL":
        return (a, b, c)
    if axis_order == "RAS":
        return (side - 1 - c, side - 1 - b, a)
    raise MSAMError(f"unknown axis_order {axis_order!r}; expected one of {AXIS_ORDERS}")


# ----------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class RoiGeometry:
    """Where the model grid sits in the native volume (see the module docstring for the convention)."""

    start: tuple[float, float, float]
    step: tuple[float, float, float]
    size: int
    native_shape: tuple[int, int, int]
    axis_order: str = "SPL"

    def positions(self, axis: int, side: int | None = None) -> np.ndarray:
        """Native continuous indices of the centres of a grid of ``side`` voxels (default ``size``)."""
        side = self.size if side is None else side
        k = np.arange(side, dtype=np.float64)
        u = (k + 0.5) * (self.size / side) - 0.5  # align_corners=False mapping of a coarser grid
        return self.start[axis] + u * self.step[axis]

    def _extent(self, axis: int) -> tuple[int, int]:
        lo = math.ceil(self.start[axis] - 0.5 * self.step[axis])
        hi = math.ceil(self.start[axis] + (self.size - 0.5) * self.step[axis])
        return lo, hi

    @property
    def bbox(self) -> tuple[slice, slice, slice]:
        """Native voxels whose centres lie inside the ROI, clipped to the volume."""
        out = []
        for a in range(3):
            lo, hi = self._extent(a)
            out.append(slice(max(lo, 0), min(hi, self.native_shape[a])))
        return (out[0], out[1], out[2])

    @property
    def anchor(self) -> tuple[int, int, int]:
        """Grid index (array axes) of the model's centre voxel (:func:`model_centre_in_array`)."""
        return model_centre_in_array(self.size, self.axis_order)

    @property
    def center(self) -> tuple[float, float, float]:
        """Native continuous index of the model's centre voxel (the click that created the ROI)."""
        anchor = self.anchor
        return tuple(self.start[a] + anchor[a] * self.step[a] for a in range(3))  # type: ignore[return-value]

    def contains(self, voxel: Sequence[int]) -> bool:
        """True when the native voxel lies inside the ROI (and the volume)."""
        for a in range(3):
            lo, hi = self._extent(a)
            if not (max(lo, 0) <= int(voxel[a]) < min(hi, self.native_shape[a])):
                return False
        return True

    def to_grid(self, voxel: Sequence[float]) -> tuple[int, int, int]:
        """Nearest model-grid index of a native voxel, in array (SPL) axis order, clipped to the grid."""
        out = []
        for a in range(3):
            j = int(round((float(voxel[a]) - self.start[a]) / self.step[a]))
            out.append(min(max(j, 0), self.size - 1))
        return (out[0], out[1], out[2])

    def to_model(self, voxel: Sequence[float]) -> tuple[int, int, int]:
        """Nearest model-grid index of a native voxel in the model's axis order (what ``refine`` takes)."""
        return point_to_model(self.to_grid(voxel), self.size, self.axis_order)

    def border_faces(self) -> list[tuple[int, int]]:
        """ROI faces that lie inside the volume, as (axis, -1 low / +1 high): where a mask may continue."""
        faces = []
        for a in range(3):
            if self.start[a] > 0.0:
                faces.append((a, -1))
            if self.start[a] + (self.size - 1) * self.step[a] < self.native_shape[a] - 1:
                faces.append((a, 1))
        return faces


def roi_geometry(
    shape: Sequence[int],
    spacing: Sequence[float],
    center: Sequence[float],
    model_spacing: Sequence[float],
    img_size: int,
    axis_order: str = "SPL",
) -> RoiGeometry:
    """ROI of ``img_size`` model voxels at ``model_spacing`` with model voxel ``img_size // 2`` (in the
    model's axis order, on every axis) at ``center``."""
    if axis_order not in AXIS_ORDERS:
        raise MSAMError(f"unknown axis_order {axis_order!r}; expected one of {AXIS_ORDERS}")
    if len(shape) != 3 or len(spacing) != 3 or len(center) != 3:
        raise MSAMError("shape, spacing and center must each have 3 entries")
    sp = checked_spacing(spacing)
    for a in range(3):
        if not 0 <= float(center[a]) <= shape[a] - 1:
            raise ClickOutsideError(
                f"point {tuple(center)} is outside the volume of shape {tuple(int(s) for s in shape)}"
            )
    step = tuple(float(model_spacing[a]) / sp[a] for a in range(3))
    anchor = model_centre_in_array(int(img_size), axis_order)
    start = tuple(float(center[a]) - anchor[a] * step[a] for a in range(3))
    return RoiGeometry(
        start=start,  # type: ignore[arg-type]
        step=step,  # type: ignore[arg-type]
        size=int(img_size),
        native_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        axis_order=axis_order,
    )


# --------------------------------------------------------------------------------- interpolation
_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16, torch.int16, torch.int32, torch.int64, torch.uint8,
                 torch.int8, torch.bool)


def _take(t: torch.Tensor, dim: int, idx: np.ndarray) -> torch.Tensor:
    """``t.index_select(dim, idx)``; on the CPU via ``np.take``, which is 5-15x faster for a gather along
    the innermost axis (torch's index_select there is element-wise). Same values, bit for bit."""
    if t.device.type == "cpu" and not t.requires_grad and t.dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.take(t.numpy(), idx, axis=dim))
    return t.index_select(dim, torch.as_tensor(idx, device=t.device))


def _linear_axis(
    t: torch.Tensor, dim: int, pos: np.ndarray, offset: int, n: int, clamp: bool
) -> torch.Tensor:
    """Linear interpolation of ``t`` along ``dim`` at native positions ``pos``.

    ``t`` holds native indices ``offset .. offset + t.shape[dim] - 1`` of an axis of length ``n``.
    ``clamp=False``: zero outside the volume (image padding); ``clamp=True``: edge values (logits).
    """
    device = t.device
    size = t.shape[dim]
    shape = [1] * t.ndim
    shape[dim] = -1
    if clamp:
        pos = np.clip(pos, offset, offset + size - 1)
        i0 = np.floor(pos).astype(np.int64)
        w = torch.as_tensor(pos - i0, dtype=t.dtype, device=device).view(shape)
        r0 = i0 - offset
        r1 = np.minimum(r0 + 1, size - 1)
        g0 = _take(t, dim, r0)
        g1 = _take(t, dim, r1)
        return g0.lerp_(g1, w)  # in place: g0 is a fresh gather
    i0 = np.floor(pos).astype(np.int64)
    w = pos - i0
    i1 = i0 + 1
    r0, r1 = i0 - offset, i1 - offset
    ok0 = (i0 >= 0) & (i0 < n) & (r0 >= 0) & (r0 < size)
    ok1 = (i1 >= 0) & (i1 < n) & (r1 >= 0) & (r1 < size)
    w0 = torch.as_tensor((1.0 - w) * ok0, dtype=t.dtype, device=device).view(shape)
    w1 = torch.as_tensor(w * ok1, dtype=t.dtype, device=device).view(shape)
    g0 = _take(t, dim, np.clip(r0, 0, size - 1))
    g1 = _take(t, dim, np.clip(r1, 0, size - 1))
    return g0.mul_(w0).addcmul_(g1, w1)  # in place (fresh gathers): same arithmetic, no new full-size arrays


def _needed_block(pos: np.ndarray, n: int) -> tuple[int, int]:
    lo = max(int(np.floor(pos.min())), 0)
    hi = min(int(np.floor(pos.max())) + 2, n)
    return lo, max(hi, lo + 1)


def sample_image(volume: np.ndarray | torch.Tensor, geometry: RoiGeometry, device: str | torch.device = "cpu",
                 side: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear samples of ``volume`` on the ROI grid, zero outside the volume, in array axis order.

    Returns ``(values, valid)``: float32 (side,)*3 on ``device`` and a bool mask of samples inside the volume.
    Only the native block under the ROI is copied to the device.
    """
    n = geometry.native_shape
    pos = [geometry.positions(a, side) for a in range(3)]
    lims = [_needed_block(pos[a], n[a]) for a in range(3)]
    block = volume[lims[0][0]:lims[0][1], lims[1][0]:lims[1][1], lims[2][0]:lims[2][1]]
    if isinstance(block, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)
    else:
        t = block.to(device=device, dtype=torch.float32)
    for a in (2, 1, 0):  # innermost first: the largest gather (last) then copies contiguous planes
        t = _linear_axis(t, a, pos[a], lims[a][0], n[a], clamp=False)
    valid = None
    for a in range(3):
        v = torch.as_tensor((pos[a] >= -0.5) & (pos[a] <= n[a] - 0.5), device=t.device)
        shape = [1, 1, 1]
        shape[a] = -1
        v = v.view(shape)
        valid = v if valid is None else valid & v
    assert valid is not None
    return t.contiguous(), valid.expand_as(t)


def sample_labels(label: np.ndarray | torch.Tensor, geometry: RoiGeometry, device: str | torch.device = "cpu",
                  side: int | None = None) -> torch.Tensor:
    """Nearest-neighbour samples of a label volume on the ROI grid (0 outside), array axis order."""
    n = geometry.native_shape
    idx = []
    for a in range(3):
        p = np.rint(geometry.positions(a, side)).astype(np.int64)
        idx.append(p)
    lims = [(max(int(i.min()), 0), min(int(i.max()) + 1, n[a])) for a, i in enumerate(idx)]
    lims = [(lo, max(hi, lo + 1)) for lo, hi in lims]
    block = label[lims[0][0]:lims[0][1], lims[1][0]:lims[1][1], lims[2][0]:lims[2][1]]
    t = torch.from_numpy(np.ascontiguousarray(block)) if isinstance(block, np.ndarray) else block
    t = t.to(device)
    for a in range(3):
        r = idx[a] - lims[a][0]
        ok = (idx[a] >= 0) & (idx[a] < n[a]) & (r >= 0) & (r < t.shape[a])
        t = t.index_select(a, torch.as_tensor(np.clip(r, 0, t.shape[a] - 1), device=t.device))
        shape = [1, 1, 1]
        shape[a] = -1
        okt = torch.as_tensor(ok, device=t.device).view(shape).expand_as(t)
        t = torch.where(okt, t, torch.zeros_like(t))
    return t


# --------------------------------------------------------------------------------- normalisation
def normalize(roi: torch.Tensor, method: str, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Z-score the ROI; statistics from voxels > 0 ("zscore_positive", the reference) or all in-volume
    voxels ("zscore_roi"); every voxel (padding included) is shifted and scaled. Unbiased std, as torchio."""
    if method == "none":
        return roi
    if method not in NORMALIZATIONS:
        raise MSAMError(f"unknown normalization {method!r}; expected one of {NORMALIZATIONS}")
    if method == "zscore_positive":
        from .model.normalization import zscore_positive

        return zscore_positive(roi)  # the project's single reference implementation (float64 statistics)
    sel = valid if valid is not None else torch.ones_like(roi, dtype=torch.bool)
    vals = roi[sel]
    if vals.numel() < 2:
        vals = roi.reshape(-1)
    mean = vals.mean()
    std = vals.std() if vals.numel() > 1 else torch.zeros((), device=roi.device)
    if not bool(torch.isfinite(std)) or float(std) < 1e-6:
        std = torch.ones((), device=roi.device, dtype=roi.dtype)
    return (roi - mean) / std


@dataclass
class RoiTensor:
    """Model input of one ROI: ``image`` (1,1,S,S,S) float32 on the device, in the model's axis order."""

    image: torch.Tensor
    geometry: RoiGeometry


def _cfg(preprocess, name: str, default):
    return getattr(preprocess, name, default) if preprocess is not None else default


def prepare_roi(
    volume: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    center: Sequence[float],
    preprocess,
    img_size: int,
    modality: str = "other",
    device: str | torch.device = "cpu",
    *,
    geometry: RoiGeometry | None = None,
) -> RoiTensor:
    """Crop + resample + window + normalise the ROI centred on ``center`` (native voxel index).

    ``preprocess`` is a ``model.config.PreprocessConfig`` (spacing_mm, ct_window, normalization,
    axis_order). Pass ``geometry`` to reuse a ROI (e.g. one centred on a label's bounding box in training).
    """
    if modality not in MODALITIES:
        raise MSAMError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    axis_order = _cfg(preprocess, "axis_order", "SPL")
    if geometry is None:
        geometry = roi_geometry(
            volume.shape, spacing, center, _cfg(preprocess, "spacing_mm", (1.5, 1.5, 1.5)), img_size, axis_order
        )
    roi, valid = sample_image(volume, geometry, device)
    window = _cfg(preprocess, "ct_window", None)
    if modality == "ct" and window is not None:
        roi = roi.clamp(float(window[0]), float(window[1]))
    roi = normalize(roi, _cfg(preprocess, "normalization", "zscore_positive"), valid)
    roi = array_to_model(roi, geometry.axis_order)
    return RoiTensor(image=roi.contiguous().reshape(1, 1, *roi.shape), geometry=geometry)


def prepare_label_roi(label: np.ndarray | torch.Tensor, geometry: RoiGeometry,
                      device: str | torch.device = "cpu", side: int | None = None) -> torch.Tensor:
    """Label volume on the ROI grid (nearest), (1,1,S,S,S) in the model's axis order (for training)."""
    t = sample_labels(label, geometry, device, side)
    t = array_to_model(t, geometry.axis_order)
    return t.contiguous().reshape(1, 1, *t.shape)


# ----------------------------------------------------------------------------------- paste back
@dataclass
class Pasted:
    """Native-grid result of one ROI: ``bbox`` is the ROI's native box; ``logits`` cover ``region`` (a sub-box
    of ``bbox``, absolute indices; all of it when pasted with ``full=True``). Outside ``region`` every
    voxel is certainly <= 0. ``mask`` = logits > 0 (sigmoid > 0.5) over the whole ``bbox``.
    With ``mask_only=True`` the float logits are not kept (``logits`` is empty) and ``region_mask`` holds
    logits > 0 over ``region``."""

    bbox: tuple[slice, slice, slice]
    logits: np.ndarray
    region: tuple[slice, slice, slice] | None = None
    region_mask: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray:
        region = self.region if self.region is not None else self.bbox
        inner = self.region_mask if self.region_mask is not None else self.logits > 0
        if region == self.bbox:
            return inner
        out = np.zeros(tuple(b.stop - b.start for b in self.bbox), bool)
        rel = tuple(slice(r.start - b.start, r.stop - b.start) for r, b in zip(region, self.bbox, strict=True))
        out[rel] = inner
        return out


def _grid_coords(geometry: RoiGeometry, axis: int, native_idx: np.ndarray, side: int) -> np.ndarray:
    """Continuous index on a grid of ``side`` (align_corners=False over the ROI) of native voxels."""
    u = (native_idx - geometry.start[axis]) / geometry.step[axis]
    return (u + 0.5) * (side / geometry.size) - 0.5


def _lerp_planes(t: torch.Tensor, pos: np.ndarray, threshold: bool) -> np.ndarray:
    """Linear interpolation along axis 0 (edge values) at grid positions ``pos`` in [0, side-1], written
    plane group by plane group: native planes between the same two grid planes share their two source
    planes, so nothing is gathered and no full-size temporaries are made. ``threshold``: return
    ``value > 0`` (bool) instead of the float values. Same arithmetic as :func:`_linear_axis` (clamp)."""
    side = t.shape[0]
    if t.device.type != "cpu":  # one gather beats a Python loop of small kernel launches on a GPU
        v = _linear_axis(t, 0, pos, 0, side, clamp=True)
        return (v > 0 if threshold else v).cpu().numpy()
    pos = np.clip(pos, 0, side - 1)
    i0 = np.floor(pos).astype(np.int64)
    w = torch.as_tensor(pos - i0, dtype=t.dtype, device=t.device)
    n = len(pos)
    out = torch.empty((n, *t.shape[1:]), dtype=torch.bool if threshold else t.dtype, device=t.device)
    starts = np.flatnonzero(np.diff(i0, prepend=-1)) if n else np.zeros(0, np.int64)
    bounds = list(starts) + [n]
    buf = torch.empty((int(np.diff(bounds).max()) if n else 0, *t.shape[1:]), dtype=t.dtype, device=t.device) \
        if threshold else None
    for k0, k1 in zip(bounds[:-1], bounds[1:], strict=True):
        j = int(i0[k0])
        m = k1 - k0
        a = t[j].expand(m, *t.shape[1:])
        b = t[min(j + 1, side - 1)].expand(m, *t.shape[1:])
        ww = w[k0:k1].view(-1, *([1] * (t.ndim - 1)))
        if threshold:
            assert buf is not None
            torch.lerp(a, b, ww, out=buf[:m])
            torch.gt(buf[:m], 0, out=out[k0:k1])
        else:
            torch.lerp(a, b, ww, out=out[k0:k1])
    return out.cpu().numpy()


def paste_back(
    logits_roi: torch.Tensor, geometry: RoiGeometry, out_shape: Sequence[int] | None = None, *, full: bool = True,
    mask_only: bool = False,
) -> Pasted:
    """Map model-grid logits (any cubic side: low-res L or S, model axis order) to the native voxels of the
    ROI's bounding box by one trilinear step (edge values at the ROI border), float32 numpy.

    With equal spacings this equals ``F.interpolate(..., size=S, mode="trilinear", align_corners=False)``
    cropped to the volume, i.e. the reference's upsample. ``full=False`` interpolates only the native
    voxels whose 8 grid neighbours include a positive logit (a convex combination of values <= 0 is <= 0),
    so the mask is identical but a small object on a large ROI costs little. ``mask_only=True`` thresholds
    the last interpolation pass on the fly and keeps no float logits (``Pasted.region_mask``).
    """
    if out_shape is not None and tuple(int(s) for s in out_shape) != geometry.native_shape:
        raise MSAMError(f"out_shape {tuple(out_shape)} does not match the ROI's volume {geometry.native_shape}")
    t = logits_roi.detach()
    while t.ndim > 3:
        t = t[0]
    side = t.shape[0]
    if t.shape != (side, side, side):
        raise MSAMError(f"expected cubic ROI logits, got shape {tuple(logits_roi.shape)}")
    t = model_to_array(t.float(), geometry.axis_order)
    bbox = geometry.bbox
    coords = []
    for a in range(3):
        idx = np.arange(bbox[a].start, bbox[a].stop, dtype=np.float64)
        coords.append((idx, np.clip(_grid_coords(geometry, a, idx, side), 0, side - 1)))
    region = bbox
    if not full:
        pos = t > 0
        if not bool(pos.any()):
            empty = tuple(slice(b.start, b.start) for b in bbox)
            return Pasted(bbox=bbox, logits=np.zeros((0, 0, 0), np.float32), region=empty)  # type: ignore[arg-type]
        reg = []
        for a in range(3):
            other = tuple(i for i in range(3) if i != a)
            nz = torch.nonzero(pos.any(dim=other[1]).any(dim=other[0])).flatten()
            lo, hi = int(nz.min()), int(nz.max())
            idx, v = coords[a]
            keep = np.flatnonzero((v >= lo - 1) & (v < hi + 1))
            if keep.size == 0:
                empty = tuple(slice(b.start, b.start) for b in bbox)
                return Pasted(bbox=bbox, logits=np.zeros((0, 0, 0), np.float32), region=empty)  # type: ignore[arg-type]
            k0, k1 = int(keep[0]), int(keep[-1]) + 1
            coords[a] = (idx[k0:k1], v[k0:k1])
            reg.append(slice(bbox[a].start + k0, bbox[a].start + k1))
        region = (reg[0], reg[1], reg[2])
    for a in (2, 1):
        t = _linear_axis(t, a, coords[a][1], 0, side, clamp=True)
    if mask_only:
        return Pasted(bbox=bbox, logits=np.zeros((0, 0, 0), np.float32), region=region,
                      region_mask=_lerp_planes(t, coords[0][1], threshold=True))
    return Pasted(bbox=bbox, logits=_lerp_planes(t, coords[0][1], threshold=False), region=region)


def resample_logits(
    logits: torch.Tensor, src: RoiGeometry, dst: RoiGeometry, fill: float = 0.0
) -> torch.Tensor:
    """Move model-grid logits (1,1,L,L,L) of ROI ``src`` onto ROI ``dst`` (same volume, same steps).

    Where ``dst`` lies outside ``src`` the value is ``fill`` (0 = "no information", what the model gets at
    the first click). Used as the prior when the session re-centres or adds a window.
    """
    t = model_to_array(logits.detach().float().reshape(logits.shape[-3:]), src.axis_order)
    side = t.shape[0]
    inside = None
    for a in range(3):
        pos = dst.positions(a, side)
        v = _grid_coords(src, a, pos, side)
        ok = torch.as_tensor((v >= -0.5) & (v <= side - 0.5), device=t.device)
        t = _linear_axis(t, a, v, 0, side, clamp=True)
        shape = [1, 1, 1]
        shape[a] = -1
        ok = ok.view(shape)
        inside = ok if inside is None else inside & ok
    assert inside is not None
    t = torch.where(inside.expand_as(t), t, torch.full_like(t, fill))
    t = array_to_model(t, dst.axis_order)
    return t.contiguous().reshape(1, 1, side, side, side)


def guess_modality(volume: np.ndarray) -> str:
    """The project's one modality rule (:mod:`napari_msam.modality`) from the intensities alone."""
    return _modality.guess_modality("", volume)
