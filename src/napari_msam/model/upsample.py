"""Trilinear upsampling of the low-res logits (``align_corners=False``) as three small matrix products.

``F.interpolate(..., mode="trilinear")`` on the CPU gathers eight neighbours per output voxel, one by one.
Trilinear interpolation is separable, so the same result is one (S x n) interpolation matrix applied along
each axis in turn: about 0.18 GFLOP of dense GEMM for 32^3 -> 128^3, several times faster
(docs/performance.md).
Each output is the same two-term weighted sum per axis (the other matrix entries are exact zeros), so the
results agree with ``F.interpolate`` to float rounding. Used for inference on the CPU; autograd, autocast,
other devices and non-finite logits (a zero weight times inf is NaN) take ``F.interpolate``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache(maxsize=8)
def interpolation_matrix(n_in: int, n_out: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation with ``align_corners=False``, as torch computes
    them for an output size: source = (i + 0.5) n_in / n_out - 0.5, clamped at the borders."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    lam = src - i0
    m = torch.zeros((n_out, n_in), dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1 - lam, accumulate=True)
    m.index_put_((rows, i1), lam, accumulate=True)
    return m.to(dtype)


def _fast_ok(x: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not (torch.is_grad_enabled() and x.requires_grad)
        and not torch.is_autocast_enabled("cpu")
        and x.ndim == 5
        and x.shape[2] == x.shape[3] == x.shape[4]
        and bool(torch.isfinite(x).all())
    )


def upsample_trilinear(x: Tensor, size: int) -> Tensor:
    """(B, C, n, n, n) -> (B, C, size, size, size), trilinear with ``align_corners=False``."""
    if not _fast_ok(x):
        return F.interpolate(x, size=(size, size, size), mode="trilinear", align_corners=False)
    b, c, n = x.shape[0], x.shape[1], x.shape[2]
    m = interpolation_matrix(n, size, x.dtype)
    t = x.reshape(-1, n) @ m.t()  # along W: (B C n n, S)
    t = torch.matmul(m, t.reshape(b * c * n, n, size))  # along H: (B C n, S, S)
    t = torch.matmul(m, t.reshape(b * c, n, size * size))  # along D: (B C, S, S S)
    return t.reshape(b, c, size, size, size)
