"""``python -m napari_msam.training`` / ``run_train``: progress lines, outputs, readable errors."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

from _training_helpers import blob_case, write_nifti
from napari_msam.training.cli import add_train_arguments, config_from_args, main


def _data(tmp_path):
    for i in range(2):
        img, lab, sp = blob_case(i)
        write_nifti(tmp_path / "data" / f"c{i}.nii.gz", img, sp)
        write_nifti(tmp_path / "data" / f"c{i}_label.nii.gz", lab, sp)
    return tmp_path / "data"


def test_parse_arguments():
    p = add_train_arguments(argparse.ArgumentParser())
    a = p.parse_args(["d1", "d2", "--out", "o", "--config", "msam-tiny", "--epochs", "3", "--spacing", "2.5",
                      "--val-patients", "P1", "P2", "--modalities", "CT", "mr", "--milestones", "2", "--resume"])
    c = config_from_args(a)
    assert c.data == ["d1", "d2"] and c.epochs == 3 and c.spacing_mm == (2.5, 2.5, 2.5) and c.resume
    assert c.val_patients == ("P1", "P2") and c.modalities == ("ct", "mr") and c.milestones == (2,)
    assert c.lr == 8e-4 and c.weight_decay == 0.1 and c.clicks == 11


def test_module_cli_trains_and_prints_progress(tmp_path):
    data = _data(tmp_path)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "napari_msam.training", str(data), "--out", str(out), "--config", "msam-tiny",
         "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "1", "--clicks", "2", "--spacing", "2.5",
         "--val-patients", "c1", "--threads", "1"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "epoch 1/1 step 2/2" in r.stdout and "val dice@1" in r.stdout, r.stdout
    assert (out / "last.safetensors").is_file() and (out / "best.safetensors").is_file()
    assert (out / "state.pt").is_file() and list((out / "cache").glob("*.npz"))


def test_bad_data_exit_code_and_one_message(tmp_path, capsys):
    data = _data(tmp_path)
    img, lab, sp = blob_case(5)
    write_nifti(data / "e.nii.gz", img, sp)
    write_nifti(data / "e_label.nii.gz", np.zeros_like(lab), sp)
    write_nifti(data / "g.nii.gz", img, sp)
    write_nifti(data / "g_label.nii.gz", lab[:, :-1], sp)
    rc = main([str(data), "--out", str(tmp_path / "o"), "--config", "msam-tiny"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "2 problems with the training data" in err and "e: label is empty" in err and "g: image shape" in err
