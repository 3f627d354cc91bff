"""Reference fidelity: a volume of exactly one ROI at the model's spacing, clicked at its model centre, reaches
the model as it is, for either axis order, so the Session and ``napari-msam segment`` give exactly the mask of
``encode`` / ``refine`` / ``upsample`` called directly on that volume."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import sphere
from napari_msam import cli
from napari_msam.model import LoadedModel, PreprocessConfig, build_model, get_config, save_checkpoint
from napari_msam.model.normalization import zscore_positive
from napari_msam.preprocess import array_to_model, model_to_array, point_to_model
from napari_msam.session import Session

SPACING = 1.5
MODEL_CLICKS = [((16, 16, 16), True), ((20, 13, 17), False), ((12, 18, 15), True)]  # model-axis voxels


def _checkpoint(axis_order: str, tmp_path) -> tuple[LoadedModel, str]:
    """``msam-tiny`` (32^3 input) with random weights and non-zero relative positions, reference preprocessing
    in ``axis_order``, saved without any inference metadata (as a converted reference checkpoint)."""
    torch.manual_seed(3)
    model = build_model("msam-tiny").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name or "linear_b" in name:
                p.normal_(0, 0.2)
    pre = PreprocessConfig(spacing_mm=(SPACING,) * 3, ct_window=(-1000.0, 1000.0),
                           normalization="zscore_positive", axis_order=axis_order)
    path = tmp_path / f"ref-{axis_order}.safetensors"
    save_checkpoint(path, model, pre, {"kind": "own", "source": "tests"})
    return LoadedModel(model, get_config("msam-tiny"), pre, {"kind": "own"}, str(path)), str(path)


def _model_volume() -> np.ndarray:
    """32^3 in the model's own axis order: a bright off-centre blob in positive noise."""
    rng = np.random.default_rng(1)
    blob = sphere((32, 32, 32), (15, 17, 14), 8)
    return (rng.uniform(0.5, 1.5, blob.shape) + 3.0 * blob).astype(np.float32)


def _direct(model, x_model: np.ndarray) -> list[np.ndarray]:
    """The reference click loop on the model-order volume: newest click + previous low-res logits."""
    with torch.inference_mode():
        x = zscore_positive(torch.from_numpy(x_model)).reshape(1, 1, 32, 32, 32)
        emb = model.encode(x)
        low, out = None, []
        for p, pos in MODEL_CLICKS:
            low = model.refine(emb, torch.tensor([[p]]), torch.tensor([[int(pos)]]), low)
            out.append((model.upsample(low) > 0)[0, 0].numpy())
    return out


@pytest.mark.parametrize("axis_order", ["SPL", "RAS"])
def test_one_roi_volume_reaches_the_model_unchanged_through_session_and_cli(axis_order, tmp_path, capsys):
    loaded, ckpt = _checkpoint(axis_order, tmp_path)
    x_model = _model_volume()
    expected = _direct(loaded.model, x_model)
    assert all(0 < m.sum() < m.size for m in expected)  # a mask with a boundary, so a shift would show
    array = model_to_array(torch.from_numpy(x_model), axis_order).numpy()  # what read_volume gives (SPL)
    inverse = {point_to_model(a, 32, axis_order): a for a in np.ndindex(32, 32, 32)}
    array_clicks = [(inverse[p], pos) for p, pos in MODEL_CLICKS]

    s = Session(loaded, device="cpu")
    s.set_image(array, (SPACING,) * 3, modality="mr")
    assert s.additions == {}  # no inference addition for a checkpoint without validation metadata
    for k, (voxel, pos) in enumerate(array_clicks):
        r = s.add_click(voxel, pos)
        assert s.n_windows == 1 and (k == 0) == (r.timings["encode"] > 0)
        g = s._windows[0].geometry
        assert g.start == (0.0, 0.0, 0.0) and g.step == (1.0, 1.0, 1.0)  # no offset, no resampling
        got = array_to_model(torch.from_numpy(s.current_mask.copy()), axis_order).numpy()
        np.testing.assert_array_equal(got, expected[k])

    # the command line: a RAS+ NIfTI whose file order is the RAS model order; clicks in file indices
    file_data = array_to_model(torch.from_numpy(array), "RAS").numpy()
    img = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(file_data, np.diag([SPACING, SPACING, SPACING, 1.0])), str(img))
    for k in range(3):
        args = ["segment", str(img), "-o", str(tmp_path / f"m{k}.nii.gz"), "--checkpoint", ckpt,
                "--modality", "mr", "--device", "cpu", "--threads", "1"]
        for voxel, pos in array_clicks[: k + 1]:
            f = to_file_index(voxel)
            args += ["--point", f"{f[0]},{f[1]},{f[2]},{'+' if pos else '-'}"]
        assert cli.main(args) == 0
        assert capsys.readouterr().out.rstrip().endswith("additions: none")  # the paper's output, said so
        mask_file = np.asanyarray(nib.load(str(tmp_path / f"m{k}.nii.gz")).dataobj) > 0
        got = array_to_model(model_to_array(torch.from_numpy(mask_file), "RAS"), axis_order).numpy()
        np.testing.assert_array_equal(got, expected[k])


def to_file_index(voxel: tuple[int, int, int]) -> tuple[int, int, int]:
    """Array (SPL) index of a 32^3 volume -> index of its RAS+ NIfTI file."""
    return point_to_model(voxel, 32, "RAS")


def test_segment_help_says_which_additions_run(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["segment", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "validated" in text and "reference SAM-Med3D / M-SAM checkpoints use none" in text
