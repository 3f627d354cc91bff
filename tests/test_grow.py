"""Growing a checkpoint's encoder (training/grow.py): the grown model starts as its parent, then trains."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from napari_msam.model import PreprocessConfig, build_model, load_checkpoint, save_checkpoint
from napari_msam.training.grow import grow_encoder, main
from napari_msam.training.trainer import TrainingError

PRE = PreprocessConfig(spacing_mm=(2.5, 2.5, 2.5), ct_window=None, normalization="zscore", axis_order="SPL")
META = {"kind": "own", "click_prior": {"radius": 1.5, "value": 4.0}, "roi_zoom": {"max": 2.0}, "global_step": 7}


def _parent(path, lora_rank=0):
    """msam-tiny without LoRA (a windowed block and a global one), weights moved off their init."""
    cfg = dataclasses.replace(build_model("msam-tiny").config, lora_rank=lora_rank)
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(path, m, PRE, dict(META))
    return m


def _outputs(model, image):
    with torch.no_grad():
        emb = model.encode(image)
        pts = torch.tensor([[[10, 12, 14]]])
        low = model.refine(model.prepare(emb), pts, torch.tensor([[1]]), None)
    return emb, low


def test_grown_model_gives_its_parents_outputs_and_keeps_the_metadata(tmp_path):
    parent = _parent(tmp_path / "p.safetensors")
    out = grow_encoder(tmp_path / "p.safetensors", tmp_path / "g.safetensors", depth=4)
    grown = load_checkpoint(out)
    assert grown.config.depth == 4 and grown.config.name == "msam-tiny-d4"
    assert len(grown.model.image_encoder.blocks) == 4
    # the new blocks follow the parent's rule: index 1 global, the others windowed
    assert [b.window_size for b in grown.model.image_encoder.blocks] == [6, 0, 6, 6]
    image = torch.randn(1, 1, 32, 32, 32)
    for a, b in zip(_outputs(parent, image), _outputs(grown.model, image), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert grown.preprocess == PRE
    assert grown.metadata["click_prior"] == META["click_prior"] and grown.metadata["roi_zoom"] == META["roi_zoom"]
    assert grown.metadata["grown_from"]["depth"] == 2 and len(grown.metadata["grown_from"]["sha256"]) == 16


def test_grown_blocks_get_gradients(tmp_path):
    _parent(tmp_path / "p.safetensors")
    grown = load_checkpoint(grow_encoder(tmp_path / "p.safetensors", tmp_path / "g.safetensors", depth=3)).model
    grown.train()
    grown.image_encoder(torch.randn(1, 1, 32, 32, 32)).square().mean().backward()
    new = grown.image_encoder.blocks[2]
    # zero output layers still get gradients, so the identity block starts to learn at the first step
    assert new.attn.proj.weight.grad.abs().sum() > 0 and new.mlp.lin2.weight.grad.abs().sum() > 0


def test_grow_refuses_what_it_cannot_do(tmp_path, capsys):
    _parent(tmp_path / "p.safetensors")
    with pytest.raises(TrainingError, match="larger than"):
        grow_encoder(tmp_path / "p.safetensors", tmp_path / "g.safetensors", depth=2)
    with pytest.raises(TrainingError, match="is the input"):
        grow_encoder(tmp_path / "p.safetensors", tmp_path / "p.safetensors", depth=3)
    _parent(tmp_path / "lora.safetensors", lora_rank=2)
    with pytest.raises(TrainingError, match="LoRA"):
        grow_encoder(tmp_path / "lora.safetensors", tmp_path / "g.safetensors", depth=3)
    assert main([str(tmp_path / "g.safetensors"), str(tmp_path / "p.safetensors"), "--depth", "1"]) == 2
    assert "grow: error" in capsys.readouterr().err
    assert main([str(tmp_path / "g.safetensors"), str(tmp_path / "p.safetensors"), "--depth", "3"]) == 0
    assert load_checkpoint(tmp_path / "g.safetensors").config.depth == 3
