import numpy as np
import pytest

from napari_msam.errors import MSAMError
from napari_msam.metrics import dice, iou, noc


def test_dice_iou_values():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[:2] = True  # 32 voxels
    b[1:3] = True  # 32 voxels, 16 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert iou(a, b) == pytest.approx(16 / 48)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    empty = np.zeros_like(a)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0


def test_shape_mismatch():
    with pytest.raises(MSAMError, match="shape"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_noc():
    d = [0.5, 0.79, 0.81, 0.86, 0.95]
    assert noc(d, 80) == 3 and noc(d, 0.85) == 4 and noc(d, 90) == 5
    assert noc(d, 0.99) is None
    assert noc([], 0.8) is None
