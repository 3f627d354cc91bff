"""Model and preprocessing configurations (the contract table in docs/architecture.md)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MSAMConfig:
    """Every size of the M-SAM / SAM-Med3D family; nothing inside the modules is hard-coded."""

    name: str
    img_size: int = 128
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    out_chans: int = 384
    lora_rank: int = 4
    use_adapter: bool = True
    adapter_heads: int = 6
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_hidden: int = 256
    num_multimask_outputs: int = 3

    def __post_init__(self) -> None:
        indexes = self.global_attn_indexes
        if isinstance(indexes, str | bytes | dict) or not hasattr(indexes, "__iter__"):
            raise ValueError(f"invalid MSAMConfig {self.name!r}: global_attn_indexes must be a list, got {indexes!r}")
        object.__setattr__(self, "global_attn_indexes", tuple(indexes))
        self.validate()

    @property
    def grid(self) -> int:
        """Side of the encoder token grid."""
        return self.img_size // self.patch_size

    @property
    def low_res(self) -> int:
        """Side of the decoder's low-resolution logits (two 2x transposed convolutions)."""
        return 4 * self.grid

    def validate(self) -> None:
        """Reject wrong types, non-finite or out-of-range sizes and combinations the modules cannot build,
        in one readable line (a config comes from a checkpoint's metadata, which anyone can edit)."""
        problems = _field_problems(self)
        if problems:
            raise ValueError(f"invalid MSAMConfig {self.name!r}: " + "; ".join(problems))
        problems = []
        if self.img_size <= 0 or self.patch_size <= 0 or self.img_size % self.patch_size:
            problems.append(
                f"img_size {self.img_size} must be a positive multiple of patch_size {self.patch_size}"
            )
        if self.embed_dim % max(self.num_heads, 1) or self.num_heads <= 0:
            problems.append(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.use_adapter and (self.adapter_heads <= 0 or self.out_chans % self.adapter_heads):
            problems.append(
                f"out_chans {self.out_chans} must be divisible by adapter_heads {self.adapter_heads}"
            )
        if self.out_chans % 8:
            problems.append(f"out_chans {self.out_chans} must be divisible by 8 (decoder upscaling)")
        if (self.out_chans // 2) % max(self.decoder_heads, 1) or self.out_chans % max(self.decoder_heads, 1):
            problems.append(
                f"out_chans {self.out_chans} / 2 must be divisible by decoder_heads {self.decoder_heads}"
            )
        if self.mask_in_chans % 4 or self.mask_in_chans <= 0:
            problems.append(f"mask_in_chans {self.mask_in_chans} must be a positive multiple of 4")
        if self.window_size < 0 or self.lora_rank < 0 or self.depth <= 0:
            problems.append("window_size, lora_rank must be >= 0 and depth > 0")
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad:
            problems.append(f"global_attn_indexes {bad} outside 0..{self.depth - 1}")
        if problems:
            raise ValueError(f"invalid MSAMConfig {self.name!r}: " + "; ".join(problems))

    def is_global(self, block: int) -> bool:
        """Whether encoder block ``block`` uses global attention (``window_size == 0`` means all)."""
        return self.window_size == 0 or block in self.global_attn_indexes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MSAMConfig:
        return cls(**_known_fields(cls, d))

    def replace(self, **changes: Any) -> MSAMConfig:
        return dataclasses.replace(self, **changes)


#: fields that may be 0 (every other integer size must be >= 1)
_MAY_BE_ZERO = {"window_size", "lora_rank", "num_multimask_outputs"}


def _field_problems(cfg: MSAMConfig) -> list[str]:
    """Type and range of every field, checked before any arithmetic on them."""
    problems = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.type == "int":
            low = 0 if f.name in _MAY_BE_ZERO else 1
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                problems.append(f"{f.name} must be an integer >= {low}, got {v!r}")
        elif f.type == "float":
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
                problems.append(f"{f.name} must be a finite number > 0, got {v!r}")
        elif f.type == "bool":
            if not isinstance(v, bool):
                problems.append(f"{f.name} must be true or false, got {v!r}")
        elif f.type == "str":
            if not isinstance(v, str) or not v:
                problems.append(f"{f.name} must be a non-empty string, got {v!r}")
        elif f.name == "global_attn_indexes":
            if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in v):
                problems.append(f"global_attn_indexes must be integers, got {list(v)!r}")
    return problems


def _known_fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``d`` after checking it names only fields of the dataclass ``cls`` (saved metadata)."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return dict(d)


def _numbers(values: Any) -> tuple[float, ...] | None:
    """``values`` as finite floats, or None when it is not a sequence of finite real numbers."""
    if isinstance(values, str | bytes | dict) or not hasattr(values, "__iter__"):
        return None
    values = list(values)
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) for v in values):
        return None
    return tuple(float(v) for v in values)


