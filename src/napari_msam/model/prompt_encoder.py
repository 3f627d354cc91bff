"""Point and mask prompt encoder (PromptEncoder3D layout)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .common import LayerNorm3d


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features: concat(sin, cos, sin) of 2π(2c−1)G, truncated to ``dim`` channels.

    The repeated sin is the reference's layout (3·F channels); for a ``dim`` not divisible by 3 we use
    F = ceil(dim / 3) and drop the surplus channels, which is identical when 3 divides ``dim``.
    """

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.dim = dim
        feats = math.ceil(dim / 3)
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(3, feats))

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords), torch.sin(coords)], dim=-1)[..., : self.dim]

    def dense(self, size: int) -> Tensor:
        """(dim, size, size, size) PE of the grid with the reference's x/y swap.

        Grid voxel (i, j, k) is encoded from the coordinate ((j+.5)/n, (i+.5)/n, (k+.5)/n): the first two
        axes are swapped relative to points. Reference weights were trained with this, so it stays.
        """
        gm = self.positional_encoding_gaussian_matrix
        ones = torch.ones((size, size, size), device=gm.device, dtype=gm.dtype)
        first = (ones.cumsum(dim=0) - 0.5) / size
        second = (ones.cumsum(dim=1) - 0.5) / size
        third = (ones.cumsum(dim=2) - 0.5) / size
        pe = self._pe_encoding(torch.stack([second, first, third], dim=-1))
        return pe.permute(3, 0, 1, 2)

    def forward_with_coords(self, points: Tensor, image_size: int) -> Tensor:
        """Points already shifted to voxel centres, (B, N, 3) in (d, h, w) voxel units."""
        return self._pe_encoding(points / image_size)


class PromptEncoder3D(nn.Module):
    """Sparse (point) and dense (previous low-res logits) prompt embeddings."""

    def __init__(self, embed_dim: int, grid: int, img_size: int, mask_in_chans: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.grid = grid
        self.img_size = img_size
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)  # kept for state-dict parity; never used

    @property
    def mask_input_size(self) -> int:
        return 4 * self.grid

    def get_dense_pe(self) -> Tensor:
        """(1, C, g, g, g) positional encoding of the image-embedding grid."""
        return self.pe_layer.dense(self.grid).unsqueeze(0)

    def embed_points(self, points: Tensor, labels: Tensor) -> Tensor:
        """(B, N, 3) int voxel indices + (B, N) labels -> (B, N+1, C): the clicks plus one padding point."""
        if points.ndim != 3 or points.shape[-1] != 3 or labels.shape != points.shape[:2]:
            raise ValueError(
                f"points must be (B, N, 3) and labels (B, N); got {tuple(points.shape)} and {tuple(labels.shape)}"
            )
        b = points.shape[0]
        dtype = self.positional_encoding_dtype
        pts = points.to(dtype) + 0.5
        pts = torch.cat([pts, torch.zeros((b, 1, 3), dtype=dtype, device=pts.device)], dim=1)
        labs = torch.cat([labels, -torch.ones((b, 1), dtype=labels.dtype, device=labels.device)], dim=1)
        emb = self.pe_layer.forward_with_coords(pts, self.img_size)
        pad = (labs == -1)[..., None]
        emb = torch.where(pad, torch.zeros_like(emb), emb)
        emb = emb + pad * self.not_a_point_embed.weight
        emb = emb + (labs == 0)[..., None] * self.point_embeddings[0].weight
        emb = emb + (labs == 1)[..., None] * self.point_embeddings[1].weight
        return emb

    @property
    def positional_encoding_dtype(self) -> torch.dtype:
        return self.pe_layer.positional_encoding_gaussian_matrix.dtype

    def embed_masks(self, masks: Tensor) -> Tensor:
        """(B, 1, L, L, L) raw logits -> (B, C, g, g, g)."""
        return self.mask_projection(self.mask_features(masks))

    def mask_features(self, masks: Tensor) -> Tensor:
        """(B, 1, L, L, L) raw logits -> (B, mask_in_chans, g, g, g): the mask embedding before its last
        (1x1, linear) layer, which the adapter's folded mask stream absorbs into its own weights."""
        lr = self.mask_input_size
        if masks.ndim != 5 or masks.shape[1] != 1 or tuple(masks.shape[2:]) != (lr, lr, lr):
            raise ValueError(f"mask logits must be (B, 1, {lr}, {lr}, {lr}), got {tuple(masks.shape)}")
        return self.mask_downscaling[:-1](masks)

    @property
    def mask_projection(self) -> nn.Conv3d:
        """The last layer of ``mask_downscaling``: 1x1 Conv3d mask_in_chans -> embed_dim."""
        return self.mask_downscaling[-1]

    def forward(self, points: Tensor, labels: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        return self.embed_points(points, labels), self.embed_masks(masks)
