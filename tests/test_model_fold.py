"""The exact regroupings of the inference path against the plain formulation they replace, in float64 on
random weights: the adapter's folded mask stream, the matrix-product upsampling, the patch embedding and
the neck. The golden tests check the same paths against the reference's numbers at fp32 tolerances;
here any slip in the algebra (a missing centring, a border of the 3x3x3 kernel) shows as an error far
above float64 rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_msam.model import build_model
from napari_msam.model.adapter_fold import fold_mask_stream, forward_folded
from napari_msam.model.upsample import upsample_trilinear


def _random_model(seed: int = 0) -> torch.nn.Module:
    """``msam-tiny`` (grid 4, so the 3x3x3 kernels see borders and interior) with every weight random:
    LayerNorm gains and biases, rel-pos tables and LoRA included."""
    torch.manual_seed(seed)
    model = build_model("msam-tiny").double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if p.ndim >= 2 else 0.2
            base = 1.0 if (p.ndim == 1 and not name.endswith("bias")) else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return _random_model()


def _inputs(model, batch: int, seed: int = 1):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    e = torch.randn((batch, c.out_chans, c.grid, c.grid, c.grid), generator=g, dtype=torch.float64)
    lr = c.low_res
    logits = 4 * torch.randn((batch, 1, lr, lr, lr), generator=g, dtype=torch.float64)
    return e, logits


@pytest.mark.parametrize("e_batch, m_batch", [(1, 1), (2, 2), (1, 3)])
def test_folded_mask_stream_equals_the_adapter(model, e_batch, m_batch):
    e, _ = _inputs(model, e_batch)
    _, logits = _inputs(model, m_batch, seed=2)
    pe, adapter = model.prompt_encoder, model.adapter
    with torch.no_grad():
        ref = adapter(e.expand(m_batch, -1, -1, -1, -1), pe.embed_masks(logits))
        fold = fold_mask_stream(adapter, pe.mask_projection, adapter.prepare_image(e))
        got = forward_folded(adapter, fold, pe.mask_features(logits))
    assert got.shape == ref.shape
    err = (got - ref).abs().max().item()
    assert err < 1e-10 * ref.abs().max().item(), err


def test_refine_equals_the_unfolded_decoder_path(model):
    """``MSAM.refine`` (folded) against the decoder fed by the plain adapter, as the reference runs it."""
    e, logits = _inputs(model, 1)
    pts, lab = torch.tensor([[[3, 17, 30], [20, 5, 9]]]), torch.tensor([[1, 0]])
    pe = model.prompt_encoder
    with torch.no_grad():
        sparse, dense = pe(pts, lab, logits)
        ref, _ = model.mask_decoder(e, pe.get_dense_pe(), sparse, dense, False, model.adapter)
        got = model.refine(model.prepare(e), pts, lab, logits)
    assert (got - ref).abs().max().item() < 1e-10 * ref.abs().max().item()


@pytest.mark.parametrize("n, size", [(32, 128), (8, 32), (5, 17), (4, 4)])
def test_upsample_equals_trilinear_interpolate(n, size):
    g = torch.Generator().manual_seed(n)
    x = torch.randn((2, 1, n, n, n), generator=g, dtype=torch.float64)
    ref = F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=False)
    got = upsample_trilinear(x, size)
    assert got.shape == ref.shape and (got - ref).abs().max().item() < 1e-12
    x32 = x.float()
    ref32 = F.interpolate(x32, size=(size,) * 3, mode="trilinear", align_corners=False)
    assert (upsample_trilinear(x32, size) - ref32).abs().max().item() < 1e-5


def test_upsample_keeps_non_finite_values_local():
    """A matrix product would spread one inf over whole rows (0 * inf = NaN): those inputs interpolate."""
    x = torch.zeros((1, 1, 8, 8, 8))
    x[0, 0, 2, 3, 4] = float("inf")
    ref = F.interpolate(x, size=(32,) * 3, mode="trilinear", align_corners=False)
    got = upsample_trilinear(x, 32)
    assert torch.equal(torch.isnan(got), torch.isnan(ref)) and int(torch.isfinite(got).sum()) > 0


def test_patch_embedding_and_neck_equal_their_convolutions(model):
    enc = model.image_encoder
    c = model.config
    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 1, c.img_size, c.img_size, c.img_size), generator=g, dtype=torch.float64)
    with torch.no_grad():
        tokens = enc.patch_embed(x)
        ref = enc.patch_embed.proj(x).permute(0, 2, 3, 4, 1)
        assert tokens.is_contiguous() and (tokens - ref).abs().max().item() < 1e-11
        neck_ref = enc.neck(tokens.permute(0, 4, 1, 2, 3))
        assert (enc.forward_neck(tokens) - neck_ref).abs().max().item() < 1e-11
