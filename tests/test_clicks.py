import numpy as np
import pytest

from napari_msam.clicks import next_click
from napari_msam.errors import MSAMError


def _gt():
    gt = np.zeros((20, 20, 20), bool)
    gt[5:15, 5:15, 5:15] = True
    return gt


def test_first_click_is_positive_foreground():
    gt = _gt()
    rng = np.random.default_rng(0)
    for _ in range(20):
        (v, pos) = next_click(gt, np.zeros_like(gt), rng)
        assert pos and gt[v]


def test_random_is_seeded_and_labels_follow_error_type():
    gt = _gt()
    pred = np.zeros_like(gt)
    pred[5:15, 5:15, 5:10] = True  # FN on the other half
    pred[0:3, 0:3, 0:3] = True  # an FP blob
    a = [next_click(gt, pred, np.random.default_rng(3)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = np.random.default_rng(1)
    for _ in range(50):
        v, pos = next_click(gt, pred, rng)
        assert (gt[v] and not pred[v] and pos) or (pred[v] and not gt[v] and not pos)


def test_center_strategy_deepest_point_of_largest_component():
    gt = _gt()
    pred = np.zeros_like(gt)
    (v, pos) = next_click(gt, pred, np.random.default_rng(0), "center")
    assert pos and all(9 <= c <= 10 for c in v)
    pred = gt.copy()
    pred[0:4, 0:4, 0:4] = True  # FP component 64 voxels, no FN
    (v, pos) = next_click(gt, pred, np.random.default_rng(0), "center")
    assert not pos and pred[v] and not gt[v]
    # anisotropic spacing: the deepest point moves along the finely sampled axis only
    gt2 = np.zeros((10, 10, 30), bool)
    gt2[2:8, 2:8, 1:29] = True
    (v, _) = next_click(gt2, np.zeros_like(gt2), np.random.default_rng(0), "center", spacing=(1, 1, 0.2))
    assert 4 <= v[0] <= 5 and 4 <= v[1] <= 5


def test_perfect_prediction_returns_none_and_bad_input():
    gt = _gt()
    assert next_click(gt, gt, np.random.default_rng(0)) is None
    assert next_click(gt, gt, np.random.default_rng(0), "center") is None
    with pytest.raises(MSAMError, match="strategy"):
        next_click(gt, gt, np.random.default_rng(0), "edge")
    with pytest.raises(MSAMError, match="shape"):
        next_click(gt, gt[:5], np.random.default_rng(0))
