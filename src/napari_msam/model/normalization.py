"""Intensity normalisation used by the reference trainer (z-score over the voxels > 0)."""

from __future__ import annotations

import numpy as np
import torch


def zscore_stats(x: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Mean and unbiased std over voxels > 0, in float64.

    Falls back to all voxels when fewer than two are positive, and to std 1 for a constant input, so an
    empty or flat ROI never produces NaNs.
    """
    a = (
        x.detach().cpu().to(torch.float64).numpy()
        if isinstance(x, torch.Tensor)
        else np.asarray(x, np.float64)
    )
    sel = a[a > 0]
    if sel.size < 2:
        sel = a.ravel()
    if sel.size == 0:
        return 0.0, 1.0
    mean = float(sel.mean())
    std = float(sel.std(ddof=1)) if sel.size > 1 else 0.0
    if not np.isfinite(std) or std <= 0:
        std = 1.0
    return mean, std


def zscore_positive(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(x - mean) / std with the statistics of :func:`zscore_stats`; every voxel is mapped, float32 out.

    For a batch, pass the whole batch: like the reference (torchio on the squeezed batch) one joint
    mean/std is used.
    """
    mean, std = zscore_stats(x)
    m32, s32 = np.float32(mean), np.float32(std)
    if isinstance(x, torch.Tensor):
        xf = x.to(torch.float32)
        # 0-d float32 tensors: a float32 subtraction then a float32 division, like the reference.
        mt = torch.tensor(m32, dtype=torch.float32, device=xf.device)
        st = torch.tensor(s32, dtype=torch.float32, device=xf.device)
        return (xf - mt) / st
    xf = np.asarray(x, dtype=np.float32)
    return (xf - m32) / s32
