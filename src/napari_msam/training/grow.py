"""Deepen a trained checkpoint's image encoder by blocks that start as the identity.

Why: a small model can under-fit even its own training patients (docs/model-card.md), and M-SAM trained
from scratch can collapse. Growing keeps what was learned. The new
blocks are appended after the last encoder block. Their attention output projection and their MLP's
second layer start at zero, so each block's residual branches add nothing. The grown model gives exactly
the parent's outputs until training moves those weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from napari_msam.training.trainer import TrainingError


def grow_encoder(src: str | Path, out: str | Path, depth: int, name: str | None = None,
                 seed: int = 0) -> Path:
    """Write ``src`` with its encoder grown to ``depth`` blocks to ``out`` (atomically); returns ``out``.

    The new blocks are windowed or global as the parent's configuration says for their index (global
    when it has no windows). Config, preprocessing and metadata (click prior, zoom range) are kept. The
    name defaults to ``<parent>-d<depth>``, and the metadata records the parent's sha256.
    """
    from napari_msam.io import same_file
    from napari_msam.model.builder import build_model
    from napari_msam.model.weights import checkpoint_digest, load_checkpoint, save_checkpoint

    src, out = Path(src), Path(out)
    if same_file(out, src):
        raise TrainingError(f"the output {out} is the input; write the grown model elsewhere")
    parent = load_checkpoint(src, device="cpu")
    old = parent.config
    if int(depth) <= old.depth:
        raise TrainingError(f"depth {depth} must be larger than the parent's {old.depth}")
    if getattr(old, "lora_rank", 0) > 0:
        raise TrainingError("a LoRA configuration freezes its encoder; grow an encoder without LoRA")
    cfg = dataclasses.replace(old, depth=int(depth), name=name or f"{old.name}-d{int(depth)}")
    torch.manual_seed(seed)
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(parent.model.state_dict(), strict=False)
    new = {f"image_encoder.blocks.{i}." for i in range(old.depth, cfg.depth)}
    if unexpected or any(not any(k.startswith(p) for p in new) for k in missing):
        raise TrainingError(f"the parent's weights do not fit the grown model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    with torch.no_grad():
        for block in model.image_encoder.blocks[old.depth:]:
            for layer in (block.attn.proj, block.mlp.lin2):
                layer.weight.zero_()
                layer.bias.zero_()
    meta = dict(parent.metadata)
    meta["grown_from"] = {"file": src.name, "sha256": checkpoint_digest(src), "depth": old.depth,
                          "global_step": parent.metadata.get("global_step")}
    meta["source"] = "napari-msam grow"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model.eval(), parent.preprocess, meta)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m napari_msam.training.grow OUT IN --depth N``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m napari_msam.training.grow",
                                     description="deepen a checkpoint's image encoder by identity blocks")
    parser.add_argument("out", help="output .safetensors")
    parser.add_argument("input", help="a napari-msam checkpoint")
    parser.add_argument("--depth", type=int, required=True, help="encoder blocks after growing")
    parser.add_argument("--name", default=None, help="configuration name (default: <parent>-d<depth>)")
    args = parser.parse_args(argv)
    from napari_msam.model import CheckpointError

    try:
        path = grow_encoder(args.input, args.out, args.depth, args.name)
    except (TrainingError, CheckpointError, OSError) as exc:
        print(f"grow: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (encoder grown to {args.depth} blocks)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
