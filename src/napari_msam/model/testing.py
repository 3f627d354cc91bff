"""Deterministic fills and inputs of the golden parity vectors (tests/data/golden, README §1 and §3).

Used by the parity tests and the benchmark; handy for anyone who needs a full-size model with
well-conditioned non-trivial weights without shipping weights.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

import torch
from torch import Tensor

from .weights import sam_med3d_to_lora_names, state_dict_from_reference


def golden_fill(key: str, shape: Iterable[int]) -> Tensor:
    """The golden rule: randn seeded by crc32(key), scaled by the key's class (first match wins)."""
    shape = tuple(int(s) for s in shape)
    g = torch.Generator()
    g.manual_seed(zlib.crc32(key.encode("utf-8")))
    z = torch.randn(shape, generator=g, dtype=torch.float32)
    if key.endswith("positional_encoding_gaussian_matrix"):
        return z * 1.0
    if key.endswith(".bias"):
        return z * 0.02
    if len(shape) == 1:
        return z * 0.1 + 1.0
    return z * 0.05


def to_reference_msam_key(key: str) -> str:
    """Our module name -> M-SAM training-wrapper key (the key the fill rule is seeded by)."""
    if key.startswith("adapter."):
        return "bidatt." + key[len("adapter.") :]
    return "lora_sam.sam." + key


def golden_msam_reference_state_dict(shapes: dict[str, Iterable[int]]) -> dict[str, Tensor]:
    """Filled reference-layout (461-key) M-SAM state dict for ``{reference key: shape}``."""
    return {k: golden_fill(k, s) for k, s in shapes.items()}


def golden_state_dict_for(model: torch.nn.Module) -> dict[str, Tensor]:
    """Fill every entry of our model (msam or sam-med3d layout) by the golden rule.

    SAM-Med3D base keys take the value of the corresponding LoRA-model key, as the golden README says.
    """
    out = {}
    for k, v in model.state_dict().items():
        ref = to_reference_msam_key(k)
        if ".attn.qkv." in k and ".attn.qkv.qkv." not in k and ".linear_" not in k:
            ref = to_reference_msam_key(k.replace(".attn.qkv.", ".attn.qkv.qkv."))
        out[k] = golden_fill(ref, v.shape)
    return out


def fill_golden_(model: torch.nn.Module) -> torch.nn.Module:
    """Load the golden fill into ``model`` (strict; works on a meta-device model too)."""
    model.load_state_dict(golden_state_dict_for(model), strict=True, assign=True)
    return model


def golden_model(name: str = "msam") -> torch.nn.Module:
    """A full-size model filled by the golden rule, in eval mode (built on meta: no wasted init)."""
    from .builder import build_model

    with torch.device("meta"):
        model = build_model(name)
    return fill_golden_(model).eval()


def golden_volume() -> Tensor:
    """The 128^3 non-negative test volume of README §3.1 (float32)."""
    gen = torch.Generator()
    gen.manual_seed(20240514)
    noise = torch.randn((128, 128, 128), generator=gen, dtype=torch.float32).to(torch.float64)
    ar = torch.arange(128, dtype=torch.float64)
    d, h, w = ar[:, None, None], ar[None, :, None], ar[None, None, :]
    r = torch.sqrt((d - 60) ** 2 + (h - 68) ** 2 + (w - 64) ** 2)
    v = (
        100
        + 30 * torch.sin(2 * math.pi * d / 32) * torch.cos(2 * math.pi * h / 48)
        + 20 * torch.cos(2 * math.pi * w / 40)
        + 150 * (r <= 24).to(torch.float64)
        + 10 * noise
    )
    v = torch.clamp(v, min=0)
    v[:, :, 0:8] = 0
    v[:, :, 120:128] = 0
    return v.to(torch.float32)


__all__ = [
    "fill_golden_",
    "golden_model",
    "golden_fill",
    "golden_msam_reference_state_dict",
    "golden_state_dict_for",
    "golden_volume",
    "sam_med3d_to_lora_names",
    "state_dict_from_reference",
    "to_reference_msam_key",
]
