"""Shared helpers of the training tests: tiny synthetic cases and the small real case."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

DATA = Path(__file__).parent / "data"
REAL_IMAGE = DATA / "sts024_mr_crop.nii.gz"
REAL_MASK = DATA / "sts024_mr_crop_mask.nii.gz"
STS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sts" / "STS_024"


def real_pair() -> tuple[Path, Path]:
    """The small STS_024 MR crop (tests/data), else the full STS_024 MR from the shared data."""
    if REAL_IMAGE.is_file() and REAL_MASK.is_file():
        return REAL_IMAGE, REAL_MASK
    return STS / "MR_T1_image.nii.gz", STS / "MR_T1_mask.nii.gz"


def blob_case(seed: int = 0, shape=(28, 30, 26), radius: float = 6.0, spacing=(2.0, 2.0, 2.0)):
    """Image with a bright noisy sphere and its mask (float32 image, uint8 label)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = [n / 2 + rng.uniform(-2, 2) for n in shape]
    r = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
    mask = (r <= radius).astype(np.uint8)
    img = (50 + 100 * mask + rng.normal(0, 10, shape)).astype(np.float32)
    return img, mask, spacing


def write_nifti(path: Path, arr: np.ndarray, spacing=(2.0, 2.0, 2.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), str(path))
    return path