NORMALIZATIONS = ("zscore_positive", "zscore", "none")
AXIS_ORDERS = ("SPL", "RAS")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a volume must be prepared for a given set of weights (travels with the checkpoint)."""

    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    ct_window: tuple[float, float] | None = (-1000.0, 1000.0)
    normalization: str = "zscore_positive"
    axis_order: str = "SPL"

    def __post_init__(self) -> None:
        sp = _numbers(self.spacing_mm)
        if sp is None or len(sp) != 3 or any(not s > 0 for s in sp):
            raise ValueError(f"spacing_mm must be 3 finite positive numbers, got {self.spacing_mm!r}")
        object.__setattr__(self, "spacing_mm", sp)
        if self.ct_window is not None:
            win = _numbers(self.ct_window)
            if win is None or len(win) != 2 or not win[0] < win[1]:
                raise ValueError(f"ct_window must be (low, high) finite numbers with low < high, got {self.ct_window!r}")
            object.__setattr__(self, "ct_window", win)
        if not isinstance(self.normalization, str) or self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if not isinstance(self.axis_order, str) or self.axis_order not in AXIS_ORDERS:
            raise ValueError(f"axis_order must be one of {AXIS_ORDERS}, got {self.axis_order!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "spacing_mm": list(self.spacing_mm),
            "ct_window": None if self.ct_window is None else list(self.ct_window),
            "normalization": self.normalization,
            "axis_order": self.axis_order,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        return cls(**_known_fields(cls, d))


#: Preprocessing that reference SAM-Med3D / M-SAM weights were trained with.
REFERENCE_PREPROCESS = PreprocessConfig(
    spacing_mm=(1.5, 1.5, 1.5), ct_window=(-1000.0, 1000.0), normalization="zscore_positive", axis_order="RAS"
)
#: Preprocessing of our own default (small) models: 2.5 mm, a 160 mm field of view at 64^3.
DEFAULT_PREPROCESS = PreprocessConfig(spacing_mm=(2.5, 2.5, 2.5))

_SMALL = dict(
    img_size=64,
    patch_size=8,
    embed_dim=256,
    depth=4,
    num_heads=8,
    window_size=0,
    global_attn_indexes=(),
    out_chans=192,
    lora_rank=0,
    adapter_heads=3,
    decoder_heads=8,
    decoder_mlp_dim=768,
)

CONFIGS: dict[str, MSAMConfig] = {
    "msam": MSAMConfig(name="msam"),
    "sam-med3d": MSAMConfig(name="sam-med3d", lora_rank=0, use_adapter=False),
    "msam-small": MSAMConfig(name="msam-small", **_SMALL),
    "sam-med3d-small": MSAMConfig(name="sam-med3d-small", **{**_SMALL, "use_adapter": False}),
    "msam-tiny": MSAMConfig(
        name="msam-tiny",
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        window_size=6,
        global_attn_indexes=(1,),
        out_chans=32,
        lora_rank=2,
        adapter_heads=2,
        mask_in_chans=8,
        decoder_heads=4,
        decoder_mlp_dim=64,
        iou_head_hidden=32,
    ),
}


def get_config(name: str) -> MSAMConfig:
    """Named configuration; ``KeyError`` lists the known names."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}") from None
