"""Shared fixtures: a tiny random-weights model (and its checkpoint), synthetic volumes, the STS_024 crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

DATA_DIR = Path(__file__).parent / "data"
# like the default model's: validated with edge refinement on MR (napari_msam.additions)
TINY_METADATA = {"kind": "own", "source": "tests", "inference": {"edge_refine": ["mr"]}}


@pytest.fixture(scope="session")
def tiny_loaded():
    """``msam-tiny`` with seeded random weights; 2 mm model spacing, plain z-score, array axes."""
    from napari_msam.model import LoadedModel, PreprocessConfig, build_model, get_config

    torch.manual_seed(0)
    model = build_model("msam-tiny").eval()
    pre = PreprocessConfig(spacing_mm=(2.0, 2.0, 2.0), ct_window=(-1000.0, 1000.0), normalization="zscore")
    return LoadedModel(model=model, config=get_config("msam-tiny"), preprocess=pre,
                       metadata=dict(TINY_METADATA), path=None)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_loaded, tmp_path_factory) -> Path:
    from napari_msam.model import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, tiny_loaded.model, tiny_loaded.preprocess, dict(TINY_METADATA))
    return path


def sphere(shape, center, radius, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center, spacing, strict=True))
    return d2 <= radius**2


@pytest.fixture
def blob_case():
    """A 40^3 volume (1 mm) with a bright sphere (radius 7) and its mask."""
    rng = np.random.default_rng(0)
    gt = sphere((40, 40, 40), (20, 19, 21), 7)
    img = rng.normal(0, 0.2, gt.shape).astype(np.float32) + 2.0 * gt
    return img, gt


class ThresholdModel(torch.nn.Module):
    """A stand-in model whose logits are 10 x the (normalised) ROI image pooled to the low-res grid.

    It ignores the prompts, so what a session does with ROIs, windows and paste-back is exactly checkable:
    the pasted mask must equal "image > 0" wherever some window covered the voxel.
    """

    def __init__(self, img_size=16, low_res=16):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.img_size, self.low = img_size, low_res
        self.encode_calls = 0
        self.refine_calls = 0

    def encode(self, image):
        self.encode_calls += 1
        return image.clone()

    def prepare(self, embedding):
        return embedding

    def refine(self, embedding, points, labels, mask_logits):
        self.refine_calls += 1
        assert points.shape[-1] == 3 and int(points.min()) >= 0 and int(points.max()) < self.img_size
        return 10.0 * F.adaptive_avg_pool3d(embedding, self.low)


@pytest.fixture
def threshold_loaded():
    from types import SimpleNamespace

    from napari_msam.model import PreprocessConfig

    model = ThresholdModel()
    cfg = SimpleNamespace(img_size=16, low_res=16, name="threshold")
    return SimpleNamespace(model=model, config=cfg, metadata={},
                           preprocess=PreprocessConfig(spacing_mm=(1.0, 1.0, 1.0), ct_window=None, normalization="none"))


class ShrinkingModel(ThresholdModel):
    """Logits of a blurred image thresholded high: a bright sphere comes out about 2 voxels too small
    (what edge refinement must repair)."""

    def refine(self, embedding, points, labels, mask_logits):
        self.refine_calls += 1
        return 10.0 * (F.avg_pool3d(embedding, 5, stride=1, padding=2, count_include_pad=False) - 1.6)


def shrinking_loaded(size: int = 40):
    """A loaded-model stand-in around :class:`ShrinkingModel` (1 mm, no normalisation, ROI of ``size``)."""
    from types import SimpleNamespace

    from napari_msam.model import PreprocessConfig

    cfg = SimpleNamespace(img_size=size, low_res=size, name="shrinking")
    return SimpleNamespace(model=ShrinkingModel(img_size=size, low_res=size), config=cfg, metadata={},
                           preprocess=PreprocessConfig(spacing_mm=(1.0, 1.0, 1.0), ct_window=None,
                                                       normalization="none"))


@pytest.fixture
def sts_paths() -> tuple[Path, Path]:
    return DATA_DIR / "sts024_mr_crop.nii.gz", DATA_DIR / "sts024_mr_crop_mask.nii.gz"


@pytest.fixture
def make_sphere():
    """The :func:`sphere` helper, as a fixture (tests/ is not a package)."""
    return sphere


@pytest.fixture
def make_segment_widget(make_napari_viewer, qtbot, tiny_checkpoint):
    """Factory for a viewer holding the blob volume (and its ground truth) with a docked Segment widget.

    The widget runs the tiny checkpoint through ``session_factory`` (the ball stand-in unless given);
    ``image`` replaces the blob (then no ground truth is added), ``image=False`` leaves the viewer empty.
    Every widget made is closed afterwards, and its worker thread must be gone.
    """
    from msam_gui_helpers import BallSession, blob_volume
    from napari_msam.widgets.segment import SegmentWidget

    made = []

    def factory(session_factory=BallSession, image=None, name="blob MR", scale=(2.0, 1.0, 1.0),
                translate=(0, 0, 0), show=False, confirm_clear=True):
        viewer = make_napari_viewer(show=show)
        if image is not False:
            img, gt = blob_volume() if image is None else (image, None)
            viewer.add_image(img, name=name, scale=scale, translate=translate)
            if gt is not None:
                viewer.add_labels(gt, name=f"{name} ground truth", scale=scale, translate=translate)
        w = SegmentWidget(viewer, model_path=str(tiny_checkpoint), session_factory=session_factory,
                          confirm_clear=confirm_clear)
        viewer.window.add_dock_widget(w)
        made.append(w)
        qtbot.waitUntil(lambda: w.worker.pending == 0 and not w.busy_auto, timeout=30000)
        qtbot.wait(50)  # let the queued result signals run on the GUI thread
        qtbot.waitUntil(lambda: not w.jobs._handlers, timeout=30000)
        return viewer, w

    BallSession.instances.clear()
    BallSession.delay = 0.0
    yield factory
    BallSession.delay = 0.0
    for w in made:
        w.close_worker()
        assert not w.worker.is_alive()
