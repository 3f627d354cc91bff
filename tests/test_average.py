"""Weight averaging of fine-tuning runs (training/average.py): the mean is exact, mismatches are refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from napari_msam.model import PreprocessConfig, build_model, load_checkpoint, save_checkpoint
from napari_msam.training.average import average_checkpoints, main
from napari_msam.training.trainer import TrainingError

PRE = PreprocessConfig(spacing_mm=(2.5, 2.5, 2.5), ct_window=None, normalization="zscore", axis_order="SPL")
META = {"kind": "own", "click_prior": {"radius": 1.5, "value": 4.0}, "global_step": 10}


def _ckpt(path, seed, config="msam-tiny", meta=META):
    torch.manual_seed(seed)
    m = build_model(config).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_checkpoint(path, m, PRE, dict(meta))
    return m


def test_average_is_the_elementwise_mean_and_keeps_what_the_session_reads(tmp_path):
    a = _ckpt(tmp_path / "a.safetensors", 0)
    b = _ckpt(tmp_path / "b.safetensors", 1)
    out = average_checkpoints([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "soup.safetensors")
    soup = load_checkpoint(out)
    sa, sb, ss = a.state_dict(), b.state_dict(), soup.model.state_dict()
    assert set(ss) == set(sa)
    floats = [k for k in sa if sa[k].is_floating_point()]
    assert floats and all(torch.allclose(ss[k], (sa[k] + sb[k]) / 2, atol=1e-6) for k in floats)
    assert any(not torch.equal(ss[k], sa[k]) for k in floats)
    assert soup.metadata["click_prior"] == META["click_prior"] and soup.preprocess == PRE
    assert [d["file"] for d in soup.metadata["averaged_from"]] == ["a.safetensors", "b.safetensors"]
    assert all(len(d["sha256"]) == 16 for d in soup.metadata["averaged_from"])


def test_average_refuses_mismatches_and_overwriting_an_input(tmp_path):
    _ckpt(tmp_path / "a.safetensors", 0)
    _ckpt(tmp_path / "c.safetensors", 2, meta={**META, "click_prior": {"radius": 2.0, "value": 4.0}})
    tiny = build_model("msam-tiny").config
    no_adapter = build_model(dataclasses.replace(tiny, name="sam-med3d-tiny", use_adapter=False)).eval()
    save_checkpoint(tmp_path / "d.safetensors", no_adapter, PRE, dict(META))
    with pytest.raises(TrainingError, match="click_prior"):
        average_checkpoints([tmp_path / "a.safetensors", tmp_path / "c.safetensors"], tmp_path / "o.safetensors")
    with pytest.raises(TrainingError, match="configuration"):
        average_checkpoints([tmp_path / "a.safetensors", tmp_path / "d.safetensors"], tmp_path / "o.safetensors")
    with pytest.raises(TrainingError, match="one of the inputs"):
        average_checkpoints([tmp_path / "a.safetensors", tmp_path / "c.safetensors"], tmp_path / "a.safetensors")
    with pytest.raises(TrainingError, match="at least two"):
        average_checkpoints([tmp_path / "a.safetensors"], tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
    assert main([str(tmp_path / "o.safetensors"), str(tmp_path / "a.safetensors"), str(tmp_path / "nope")]) == 2
