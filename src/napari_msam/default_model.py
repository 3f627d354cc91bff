"""The embedded default model: where its weights live and how to load them."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelNotFoundError

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_NAME = "default.safetensors"


def default_checkpoint_path() -> Path:
    """``src/napari_msam/weights/default.safetensors`` (shipped with the package; may be absent in a checkout)."""
    return WEIGHTS_DIR / DEFAULT_NAME


def load_default_model(device: str = "cpu"):
    """Load the embedded default model as a ``LoadedModel``; a clear error when it is not there."""
    path = default_checkpoint_path()
    if not path.is_file():
        raise ModelNotFoundError(
            f"the default model {path} is missing. Train one with `napari-msam train ...` "
            f"(it writes {DEFAULT_NAME}; copy it to {WEIGHTS_DIR}/) or pass --checkpoint PATH "
            "(a napari-msam .safetensors file or a SAM-Med3D / M-SAM .pth)."
        )
    from .model import load_checkpoint

    return load_checkpoint(path, device=device)
