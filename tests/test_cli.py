"""napari-msam segment / evaluate / train: outputs, orientation, errors, no Qt."""

import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_msam import cli

LPS = np.array([[-1.0, 0, 0, 5.0], [0, -1.0, 0, 7.0], [0, 0, 2.0, -3.0], [0, 0, 0, 1]])


def test_segment_subprocess_without_qt(tmp_path, tiny_checkpoint, sts_paths):
    out = tmp_path / "seg.nii.gz"
    code = (
        "import sys\n"
        "from napari_msam.cli import main\n"
        f"rc = main(['segment', {str(sts_paths[0])!r}, '-o', {str(out)!r}, '--point', '30,40,15',"
        f" '--point', '20,30,15,-', '--checkpoint', {str(tiny_checkpoint)!r}, '--device', 'cpu', '--threads', '1'])\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6',"
        " 'napari', 'magicgui', 'vispy')]\n"
        "assert not bad, bad\n"
        "sys.exit(rc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    img = nib.load(str(sts_paths[0]))
    seg = nib.load(str(out))
    assert seg.shape == img.shape and seg.get_data_dtype() == np.uint8
    np.testing.assert_allclose(seg.affine, img.affine, atol=1e-5)


def test_segment_orientation_round_trip(tmp_path, threshold_loaded, monkeypatch, make_sphere):
    """Points are indices of the file's own array; the mask comes back in that array order."""
    ball = make_sphere((30, 32, 20), (12, 20, 9), 4, spacing=(1, 1, 2))
    p = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.where(ball, 1.0, -1.0).astype(np.float32), LPS), str(p))
    monkeypatch.setattr(cli, "_load_model", lambda args: threshold_loaded)
    rc = cli.main(["segment", str(p), "-o", str(tmp_path / "m.nii.gz"), "--point", "12,20,9", "--device", "cpu",
                   "--edge-refine", "off"])
    assert rc == 0
    m = nib.load(str(tmp_path / "m.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(m.dataobj) > 0, ball)
    np.testing.assert_allclose(m.affine, LPS)


def test_segment_with_test_time_flips(tmp_path, threshold_loaded, monkeypatch, make_sphere):
    """--tta 4 encodes four mirrored views; the flip-equivariant stand-in gives the same mask."""
    ball = make_sphere((20, 22, 18), (8, 12, 10), 4)
    p = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.where(ball, 1.0, -1.0).astype(np.float32), np.eye(4)), str(p))
    monkeypatch.setattr(cli, "_load_model", lambda args: threshold_loaded)
    before = threshold_loaded.model.encode_calls
    rc = cli.main(["segment", str(p), "-o", str(tmp_path / "m.nii.gz"), "--point", "8,12,10", "--device", "cpu",
                   "--tta", "4", "--edge-refine", "off"])
    assert rc == 0 and threshold_loaded.model.encode_calls - before == 4
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(tmp_path / "m.nii.gz")).dataobj) > 0, ball)


@pytest.mark.parametrize("mode, modality, refined", [("auto", "mr", True), ("auto", "ct", False),
                                                      ("off", "mr", False), ("on", "other", True)])
def test_segment_edge_refinement(tmp_path, monkeypatch, make_sphere, mode, modality, refined):
    """--edge-refine: the stand-in model's too-small sphere is snapped to the image edge where it applies."""
    from conftest import shrinking_loaded
    from napari_msam.metrics import dice

    gt = make_sphere((40, 40, 40), (20, 20, 20), 9)
    img = np.random.default_rng(0).normal(0, 0.1, gt.shape).astype(np.float32) + 2.0 * gt
    p = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(p))
    monkeypatch.setattr(cli, "_load_model", lambda args: shrinking_loaded())
    out = tmp_path / "m.nii.gz"
    rc = cli.main(["segment", str(p), "-o", str(out), "--point", "20,20,20", "--device", "cpu",
                   "--modality", modality, "--edge-refine", mode])
    assert rc == 0
    d = dice(np.asanyarray(nib.load(str(out)).dataobj) > 0, gt)
    assert (d > 0.9) if refined else (d < 0.8)  # 2 mm blocks (grid_mm) on a 1 mm image


