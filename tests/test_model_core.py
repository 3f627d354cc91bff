"""Logic tests of the model on small configs (fast): shapes, configs, fast vs padded, prepare, LoRA."""

from __future__ import annotations

import pytest
import torch

from napari_msam.model import (
    CONFIGS,
    MSAMConfig,
    PreprocessConfig,
    attention_impl,
    build_model,
    get_config,
    zscore_positive,
    zscore_stats,
)
from napari_msam.model.attention import Attention, windowed_attention
from napari_msam.model.image_encoder import Block
from napari_msam.model.lora import LoRAQKV, lora_parameters


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights everywhere (rel-pos tables and LoRA B included, which default to zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            else:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return _randomise(build_model("msam-tiny"))


def test_config_table():
    expect = {
        # name: img, patch, grid, embed, depth, heads, window, globals, out, adapter, adapter_heads, lora
        "msam": (128, 16, 8, 768, 12, 12, 14, (2, 5, 8, 11), 384, True, 6, 4),
        "sam-med3d": (128, 16, 8, 768, 12, 12, 14, (2, 5, 8, 11), 384, False, 6, 0),
        "msam-small": (64, 8, 8, 256, 4, 8, 0, (), 192, True, 3, 0),
        "sam-med3d-small": (64, 8, 8, 256, 4, 8, 0, (), 192, False, 3, 0),
        "msam-tiny": (32, 8, 4, 32, 2, 2, 6, (1,), 32, True, 2, 2),
    }
    assert set(CONFIGS) == set(expect)
    for name, e in expect.items():
        c = get_config(name)
        got = (
            c.img_size,
            c.patch_size,
            c.grid,
            c.embed_dim,
            c.depth,
            c.num_heads,
            c.window_size,
            c.global_attn_indexes,
            c.out_chans,
            c.use_adapter,
            c.adapter_heads,
            c.lora_rank,
        )
        assert got == e, name
        assert c.low_res == 4 * c.grid
    s, t = get_config("msam-small"), get_config("msam-tiny")
    assert (s.decoder_mlp_dim, s.decoder_heads) == (768, 8)
    assert (t.mask_in_chans, t.decoder_heads, t.decoder_mlp_dim, t.iou_head_hidden) == (8, 4, 64, 32)
    assert all(s.is_global(i) for i in range(s.depth))
    with pytest.raises(KeyError, match="msam-tiny"):
        get_config("nope")


def test_config_roundtrip_and_validation():
    for c in CONFIGS.values():
        assert MSAMConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="patch_size"):
        MSAMConfig(name="bad", img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="unknown"):
        MSAMConfig.from_dict({"name": "x", "bogus": 1})
    p = PreprocessConfig(spacing_mm=(2, 2, 2), ct_window=None, axis_order="RAS")
    assert PreprocessConfig.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="axis_order"):
        PreprocessConfig(axis_order="XYZ")
    with pytest.raises(ValueError, match="spacing"):
        PreprocessConfig(spacing_mm=(1, 0, 1))


@pytest.mark.parametrize("name", ["msam-tiny", "msam-small", "sam-med3d-small"])
def test_end_to_end_shapes(name):
    torch.manual_seed(1)
    m = build_model(name).eval()
    c = m.config
    x = torch.randn(2, 1, c.img_size, c.img_size, c.img_size)
    with torch.no_grad():
        e = m.encode(x)
        assert e.shape == (2, c.out_chans, c.grid, c.grid, c.grid)
        pts = torch.tensor([[[1, 2, 3], [5, 6, 7]], [[0, 0, 0], [c.img_size - 1] * 3]])
        lab = torch.tensor([[1, 0], [1, 1]])
        low = m.refine(e, pts, lab, None)
        assert low.shape == (2, 1, c.low_res, c.low_res, c.low_res)
        low2 = m.refine(m.prepare(e), pts, lab, low)
        up = m.upsample(low2)
    assert up.shape == (2, 1, c.img_size, c.img_size, c.img_size)
    assert torch.isfinite(up).all()
    assert (m.adapter is None) == (not c.use_adapter)


def test_refine_mask_changes_output(tiny):
    c = tiny.config
    with torch.no_grad():
        e = tiny.encode(torch.randn(1, 1, c.img_size, c.img_size, c.img_size))
        pts, lab = torch.tensor([[[4, 5, 6]]]), torch.tensor([[1]])
        a = tiny.refine(e, pts, lab, None)
        b = tiny.refine(e, pts, lab, torch.zeros_like(a))
        d = tiny.refine(e, pts, lab, a * 3)
        n = tiny.refine(e, pts, torch.tensor([[0]]), None)
    assert torch.equal(a, b)  # None means an all-zero mask, as in the reference's first iteration
    assert (a - d).abs().max() > 1e-4
    assert (a - n).abs().max() > 1e-4


