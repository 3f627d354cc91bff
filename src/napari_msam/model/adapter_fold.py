"""The adapter's mask stream folded through its low-rank input: the same sums, regrouped.

The mask prompt is a 1x1 projection M = W h + b of the prompt encoder's J0 (16) channels h up to C (384),
and the adapter first normalises it over channels (``add_norm2``). The centring of a LayerNorm is linear,
only its 1/σ scale is not, so per voxel

    M0 = A u,   u = [h / σ, 1 / σ, 1]  (J = J0 + 2 channels),   A = [γ ⊙ (W − mean_c W), γ ⊙ (b − mean b), β]

with σ the voxel's channel std of M. Two C-wide products that read M0 therefore shrink to J-wide ones:

* the MFEB's ``prompt_conv1`` (3x3x3, C -> C, about 4 GFLOP on the 8^3 grid) is the convolution of u with
  the kernel K·A (C x J x 27); zero padding of M0 is zero padding of u, its ones channel included;
* the image attention unit reads Qi = (E0 + Eu) + M0. With D the channel-centred E0 + Eu and σx the
  channel std of Qi, its ``qkv(norm1(Qi))`` is (P + u Gᵀ) / σx + c, where P = D (W_qkv diag γ1)ᵀ depends on
  the image alone (computed once per ROI), G = W_qkv diag γ1 (A − mean_c A) and c = W_qkv β1 + b_qkv.

Nothing is approximated; fp32 results differ from the unfolded form by rounding only (~1e-7 relative).
Everything here works on channels-last tokens, which also saves the layout copies of the unfolded form.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapter import AdapterImageCache, MaskEnhancedAdapter, _cl, _ln_last


@dataclass
class MaskFold:
    """Per-ROI inputs of :func:`forward_folded`: weight products (mask-independent) and image-only terms."""

    proj_w: Tensor  # (C, J0) the prompt encoder's 1x1 projection
    proj_b: Tensor  # (C,)
    conv_cols: Tensor  # (27 * J, C) the folded 3x3x3 kernel, rows (kd, kh, kw, j)
    qkv_u: Tensor  # (3C, J) G
    qkv_c: Tensor  # (3C,) c
    e0: Tensor  # (B, g, g, g, C) E0, channels-last
    eu: Tensor  # (B, g, g, g, C) Eu, channels-last
    qkv_base: Tensor  # (B, g, g, g, 3C) P

    def to(self, device: torch.device | str) -> MaskFold:
        return MaskFold(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def fold_mask_stream(adapter: MaskEnhancedAdapter, proj: nn.Conv3d, cache: AdapterImageCache) -> MaskFold:
    """The folded weights for ``adapter`` fed by ``proj`` (the prompt encoder's last layer) and one ROI."""
    mfeb = adapter.bidirectional_attentions[0]
    c = adapter.add_norm2.weight.shape[0]
    w = proj.weight.reshape(c, -1)
    b = proj.bias
    g2, b2 = adapter.add_norm2.weight, adapter.add_norm2.bias
    a = torch.cat([g2[:, None] * (w - w.mean(0)), (g2 * (b - b.mean()))[:, None], b2[:, None]], dim=1)
    k = mfeb.prompt_conv1.weight.reshape(c, c, -1)  # (out, in, taps)
    kf = torch.matmul(a.t(), k)  # (out, J, taps)
    conv_cols = kf.permute(2, 1, 0).reshape(-1, c).contiguous()
    unit = mfeb.image_multiheadattn
    wg = unit.qkv.weight * unit.norm1.weight
    qkv_u = wg @ (a - a.mean(0))
    qkv_c = unit.qkv.weight @ unit.norm1.bias + unit.qkv.bias
    e0, eu = _cl(cache.e0), _cl(cache.eu)
    base = e0 + eu
    qkv_base = F.linear(base - base.mean(-1, keepdim=True), wg)
    return MaskFold(w, b, conv_cols, qkv_u, qkv_c, e0, eu, qkv_base)


def _columns3(u: Tensor) -> Tensor:
    """(B, g, g, g, J) -> (B * g^3, 27 * J): the 3x3x3 zero-padded neighbourhoods, taps (kd, kh, kw) major."""
    bsz, d, h, w, j = u.shape
    p = F.pad(u, (0, 0, 1, 1, 1, 1, 1, 1))
    cols = p.unfold(1, 3, 1).unfold(2, 3, 1).unfold(3, 3, 1)  # (B, d, h, w, J, 3, 3, 3)
    return cols.permute(0, 1, 2, 3, 5, 6, 7, 4).reshape(bsz * d * h * w, 27 * j)


def forward_folded(adapter: MaskEnhancedAdapter, fold: MaskFold, h: Tensor) -> Tensor:
    """(B, J0, g, g, g) mask features (the prompt encoder before its 1x1 projection) -> the adapter output
    (B, C, g, g, g), a channels-first view of channels-last data (what the decoder flattens to tokens)."""
    mfeb = adapter.bidirectional_attentions[0]
    c = fold.proj_w.shape[0]
    hl = h.permute(0, 2, 3, 4, 1)
    m = F.linear(hl, fold.proj_w, fold.proj_b)
    norm = adapter.add_norm2
    m0, _, inv = torch.native_layer_norm(m, (c,), norm.weight, norm.bias, norm.eps)  # inv = 1 / σ
    u = torch.cat([hl * inv, inv, torch.ones_like(inv)], dim=-1)
    y = torch.addmm(mfeb.prompt_conv1.bias, _columns3(u), fold.conv_cols).reshape(m0.shape)
    y = F.gelu(_ln_last(mfeb.prompt_norm, y))
    y = F.linear(y, mfeb.prompt_conv2.weight.reshape(c, c), mfeb.prompt_conv2.bias)
    pu = _ln_last(mfeb.prompt_addnorm1, y + m0)
    n1 = mfeb.image_multiheadattn.norm1
    u_proj = F.linear(u, fold.qkv_u)

    def image_qkv(qi: Tensor) -> Tensor:
        inv_x = torch.native_layer_norm(qi, (c,), None, None, n1.eps)[2]  # 1 / σx
        return (fold.qkv_base + u_proj) * inv_x + fold.qkv_c

    e1, m1 = mfeb.mix(fold.e0, fold.eu, m0, pu, image_qkv)
    return adapter.combine(fold.e0, m0, e1, m1).permute(0, 4, 1, 2, 3)
