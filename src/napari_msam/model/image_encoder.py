"""3-D ViT image encoder (SAM-Med3D ``vit_b_ori`` layout, every size from the config)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import IMPLS, Attention, windowed_attention
from .common import LayerNorm3d, MLPBlock
from .config import MSAMConfig


class PatchEmbed3D(nn.Module):
    """Non-overlapping patches -> channels-last tokens (B, g, g, g, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """Stride = kernel, so the convolution is one matrix product of the flattened patches; it writes
        the tokens contiguous channels-last, the layout the whole residual stream then keeps (a
        channels-first stream makes every LayerNorm and Linear of the blocks copy its input first)."""
        w = self.proj.weight
        p = w.shape[-1]
        b, c, d, h, wd = x.shape
        if c != w.shape[1] or d % p or h % p or wd % p:
            return self.proj(x).permute(0, 2, 3, 4, 1).contiguous()
        g = (d // p, h // p, wd // p)
        cols = x.reshape(b, c, g[0], p, g[1], p, g[2], p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        out = F.linear(cols.reshape(b * g[0] * g[1] * g[2], -1), w.flatten(1), self.proj.bias)
        return out.reshape(b, *g, -1)


class Block(nn.Module):
    """Pre-norm transformer block; windowed blocks pad after norm1 (reference) or fold the padding (fast)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, input_size=window_size if window_size > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            x = windowed_attention(self.attn, x, self.window_size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT3D(nn.Module):
    """(B, 1, S, S, S) -> (B, out_chans, g, g, g)."""

    def __init__(self, config: MSAMConfig) -> None:
        super().__init__()
        self.img_size = config.img_size
        g = config.grid
        c = config.embed_dim
        self.patch_embed = PatchEmbed3D(config.patch_size, 1, c)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, g, c))
        self.blocks = nn.ModuleList(
            Block(c, config.num_heads, config.mlp_ratio, 0 if config.is_global(i) else config.window_size, g)
            for i in range(config.depth)
        )
        out = config.out_chans
        self.neck = nn.Sequential(
            nn.Conv3d(c, out, kernel_size=1, bias=False),
            LayerNorm3d(out),
            nn.Conv3d(out, out, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out),
        )

    @property
    def attention_impl(self) -> str:
        return self.blocks[0].attn.impl

    @attention_impl.setter
    def attention_impl(self, impl: str) -> None:
        if impl not in IMPLS:
            raise ValueError(f"attention_impl must be one of {IMPLS}, got {impl!r}")
        for blk in self.blocks:
            blk.attn.impl = impl

    def forward_tokens(self, x: Tensor, keep: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Patch embedding + blocks; with ``keep`` also returns [patch_embed (before pos), block outputs]."""
        s = self.img_size
        if x.ndim != 5 or x.shape[1] != 1 or tuple(x.shape[2:]) != (s, s, s):
            raise ValueError(f"image encoder expects (B, 1, {s}, {s}, {s}), got {tuple(x.shape)}")
        x = self.patch_embed(x)
        trace = [x] if keep else []
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
            if keep:
                trace.append(x)
        return x, trace

    def forward(self, x: Tensor) -> Tensor:
        x, _ = self.forward_tokens(x)
        return self.forward_neck(x)

    def forward_neck(self, x: Tensor) -> Tensor:
        """Channels-last tokens -> (B, out_chans, g, g, g). The 1x1 convolution and its LayerNorm run on the
        tokens as they are (a Linear and ``layer_norm``), so only the out_chans-wide result is re-laid out
        for the 3x3x3 convolution, not the wider token stream."""
        conv1, norm1, conv3, norm2 = self.neck
        y = F.linear(x, conv1.weight.flatten(1), conv1.bias)
        y = F.layer_norm(y, (y.shape[-1],), norm1.weight, norm1.bias, norm1.eps)
        return norm2(conv3(y.permute(0, 4, 1, 2, 3).contiguous()))