def test_prepare_is_bit_identical(tiny):
    c = tiny.config
    with torch.no_grad():
        e = tiny.encode(torch.randn(2, 1, c.img_size, c.img_size, c.img_size))
        prep = tiny.prepare(e)
        assert prep.adapter_cache is not None
        pts, lab = torch.tensor([[[4, 5, 6]], [[9, 9, 9]]]), torch.tensor([[1], [0]])
        low = None
        for _ in range(3):
            new_plain = tiny.refine(e, pts, lab, low)
            new_prep = tiny.refine(prep, pts, lab, low)
            assert torch.equal(new_plain, new_prep)
            low = new_prep
        # a batch-1 embedding broadcasts over several prompts
        one = tiny.prepare(e[:1])
        both = tiny.refine(one, torch.tensor([[[4, 5, 6]], [[1, 1, 1]]]), torch.tensor([[1], [1]]), None)
        assert both.shape[0] == 2
        assert torch.allclose(both[:1], tiny.refine(e[:1], pts[:1], lab[:1], None), atol=1e-6)


def test_fast_equals_padded_tiny(tiny):
    c = tiny.config
    x = torch.randn(2, 1, c.img_size, c.img_size, c.img_size)
    with torch.no_grad():
        fast = tiny.encode(x)
        with attention_impl(tiny, "padded"):
            padded = tiny.encode(x)
    assert (fast - padded).abs().max().item() < 1e-5
    assert tiny.image_encoder.attention_impl == "fast"


def test_fast_equals_padded_float64_exact():
    """In float64 the folded form equals the padded reference to rounding (tiny config, padding 2)."""
    m = _randomise(build_model("msam-tiny"), seed=3).double()
    x = torch.randn(1, 1, 32, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        fast = m.encode(x)
        m.image_encoder.attention_impl = "padded"
        padded = m.encode(x)
        m.image_encoder.attention_impl = "fast"
    assert (fast - padded).abs().max().item() < 1e-12


@pytest.mark.slow
def test_fast_equals_padded_full_size_block():
    """One reference-size windowed block (768 wide, window 14 on an 8^3 grid: 2232 padded tokens)."""
    torch.manual_seed(0)
    blk = _randomise(Block(768, 12, 4.0, 14, 8), seed=5)
    with torch.no_grad():
        blk.attn.rel_pos_d.mul_(3)
        x = torch.randn(1, 8, 8, 8, 768)
        fast = blk(x)
        blk.attn.impl = "padded"
        padded = blk(x)
    assert (fast - padded).abs().max().item() < 1e-4
    assert (fast - x).abs().max().item() > 0.1  # the block does real work


def test_windowed_multi_window_paths():
    """Window smaller than the grid: several padded windows (the reference partition path)."""
    attn = Attention(16, 2, input_size=3)
    with torch.no_grad():
        for p in (attn.rel_pos_d, attn.rel_pos_h, attn.rel_pos_w):
            p.normal_()
        x = torch.randn(1, 4, 4, 4, 16)
        a = windowed_attention(attn, x, 3, "fast")
        b = windowed_attention(attn, x, 3, "padded")
    assert a.shape == x.shape
    assert (a - b).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="attention_impl"):
        windowed_attention(attn, x, 3, "bogus")


def test_rel_pos_quirk_matters():
    """The quirk bias differs from the textbook decomposed form (so parity really pins it down)."""
    from napari_msam.model.rel_pos import quirk_bias, rel_pos_table

    k, c = 3, 4
    q = torch.randn(k**3, c, dtype=torch.float64)
    tabs = [torch.randn(2 * k - 1, c, dtype=torch.float64) for _ in range(3)]
    ours = quirk_bias(q, *tabs, k)
    r = [rel_pos_table(t, k, k) for t in tabs]
    qg = q.reshape(k, k, k, c)
    brute = torch.empty(k, k, k, k, k, k, dtype=torch.float64)
    textbook = torch.empty_like(brute)
    for i in range(k):
        for j in range(k):
            for l in range(k):  # noqa: E741
                for m in range(k):
                    for n in range(k):
                        for o in range(k):
                            brute[i, j, l, m, n, o] = (
                                qg[i, j, l] @ r[0][i, o] + qg[i, j, m] @ r[1][j, o] + qg[i, j, n] @ r[2][n, o]
                            )
                            textbook[i, j, l, m, n, o] = qg[i, j, l] @ (r[0][i, m] + r[1][j, n] + r[2][l, o])
    assert torch.allclose(ours, brute.reshape(k**3, k**3))
    assert not torch.allclose(ours, textbook.reshape(k**3, k**3))


