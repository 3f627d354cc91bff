"""Loading and saving weights: our own safetensors format and the reference ``.pth`` layouts.

Kinds (detected from the keys, not the file name):

* ``"own"`` – a safetensors file written by :func:`save_checkpoint`; its JSON metadata carries the model
  config, the preprocess config and free metadata.
* ``"sam-med3d"`` – SAM-Med3D(-turbo) ``.pth`` (``model_state_dict``, 324 keys). Loads into the
  ``sam-med3d`` config, or with ``as_msam=True`` into ``msam`` as its base (fresh adapter, LoRA B = 0).
* ``"msam-train"`` – an M-SAM training checkpoint (461 keys, ``lora_sam.sam.`` and ``bidatt.`` prefixes).

Reference pickles are only ever read with ``torch.load(weights_only=True)``: a checkpoint from the internet
must not be able to run code.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import atomic_write
from .config import REFERENCE_PREPROCESS, MSAMConfig, PreprocessConfig, get_config
from .msam import MSAM

FORMAT = "napari-msam"
FORMAT_VERSION = 1
KINDS = ("own", "sam-med3d", "msam-train")
_MSAM_TRAIN_PREFIX = "lora_sam.sam."
_ADAPTER_REF_PREFIX = "bidatt."


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, refused, unknown layout or mismatching keys."""


@dataclass
class LoadedModel:
    model: MSAM
    config: MSAMConfig
    preprocess: PreprocessConfig
    metadata: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def kind(self) -> str:
        return str(self.metadata.get("kind", "own"))


# ----------------------------------------------------------------------------------------------- helpers
def _summary(names: list[str], n: int = 5) -> str:
    head = ", ".join(names[:n])
    return f"{len(names)} ({head}{', ...' if len(names) > n else ''})"


