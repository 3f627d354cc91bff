"""Encoder self-attention with the reference's relative-position quirk.

Two numerically equivalent implementations of the *windowed* blocks exist:

* ``"padded"`` – the reference form: zero-pad the grid to whole windows after norm1, attend inside each
  window over all (padded) tokens, crop. With the reference's window 14 on an 8^3 grid this attends over
  2744 tokens, 2232 of them padding.
* ``"fast"`` (default) – the exact folded form of /work/shared/spec/fast-windowed-attention.md: only the
  real queries are computed, and all padded keys (which share the key/value of a zero token) are folded
  into one extra key whose additive bias is the log-sum of their exponentiated biases.

Global attention uses ``scaled_dot_product_attention`` with the bias as a float mask in "fast" mode and an
explicit softmax in "padded" mode (the reference path).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rel_pos import combine_terms, quirk_bias, quirk_terms, rel_pos_table

IMPLS = ("fast", "padded")


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"attention_impl must be one of {IMPLS}, got {impl!r}")
    return impl


class Attention(nn.Module):
    """Multi-head self-attention over a cube of tokens, fused qkv, decomposed rel-pos (quirk form).

    ``input_size`` is the cube side the ``rel_pos_*`` tables are built for (the window, or the grid).
    """

    impl: str = "fast"

    def __init__(self, dim: int, num_heads: int, input_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.input_size = input_size
        self.qkv: nn.Module = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * input_size - 1, self.head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size - 1, self.head_dim))

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, C) -> q, k, v each (B, heads, N, head_dim); layout [q; k; v] then heads."""
        return self._split_qkv(self.qkv(x))

    def _split_qkv(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # one copy into (3, B, heads, N, head_dim): the rel-pos products and the attention then read
        # contiguous blocks instead of each copying the strided views
        b, n, _ = qkv.shape
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).contiguous()
        return qkv[0], qkv[1], qkv[2]

    def _merge(self, out: Tensor, shape: tuple[int, ...]) -> Tensor:
        b, _, n, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, -1)).reshape(shape)

    def attend(self, x: Tensor, impl: str | None = None) -> Tensor:
        """Full attention (incl. proj) over a (B, K, K, K, C) cube with tables of side K."""
        b, d, h, w, c = x.shape
        return self.attend_projected(self.qkv(x.reshape(b, d * h * w, c)), x.shape, impl)

    def attend_projected(self, qkv: Tensor, shape: tuple[int, ...], impl: str | None = None) -> Tensor:
        """:meth:`attend` from the qkv projection (B, K^3, 3C) of the cube, so a caller that can form the
        projection more cheaply (the adapter's folded mask stream) skips the 3C x C product."""
        impl = _check_impl(impl or self.impl)
        b, d, h, w, _ = shape
        if not d == h == w:
            raise ValueError(f"attention expects a cube of tokens, got {(d, h, w)}")
        q, k, v = self._split_qkv(qkv.reshape(b, d * h * w, -1))
        bias = quirk_bias(q, self.rel_pos_d, self.rel_pos_h, self.rel_pos_w, d)
        if impl == "fast":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = (attn + bias).softmax(dim=-1)
            out = attn @ v
        return self._merge(out, tuple(shape))

    def attend_folded(self, x: Tensor, window: int) -> Tensor:
        """Exact equivalent of zero-padding the (B, n, n, n, C) cube to one ``window``^3 window.

        Padded tokens are zero after norm1, so their q/k/v all equal qkv(0); the padded keys are folded
        into one extra key with bias log Σ exp(rel-pos bias) (three disjoint boxes, log space).
        """
        b, n, n2, n3, c = x.shape
        s = window
        if not n == n2 == n3 or n > s:
            raise ValueError(
                f"folded attention needs a cube no larger than the window, got {x.shape[1:4]} / {s}"
            )
        if n == s:
            return self.attend(x, "fast")
        heads, hd = self.num_heads, self.head_dim
        q, k, v = self._qkv(x.reshape(b, n**3, c))
        zb = self.qkv(x.new_zeros(1, 1, c)).reshape(3, heads, hd)
        q_b, k_b, v_b = zb[0], zb[1], zb[2]
        rd = rel_pos_table(self.rel_pos_d, s, s)
        rh = rel_pos_table(self.rel_pos_h, s, s)
        rw = rel_pos_table(self.rel_pos_w, s, s)
        qg = q.reshape(b, heads, n, n, n, hd)
        # alpha[i,j,l,o], beta[i,j,m,o], gamma[i,j,p,o] for o over the whole window side.
        alpha, beta, gamma = quirk_terms(qg, rd[:n], rh[:n], rw[:n])
        # Padded query rows read q_b: beta for m >= n and gamma for p >= n.
        qb_h = torch.einsum("hc,joc->hjo", q_b, rh[:n])[None, :, None]  # (1, H, 1, j, o)
        log_bp = qb_h + math.log(s - n)
        log_cp = torch.logsumexp(torch.einsum("hc,poc->hpo", q_b, rw[n:]), dim=1)[None, :, None, None]
        log_br = torch.logsumexp(beta, dim=-2)  # (B, H, i, j, o)
        log_cr = torch.logsumexp(gamma, dim=-2)
        log_bf = torch.logaddexp(log_br, log_bp)
        log_cf = torch.logaddexp(log_cr, log_cp)
        log_t = torch.cat(
            [
                torch.logaddexp(log_bp + log_cf, log_br + log_cp)[..., :n],
                (log_bf + log_cf)[..., n:],
            ],
            dim=-1,
        )
        lam = torch.logsumexp(alpha + log_t[:, :, :, :, None, :], dim=-1).reshape(b, heads, n**3)
        terms = (alpha[..., :n], beta[..., :n], gamma[..., :n])
        if torch.is_grad_enabled() and q.requires_grad:  # out= does not record autograd
            mask = torch.cat([combine_terms(*terms), lam[..., None]], dim=-1)
        else:  # [real keys | the folded key], filled in place: no copy of the largest tensor
            mask = q.new_empty(b, heads, n**3, n**3 + 1)
            combine_terms(*terms, out=mask[..., :-1])
            mask[..., -1] = lam
        k_ext = torch.cat([k, k_b[None, :, None, :].expand(b, heads, 1, hd)], dim=2)
        v_ext = torch.cat([v, v_b[None, :, None, :].expand(b, heads, 1, hd)], dim=2)
        out = F.scaled_dot_product_attention(q, k_ext, v_ext, attn_mask=mask)
        return self._merge(out, x.shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.attend(x)


def window_partition(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int, int]]:
    """Zero-pad (B, D, H, W, C) to multiples of ``window`` and cut it into (B*nw, w, w, w, C) windows."""
    b, d, h, w, c = x.shape
    pd, ph, pw = ((window - s % window) % window for s in (d, h, w))
    if pd or ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pd))
    dp, hp, wp = d + pd, h + ph, w + pw
    x = x.reshape(b, dp // window, window, hp // window, window, wp // window, window, c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window, window, window, c)
    return x, (dp, hp, wp)


def window_unpartition(
    x: Tensor, window: int, padded: tuple[int, int, int], size: tuple[int, int, int]
) -> Tensor:
    """Inverse of :func:`window_partition`, cropping the padding away."""
    dp, hp, wp = padded
    nwin = (dp // window) * (hp // window) * (wp // window)
    b = x.shape[0] // nwin
    x = x.reshape(b, dp // window, hp // window, wp // window, window, window, window, -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, dp, hp, wp, -1)
    d, h, w = size
    return x[:, :d, :h, :w, :].contiguous()


def windowed_attention(attn: Attention, x: Tensor, window: int, impl: str | None = None) -> Tensor:
    """Windowed attention as the reference does it, or its exact folded form when one window covers x."""
    impl = _check_impl(impl or attn.impl)
    d, h, w = x.shape[1:4]
    if impl == "fast" and d == h == w and d <= window:
        return attn.attend_folded(x, window)
    parts, padded = window_partition(x, window)
    out = attn.attend(parts, impl)
    return window_unpartition(out, window, padded, (d, h, w))


@contextlib.contextmanager
def attention_impl(module: nn.Module, impl: str) -> Iterator[nn.Module]:
    """Temporarily switch every :class:`Attention` inside ``module`` to ``impl`` ("fast" | "padded")."""
    _check_impl(impl)
    mods = [m for m in module.modules() if isinstance(m, Attention)]
    saved = [m.__dict__.get("impl") for m in mods]
    for m in mods:
        m.impl = impl
    try:
        yield module
    finally:
        for m, old in zip(mods, saved, strict=True):
            if old is None:
                m.__dict__.pop("impl", None)
            else:
                m.impl = old
