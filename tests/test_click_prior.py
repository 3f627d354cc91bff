"""The click prior paints clicks into the mask prompt the same way in training and in the Session."""

import numpy as np
import torch

from napari_msam.model import build_model
from napari_msam.model.click_prior import ClickPrior
from napari_msam.model.config import PreprocessConfig, get_config
from napari_msam.model.weights import load_checkpoint, save_checkpoint
from napari_msam.session import Session
from napari_msam.training.loop import interaction_loss


def test_paint_balls_later_clicks_win_and_keep_the_rest():
    prior = ClickPrior(radius=1.0, value=5.0)
    low = torch.full((1, 1, 8, 8, 8), 0.25)
    pts = torch.tensor([[[8, 8, 8], [9, 8, 8]]])  # both near low-res voxel (1.75..2.0); S=32 -> L=8
    out = prior.apply(low, pts, torch.tensor([[1, 0]]), img_size=32, low_res_side=8)
    # centres in low-res voxels: 1.625 and 1.875 (S=32 -> L=8); voxel (2,2,2) is in both balls
    assert float(out[0, 0, 2, 2, 2]) == -5.0  # the later, negative click wins where the balls overlap
    assert float(out[0, 0, 7, 7, 7]) == 0.25  # far away: the previous logits are kept
    assert ((out == 5.0) | (out == -5.0)).sum() > 0
    assert prior.apply(None, pts[:, :1], torch.tensor([[1]]), 32, 8)[0, 0, 2, 2, 2] == 5.0  # None = zeros


def test_prior_is_differentiable_through_the_kept_logits():
    low = torch.zeros((1, 1, 8, 8, 8), requires_grad=True)
    out = ClickPrior(1.0, 3.0).apply(low, torch.tensor([[[4, 4, 4]]]), torch.tensor([[1]]), 32, 8)
    out.sum().backward()
    assert low.grad[0, 0, 7, 7, 7] == 1.0  # kept voxels pass the gradient on
    assert low.grad[0, 0, 1, 1, 1] == 0.0 and float(out[0, 0, 1, 1, 1].detach()) == 3.0  # painted ones are constants


def test_session_applies_the_prior_recorded_in_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model(get_config("msam-tiny"))
    pp = PreprocessConfig(spacing_mm=(1.0, 1.0, 1.0), ct_window=None, normalization="zscore")
    plain, painted = tmp_path / "plain.safetensors", tmp_path / "prior.safetensors"
    save_checkpoint(plain, model, pp, {})
    save_checkpoint(painted, model, pp, {"click_prior": {"radius": 2.0, "value": 8.0}})
    vol = np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32)
    masks = []
    for path in (plain, painted):
        s = Session(load_checkpoint(path), device="cpu")
        assert (s.click_prior is None) == (path == plain)
        s.set_image(vol, (1.0, 1.0, 1.0))
        masks.append(s.add_click((20, 20, 20), True).mask.sum())
    assert masks[0] != masks[1]  # the painted +8 ball changes what the decoder sees


def test_training_loop_runs_with_the_prior():
    torch.manual_seed(0)
    model = build_model(get_config("msam-tiny"))
    x = torch.randn(1, 1, 32, 32, 32)
    y = torch.zeros(1, 1, 32, 32, 32)
    y[:, :, 10:20, 10:20, 10:20] = 1
    res = interaction_loss(model, x, y, n_clicks=3, rng=np.random.default_rng(0), click_prior=ClickPrior(1.5, 4.0))
    res.loss.backward()
    assert torch.isfinite(res.loss) and len(res.dice_per_click) == 3
