"""Mask-Enhanced Adapter (MEA, reference name ``bidatt``) with its Mutual Feature Enhancement Block.

Sizes come from the config (the reference hard-codes 384 channels and an 8^3 grid). The image-only part
(``add_norm3`` and the MFEB image branch up to ``image_addnorm1``) depends on the embedding alone, so
:meth:`MaskEnhancedAdapter.prepare_image` computes it once per ROI and :meth:`forward_prepared` reuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Attention
from .common import LayerNorm3d, MLPBlock

QkvFn = Callable[[Tensor], Tensor]


def _cl(x: Tensor) -> Tensor:
    """channels-first (B, C, D, H, W) -> contiguous channels-last (B, D, H, W, C)."""
    return x.permute(0, 2, 3, 4, 1).contiguous()


def _cf(x: Tensor) -> Tensor:
    return x.permute(0, 4, 1, 2, 3).contiguous()


def _ln_last(norm: LayerNorm3d, x: Tensor) -> Tensor:
    """A LayerNorm3d applied to a channels-last tensor (same maths, normalised over the last axis)."""
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


class AttnUnit(Attention):
    """The adapter's attention unit: returns MLP(LN_b(attn(LN_a(x)) + x)) – note: no outer residual."""

    def __init__(self, dim: int, num_heads: int, grid: int) -> None:
        super().__init__(dim, num_heads, input_size=grid)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, 4 * dim)

    def forward(self, x: Tensor, qkv: QkvFn | None = None) -> Tensor:  # channels-last
        """``qkv`` (optional) maps x to ``self.qkv(self.norm1(x))`` by a cheaper exact route."""
        h = self.attend(self.norm1(x)) if qkv is None else self.attend_projected(qkv(x), x.shape)
        return self.mlp(self.norm2(h + x))


class MFEB(nn.Module):
    """Two streams (image E, mask P) mixed additively at the attention input."""

    def __init__(self, dim: int, num_heads: int, grid: int) -> None:
        super().__init__()
        for s in ("image", "prompt"):
            setattr(self, f"{s}_conv1", nn.Conv3d(dim, dim, kernel_size=3, padding=1))
            setattr(self, f"{s}_norm", LayerNorm3d(dim))
            setattr(self, f"{s}_conv2", nn.Conv3d(dim, dim, kernel_size=1))
            for k in (1, 2, 3):
                setattr(self, f"{s}_addnorm{k}", LayerNorm3d(dim))
            setattr(self, f"{s}_multiheadattn", AttnUnit(dim, num_heads, grid))
        self.mlp1 = MLPBlock(dim, 4 * dim)
        self.mlp2 = MLPBlock(dim, 4 * dim)

    def _branch(self, s: str, x: Tensor) -> Tensor:
        """Step 1-2 of a stream: addnorm1(conv2(GELU(LN(conv1(x)))) + x), channels-first."""
        y = getattr(self, f"{s}_conv1")(x)
        y = F.gelu(getattr(self, f"{s}_norm")(y))
        y = getattr(self, f"{s}_conv2")(y)
        return getattr(self, f"{s}_addnorm1")(y + x)

    def image_part(self, e: Tensor) -> Tensor:
        """Eu (channels-first) – depends on the image embedding only."""
        return self._branch("image", e)

    def forward_prepared(self, e: Tensor, eu: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        """(E, Eu, P) channels-first -> (Oi, Op) channels-last."""
        pu = self._branch("prompt", p)
        return self.mix(_cl(e), _cl(eu), _cl(p), _cl(pu))

    def mix(
        self, e_l: Tensor, eu_l: Tensor, p_l: Tensor, pu_l: Tensor, image_qkv: QkvFn | None = None
    ) -> tuple[Tensor, Tensor]:
        """Steps 3-6 of both streams on channels-last inputs (E, Eu, P, Pu) -> (Oi, Op)."""
        qi = eu_l + e_l + p_l
        qp = e_l + pu_l + p_l
        oi = _ln_last(self.image_addnorm2, self.image_multiheadattn(qi, image_qkv) + eu_l)
        oi = _ln_last(self.image_addnorm3, self.mlp1(oi) + oi)
        op = _ln_last(self.prompt_addnorm2, self.prompt_multiheadattn(qp) + pu_l)
        op = _ln_last(self.prompt_addnorm3, self.mlp2(op) + op)
        return oi, op

    def forward(self, e: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_prepared(e, self.image_part(e), p)


@dataclass
class AdapterImageCache:
    """Mask-independent adapter intermediates of one embedding: E0 = add_norm3(E) and Eu of the MFEB."""

    e0: Tensor
    eu: Tensor


class MaskEnhancedAdapter(nn.Module):
    """(E, M) -> enhanced image embedding (B, C, g, g, g) used as the decoder's image-token source."""

    def __init__(self, dim: int, num_heads: int, grid: int, num_blocks: int = 1) -> None:
        super().__init__()
        if num_blocks != 1:
            raise ValueError("the reference adapter has exactly one MFEB")
        self.bidirectional_attentions = nn.ModuleList([MFEB(dim, num_heads, grid)])
        self.multi_head_self_attention = AttnUnit(dim, num_heads, grid)
        self.add_norm = LayerNorm3d(dim)
        self.add_norm2 = LayerNorm3d(dim)
        self.add_norm3 = LayerNorm3d(dim)
        self.add_norm4 = LayerNorm3d(dim)  # present in the reference state dict, never used
        self.mlp = MLPBlock(dim, 4 * dim)

    def prepare_image(self, e: Tensor) -> AdapterImageCache:
        e0 = self.add_norm3(e)
        return AdapterImageCache(e0=e0, eu=self.bidirectional_attentions[0].image_part(e0))

    def forward_prepared(self, cache: AdapterImageCache, m: Tensor) -> Tensor:
        m0 = self.add_norm2(m)
        e0 = cache.e0
        if e0.shape[0] != m0.shape[0]:
            e0 = e0.expand(m0.shape[0], -1, -1, -1, -1)
            eu = cache.eu.expand(m0.shape[0], -1, -1, -1, -1)
        else:
            eu = cache.eu
        e1, m1 = self.bidirectional_attentions[0].forward_prepared(e0, eu, m0)
        return _cf(self.combine(_cl(e0), _cl(m0), e1, m1))

    def combine(self, e0_l: Tensor, m0_l: Tensor, e1: Tensor, m1: Tensor) -> Tensor:
        """Steps 3-6 of the MEA on channels-last tensors -> the output, channels-last."""
        s = e1 + e0_l + m1 + m0_l
        a = self.multi_head_self_attention(s)
        o = _ln_last(self.add_norm, a + s)
        return o + self.mlp(o)

    def forward(self, e: Tensor, m: Tensor) -> Tensor:
        return self.forward_prepared(self.prepare_image(e), m)
