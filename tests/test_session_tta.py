"""Session test-time flips (``tta``): views are mirrored consistently and each keeps its own logits chain."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ThresholdModel
from napari_msam.errors import MSAMError
from napari_msam.session import Session


class PointBallModel(ThresholdModel):
    """Logits = pooled image + a ball around the newest click + half the previous logits.

    Every term mirrors exactly with the ROI, so a session whose TTA flips image, points and priors
    consistently must give the same logits with any number of views; an off-by-one in the mirrored click
    or a mis-flipped prior would shift the ball and change the mask.
    """

    def refine(self, embedding, points, labels, mask_logits):
        self.refine_calls += 1
        s = self.img_size
        grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32)] * 3, indexing="ij"))
        p = points[0, -1].to(torch.float32).view(3, 1, 1, 1)
        ball = (((grid - p) ** 2).sum(0) <= 9.0).to(torch.float32)[None, None]
        sign = 1.0 if int(labels[0, -1]) == 1 else -1.0
        out = 2.0 * F.adaptive_avg_pool3d(embedding, self.low) + sign * 20.0 * ball - 5.0
        if mask_logits is not None:
            out = out + 0.5 * mask_logits
        return out


def _loaded(model):
    from types import SimpleNamespace

    from napari_msam.model import PreprocessConfig

    cfg = SimpleNamespace(img_size=16, low_res=16, name="pointball")
    return SimpleNamespace(model=model, config=cfg, metadata={},
                           preprocess=PreprocessConfig(spacing_mm=(1.0, 1.0, 1.0), ct_window=None,
                                                       normalization="none"))


def _asymmetric_case():
    rng = np.random.default_rng(3)
    img = rng.normal(-1.0, 0.1, (16, 16, 16)).astype(np.float32)
    img[3:9, 5:12, 2:7] = 1.0  # off-centre block: a wrong flip would move it
    return img


@pytest.mark.parametrize("tta", [2, 3, 4])
def test_flipped_views_agree_with_one_view_on_an_equivariant_model(tta):
    img = _asymmetric_case()
    clicks = [((5, 8, 4), True), ((12, 3, 11), True), ((6, 6, 5), False)]
    ref = Session(_loaded(PointBallModel()), device="cpu", auto_extend=False)
    model = PointBallModel()
    s = Session(_loaded(model), device="cpu", auto_extend=False, tta=tta)
    for sess in (ref, s):
        sess.set_image(img, (1.0, 1.0, 1.0))
    sizes = []
    for v, pos in clicks:
        ref.add_click(v, pos)
        s.add_click(v, pos)
        torch.testing.assert_close(s._windows[0].low_res, ref._windows[0].low_res)
        np.testing.assert_array_equal(s.current_mask, ref.current_mask)
        sizes.append(int(s.current_mask.sum()))
    assert 0 < min(sizes[:2]) and max(sizes) < img.size and len(set(sizes)) == len(sizes)  # every click mattered
    assert model.encode_calls == tta and model.refine_calls == tta * len(clicks)
    assert len(s._windows[0].views) == tta


def test_views_keep_their_own_chain_and_undo_restores_them(tiny_loaded, blob_case):
    img, _ = blob_case
    one = Session(tiny_loaded, device="cpu", auto_extend=False)
    two = Session(tiny_loaded, device="cpu", auto_extend=False, tta=2)
    for sess in (one, two):
        sess.set_image(img, (1.0, 1.0, 1.0))
        sess.add_click((20, 19, 21), True)
    w = two._windows[0]
    torch.testing.assert_close(w.views[0], one._windows[0].low_res)  # the unflipped view is the plain model
    torch.testing.assert_close(w.low_res, (w.views[0] + w.views[1]) / 2)
    assert not torch.allclose(w.views[0], w.views[1])  # a random model is not flip-invariant
    one.add_click((15, 19, 21), True)
    two.add_click((15, 19, 21), True)
    # view 0 continued from its own logits, not from the averaged ones
    torch.testing.assert_close(two._windows[0].views[0], one._windows[0].low_res)
    two.undo()
    torch.testing.assert_close(two._windows[0].views[1], w.views[1])


@pytest.mark.parametrize("bad", [0, 5, 1.5, True, "2"])
def test_bad_tta_is_a_clear_error(tiny_loaded, bad):
    with pytest.raises(MSAMError, match="tta"):
        Session(tiny_loaded, device="cpu", tta=bad)
