"""Pure-torch M-SAM / SAM-Med3D model (no Qt, no napari)."""

from .attention import attention_impl
from .builder import build_model
from .config import (
    CONFIGS,
    DEFAULT_PREPROCESS,
    REFERENCE_PREPROCESS,
    MSAMConfig,
    PreprocessConfig,
    get_config,
)
from .msam import MSAM, PreparedEmbedding
from .normalization import zscore_positive, zscore_stats
from .weights import CheckpointError, LoadedModel, load_checkpoint, save_checkpoint, state_dict_from_reference

__all__ = [
    "CONFIGS",
    "DEFAULT_PREPROCESS",
    "REFERENCE_PREPROCESS",
    "MSAM",
    "CheckpointError",
    "LoadedModel",
    "MSAMConfig",
    "PreparedEmbedding",
    "PreprocessConfig",
    "attention_impl",
    "build_model",
    "get_config",
    "load_checkpoint",
    "save_checkpoint",
    "state_dict_from_reference",
    "zscore_positive",
    "zscore_stats",
]