@pytest.mark.parametrize("name, refined", [("patient_MR_T1.nii.gz", True), ("patient_CT.nii.gz", False)])
def test_segment_auto_modality_follows_the_file_name(tmp_path, monkeypatch, make_sphere, name, refined):
    """--modality auto (the default) reads MR from the file name, so MR files get edge refinement."""
    from conftest import shrinking_loaded
    from napari_msam.metrics import dice

    gt = make_sphere((40, 40, 40), (20, 20, 20), 9)
    img = np.random.default_rng(0).normal(0, 0.1, gt.shape).astype(np.float32) + 2.0 * gt
    p = tmp_path / name
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(p))
    monkeypatch.setattr(cli, "_load_model", lambda args: shrinking_loaded())
    out = tmp_path / "m.nii.gz"
    assert cli.main(["segment", str(p), "-o", str(out), "--point", "20,20,20", "--device", "cpu"]) == 0
    d = dice(np.asanyarray(nib.load(str(out)).dataobj) > 0, gt)
    assert (d > 0.9) if refined else (d < 0.8)


def _err(capsys, argv):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("napari-msam: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_cli_errors(tmp_path, capsys, tiny_checkpoint, sts_paths):
    out = str(tmp_path / "o.nii.gz")
    assert "no such file" in _err(capsys, ["segment", str(tmp_path / "nope.nii.gz"), "-o", out, "--point", "1,2,3"])
    assert "no such checkpoint" in _err(
        capsys, ["segment", str(sts_paths[0]), "-o", out, "--point", "1,2,3", "--checkpoint", str(tmp_path / "c")])
    assert "outside" in _err(capsys, ["segment", str(sts_paths[0]), "-o", out, "--point", "99,2,3",
                                      "--checkpoint", str(tiny_checkpoint), "--device", "cpu"])
    assert "first --point must be positive" in _err(
        capsys, ["segment", str(sts_paths[0]), "-o", out, "--point", "1,2,3,-", "--checkpoint", str(tiny_checkpoint)])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    _err(capsys, ["segment", str(sts_paths[0]), "-o", out, "--point", "1,2,3", "--checkpoint", str(bad)])
    with pytest.raises(SystemExit) as e:
        cli.main(["segment", str(sts_paths[0]), "-o", out, "--point", "1,2"])
    assert e.value.code == 2 and "I,J,K" in capsys.readouterr().err
    assert "not a folder" in _err(capsys, ["evaluate", str(tmp_path / "none"), "--csv", str(tmp_path / "x.csv")])
    assert "max_zoom must be >= 1" in _err(capsys, ["segment", str(sts_paths[0]), "-o", out, "--point", "30,40,15",
                                                    "--checkpoint", str(tiny_checkpoint), "--max-zoom", "0.5"])


def test_evaluate_cli_msam_and_random_walker(tmp_path, capsys, tiny_checkpoint, sts_paths, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(sts_paths[0], d / "sts.nii.gz")
    shutil.copy(sts_paths[1], d / "sts_label.nii.gz")
    csv_path, png = tmp_path / "r.csv", tmp_path / "r.png"
    rc = cli.main(["evaluate", str(d), "--csv", str(csv_path), "--clicks", "2", "--checkpoint", str(tiny_checkpoint),
                   "--device", "cpu", "--plot", str(png), "--no-progress", "--strategy", "center"])
    assert rc == 0 and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    rows = csv_path.read_text().strip().splitlines()
    assert rows[0] == "case,click,dice,iou,positive,seconds" and rows[1].startswith("sts,1,")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "NoC@90" in capsys.readouterr().out
    rc = cli.main(["evaluate", str(d), "--csv", str(csv_path), "--clicks", "2", "--method", "random-walker",
                   "--no-progress", "--overwrite"])
    assert rc == 0
    rows = csv_path.read_text().strip().splitlines()
    assert len(rows) == 3 and float(rows[-1].split(",")[2]) > 0.3


def test_train_subcommand_is_reserved():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "train" in sub.choices
