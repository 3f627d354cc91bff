"""Build an :class:`MSAM` from a config or a config name."""

from __future__ import annotations

from .config import MSAMConfig, get_config
from .msam import MSAM


def build_model(config: MSAMConfig | str) -> MSAM:
    """Fresh model (PyTorch default init, LoRA B = 0, PE matrix ~ N(0, 1)) for ``config``."""
    cfg = get_config(config) if isinstance(config, str) else config
    if not isinstance(cfg, MSAMConfig):
        raise TypeError(f"build_model needs an MSAMConfig or a config name, got {type(config).__name__}")
    return MSAM(cfg)