def check_state_dict(
    sd: Mapping[str, Tensor], expected: Mapping[str, torch.Size], allow_missing: set[str] | None = None
) -> None:
    """Raise :class:`CheckpointError` naming missing / unexpected / mis-shaped keys (first few + counts)."""
    allow_missing = allow_missing or set()
    missing = [k for k in expected if k not in sd and k not in allow_missing]
    unexpected = [k for k in sd if k not in expected]
    shaped = [
        f"{k} {list(sd[k].shape)} != {list(expected[k])}"
        for k in sd
        if k in expected and tuple(sd[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_summary(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_summary(unexpected)}")
    if shaped:
        problems.append(f"mis-shaped keys: {_summary(shaped, 3)}")
    if problems:
        raise CheckpointError("state dict does not fit the model: " + "; ".join(problems))


def detect_kind(sd: Mapping[str, Any]) -> str:
    """ "msam-train" | "sam-med3d" | "own" from the key names; CheckpointError otherwise."""
    keys = list(sd)
    if any(k.startswith(_MSAM_TRAIN_PREFIX) or k.startswith(_ADAPTER_REF_PREFIX) for k in keys):
        return "msam-train"
    if "image_encoder.patch_embed.proj.weight" in sd:
        if any(k.startswith("adapter.") or ".attn.qkv.qkv." in k for k in keys):
            return "own"
        return "sam-med3d"
    raise CheckpointError(
        f"unrecognised checkpoint layout ({len(keys)} keys, e.g. {', '.join(keys[:3]) or 'none'}); expected "
        "a SAM-Med3D model_state_dict, an M-SAM training checkpoint or a napari-msam safetensors file"
    )


def state_dict_from_reference(sd: Mapping[str, Tensor], kind: str) -> dict[str, Tensor]:
    """Reference layout -> our module names (``lora_sam.sam.`` dropped, ``bidatt.`` -> ``adapter.``)."""
    if kind == "msam-train":
        out: dict[str, Tensor] = {}
        for k, v in sd.items():
            if k.startswith(_MSAM_TRAIN_PREFIX):
                out[k[len(_MSAM_TRAIN_PREFIX) :]] = v
            elif k.startswith(_ADAPTER_REF_PREFIX):
                out["adapter." + k[len(_ADAPTER_REF_PREFIX) :]] = v
            else:
                out[k] = v  # reported as unexpected by check_state_dict
        return out
    if kind in ("sam-med3d", "own"):
        return dict(sd)
    raise ValueError(f"unknown checkpoint kind {kind!r}; known: {KINDS}")


def sam_med3d_to_lora_names(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """SAM-Med3D ``blocks.i.attn.qkv.*`` -> the LoRA wrapper's ``blocks.i.attn.qkv.qkv.*``."""
    return {k.replace(".attn.qkv.", ".attn.qkv.qkv."): v for k, v in sd.items()}


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals([argparse.Namespace, collections.Counter]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError for corrupt zips, ...
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"could not read {path.name} as a weights-only torch checkpoint (refused or corrupt): {msg}"
        ) from None


def _float32(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        if not isinstance(v, Tensor):
            raise CheckpointError(f"entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v.to(torch.float32) if v.is_floating_point() else v
    return out


def _expected_shapes(config: MSAMConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = MSAM(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def _build_loaded(config: MSAMConfig, sd: dict[str, Tensor]) -> MSAM:
    """Model whose every state entry comes from ``sd`` (built on the meta device: no wasted init)."""
    with torch.device("meta"):
        model = MSAM(config)
    check_state_dict(sd, {k: v.shape for k, v in model.state_dict().items()})
    # Fresh, aligned storage (file buffers may be unaligned, which changes SIMD rounding paths).
    sd = {k: v.clone(memory_format=torch.contiguous_format) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model


# ------------------------------------------------------------------------------------------------ public
def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu", as_msam: bool = False
) -> LoadedModel:
    """Load any supported checkpoint strictly; the model comes back in eval mode on ``device``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if _is_safetensors(p):
        loaded = _load_own(p, as_msam=as_msam)
    else:
        obj = _torch_load(p)
        if isinstance(obj, Mapping) and "model_state_dict" in obj:
            sd = obj["model_state_dict"]
        else:
            sd = obj
        if not isinstance(sd, Mapping) or not sd:
            raise CheckpointError(f"{p.name} holds no state dict (got {type(sd).__name__})")
        kind = detect_kind(sd)
        sd = _float32(state_dict_from_reference(sd, kind))
        meta: dict[str, Any] = {"kind": kind, "source": str(p)}
        if isinstance(obj, Mapping) and isinstance(obj.get("epoch"), int):
            meta["epoch"] = obj["epoch"]
        if kind == "msam-train":
            config = get_config("msam")
            model = _build_loaded(config, sd)
        elif kind == "sam-med3d" and not as_msam:
            config = get_config("sam-med3d")
            model = _build_loaded(config, sd)
        elif kind == "sam-med3d":
            config = get_config("msam")
            model = MSAM(config)  # fresh LoRA (B = 0) and adapter
            sd = sam_med3d_to_lora_names(sd)
            own = model.state_dict()
            fresh = {k for k in own if k.startswith("adapter.") or ".linear_" in k}
            check_state_dict(sd, {k: v.shape for k, v in own.items()}, allow_missing=fresh)
            result = model.load_state_dict(sd, strict=False)
            if result.unexpected_keys or set(result.missing_keys) != fresh:
                raise CheckpointError(f"SAM-Med3D base did not fit M-SAM: {result}")
            meta["as_msam"] = True
        else:
            raise CheckpointError(
                f"{p.name} has our own key layout but is not a napari-msam safetensors file, so its config is "
                "unknown; save it with save_checkpoint()"
            )
        loaded = LoadedModel(model, config, REFERENCE_PREPROCESS, meta, str(p))
    _check_finite(loaded.model, p)
    loaded.model.to(device).eval()
    loaded.path = str(p)
    return loaded


def _check_finite(model: MSAM, path: Path) -> None:
    """Refuse weights holding NaN or inf (a diverged training run): they would give empty masks silently."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        n = sum(1 for v in model.state_dict().values() if v.is_floating_point())
        raise CheckpointError(
            f"{path.name}: {len(bad)} of {n} weight tensors hold NaN or inf (e.g. {bad[0]}); the checkpoint is "
            "broken (a diverged training run?); use an earlier one, e.g. best.safetensors"
        )


def _with_adapter(config: MSAMConfig) -> MSAMConfig:
    """The M-SAM config that equals ``config`` plus the adapter (a named one when it exists)."""
    from .config import CONFIGS

    target = dataclasses.replace(config, use_adapter=True)
    for name, c in CONFIGS.items():
        if dataclasses.replace(c, name=config.name) == dataclasses.replace(target, name=config.name):
            return dataclasses.replace(target, name=name)
    return dataclasses.replace(target, name=f"{config.name}+adapter")


def _base_into_msam(config: MSAMConfig, sd: Mapping[str, Tensor]) -> MSAM:
    """An adapter-less checkpoint as the base of M-SAM: every base key strict, the adapter fresh."""
    model = MSAM(config)
    own = model.state_dict()
    fresh = {k for k in own if k.startswith("adapter.")}
    check_state_dict(sd, {k: v.shape for k, v in own.items()}, allow_missing=fresh)
    result = model.load_state_dict(dict(sd), strict=False)
    if result.unexpected_keys or set(result.missing_keys) != fresh:
        raise CheckpointError(f"the base checkpoint did not fit {config.name}: {result}")
    return model


def _load_own(p: Path, as_msam: bool = False) -> LoadedModel:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(p), framework="pt") as fh:
            header = dict(fh.metadata() or {})
        tensors = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"could not read safetensors file {p.name}: {exc}") from None
    if header.get("format") != FORMAT:
        if "image_encoder.patch_embed.proj.weight" in tensors or any(
            k.startswith("lora_sam.") for k in tensors
        ):
            raise CheckpointError(
                f"{p.name} is a safetensors file without napari-msam metadata (config unknown)"
            )
        raise CheckpointError(f"{p.name} is not a napari-msam checkpoint (no '{FORMAT}' metadata)")
    try:
        version = int(header.get("format_version", "1"))
        config = MSAMConfig.from_dict(json.loads(header["config"]))
        preprocess = PreprocessConfig.from_dict(json.loads(header["preprocess"]))
        metadata = json.loads(header.get("metadata", "{}"))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{p.name} has broken napari-msam metadata: {exc}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p.name} uses format version {version}; this napari-msam reads <= {FORMAT_VERSION}"
        )
    if as_msam and not config.use_adapter:
        config = _with_adapter(config)
        model = _base_into_msam(config, _float32(tensors))
        metadata["as_msam"] = True
    else:
        model = _build_loaded(config, _float32(tensors))
    metadata.setdefault("kind", "own")
    return LoadedModel(model, config, preprocess, metadata, str(p))


def checkpoint_digest(path: str | Path) -> str:
    """First 16 hex digits of a file's SHA-256: how derived checkpoints (averages, grown models) name
    their parents in their metadata."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def save_checkpoint(
    path: str | Path, model: MSAM, preprocess: PreprocessConfig, metadata: dict | None = None
) -> None:
    """Write weights + config + preprocess + free JSON metadata as one safetensors file (atomically)."""
    from safetensors.torch import save

    if not isinstance(model, MSAM):
        raise TypeError(f"save_checkpoint needs an MSAM model, got {type(model).__name__}")
    try:
        meta_json = json.dumps(metadata or {}, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {exc}") from None
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
        "preprocess": json.dumps(preprocess.to_dict(), sort_keys=True),
        "metadata": meta_json,
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = save(tensors, metadata=header)
    with atomic_write(path, "wb") as fh:
        fh.write(data)
