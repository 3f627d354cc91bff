"""The reference's decomposed 3-D relative-position bias, *with* its broadcasting quirk.

For a query at (i, j, l) and a key at (m, n, o) on a side-K cube the reference adds

    q(i,j,l)·P_d[i-o] + q(i,j,m)·P_h[j-o] + q(i,j,n)·P_w[n-o]

(P_x[δ] = rel_pos_x[δ + K - 1], q unscaled), not the textbook MViTv2 form. Reference weights and the golden
vectors depend on this exact formula, so it is reproduced here on purpose.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rel_pos_table(rel_pos: Tensor, q_size: int, k_size: int) -> Tensor:
    """(q_size, k_size, C) table R[a, b] = rel_pos[a - b + k_size - 1] (equal sizes, no interpolation)."""
    if q_size != k_size or rel_pos.shape[0] != 2 * k_size - 1:
        raise ValueError(
            f"relative-position table of length {rel_pos.shape[0]} does not fit a side of {k_size} "
            f"(needs {2 * k_size - 1})"
        )
    a = torch.arange(q_size, device=rel_pos.device)[:, None]
    b = torch.arange(k_size, device=rel_pos.device)[None, :]
    return rel_pos[a - b + (k_size - 1)]


def quirk_terms(q: Tensor, rd: Tensor, rh: Tensor, rw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The three bias terms for queries ``q`` (..., I, J, L, C) and tables (I|J|L, O, C).

    Returns alpha[..., i, j, l, o] = q(i,j,l)·Rd[i,o], beta[..., i, j, m, o] = q(i,j,m)·Rh[j,o] and
    gamma[..., i, j, n, o] = q(i,j,n)·Rw[n,o].
    """
    i, j, w, c = q.shape[-4:]
    lead = q.shape[:-4]
    # alpha: batch over i -> (..., I, J*L, C) @ (I, C, O)
    alpha = torch.matmul(q.reshape(*lead, i, j * w, c), rd.transpose(-1, -2)).reshape(*lead, i, j, w, -1)
    # beta: batch over (i, j) with the table broadcast over i -> (..., I, J, M, C) @ (J, C, O)
    beta = torch.matmul(q, rh.transpose(-1, -2))
    # gamma: the table index is the query's own w position (einsum is fast for this one)
    gamma = torch.einsum("...ijnc,noc->...ijno", q, rw)
    return alpha, beta, gamma


def combine_terms(alpha: Tensor, beta: Tensor, gamma: Tensor, out: Tensor | None = None) -> Tensor:
    """bias[..., i,j,l, m,n,o] = alpha[i,j,l,o] + beta[i,j,m,o] + gamma[i,j,n,o] as (..., IJL, MNO).

    ``out`` (optional) is written in place: any (..., IJL, MNO) view, e.g. the leading columns of a wider
    mask, which spares the caller a copy of this largest tensor of the attention.
    """
    i, j, w, o = alpha.shape[-4:]
    m, n = beta.shape[-2], gamma.shape[-2]
    lead = alpha.shape[:-4]
    bg = beta[..., :, None, :] + gamma[..., None, :, :]  # (..., i, j, m, n, o): small
    a, b = alpha[..., :, None, :], bg.reshape(*lead, i, j, 1, m * n, o)  # -> (..., i, j, l, m*n, o)
    if out is None:
        return (a + b).reshape(*lead, i * j * w, m * n * o)
    torch.add(a, b, out=out.unflatten(-2, (i, j, w)).unflatten(-1, (m * n, o)))
    return out


def quirk_bias(q: Tensor, rel_pos_d: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, size: int) -> Tensor:
    """Full (..., K^3, K^3) additive bias for unscaled queries ``q`` of shape (..., K^3, C)."""
    k = size
    qg = q.reshape(*q.shape[:-2], k, k, k, q.shape[-1])
    rd = rel_pos_table(rel_pos_d, k, k)
    rh = rel_pos_table(rel_pos_h, k, k)
    rw = rel_pos_table(rel_pos_w, k, k)
    return combine_terms(*quirk_terms(qg, rd, rh, rw))
