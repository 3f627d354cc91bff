"""Weight averaging ("model soup") of fine-tuning runs that share a parent checkpoint.

Why: runs fine-tuned from the same parent with different seeds stay in one loss basin, and the mean of
their weights is usually at least as good as the best of them at no cost at inference (Wortsman et al.
2022, "Model soups"). Only checkpoints of one configuration, preprocessing, click prior and zoom range
can be averaged: anything else would silently change what the Session feeds the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from napari_msam.training.trainer import TrainingError

# metadata that must agree across the averaged checkpoints (what the Session reads from a checkpoint)
_MUST_MATCH = ("click_prior", "roi_zoom", "kind")


def average_checkpoints(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Write the element-wise mean of the checkpoints ``paths`` to ``out`` (atomically); returns ``out``.

    Refuses fewer than two inputs, an output that is one of the inputs, and checkpoints that differ in
    configuration, preprocessing, click prior or zoom range. Non-float tensors must be equal.
    """
    from napari_msam.io import same_file
    from napari_msam.model.weights import checkpoint_digest, load_checkpoint, save_checkpoint

    srcs = [Path(p) for p in paths]
    out = Path(out)
    if len(srcs) < 2:
        raise TrainingError("averaging needs at least two checkpoints")
    if any(same_file(out, p) for p in srcs):
        raise TrainingError(f"the output {out} is one of the inputs; write the average elsewhere")
    loaded = [load_checkpoint(p, device="cpu") for p in srcs]
    first = loaded[0]
    for p, lm in zip(srcs[1:], loaded[1:], strict=True):
        if lm.config.to_dict() != first.config.to_dict():
            raise TrainingError(f"{p.name}: configuration {lm.config.name} differs from {srcs[0].name}'s "
                                f"{first.config.name}")
        if lm.preprocess.to_dict() != first.preprocess.to_dict():
            raise TrainingError(f"{p.name}: preprocessing differs from {srcs[0].name}'s")
        for key in _MUST_MATCH:
            if lm.metadata.get(key) != first.metadata.get(key):
                raise TrainingError(f"{p.name}: {key} {lm.metadata.get(key)!r} differs from "
                                    f"{srcs[0].name}'s {first.metadata.get(key)!r}")
    states = [lm.model.state_dict() for lm in loaded]
    mean: dict[str, torch.Tensor] = {}
    for key, ref in states[0].items():
        if ref.is_floating_point():
            mean[key] = torch.stack([s[key].float() for s in states]).mean(0).to(ref.dtype)
        elif all(torch.equal(s[key], ref) for s in states[1:]):
            mean[key] = ref
        else:
            raise TrainingError(f"non-float tensor {key} differs between the checkpoints")
    model = first.model
    model.load_state_dict(mean)
    meta = dict(first.metadata)
    meta["averaged_from"] = [{"file": p.name, "sha256": checkpoint_digest(p),
                              "global_step": lm.metadata.get("global_step")} for p, lm in zip(srcs, loaded,
                                                                                              strict=True)]
    meta["source"] = "napari-msam average"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, first.preprocess, meta)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m napari_msam.training.average OUT IN1 IN2 [...]``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m napari_msam.training.average",
                                     description="average the weights of checkpoints fine-tuned from one parent")
    parser.add_argument("out", help="output .safetensors")
    parser.add_argument("inputs", nargs="+", help="two or more napari-msam checkpoints")
    args = parser.parse_args(argv)
    from napari_msam.model import CheckpointError

    try:
        path = average_checkpoints(args.inputs, args.out)
    except (TrainingError, CheckpointError, OSError) as exc:
        print(f"average: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (mean of {len(args.inputs)} checkpoints)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
