"""Mask decoder; the image-token source is ``adapter(E, dense)`` (M-SAM) or ``E + dense`` (SAM-Med3D)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
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
        hs, keys = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0, :]
        sel = slice(1, None) if multimask_output else slice(0, 1)
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :][:, sel]
        hyper = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(list(self.output_hypernetworks_mlps)[sel])], dim=1
        )
        masks = self._upscaled_masks(keys, hyper, src.shape[2])
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred[:, sel]

    def _upscaled_masks(self, keys: Tensor, hyper: Tensor, g: int) -> Tensor:
        """``hyper`` (B, M, C/8) dotted with ``output_upscaling(keys)``, as (B, M, 4g, 4g, 4g).

        Both transposed convolutions have kernel = stride = 2, so each is one matrix product per token that
        writes its own 2x2x2 block. Working on the token rows directly (channels last, the blocks kept in
        the order they were produced), normalising with ``layer_norm`` and dotting with the hypernetwork
        before any spatial rearrangement leaves a single reordering of the final logits: the same sums as
        the convolution path, several times fewer memory passes.
        """
        up1, ln, _, up2, _ = self.output_upscaling
        b, n, c = keys.shape
        c1, c2 = up1.weight.shape[1], up2.weight.shape[1]
        w1 = up1.weight.reshape(c, c1, 8).transpose(1, 2).reshape(c, 8 * c1)  # columns: (block voxel, channel)
        y = torch.addmm(up1.bias.repeat(8), keys.reshape(b * n, c), w1).reshape(b * n * 8, c1)
        y = F.gelu(F.layer_norm(y, (c1,), ln.weight, ln.bias, ln.eps))
        w2 = up2.weight.reshape(c1, c2, 8).transpose(1, 2).reshape(c1, 8 * c2)
        y = F.gelu(torch.addmm(up2.bias.repeat(8), y, w2).reshape(b * n * 64, c2))
        m = hyper.shape[1]
        out = torch.bmm(y.reshape(b, n * 64, c2), hyper.transpose(1, 2))  # (B, tokens * 8 * 8, M)
        # rows are (d, h, w, i1, j1, k1, i2, j2, k2): voxel (4d + 2 i1 + i2, 4h + 2 j1 + j2, 4w + 2 k1 + k2)
        out = out.reshape(b, g, g, g, 2, 2, 2, 2, 2, 2, m).permute(0, 10, 1, 4, 7, 2, 5, 8, 3, 6, 9)
        return out.reshape(b, m, 4 * g, 4 * g, 4 * g)
