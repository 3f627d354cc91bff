"""A batch's crops made side by side: the same batch for any number of workers, each sample on its own
random stream, one torch thread per crop, and a run that trains and resumes exactly whatever the workers."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from _training_helpers import blob_case
from napari_msam.training import TrainConfig, Trainer, TrainingError, array_case
from napari_msam.training.batches import CropPool, resolve_workers, sample_rngs
from napari_msam.training.data import prepare_cases
from napari_msam.training.model_setup import default_preprocess


def _cases(n: int = 3) -> list[array_case]:
    return [array_case(*blob_case(i)[:2], spacing=blob_case(i)[2], case_id=f"b{i}") for i in range(n)]


def _cfg(out, **kw) -> TrainConfig:
    base = dict(cases=_cases(), out_dir=str(out), model_config="msam-tiny", epochs=2, steps_per_epoch=2,
                batch_size=3, clicks=2, spacing_mm=(2.5, 2.5, 2.5), val_patients=("b2",), device="cpu",
                cache=False, intensity_prob=0.5, rot90_prob=0.5, rotate_prob=0.5, max_zoom=1.5)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def prepared():
    """A trainer (for its augmentation settings) and three prepared blob cases at the tiny model's grid."""
    from napari_msam.model.config import get_config

    cfg = _cfg("unused")
    trainer = Trainer(cfg)
    trainer.preprocess = default_preprocess(get_config("msam-tiny"))
    size = int(get_config("msam-tiny").img_size)
    cases = prepare_cases(_cases(), trainer.preprocess, img_size=size, max_jitter=size // 8, max_zoom=1.5)
    return trainer, cases, size


def _batch(trainer, cases, size, workers: int, step: int = 0, n: int = 6):
    trainer._crops = CropPool(workers)
    try:
        idx = [k % len(cases) for k in range(n)]
        return trainer.batch(cases, idx, sample_rngs(7, 0, step, 0, 0, n), size, size // 8, True, "cpu")
    finally:
        trainer._crops.close()


def test_the_batch_is_the_same_for_one_and_several_workers(prepared):
    trainer, cases, size = prepared
    x1, y1 = _batch(trainer, cases, size, 1)
    x3, y3 = _batch(trainer, cases, size, 3)
    assert x1.shape == (6, 1, size, size, size) and y1.shape == x1.shape
    assert torch.equal(x1, x3) and torch.equal(y1, y3)
    # each sample has its own stream: the same case twice in a batch gives two different crops
    assert not torch.equal(x1[0], x1[3])
    # ... and another step draws other crops of the same cases
    x_next, _ = _batch(trainer, cases, size, 3, step=1)
    assert not torch.equal(x1, x_next)
    # a sample's stream is keyed by its place, not by the batch size
    x_short, _ = _batch(trainer, cases, size, 2, n=4)
    assert torch.equal(x_short, x1[:4])


def test_the_pool_runs_crops_with_one_torch_thread_and_gives_the_caller_its_count_back():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pool = CropPool(2)
        seen = pool.map([lambda: (threading.current_thread().name, torch.get_num_threads()) for _ in range(4)])
        assert all(n == 1 for _, n in seen)
        assert any(name.startswith("msam-crops") for name, _ in seen)
        assert torch.get_num_threads() == 2
        assert CropPool(1).map([torch.get_num_threads]) == [1] and torch.get_num_threads() == 2
        with pytest.raises(ZeroDivisionError):  # a failing crop is raised on the training thread
            pool.map([lambda: 1, lambda: 1 / 0])
        pool.close()
    finally:
        torch.set_num_threads(before)


def test_worker_count_resolution(monkeypatch):
    monkeypatch.setattr("napari_msam.training.batches.available_cores", lambda: 16)
    assert resolve_workers(0, 32) == 16
    assert resolve_workers(0, 4) == 4  # never more threads than samples
    assert resolve_workers(0, 32, processes_per_machine=8) == 2  # data-parallel ranks share the cores
    assert resolve_workers(3, 32) == 3
    with pytest.raises(TrainingError, match=r"crop_workers \(--crop-workers\) must be an integer >= 0"):
        _cfg("x", crop_workers=-1).validate()


def test_a_run_with_workers_trains_and_resumes_exactly_with_another_count(tmp_path):
    events = []
    straight = Trainer(_cfg(tmp_path / "a", crop_workers=3), callback=events.append).fit()
    losses = [s["loss"] for s in straight.history["steps"]]
    assert straight.global_step == 4 and all(np.isfinite(losses))
    assert "3 crop workers" in next(e.message for e in events if e.kind == "start")

    holder = {}

    def cb(ev):
        if ev.kind == "step" and ev.global_step == 3:
            holder["t"].cancel()

    t = Trainer(_cfg(tmp_path / "b", crop_workers=2), callback=cb)
    holder["t"] = t
    assert t.fit().global_step == 3
    Trainer(_cfg(tmp_path / "b", crop_workers=1, resume=True)).fit()  # serial from here on

    from napari_msam.model.weights import load_checkpoint

    wa = load_checkpoint(tmp_path / "a" / "last.safetensors").model.state_dict()
    wb = load_checkpoint(tmp_path / "b" / "last.safetensors").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resuming_a_state_from_before_per_sample_streams_goes_on_and_says_so(tmp_path):
    Trainer(_cfg(tmp_path / "old", epochs=1, steps_per_epoch=1, batch_size=2)).fit()
    sp = tmp_path / "old" / "state.pt"
    state = torch.load(sp, weights_only=True)
    assert state["crop_stream"] == 2
    del state["crop_stream"]  # what an older version wrote
    torch.save(state, sp)
    events = []
    res = Trainer(_cfg(tmp_path / "old", epochs=2, steps_per_epoch=1, batch_size=2, resume=True),
                  callback=events.append).fit()
    assert res.global_step == 2 and np.isfinite(res.history["steps"][-1]["loss"])
    assert "older version" in next(e.message for e in events if e.kind == "start")


def test_cli_crop_workers_option_trains_and_refuses_a_negative_count(tmp_path, capsys):
    from _training_helpers import write_nifti
    from napari_msam.training.cli import main

    for i in range(2):
        img, lab, sp = blob_case(i)
        write_nifti(tmp_path / "data" / f"c{i}.nii.gz", img, sp)
        write_nifti(tmp_path / "data" / f"c{i}_label.nii.gz", lab, sp)
    args = [str(tmp_path / "data"), "--config", "msam-tiny", "--epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "2", "--clicks", "2", "--spacing", "2.5", "--val-patients", "c1", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "bad"), "--crop-workers", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "crop_workers (--crop-workers) must be an integer >= 0" in err
    assert main([*args, "--out", str(tmp_path / "ok"), "--crop-workers", "2"]) == 0
    assert "2 crop workers" in capsys.readouterr().out
    assert (tmp_path / "ok" / "last.safetensors").is_file()
