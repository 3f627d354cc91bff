"""Mask decoder; the image-token source is ``adapter(E, dense)`` (M-SAM) or ``E + dense`` (SAM-Med3D)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .common import MLP, LayerNorm3d
from .transformer import TwoWayTransformer3D

AdapterFn = Callable[[Tensor, Tensor], Tensor]


class MaskDecoder3D(nn.Module):
    def __init__(
        self,
        transformer_dim: int,
        depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        num_multimask_outputs: int = 3,
        iou_head_hidden_dim: int = 256,
        iou_head_depth: int = 3,
    ) -> None:
        super().__init__()
        c = transformer_dim
        self.transformer_dim = c
        self.transformer = TwoWayTransformer3D(depth, c, num_heads, mlp_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(c, c // 4, kernel_size=2, stride=2),
            LayerNorm3d(c // 4),
            nn.GELU(),
            nn.ConvTranspose3d(c // 4, c // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool = False,
        adapter: AdapterFn | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Returns low-res logits (B, 1 | 3, L, L, L) and IoU predictions (B, 1 | 3)."""
        b = sparse_prompt_embeddings.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        if adapter is not None:
            src = adapter(image_embeddings, dense_prompt_embeddings)
        else:
            src = image_embeddings + dense_prompt_embeddings
        if src.shape[0] != b:
            src = src.expand(b, -1, -1, -1, -1)
        pos = image_pe.expand(b, -1, -1, -1, -1)
        g = src.shape[2:]
        hs, keys = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        src = keys.transpose(1, 2).reshape(b, self.transformer_dim, *g)
        up = self.output_upscaling(src)
        hyper = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        bb, c, d, h, w = up.shape
        masks = (hyper @ up.reshape(bb, c, d * h * w)).reshape(bb, -1, d, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sel], iou_pred[:, sel]