def test_lora_wrapper():
    m = build_model("msam-tiny")
    qkv = m.image_encoder.blocks[0].attn.qkv
    assert isinstance(qkv, LoRAQKV)
    assert isinstance(qkv.qkv, torch.nn.Linear)
    assert qkv.linear_a_q.weight.shape == (2, 32) and qkv.linear_b_v.weight.shape == (32, 2)
    assert torch.count_nonzero(qkv.linear_b_q.weight) == 0 and torch.count_nonzero(qkv.linear_a_q.weight) > 0
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.equal(qkv(x), qkv.qkv(x))  # B = 0: a fresh wrapper is the identity
        qkv.linear_b_q.weight.fill_(0.1)
        qkv.linear_b_v.weight.fill_(0.1)
        out, base = qkv(x), qkv.qkv(x)
    assert torch.equal(out[:, 32:64], base[:, 32:64])  # k untouched
    assert (out[:, :32] - base[:, :32]).abs().max() > 0 and (out[:, 64:] - base[:, 64:]).abs().max() > 0
    assert len(lora_parameters(m)) == 4 * 2
    names = set(m.state_dict())
    assert "image_encoder.blocks.0.attn.qkv.qkv.weight" in names
    assert not any(k.startswith("adapter.") for k in build_model("sam-med3d-small").state_dict())


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(ValueError, match="image encoder expects"):
        tiny.encode(torch.zeros(1, 1, 16, 16, 16))
    e = torch.zeros(1, 32, 4, 4, 4)
    with pytest.raises(ValueError, match="points must be"):
        tiny.refine(e, torch.zeros(1, 3, dtype=torch.int64), torch.ones(1, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="mask logits"):
        tiny.refine(
            e,
            torch.zeros(1, 1, 3, dtype=torch.int64),
            torch.ones(1, 1, dtype=torch.int64),
            torch.zeros(1, 1, 8, 8, 8),
        )
    with pytest.raises(ValueError, match="embedding must be"):
        tiny.refine(
            torch.zeros(1, 16, 4, 4, 4),
            torch.zeros(1, 1, 3, dtype=torch.int64),
            torch.ones(1, 1, dtype=torch.int64),
        )
    with pytest.raises(ValueError, match="attention_impl"):
        tiny.image_encoder.attention_impl = "slow"


def test_zscore_positive():
    x = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, -5.0])
    mean, std = zscore_stats(x)
    assert mean == pytest.approx(2.0) and std == pytest.approx(1.0)  # unbiased std of 1, 2, 3
    out = zscore_positive(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert torch.allclose(out, (x - 2.0) / 1.0)
    import numpy as np

    arr = zscore_positive(np.array([[0.0, 4.0], [6.0, 8.0]]))
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
    assert np.allclose(arr, (np.array([[0.0, 4.0], [6.0, 8.0]]) - 6.0) / 2.0)
    flat = zscore_positive(np.zeros((3, 3)))  # no positive voxels: no NaN
    assert np.isfinite(flat).all()


def test_gradients_flow_through_fast_path():
    """Training uses the fast path: LoRA, rel-pos tables, adapter and decoder all get finite gradients."""
    m = _randomise(build_model("msam-tiny"), seed=7).train()
    x = torch.randn(1, 1, 32, 32, 32)
    low = m.refine(m.encode(x), torch.tensor([[[4, 5, 6]]]), torch.tensor([[1]]), None)
    low = m.refine(m.encode(x), torch.tensor([[[9, 9, 9]]]), torch.tensor([[0]]), low)
    m.upsample(low).sigmoid().mean().backward()
    blk0 = m.image_encoder.blocks[0].attn  # windowed (folded) block
    for p in (
        blk0.qkv.linear_b_q.weight,
        blk0.qkv.linear_a_v.weight,
        blk0.rel_pos_h,
        blk0.rel_pos_w,
        m.adapter.add_norm.weight,
        m.mask_decoder.mask_tokens.weight,
    ):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
