"""Bad input and faults met through the ``napari-msam`` command line and the npe2 writer (docs/robustness.md).

Each test runs the command a user would type and asserts on the one-line error, the exit status and the
files left on disk.
"""

from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from napari_msam import cli
from napari_msam._writer import write_labels
from napari_msam.errors import OutputError, OutputExistsError
from napari_msam.io import check_output


def _one_line_error(capsys, argv) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("napari-msam: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def scan(tmp_path, make_sphere):
    ball = make_sphere((20, 22, 18), (8, 12, 10), 4)
    p = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.where(ball, 1.0, -1.0).astype(np.float32), np.eye(4)), str(p))
    return p


def _seg_args(image, out, *extra):
    return ["segment", str(image), "-o", str(out), "--point", "8,12,10", "--device", "cpu",
            "--edge-refine", "off", *extra]


def test_robust_segment_never_writes_over_its_input(tmp_path, capsys, scan, threshold_loaded, monkeypatch):
    monkeypatch.setattr(cli, "_load_model", lambda args: threshold_loaded)
    before = scan.read_bytes()
    link = tmp_path / "hard.nii.gz"
    os.link(scan, link)
    sym = tmp_path / "sym.nii.gz"
    sym.symlink_to(scan)
    for out in (scan, link, sym, tmp_path / "." / "scan.nii.gz"):
        err = _one_line_error(capsys, _seg_args(scan, out, "--overwrite"))
        assert "input file" in err and str(out) in err
    assert scan.read_bytes() == before


def test_robust_segment_keeps_existing_output_unless_overwrite(tmp_path, capsys, scan, threshold_loaded,
                                                               monkeypatch):
    monkeypatch.setattr(cli, "_load_model", lambda args: threshold_loaded)
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"earlier labels")
    err = _one_line_error(capsys, _seg_args(scan, out))
    assert "exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"earlier labels"
    assert cli.main(_seg_args(scan, out, "--overwrite")) == 0
    assert np.asanyarray(nib.load(str(out)).dataobj).sum() > 0


def test_robust_segment_checks_output_before_running_the_model(tmp_path, capsys, scan, monkeypatch):
    def no_model(args):
        raise AssertionError("the model must not be loaded for a bad output path")

    monkeypatch.setattr(cli, "_load_model", no_model)
    assert "does not exist" in _one_line_error(capsys, _seg_args(scan, tmp_path / "nope" / "m.nii.gz"))
    assert "unsupported output type" in _one_line_error(capsys, _seg_args(scan, tmp_path / "m.png"))
    (tmp_path / "dir.nii.gz").mkdir()
    assert "is a folder" in _one_line_error(capsys, _seg_args(scan, tmp_path / "dir.nii.gz"))


def test_robust_evaluate_outputs_follow_the_same_rule(tmp_path, capsys, sts_paths, monkeypatch):
    from napari_msam import evaluation

    def no_run(*a, **k):
        raise AssertionError("nothing may run before the outputs are checked")

    monkeypatch.setattr(evaluation, "evaluate_cases", no_run)
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(sts_paths[0], d / "sts.nii.gz")
    shutil.copy(sts_paths[1], d / "sts_label.nii.gz")
    base = ["evaluate", str(d), "--method", "random-walker", "--no-progress"]
    assert "does not exist" in _one_line_error(capsys, [*base, "--csv", str(tmp_path / "no" / "r.csv")])
    assert not (tmp_path / "no").exists()  # missing folders are refused, not created (one rule with segment)
    old = tmp_path / "r.csv"
    old.write_text("keep me")
    assert "exists" in _one_line_error(capsys, [*base, "--csv", str(old)])
    assert old.read_text() == "keep me"
    err = _one_line_error(capsys, [*base, "--csv", str(tmp_path / "n.csv"), "--plot", str(tmp_path / "x.xyz")])
    assert "x.xyz" in err and ".png" in err
    assert "--limit" in _one_line_error(capsys, [*base, "--csv", str(tmp_path / "n.csv"), "--limit", "-1"])


