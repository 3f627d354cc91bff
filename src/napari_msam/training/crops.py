"""One model input from a prepared case: the ROI the Session would see, then the augmentations.

The crop is normalised by ``preprocess.prepare_roi``, the function inference uses, because a model only
works on inputs distributed like its training inputs.
"""

from __future__ import annotations

import math

import numpy as np

from napari_msam.training.cases import MODALITY_FOR_PREPROCESS, NormalizationView, PreparedCase

__all__ = ["augment_intensity", "rotate_axial", "rotate_in_plane", "rotation_support", "sample_crop"]


def sample_crop(
    case: PreparedCase,
    img_size: int,
    rng: np.random.Generator,
    *,
    preprocess,
    jitter: int = 0,
    flips: bool = False,
    min_fg: int = 1,
    click_centre_prob: float = 0.0,
    zoom: float = 1.0,
    intensity_prob: float = 0.0,
    rot90_prob: float = 0.0,
    rotate_prob: float = 0.0,
    rotate_max_deg: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One model input: ROI around the tumour centre (+ jitter) via ``prepare_roi``, then random flips.

    ``zoom`` > 1 samples the ROI on a grid ``zoom`` x coarser than the case's (model) spacing, so the model
    learns to see large tumours whole (``model.roi_zoom``: the Session zooms out the same way).

    With probability ``click_centre_prob`` the ROI is centred on a random tumour voxel instead: that is
    where the Session centres its ROI at inference (on the object's first click), so the model must also
    see tumours that sit off-centre or are cut by the ROI border.

    With probability ``rot90_prob`` the crop is also turned 90 degrees in the axial plane
    (``rotate_axial``); with the flips that gives all eight axial orientations.

    With probability ``rotate_prob`` the crop is turned by an angle drawn uniformly from
    +-``rotate_max_deg`` degrees in the axial plane (``rotate_in_plane``): a wider ROI is sampled and the
    turned centre cube kept, so the corners hold real tissue, not padding.

    With probability ``intensity_prob`` the normalised image also gets ``augment_intensity``.

    Returns (image float32 (S,S,S), gt bool (S,S,S)) in the model's axis order.
    """
    from napari_msam.preprocess import prepare_label_roi, prepare_roi, roi_geometry

    sp = tuple(float(s) for s in preprocess.spacing_mm)
    roi_sp = tuple(s * float(zoom) for s in sp)
    order = getattr(preprocess, "axis_order", "SPL")
    shape = case.label.shape
    lab_u8 = case.label.view(np.uint8) if case.label.dtype == bool else case.label.astype(np.uint8)

    def geometry(centre):
        c = [min(max(int(v), 0), n - 1) for v, n in zip(centre, shape, strict=True)]
        return roi_geometry(shape, sp, c, roi_sp, img_size, order)

    click_centred = click_centre_prob > 0 and rng.random() < click_centre_prob
    if click_centred:
        fg = np.flatnonzero(case.label)
        centre = np.unravel_index(int(fg[rng.integers(len(fg))]), shape)
        geo = geometry(centre)
        gt = prepare_label_roi(lab_u8, geo)[0, 0].numpy() > 0
    else:
        geo = geometry(case.centre)
        gt = prepare_label_roi(lab_u8, geo)[0, 0].numpy() > 0
    if jitter > 0 and not click_centred:
        for _attempt in range(10):
            off = rng.integers(-jitter, jitter + 1, size=3)
            g2 = geometry([c + int(o) for c, o in zip(case.centre, off, strict=True)])
            gt2 = prepare_label_roi(lab_u8, g2)[0, 0].numpy() > 0
            if gt2.sum() >= min(min_fg, case.fg_voxels):
                geo, gt = g2, gt2
                break
    modality = MODALITY_FOR_PREPROCESS.get(case.modality, "other")
    angle = 0.0
    if rotate_prob > 0 and rotate_max_deg > 0 and rng.random() < rotate_prob:
        angle = float(rng.uniform(-rotate_max_deg, rotate_max_deg))
    if angle != 0.0:
        geo = roi_geometry(shape, sp, geo.center, roi_sp, rotation_support(img_size, angle), order)  # same centre, wider
        gt = prepare_label_roi(lab_u8, geo)[0, 0].numpy() > 0
    roi = prepare_roi(case.image, sp, geo.center, NormalizationView(preprocess), geo.size, modality, geometry=geo)
    img = roi.image[0, 0].numpy()
    if angle != 0.0:
        img, gt = rotate_in_plane(img, gt, angle, img_size, order)
    if flips:
        for ax in range(3):
            if rng.random() < 0.5:
                img = np.flip(img, ax)
                gt = np.flip(gt, ax)
    if rot90_prob > 0 and rng.random() < rot90_prob:
        img, gt = rotate_axial(img, order), rotate_axial(gt, order)
    if intensity_prob > 0 and rng.random() < intensity_prob:
        img = augment_intensity(img, rng)
    return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(gt)


def rotate_axial(a: np.ndarray, axis_order: str = "SPL") -> np.ndarray:
    """``a`` turned 90 degrees in the axial plane (the two axes other than S are swapped).

    Why: each training patient shows its tumour in one orientation only; a turned crop is a new, equally
    plausible view (limbs and trunk lie at any angle in the axial plane), while the head-foot axis, along
    which sarcomas grow and MR slices are thickest, keeps its meaning. The model grid is isotropic, so the
    swap needs no resampling.
    """
    s_axis = axis_order.upper().index("S") if "S" in axis_order.upper() else 0
    a1, a2 = (ax for ax in range(3) if ax != s_axis)
    return np.swapaxes(a, a1, a2)


def rotation_support(img_size: int, angle_deg: float) -> int:
    """Side of the cube whose centre ``img_size`` cube, turned by ``angle_deg``, stays inside it."""
    t = math.radians(abs(angle_deg))
    return int(math.ceil(img_size * (abs(math.cos(t)) + abs(math.sin(t))))) + 2


def rotate_in_plane(img: np.ndarray, gt: np.ndarray, angle_deg: float, img_size: int,
                    axis_order: str = "SPL") -> tuple[np.ndarray, np.ndarray]:
    """The centre ``img_size`` cube of ``img`` / ``gt`` turned by ``angle_deg`` about the S axis.

    Trilinear for the image, trilinear then > 0.5 for the mask. Why: rot90 gives four axial angles; limbs
    and trunk lie at any angle in between, and the network sees a tumour's outline from more directions.
    """
    import torch

    s_axis = axis_order.upper().index("S") if "S" in axis_order.upper() else 0
    big = img.shape[0]
    t = math.radians(angle_deg)
    c, s_ = math.cos(t), math.sin(t)
    # affine_grid works in (x, y, z) = (dim 2, dim 1, dim 0) of a (D, H, W) volume
    grid_axis = {0: 2, 1: 1, 2: 0}
    a1, a2 = (grid_axis[ax] for ax in range(3) if ax != s_axis)
    rot = torch.eye(3, dtype=torch.float64)
    rot[a1, a1], rot[a1, a2], rot[a2, a1], rot[a2, a2] = c, -s_, s_, c
    theta = torch.zeros(1, 3, 4, dtype=torch.float64)
    theta[0, :, :3] = rot * (img_size / big)
    grid = torch.nn.functional.affine_grid(theta.float(), [1, 1, img_size, img_size, img_size], align_corners=False)
    stack = torch.from_numpy(np.stack([np.ascontiguousarray(img, dtype=np.float32),
                                       np.ascontiguousarray(gt, dtype=np.float32)])[None])
    out = torch.nn.functional.grid_sample(stack, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, 0].numpy(), out[0, 1].numpy() > 0.5


def augment_intensity(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast x U(0.75, 1.25), brightness + U(-0.25, 0.25), then (half the time) Gaussian noise of
    sigma U(0, 0.1), all in the units of the normalised image.

    Why: a few dozen training volumes; the model should see more appearance variation than the patients
    alone give (docs/model-card.md reports what it did).
    """
    out = img.astype(np.float32) * np.float32(rng.uniform(0.75, 1.25)) + np.float32(rng.uniform(-0.25, 0.25))
    if rng.random() < 0.5:
        out = out + rng.normal(0.0, rng.uniform(0.0, 0.1), out.shape).astype(np.float32)
    return out
