"""Checkpoint loading/saving: own safetensors round trip, reference layouts, refusal of bad files."""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import pytest
import torch

from napari_msam.model import (
    REFERENCE_PREPROCESS,
    CheckpointError,
    PreprocessConfig,
    build_model,
    load_checkpoint,
    save_checkpoint,
    state_dict_from_reference,
)
from napari_msam.model.testing import golden_fill

GOLDEN = Path(__file__).parent / "data" / "golden"


def test_own_roundtrip_exact(tmp_path):
    torch.manual_seed(0)
    m = build_model("msam-tiny").eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    pre = PreprocessConfig(
        spacing_mm=(2.5, 2.0, 1.0), ct_window=None, normalization="zscore", axis_order="SPL"
    )
    meta = {"kind": "own", "trained_on": ["STS_001"], "epochs": 3, "dice": 0.75, "nested": {"a": None}}
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, m, pre, meta)
    loaded = load_checkpoint(path)
    assert loaded.config == m.config and loaded.preprocess == pre and loaded.metadata == meta
    assert loaded.kind == "own" and loaded.path == str(path)
    assert not loaded.model.training
    sd0, sd1 = m.state_dict(), loaded.model.state_dict()
    assert list(sd0) == list(sd1)
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        pts, lab = torch.tensor([[[3, 4, 5]]]), torch.tensor([[1]])
        assert torch.equal(
            m.refine(m.encode(x), pts, lab), loaded.model.refine(loaded.model.encode(x), pts, lab)
        )
    # no metadata: kind defaults to "own"; the file is a plain safetensors file
    save_checkpoint(path, m, pre)
    assert load_checkpoint(path).metadata == {"kind": "own"}
    assert [q.name for q in tmp_path.iterdir()] == ["m.safetensors"]


def test_save_rejects_unserialisable_metadata(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(
            tmp_path / "x.safetensors", build_model("msam-tiny"), PreprocessConfig(), {"f": object()}
        )
    assert not list(tmp_path.iterdir())


def test_bad_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="could not read"):
        load_checkpoint(junk)
    other = tmp_path / "other.pth"
    torch.save({"model_state_dict": {"foo.weight": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_checkpoint(other)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not a napari-msam checkpoint"):
        load_checkpoint(plain)


def test_wrong_state_dict_names_keys(tmp_path):
    """Missing / unexpected / mis-shaped keys are reported by name and count, not as a torch traceback."""
    with torch.device("meta"):
        ref = build_model("sam-med3d").state_dict()
    sd = {k: torch.zeros(1) for k in list(ref)[:-3]}  # 321 keys, all mis-shaped; 3 missing
    sd["image_encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "wrong.pth"
    torch.save({"model_state_dict": sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "missing keys: 3 (" in msg and "unexpected keys: 1 (image_encoder.extra.weight)" in msg
    assert "mis-shaped keys: 321 (image_encoder.pos_embed [1] != [1, 8, 8, 8, 768]" in msg


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"x": Evil()}}, path)
    with pytest.raises(CheckpointError, match="refused or corrupt"):
        load_checkpoint(path)
    assert not marker.exists()


def test_state_dict_from_reference_mapping():
    sd = {
        "lora_sam.sam.image_encoder.pos_embed": torch.zeros(1),
        "bidatt.add_norm.weight": torch.ones(1),
    }
    out = state_dict_from_reference(sd, "msam-train")
    assert set(out) == {"image_encoder.pos_embed", "adapter.add_norm.weight"}
    with pytest.raises(ValueError, match="unknown checkpoint kind"):
        state_dict_from_reference(sd, "bogus")


# ----------------------------------------------------------------- full-size fake reference checkpoints
@pytest.fixture(scope="module")
def reference_msam_sd():
    ck = torch.load(GOLDEN / "00_fill_checksums.pt", weights_only=True)
    return {k: golden_fill(k, s) for k, s in zip(ck["keys"], ck["shapes"], strict=True)}


def _sam_med3d_from(msam_sd):
    """The README's mapping backwards: 461 M-SAM keys -> the 324 SAM-Med3D keys."""
    out = {}
    for k, v in msam_sd.items():
        if k.startswith("bidatt.") or ".linear_" in k:
            continue
        out[k[len("lora_sam.sam.") :].replace(".attn.qkv.qkv.", ".attn.qkv.")] = v
    return out


@pytest.mark.slow
def test_load_fake_msam_training_checkpoint(tmp_path, reference_msam_sd):
    assert len(reference_msam_sd) == 461
    path = tmp_path / "sam_model_latest.pth"
    torch.save(
        {
            "epoch": 7,
            "model_state_dict": reference_msam_sd,
            "lr_scheduler_state_dict": {"milestones": collections.Counter({120: 1, 180: 1}), "gamma": 0.1},
            "losses": [1.0, 0.5],
            "args": argparse.Namespace(lr=8e-4, model_type="vit_b_ori"),
        },
        path,
    )
    loaded = load_checkpoint(path)
    assert loaded.kind == "msam-train" and loaded.metadata["epoch"] == 7
    assert loaded.config.name == "msam" and loaded.preprocess == REFERENCE_PREPROCESS
    assert REFERENCE_PREPROCESS.axis_order == "RAS" and REFERENCE_PREPROCESS.spacing_mm == (1.5, 1.5, 1.5)
    m = loaded.model
    assert sum(p.numel() for p in m.parameters()) == 117_801_712
    sd = m.state_dict()
    for ref_key, ours in [
        (
            "lora_sam.sam.image_encoder.blocks.3.attn.qkv.linear_b_q.weight",
            "image_encoder.blocks.3.attn.qkv.linear_b_q.weight",
        ),
        (
            "bidatt.bidirectional_attentions.0.image_conv1.weight",
            "adapter.bidirectional_attentions.0.image_conv1.weight",
        ),
        (
            "lora_sam.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        ),
    ]:
        assert torch.equal(sd[ours], reference_msam_sd[ref_key])


@pytest.mark.slow
def test_load_fake_sam_med3d_checkpoint(tmp_path, reference_msam_sd):
    sd = _sam_med3d_from(reference_msam_sd)
    assert len(sd) == 324
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save({"model_state_dict": sd}, path)

    plain = load_checkpoint(path)
    assert plain.kind == "sam-med3d" and plain.config.name == "sam-med3d" and plain.model.adapter is None
    assert sum(p.numel() for p in plain.model.parameters()) == 100_509_232
    assert plain.preprocess == REFERENCE_PREPROCESS
    key = "image_encoder.blocks.5.attn.qkv.weight"
    assert torch.equal(plain.model.state_dict()[key], sd[key])
    del plain

    as_msam = load_checkpoint(path, as_msam=True)
    m = as_msam.model
    assert as_msam.config.name == "msam" and as_msam.metadata["as_msam"] is True
    assert sum(p.numel() for p in m.parameters()) == 117_801_712
    msd = m.state_dict()
    assert torch.equal(msd["image_encoder.blocks.5.attn.qkv.qkv.weight"], sd[key])
    assert torch.count_nonzero(msd["image_encoder.blocks.5.attn.qkv.linear_b_v.weight"]) == 0
    assert torch.count_nonzero(msd["image_encoder.blocks.5.attn.qkv.linear_a_v.weight"]) > 0
    # fresh adapter: PyTorch default init (LayerNorm ones, rel-pos zeros), not golden values
    assert torch.equal(msd["adapter.add_norm.weight"], torch.ones(384))
    assert torch.count_nonzero(msd["adapter.multi_head_self_attention.rel_pos_d"]) == 0