def test_robust_check_output_api(tmp_path):
    """The rule the widgets call: exists -> OutputExistsError (ask, then overwrite=True); input -> never."""
    src = tmp_path / "img.nii.gz"
    src.write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        check_output(src)
    assert check_output(src, overwrite=True) == src
    with pytest.raises(OutputError, match="input file") as e:
        check_output(src, inputs=[src], overwrite=True)
    assert not isinstance(e.value, OutputExistsError)
    assert check_output(tmp_path / "new.nii.gz", inputs=[src]) == tmp_path / "new.nii.gz"


def test_robust_writer_refuses_the_source_image(tmp_path):
    """napari's Save asks before replacing a file; the writer still never replaces the image itself."""
    img = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), str(img))
    before = img.read_bytes()
    lab = np.zeros((4, 5, 6), np.uint8)
    meta = {"source_path": str(img), "source_kind": "image"}
    with pytest.raises(OutputError, match="input file"):
        write_labels(str(img), lab, {"scale": (1, 1, 1), "metadata": meta})
    assert img.read_bytes() == before
    # a Labels layer read from a mask file may be saved back over that file (napari asked)
    mask = tmp_path / "scan_mask.nii.gz"
    mask.write_bytes(b"old")
    write_labels(str(mask), lab, {"scale": (1, 1, 1), "metadata": {"source_path": str(mask),
                                                                    "source_kind": "labels"}})
    assert np.asanyarray(nib.load(str(mask)).dataobj).shape == (4, 5, 6)


def test_robust_reader_marks_image_and_label_sources(tmp_path):
    from napari_msam._reader import get_reader

    img = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32), np.eye(4)),
             str(img))
    (_, kw, kind), = get_reader(str(img))(str(img))
    assert kind == "image" and kw["metadata"]["source_kind"] == "image"
    lab = np.zeros((6, 7, 8), np.uint8)
    with pytest.raises(OutputError):
        write_labels(str(img), lab, kw)


