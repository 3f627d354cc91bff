"""Data-parallel training: two CPU processes (gloo) train msam-tiny 2 steps and end with identical weights;
only rank 0 writes files."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from _training_helpers import blob_case


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from napari_msam.training import TrainConfig, Trainer, array_case

    cases = [array_case(*blob_case(i)[:2], spacing=blob_case(i)[2], case_id=f"b{i}") for i in range(4)]
    cfg = TrainConfig(cases=cases, out_dir=os.path.join(tmp, f"out{rank}"), model_config="msam-tiny", epochs=1,
                      steps_per_epoch=2, batch_size=1, clicks=2, spacing_mm=(2.5, 2.5, 2.5), device="cpu",
                      val_patients=("b3",), cache=False, seed=11)
    tr = Trainer(cfg)
    res = tr.fit()
    torch.save({k: v.detach().clone() for k, v in tr.model.state_dict().items()},
               os.path.join(tmp, f"w{rank}.pt"))
    torch.save({"steps": res.history["steps"]}, os.path.join(tmp, f"h{rank}.pt"))


def test_two_process_gloo_stay_in_sync(tmp_path):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        assert k not in os.environ
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "w0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "w1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    from napari_msam.model.builder import build_model

    torch.manual_seed(11)
    init = build_model("msam-tiny").state_dict()
    assert any(not torch.equal(w0[k], init[k]) for k in w0)  # it did train
    assert (tmp_path / "out0" / "last.safetensors").is_file()
    assert not (tmp_path / "out1").exists()  # only rank 0 writes
    h0 = torch.load(tmp_path / "h0.pt", weights_only=True)["steps"]
    assert len(h0) == 2
