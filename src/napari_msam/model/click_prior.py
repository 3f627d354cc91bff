"""Click prior: paint every click of the object into the mask prompt before each refinement.

The reference feeds only the newest click plus the previous low-res logits, so a small model trained from
scratch forgets earlier clicks and barely reacts to corrections. Our own models may instead be trained
with a *click prior*: before each refinement, a ball of ``radius`` low-res voxels around every click of
the object is set to ``+value`` (positive click) or ``-value`` (negative click) in the mask input, later
clicks winning. The architecture is unchanged (the prior enters through the prompt encoder's mask
branch). A checkpoint records it in its metadata (``"click_prior": {"radius": r, "value": v}``) so that
the Session applies exactly what training did; reference weights have none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class ClickPrior:
    radius: float = 1.5  # in low-res voxels (1 low-res voxel = patch_size / 4 model voxels)
    value: float = 4.0  # logit painted inside the ball

    def to_metadata(self) -> dict[str, float]:
        return {"radius": float(self.radius), "value": float(self.value)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> ClickPrior | None:
        """The prior a checkpoint was trained with, or None (reference behaviour)."""
        d = (metadata or {}).get("click_prior") if isinstance(metadata, Mapping) else None
        if not d:
            return None
        return cls(radius=float(d["radius"]), value=float(d["value"]))

    def apply(self, low_res: Tensor | None, points: Tensor, labels: Tensor, img_size: int,
              low_res_side: int) -> Tensor:
        """Paint ``points`` (B,N,3 int voxel indices of the S^3 input; labels (B,N) 1/0) into ``low_res``.

        ``low_res`` None means the reference's all-zero first mask. Differentiable in ``low_res``.
        """
        b, n = points.shape[:2]
        device = points.device
        if low_res is None:
            low_res = torch.zeros((b, 1) + (low_res_side,) * 3, device=device)
        side = low_res.shape[-1]
        scale = side / float(img_size)
        axis = torch.arange(side, device=device, dtype=torch.float32)
        out = low_res
        for j in range(n):
            c = (points[:, j].to(torch.float32) + 0.5) * scale - 0.5  # (B,3) in low-res voxel coords
            d2 = ((axis.view(1, -1, 1, 1) - c[:, 0].view(-1, 1, 1, 1)) ** 2
                  + (axis.view(1, 1, -1, 1) - c[:, 1].view(-1, 1, 1, 1)) ** 2
                  + (axis.view(1, 1, 1, -1) - c[:, 2].view(-1, 1, 1, 1)) ** 2)
            ball = (d2 <= self.radius ** 2).unsqueeze(1)  # (B,1,L,L,L)
            pos = (labels[:, j] > 0).view(-1, 1, 1, 1, 1)
            target = torch.where(pos, torch.full_like(out, self.value), torch.full_like(out, -self.value))
            out = torch.where(ball, target, out)
        return out
