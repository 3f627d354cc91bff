"""npe2 sample data: the STS_024 soft-tissue-sarcoma case (T1 MR or CT) with its expert tumour mask.

Images and GTV contours from the TCIA Soft-tissue-Sarcoma collection (CC BY 3.0); see
``sample_data/README.md`` for the full attribution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._reader import volume_to_layer_data
from .io import read_volume

SAMPLE_DIR = Path(__file__).parent / "sample_data"


def _case(image: str, mask: str, label: str) -> list[tuple[Any, dict[str, Any], str]]:
    img = read_volume(SAMPLE_DIR / image)
    gt = read_volume(SAMPLE_DIR / mask, is_label=True)
    img_layer = volume_to_layer_data(img, f"STS_024 {label}", as_label=False)
    gt_layer = volume_to_layer_data(gt, f"STS_024 {label} ground truth", as_label=True)
    # cyan, so the truth never looks like the model's label 1 (napari's default colour for id 1)
    gt_layer[1]["colormap"] = {None: (0.0, 0.0, 0.0, 0.0), 1: (0.2, 0.9, 1.0, 1.0)}
    gt_layer[1]["opacity"] = 0.5
    return [img_layer, gt_layer]


def sts024_mr() -> list[tuple[Any, dict[str, Any], str]]:
    """T1-weighted MR (0.98 x 0.98 x 3.27 mm) + ground-truth tumour Labels."""
    return _case("MR_T1_image.nii.gz", "MR_T1_mask.nii.gz", "MR")


def sts024_ct() -> list[tuple[Any, dict[str, Any], str]]:
    """CT in HU (0.98 x 0.98 x 3.27 mm) + ground-truth tumour Labels."""
    return _case("CT_image.nii.gz", "CT_mask.nii.gz", "CT")
