"""The shipped STS_024 sample: files present, attribution shipped, layers load with geometry."""

from __future__ import annotations

import numpy as np
import pytest

from napari_msam._sample_data import SAMPLE_DIR, sts024_ct, sts024_mr


def test_sample_files_and_attribution_are_shipped():
    for name in ("MR_T1_image.nii.gz", "MR_T1_mask.nii.gz", "CT_image.nii.gz", "CT_mask.nii.gz"):
        assert (SAMPLE_DIR / name).is_file(), name
    total = sum(p.stat().st_size for p in SAMPLE_DIR.iterdir())
    assert total < 3_000_000
    readme = (SAMPLE_DIR / "README.md").read_text()
    assert "10.7937/K9/TCIA.2015.7GO2GSKS" in readme and "CC BY 3.0" in readme
    assert "Attribution 3.0" in (SAMPLE_DIR / "LICENSE.md").read_text()


@pytest.mark.parametrize("loader, label, modality", [(sts024_mr, "MR", "mr"), (sts024_ct, "CT", "ct")])
def test_sample_layers(loader, label, modality):
    (img, ikw, ikind), (gt, gkw, gkind) = loader()
    assert ikind == "image" and gkind == "labels"
    assert ikw["name"] == f"STS_024 {label}" and gkw["name"] == f"STS_024 {label} ground truth"
    assert img.shape == gt.shape and img.ndim == 3
    assert ikw["scale"] == gkw["scale"]
    np.testing.assert_allclose(ikw["scale"], (3.27, 0.977, 0.977), atol=0.01)
    np.testing.assert_allclose(ikw["metadata"]["affine"], gkw["metadata"]["affine"], atol=1e-5)
    assert ikw["metadata"]["modality"] == modality
    assert set(np.unique(gt)) == {0, 1} and 100 < int(gt.sum()) < gt.size // 2


def test_sample_opens_in_napari_through_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-msam", "sts024_mr")
    names = [layer.name for layer in viewer.layers]
    assert names == ["STS_024 MR", "STS_024 MR ground truth"]
    assert type(viewer.layers[1]).__name__ == "Labels"
    np.testing.assert_allclose(viewer.layers[0].scale, viewer.layers[1].scale)