def _rewrite_checkpoint(src, dst, *, config_changes=None, weights=None):
    """A copy of the checkpoint ``src`` with edited config metadata or replaced weights."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as fh:
        header = dict(fh.metadata())
    tensors = load_file(str(src))
    if config_changes:
        cfg = json.loads(header["config"])
        cfg.update(config_changes)
        header["config"] = json.dumps(cfg)
    if weights is not None:
        tensors = {k: weights(v) for k, v in tensors.items()}
    save_file(tensors, str(dst), metadata=header)
    return dst


@pytest.mark.parametrize("changes, words", [
    ({"mlp_ratio": float("nan")}, "mlp_ratio"), ({"decoder_mlp_dim": -5}, "decoder_mlp_dim"),
    ({"depth": "2"}, "depth"), ({"use_adapter": 1}, "use_adapter"),
])
def test_robust_checkpoint_config_is_checked_field_by_field(tmp_path, capsys, scan, tiny_checkpoint, changes, words):
    bad = _rewrite_checkpoint(tiny_checkpoint, tmp_path / "bad.safetensors", config_changes=changes)
    err = _one_line_error(capsys, ["segment", str(scan), "-o", str(tmp_path / "m.nii.gz"), "--point", "8,12,10",
                                   "--checkpoint", str(bad), "--device", "cpu"])
    assert words in err and "bad.safetensors" in err


def test_robust_all_nan_checkpoint_is_refused(tmp_path, capsys, scan, tiny_checkpoint):
    import torch

    bad = _rewrite_checkpoint(tiny_checkpoint, tmp_path / "nan.safetensors",
                              weights=lambda v: torch.full_like(v, float("nan")) if v.is_floating_point() else v)
    out = tmp_path / "m.nii.gz"
    err = _one_line_error(capsys, ["segment", str(scan), "-o", str(out), "--point", "8,12,10",
                                   "--checkpoint", str(bad), "--device", "cpu"])
    assert "NaN" in err and "nan.safetensors" in err and not out.exists()


def test_robust_output_names_up_to_name_max(tmp_path, scan, threshold_loaded, monkeypatch):
    monkeypatch.setattr(cli, "_load_model", lambda args: threshold_loaded)
    for n in (242, 255):
        out = tmp_path / ("m" * (n - len(".nii.gz")) + ".nii.gz")
        assert len(out.name) == n
        assert cli.main(_seg_args(scan, out)) == 0
        assert np.asanyarray(nib.load(str(out)).dataobj).sum() > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_robust_write_errors_name_the_users_path(tmp_path):
    from napari_msam.atomic import atomic_write

    folder = tmp_path / "out.nii.gz"
    folder.mkdir()
    with pytest.raises(OSError) as e, atomic_write(folder) as fh:
        fh.write(b"x")
    assert str(folder) in str(e.value) and ".tmp" not in str(e.value)
    blocked = tmp_path / "file"
    blocked.write_text("a file where a folder should be")
    with pytest.raises(OSError) as e, atomic_write(blocked / "m.nii.gz") as fh:
        fh.write(b"x")
    assert str(blocked / "m.nii.gz") in str(e.value) and ".tmp" not in str(e.value)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 9), (9, 1, 1)])
def test_robust_tiny_volumes_are_refused_in_one_line(tmp_path, capsys, shape, threshold_loaded, monkeypatch):
    monkeypatch.setattr(cli, "_load_model", lambda args: threshold_loaded)
    p = tmp_path / "tiny.nii.gz"
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])  # the reorientation flips axes of length 1
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), flip), str(p))
    err = _one_line_error(capsys, ["segment", str(p), "-o", str(tmp_path / "m.nii.gz"), "--point", "0,0,0",
                                   "--device", "cpu"])
    assert "too small to segment" in err


def test_robust_reoriented_arrays_have_no_negative_strides(tmp_path):
    from napari_msam.io import read_volume

    p = tmp_path / "thin.nii.gz"
    # file axes (x, y, z) = (9, 1, 1) with x and z pointing left and inferior: every axis is flipped or moved
    nib.save(nib.Nifti1Image(np.arange(9, dtype=np.float32).reshape(9, 1, 1), np.diag([-1.0, 1.0, -1.0, 1.0])),
             str(p))
    vol = read_volume(p)
    assert vol.data.shape == (1, 1, 9)
    assert all(s >= 0 for s in vol.data.strides)
    import torch

    torch.from_numpy(vol.data)  # raises on a negative stride
    back = vol.to_original(vol.data)
    assert all(s >= 0 for s in back.strides)


def test_robust_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path, capsys, scan, threshold_loaded,
                                                                        monkeypatch):
    """A `segment` killed mid-write leaves its hidden temporary; the next write of that file removes it once
    it is older than any write takes, and leaves a fresh one (a writer still at work) alone."""
    import time

    from napari_msam.atomic import STALE_AFTER_S

    monkeypatch.setattr(cli, "_load_model", lambda args: threshold_loaded)
    out = tmp_path / "mask.nii.gz"
    dead = tmp_path / ".mask.nii.gz.abcd1234.tmp"
    alive = tmp_path / ".mask.nii.gz.efgh5678.tmp"
    other = tmp_path / ".other.nii.gz.ijkl9012.tmp"
    for p in (dead, alive, other):
        p.write_bytes(b"half a mask")
    old = time.time() - STALE_AFTER_S - 60
    os.utime(dead, (old, old))
    os.utime(other, (old, old))
    assert cli.main(_seg_args(scan, out)) == 0
    assert out.is_file() and not dead.exists()
    assert alive.exists() and other.exists()  # a writer still at work; another file's leftovers


def test_robust_unwritable_output_folder_is_one_line_before_any_work(tmp_path, capsys, scan, threshold_loaded,
                                                                     monkeypatch):
    """A read-only folder (simulated: the tests run as root, which ignores permissions) is refused in one
    line naming the user's path, before the model is loaded."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(ro) else real_access(p, mode))

    def no_model(args):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(cli, "_load_model", no_model)
    err = _one_line_error(capsys, _seg_args(scan, ro / "mask.nii.gz"))
    assert "not writable" in err and str(ro / "mask.nii.gz") in err
    assert list(ro.iterdir()) == []
