"""LoRA on the encoder's fused qkv projection (q and v only, no scaling), named as the reference."""

from __future__ import annotations

import math

from torch import Tensor, nn


class LoRAQKV(nn.Module):
    """Wraps the original qkv Linear as ``qkv`` and adds rank-r deltas to the q and v thirds.

    A matrices start Kaiming-uniform (a=sqrt(5)), B matrices at zero, so a fresh wrapper is the identity.
    """

    def __init__(self, qkv: nn.Linear, rank: int) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.qkv = qkv
        self.dim = qkv.in_features
        if qkv.out_features != 3 * self.dim:
            raise ValueError("LoRA expects a fused qkv Linear with out_features == 3 * in_features")
        self.rank = rank
        self.linear_a_q = nn.Linear(self.dim, rank, bias=False)
        self.linear_b_q = nn.Linear(rank, self.dim, bias=False)
        self.linear_a_v = nn.Linear(self.dim, rank, bias=False)
        self.linear_b_v = nn.Linear(rank, self.dim, bias=False)
        self.reset_lora()

    def reset_lora(self) -> None:
        for a in (self.linear_a_q, self.linear_a_v):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
        for b in (self.linear_b_q, self.linear_b_v):
            nn.init.zeros_(b.weight)

    def forward(self, x: Tensor) -> Tensor:
        # the deltas are added into the q and v thirds of the fused output in place: the same sums as
        # adding them to the split thirds, without re-concatenating the whole output
        out = self.qkv(x)
        d = self.dim
        out[..., :d] += self.linear_b_q(self.linear_a_q(x))
        out[..., 2 * d :] += self.linear_b_v(self.linear_a_v(x))
        return out


def apply_lora(encoder: nn.Module, rank: int) -> nn.Module:
    """Replace ``blocks[i].attn.qkv`` of every encoder block by a :class:`LoRAQKV` (in place)."""
    for blk in encoder.blocks:  # type: ignore[attr-defined]
        if isinstance(blk.attn.qkv, LoRAQKV):
            continue
        blk.attn.qkv = LoRAQKV(blk.attn.qkv, rank)
    return encoder


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Only the LoRA A/B matrices (what trains when the base encoder is frozen)."""
    params: list[nn.Parameter] = []
    for m in module.modules():
        if isinstance(m, LoRAQKV):
            for lin in (m.linear_a_q, m.linear_b_q, m.linear_a_v, m.linear_b_v):
                params.append(lin.weight)
    return params
