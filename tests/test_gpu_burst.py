"""The GPU burst, dry-run on the CPU: packing, the timed run of scripts/gpu_train.sh with a tiny model,
the parts it hands back, joining and verifying them, and loading the result.

Self-contained: synthetic patients written here, no ../shared. The script runs with nibabel made
unimportable, as on the device machine, which does not have it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _training_helpers import blob_case, write_nifti
from napari_msam.model.builder import build_model
from napari_msam.model.config import PreprocessConfig
from napari_msam.model.weights import load_checkpoint, save_checkpoint
from napari_msam.training import burst, pack
from napari_msam.training.batches import resolve_workers
from napari_msam.training.data import discover_cases, prepare_cases

ROOT = Path(__file__).resolve().parents[1]
SPACING = (2.0, 2.0, 2.0)


def _patients(root: Path, n: int = 4) -> Path:
    """``P1..Pn/{CT,MR_T1}_image.nii.gz`` + masks: the STS layout."""
    for i in range(1, n + 1):
        for j, prefix in enumerate(("CT", "MR_T1")):
            img, mask, _ = blob_case(seed=10 * i + j, shape=(28, 30, 26), radius=5.0 + i % 2)
            if prefix == "MR_T1":
                img = img * 3.0 + 40.0
            write_nifti(root / f"P{i}" / f"{prefix}_image.nii.gz", img, SPACING)
            write_nifti(root / f"P{i}" / f"{prefix}_mask.nii.gz", mask, SPACING)
    return root


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict:
    """A tiny checkpoint (its spacing sets the packing), the patients and the packed set."""
    tmp = tmp_path_factory.mktemp("burst")
    ckpt = tmp / "tiny.safetensors"
    save_checkpoint(ckpt, build_model("msam-tiny"), PreprocessConfig(spacing_mm=SPACING), {})
    data = _patients(tmp / "data")
    out = tmp / "packed"
    rc = pack.main([str(out), "--data", str(data), "--checkpoint", str(ckpt), "--val-patients", "P4",
                    "--exclude-patients"])
    assert rc == 0
    return {"dir": out, "data": data, "ckpt": ckpt}


def test_pack_round_trip_is_exact_up_to_the_quantisation_step(packed):
    manifest = json.loads((packed["dir"] / "manifest.json").read_text())
    assert manifest["format"] == "napari-msam-packed" and manifest["spacing_mm"] == list(SPACING)
    assert manifest["val_patients"] == ["P4"] and manifest["img_size"] == 32
    assert len(manifest["sha256"]) == 64 and manifest["bytes"] == (packed["dir"] / "cases.npz").stat().st_size
    assert [e["split"] for e in manifest["cases"]].count("val") == 2
    assert {e["dtype"] for e in manifest["cases"]} == {"uint8"}

    loaded = pack.load_packed(packed["dir"])
    assert [c.case_id for c in loaded.cases] == [e["case_id"] for e in manifest["cases"]]
    assert loaded.val_patients == ["P4"] and loaded.spacing_mm == SPACING
    pp = PreprocessConfig(spacing_mm=SPACING)
    ref = prepare_cases(discover_cases(packed["data"], ["ct", "mr"]), pp, img_size=32, max_jitter=4)
    again = prepare_cases(loaded.cases, pp, img_size=32, max_jitter=4)  # what the trainer does with them
    for r, a, e in zip(ref, again, manifest["cases"], strict=True):
        assert r.case_id == a.case_id and r.image.shape == a.image.shape == tuple(e["shape"])
        assert np.array_equal(r.label, a.label) and r.centre == a.centre
        expected = np.clip(r.image, -1000, 1000) if r.modality == "ct" else r.image
        assert np.abs(expected - a.image).max() <= e["scale"] / 2 + 1e-3


def test_pack_refuses_a_damaged_copy_and_an_oversized_set(packed, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("manifest.json", "cases.npz"):
        (bad / name).write_bytes((packed["dir"] / name).read_bytes())
    raw = bytearray((bad / "cases.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bad / "cases.npz").write_bytes(bytes(raw))
    with pytest.raises(pack.PackError, match="SHA-256"):
        pack.load_packed(bad)
    with pytest.raises(pack.PackError, match="manifest.json missing"):
        pack.load_packed(tmp_path / "nowhere")
    rc = pack.main([str(tmp_path / "big"), "--data", str(packed["data"]), "--checkpoint", str(packed["ckpt"]),
                    "--max-mib", "0.001"])
    assert rc == 2 and "over --max-mib" in capsys.readouterr().err
    assert not (tmp_path / "big" / "manifest.json").exists()


def test_tree_budget_counts_the_checkout():
    budget = pack.tree_budget(ROOT)
    if budget is None:
        pytest.skip("not a git checkout")
    weights = ROOT / "src/napari_msam/weights/default.safetensors"
    assert budget["tree_bytes"] >= (weights.stat().st_size if weights.is_file() else 0)
    assert budget["left_bytes"] == 64 * 2**20 - budget["tree_bytes"]


def test_split_file_small_parts_and_stale_parts(tmp_path):
    src = tmp_path / "blob.bin"
    data = np.random.default_rng(0).bytes(10_000)
    src.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    m = burst.split_file(src, out, name="model.safetensors", part_bytes=3_000, info={"global_step": 7})
    assert [p["name"] for p in m["parts"]] == [f"model.safetensors.part{i:02d}" for i in range(4)]
    assert [p["bytes"] for p in m["parts"]] == [3000, 3000, 3000, 1000] and m["global_step"] == 7
    assert b"".join((out / p["name"]).read_bytes() for p in m["parts"]) == data
    m2 = burst.split_file(src, out, name="model.safetensors", part_bytes=6_000)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors.part00", "model.safetensors.part01",
                                                     "parts.json"]
    assert json.loads((out / "parts.json").read_text()) == m2
    with pytest.raises(burst.BurstError, match="at most 5 come back"):
        burst.split_file(src, out, part_bytes=1_000)


def test_gpu_train_script_dry_run_then_join(packed, tmp_path, capsys):
    blocked = tmp_path / "blocked" / "nibabel"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('nibabel is not on the GPU machine')\n")
    out = tmp_path / "OUT"
    env = {**os.environ, "OUT": str(out), "PACKED": str(packed["dir"]), "BUDGET": "10", "PY": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(blocked.parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(ROOT / "scripts/gpu_train.sh"), "--device", "cpu", "--init", "scratch", "--config",
           "msam-tiny", "--batch-size", "2", "--clicks", "3", "--val-clicks", "3", "--steps-per-epoch", "2",
           "--val-every", "1", "--export-every-s", "0", "--part-mib", "0.25", "--reserve-s", "2"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    names = sorted(p.name for p in out.iterdir())
    parts = [n for n in names if ".part" in n]
    assert len(names) <= 8 and {"parts.json", "log.json", "train.log"} <= set(names) and len(parts) >= 3
    assert all((out / n).stat().st_size <= 0.25 * 2**20 for n in parts)
    log = json.loads((out / "log.json").read_text())
    assert log["run"]["device"] == "cpu" and log["run"]["batch_size"] == 2
    assert log["run"]["crop_workers"] == resolve_workers(0, 2)  # one crop thread per core, up to the batch
    assert log["done"]["stopped_by_time"] and log["done"]["global_step"] == len(log["steps"]) > 0
    assert all(np.isfinite(s[2]) for s in log["steps"]) and len(log["epochs"][0]["val_dice"]) == 3
    assert "[burst] done" in (out / "train.log").read_text()

    model = tmp_path / "model.safetensors"
    assert burst.main(["join", str(out), "-o", str(model)]) == 0
    loaded = load_checkpoint(model)
    assert loaded.config.name == "msam-tiny"
    assert loaded.metadata["training"]["global_step"] == log["done"]["global_step"]
    assert model.read_bytes() == b"".join((out / n).read_bytes() for n in parts)
    assert burst.main(["join", str(out), "-o", str(model)]) == 2  # never overwritten unasked
    assert "--force" in capsys.readouterr().err

    raw = bytearray((out / parts[1]).read_bytes())
    raw[100] ^= 0x01
    (out / parts[1]).write_bytes(bytes(raw))
    assert burst.main(["join", str(out), "-o", str(tmp_path / "again.safetensors")]) == 2
    assert f"part {parts[1]} is damaged" in capsys.readouterr().err
    assert not (tmp_path / "again.safetensors").exists()
    (out / parts[1]).unlink()
    assert burst.main(["join", str(out), "-o", str(tmp_path / "again.safetensors")]) == 2
    assert f"part {parts[1]} is missing" in capsys.readouterr().err


def test_burst_refuses_a_set_packed_at_another_spacing(packed, tmp_path, capsys):
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, build_model("msam-tiny"), PreprocessConfig(spacing_mm=(1.5, 1.5, 1.5)), {})
    rc = burst.main(["train", "--packed", str(packed["dir"]), "--out", str(tmp_path / "o"),
                     "--init", str(other), "--device", "cpu", "--budget-s", "5"])
    assert rc == 2 and "pack it again" in capsys.readouterr().err


def test_batch_probe_arithmetic_and_trial_step():
    gib = 2**30
    # 1 GiB fixed + 0.5 GiB a sample on an 80 GiB card: 60 % of it holds 94 samples, capped at 32
    assert burst.batch_from_peaks(2 * gib, 3 * gib, 80 * gib) == (32, 94)
    assert burst.batch_from_peaks(2 * gib, 3 * gib, 80 * gib, max_batch=500) == (94, 94)
    assert burst.batch_from_peaks(70 * gib, 110 * gib, 80 * gib) == (1, 1)  # never below one sample
    model = build_model("msam-tiny")
    peak, seconds = burst.trial_step(model, "cpu", 2, clicks=2, amp=False)  # the synthetic step runs
    assert peak == 0 and seconds > 0
    assert all(p.grad is None for p in model.parameters())  # it leaves no gradients behind
    assert burst.probe_batch_size(model, "cpu", clicks=2, amp=False)[0] == 2


def test_join_refuses_parts_that_are_not_a_checkpoint(tmp_path, capsys):
    src = tmp_path / "noise.safetensors"
    src.write_bytes(np.random.default_rng(1).bytes(5_000))
    burst.split_file(src, tmp_path / "parts", part_bytes=2_000)
    assert burst.main(["join", str(tmp_path / "parts"), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "not a loadable checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()
    assert burst.main(["join", str(tmp_path / "empty"), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "parts.json" in capsys.readouterr().err
