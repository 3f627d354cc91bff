"""Bad input and faults met by ``napari-msam train`` and the Trainer (docs/robustness.md).

Runs go through the command line (``cli.main`` or a subprocess, as a batch scheduler starts them) on tiny
synthetic cases and the ``msam-tiny`` config.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _training_helpers import blob_case, write_nifti
from napari_msam import cli
from napari_msam.training import RunLockedError, TrainConfig, Trainer
from napari_msam.training.checkpoints import run_lock

MODEL = ["--config", "msam-tiny", "--batch-size", "1", "--clicks", "2", "--spacing", "2.5"]
TINY = [*MODEL, "--threads", "1", "--device", "cpu"]


@pytest.fixture
def data(tmp_path) -> Path:
    for i in range(2):
        img, lab, sp = blob_case(i)
        write_nifti(tmp_path / "data" / f"c{i}.nii.gz", img, sp)
        write_nifti(tmp_path / "data" / f"c{i}_label.nii.gz", lab, sp)
    return tmp_path / "data"


def _train_error(capsys, argv) -> str:
    rc = cli.main(["train", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("napari-msam: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _train(argv) -> int:
    return cli.main(["train", *argv])


def _state(out: Path) -> dict:
    return torch.load(out / "state.pt", map_location="cpu", weights_only=True)


def _spawn(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "napari_msam", "train", str(data), "--out", str(out), *TINY, "--epochs", "1",
         "--steps-per-epoch", "100000", "--val-patients", "c1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _wait_for_steps(proc: subprocess.Popen, n: int, timeout: float = 120.0) -> list[str]:
    lines: list[str] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if f" step {n}/" in line:
            return lines
    proc.kill()
    raise AssertionError(f"the run did not reach step {n}: {''.join(lines)}")


def test_robust_sigterm_mid_epoch_checkpoints_and_resumes(tmp_path, data, capsys):
    out = tmp_path / "out"
    proc = _spawn(data, out)
    try:
        _wait_for_steps(proc, 3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "--resume" in lines[0], err
    state = _state(out)
    assert state["epoch"] == 0 and state["step_in_epoch"] >= 3 and (out / "last.safetensors").is_file()
    done = state["global_step"]
    # --resume continues inside the epoch and finishes it
    rc = _train([str(data), "--out", str(out), *TINY, "--epochs", "1", "--steps-per-epoch", str(done + 2),
                 "--val-patients", "c1", "--resume"])
    assert rc == 0, capsys.readouterr().err
    assert _state(out)["global_step"] == done + 2 and _state(out)["epoch"] == 1


def test_robust_second_run_on_the_same_out_is_refused(tmp_path, data, capsys):
    out = tmp_path / "out"
    proc = _spawn(data, out)
    try:
        _wait_for_steps(proc, 1)
        err = _train_error(capsys, [str(data), "--out", str(out), *TINY, "--epochs", "1"])
        assert "in use by another training run" in err and str(out) in err
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 143
    # the lock went with its process: the folder can be trained on again
    assert _train([str(data), "--out", str(out), *TINY, "--epochs", "1", "--steps-per-epoch", "1",
                   "--val-patients", "c1"]) == 0


def test_robust_trainer_raises_the_lock_error_for_the_widget(tmp_path, data):
    out = tmp_path / "out"
    cfg = TrainConfig(data=[str(data)], out_dir=str(out), model_config="msam-tiny", epochs=1, steps_per_epoch=1,
                      batch_size=1, clicks=2, spacing_mm=(2.5, 2.5, 2.5), device="cpu")
    with run_lock(out), pytest.raises(RunLockedError, match="in use by another training run"):
        Trainer(cfg).fit()
    assert not (out / "state.pt").exists()


def test_robust_truncated_cache_entry_is_rebuilt(tmp_path, data, capsys):
    out = tmp_path / "out"
    args = [str(data), "--out", str(out), *TINY, "--epochs", "1", "--steps-per-epoch", "1", "--val-patients", "c1"]
    assert _train(args) == 0
    entries = sorted((out / "cache").glob("*.npz"))
    assert len(entries) == 2
    good = entries[0].read_bytes()
    entries[0].write_bytes(good[: len(good) // 3])  # a full disk or a kill while an older version wrote it
    assert _train(args) == 0, capsys.readouterr().err
    assert entries[0].read_bytes() == good


def test_robust_kill_between_checkpoint_writes_still_resumes(tmp_path, data, capsys):
    out = tmp_path / "out"
    base = [str(data), "--out", str(out), *TINY, "--steps-per-epoch", "2", "--val-patients", "c1"]
    assert _train([*base, "--epochs", "1"]) == 0
    old_last = (out / "last.safetensors").read_bytes()
    assert _train([*base, "--epochs", "2", "--resume"]) == 0
    # killed after state.pt (step 4) was written but before last.safetensors (still step 2) was replaced,
    # with the temporary of the interrupted write left behind
    (out / "last.safetensors").write_bytes(old_last)
    stale = out / ".last.safetensors.k1ll3d_x.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert _train([*base, "--epochs", "3", "--resume"]) == 0, capsys.readouterr().err
    assert _state(out)["global_step"] == 6 and not stale.exists()


def test_robust_old_state_from_another_step_says_what_to_do(tmp_path, data, capsys):
    out = tmp_path / "out"
    base = [str(data), "--out", str(out), *TINY, "--steps-per-epoch", "2", "--val-patients", "c1"]
    assert _train([*base, "--epochs", "1"]) == 0
    state = _state(out)
    del state["model"]  # a state written before state.pt held the weights
    state["global_step"] = 99
    torch.save(state, out / "state.pt")
    err = _train_error(capsys, [*base, "--epochs", "2", "--resume"])
    assert "without --resume" in err and "--init" in err
    (out / "state.pt").unlink()
    assert "no state.pt" in _train_error(capsys, [*base, "--epochs", "2", "--resume"])


@pytest.mark.parametrize("option, value, words", [
    ("--device", "foo", "--device"), ("--threads", "-3", "--threads"), ("--val-fraction", "1.5", "--val-fraction"),
    ("--steps-per-epoch", "0", "--steps-per-epoch"), ("--lr", "nan", "--lr"), ("--epochs", "0", "--epochs"),
])
def test_robust_train_options_are_checked_in_one_line(tmp_path, data, capsys, option, value, words):
    out = tmp_path / "out"
    argv = [str(data), "--out", str(out), *MODEL, option, value]
    err = _train_error(capsys, argv)
    assert words in err and value in err
    assert not out.exists() or not any(out.iterdir())  # refused before any work


def test_robust_train_data_problems_are_one_line(tmp_path, data, capsys):
    img, lab, sp = blob_case(5)
    write_nifti(data / "e.nii.gz", img, sp)
    write_nifti(data / "e_label.nii.gz", lab * 0, sp)
    write_nifti(data / "g.nii.gz", img, sp)
    write_nifti(data / "g_label.nii.gz", lab[:, :-1], sp)
    err = _train_error(capsys, [str(data), "--out", str(tmp_path / "o"), *TINY])
    assert "2 problems with the training data: " in err and "e: label is empty" in err and "g: image shape" in err
