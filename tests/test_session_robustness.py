"""Bad input to the Session and to ``napari-msam segment`` is refused in one clear line, never a traceback,
an empty mask or a result that changes behind the caller's back."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_msam import cli
from napari_msam.errors import InvalidVolumeError, MSAMError
from napari_msam.session import Session


def _one_line_error(capsys, argv) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("napari-msam: error: ") and err.count("\n") == 1
    return err


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 9), (9, 1, 9), (9, 9, 1)])
def test_robust_volumes_too_small_to_segment_are_refused(threshold_loaded, shape):
    s = Session(threshold_loaded, device="cpu")
    with pytest.raises(InvalidVolumeError, match="too small to segment"):
        s.set_image(np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1.0)


def test_robust_reoriented_views_are_made_contiguous(threshold_loaded, make_sphere):
    gt = make_sphere((30, 34, 38), (15, 16, 20), 5)
    img = np.where(gt, 1.0, -1.0).astype(np.float32)
    view = np.ascontiguousarray(img.transpose(2, 1, 0)[::-1, :, ::-1]).transpose(2, 1, 0)[::-1, :, ::-1]
    assert not view.flags.c_contiguous and np.array_equal(view, img)  # negative strides, as a reorientation
    s = Session(threshold_loaded, device="cpu")
    s.set_image(view, (1.0, 1.0, 1.0))
    s.add_click((15, 16, 20))
    np.testing.assert_array_equal(s.current_mask, gt)


@pytest.mark.parametrize("value", [0.0, 7.5])
def test_robust_constant_image_is_refused(threshold_loaded, tiny_checkpoint, tmp_path, capsys, value):
    s = Session(threshold_loaded, device="cpu")
    with pytest.raises(InvalidVolumeError, match="constant"):
        s.set_image(np.full((20, 20, 20), value, np.float32))
    p = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 20), value, np.float32), np.eye(4)), str(p))
    out = tmp_path / "m.nii.gz"
    err = _one_line_error(capsys, ["segment", str(p), "-o", str(out), "--point", "10,10,10",
                                   "--checkpoint", str(tiny_checkpoint), "--device", "cpu"])
    assert "constant" in err and not out.exists()


def test_robust_model_with_nan_outputs_is_a_clear_error(tiny_loaded, tmp_path, capsys, make_sphere):
    import copy

    from napari_msam.model import save_checkpoint

    broken = copy.deepcopy(tiny_loaded.model)
    with torch.no_grad():
        for prm in broken.parameters():
            prm.fill_(float("nan"))
    ckpt = tmp_path / "nan.safetensors"
    save_checkpoint(ckpt, broken, tiny_loaded.preprocess, {"kind": "own"})
    gt = make_sphere((40, 40, 40), (20, 20, 20), 8)
    img = (np.random.default_rng(0).normal(0, 0.1, gt.shape) + 2.0 * gt).astype(np.float32)
    p = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(p))
    out = tmp_path / "m.nii.gz"
    err = _one_line_error(capsys, ["segment", str(p), "-o", str(out), "--point", "20,20,20",
                                   "--checkpoint", str(ckpt), "--device", "cpu"])
    assert "NaN" in err and not out.exists()


def test_robust_negative_first_click_is_refused(threshold_loaded, make_sphere):
    gt = make_sphere((30, 30, 30), (15, 15, 15), 5)
    s = Session(threshold_loaded, device="cpu")
    s.set_image(np.where(gt, 1.0, -1.0).astype(np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(MSAMError, match="first click of an object must be positive"):
        s.add_click((15, 15, 15), positive=False)
    assert s.clicks == [] and not s.current_mask.any()
    s.add_click((15, 15, 15), positive=True)
    s.add_click((15, 15, 19), positive=False)  # a correction of an existing object is fine
    assert s.accept() == 1
    with pytest.raises(MSAMError, match="first click"):  # the next object starts empty again
        s.add_click((15, 15, 15), positive=False)


def test_robust_set_image_copies_the_callers_array(threshold_loaded, make_sphere):
    gt = make_sphere((30, 34, 38), (15, 16, 20), 5)
    img = np.where(gt, 1.0, -1.0).astype(np.float32)
    s = Session(threshold_loaded, device="cpu")
    s.set_image(img, (1.0, 1.0, 1.0))
    img[...] = -1.0  # the caller reuses its buffer after handing it over
    s.add_click((15, 16, 20))
    np.testing.assert_array_equal(s.current_mask, gt)
