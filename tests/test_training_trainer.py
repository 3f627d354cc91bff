"""Trainer: the loss goes down on real data, resume == uninterrupted, cancel leaves a loadable checkpoint,
state.pt loads with weights_only=True, the reference loop semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _training_helpers import blob_case, real_pair
from napari_msam.model.builder import build_model
from napari_msam.model.weights import load_checkpoint
from napari_msam.training import TrainConfig, Trainer, TrainingError, array_case
from napari_msam.training.loop import interaction_loss, soft_dice_loss


def _blob_cfg(out, **kw) -> TrainConfig:
    cases = [array_case(*blob_case(i)[:2], spacing=blob_case(i)[2], case_id=f"b{i}") for i in range(3)]
    base = dict(cases=cases, out_dir=str(out), model_config="msam-tiny", epochs=2, steps_per_epoch=2,
                batch_size=2, clicks=2, spacing_mm=(2.5, 2.5, 2.5), val_patients=("b2",), device="cpu",
                cache=False)
    base.update(kw)
    return TrainConfig(**base)


def _weights(path):
    return {k: v.clone() for k, v in load_checkpoint(path).model.state_dict().items()}


def test_loss_decreases_on_real_case(tmp_path):
    ip, lp = real_pair()
    from napari_msam.training.data import CaseSpec

    case = CaseSpec("sts024", "STS_024", "mr", ip, lp)
    cfg = TrainConfig(cases=[case], out_dir=str(tmp_path), model_config="msam-tiny", epochs=1,
                      steps_per_epoch=24, batch_size=1, clicks=3, spacing_mm=(3.0, 3.0, 3.0), jitter=0,
                      flips=False, lr=3e-3, device="cpu", cache=False)
    res = Trainer(cfg).fit()
    losses = [s["loss"] for s in res.history["steps"]]
    assert len(losses) == 24
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.8 * first, (first, last)
    loaded = load_checkpoint(res.best_path)
    assert loaded.metadata["training"]["global_step"] == 24
    assert loaded.preprocess.spacing_mm == (3.0, 3.0, 3.0)


def test_resume_equals_uninterrupted_and_cancel(tmp_path):
    straight = Trainer(_blob_cfg(tmp_path / "a")).fit()
    assert straight.global_step == 4 and len(straight.history["epochs"]) == 2
    assert straight.history["epochs"][-1]["val_dice"]  # validation Dice per click every epoch

    # stop after the first epoch, resume for the second
    Trainer(_blob_cfg(tmp_path / "b", epochs=1)).fit()
    Trainer(_blob_cfg(tmp_path / "b", resume=True)).fit()

    # cancel in the middle of epoch 1 (after its first step), then resume
    holder = {}

    def cb(ev):
        if ev.kind == "step" and ev.global_step == 3:
            holder["t"].cancel()

    t = Trainer(_blob_cfg(tmp_path / "c"), callback=cb)
    holder["t"] = t
    r = t.fit()
    assert r.cancelled and r.global_step == 3
    mid = load_checkpoint(tmp_path / "c" / "last.safetensors")  # loadable after a cancel
    assert mid.metadata["training"]["global_step"] == 3
    st = torch.load(tmp_path / "c" / "state.pt", weights_only=True)
    assert st["epoch"] == 1 and st["step_in_epoch"] == 1 and "optimizer" in st
    Trainer(_blob_cfg(tmp_path / "c", resume=True)).fit()

    wa = _weights(tmp_path / "a" / "last.safetensors")
    init = build_model("msam-tiny").state_dict()
    for other in ("b", "c"):
        wo = _weights(tmp_path / other / "last.safetensors")
        for k in wa:
            assert torch.equal(wa[k], wo[k]), (other, k)
    assert any(not torch.equal(wa[k], init[k]) for k in wa)


def test_resume_errors(tmp_path):
    with pytest.raises(TrainingError, match="no state.pt"):
        Trainer(_blob_cfg(tmp_path / "empty", resume=True)).fit()
    Trainer(_blob_cfg(tmp_path / "x", epochs=1, steps_per_epoch=1)).fit()
    with pytest.raises(TrainingError, match="is for model 'msam-tiny'"):
        Trainer(_blob_cfg(tmp_path / "x", resume=True, model_config="msam-small")).fit()
    with pytest.raises(TrainingError, match="unknown model config"):
        Trainer(_blob_cfg(tmp_path / "y", model_config="nope")).fit()


def test_lora_freezes_base_encoder_and_param_groups(tmp_path):
    t = Trainer(_blob_cfg(tmp_path, decoder_lr_factor=0.1))
    model, _, scratch = t._build_model("cpu")
    groups = {g["name"]: g for g in t._param_groups(model, scratch)}
    enc = [n for n, p in model.image_encoder.named_parameters() if p.requires_grad]
    assert enc and all("linear_" in n for n in enc)  # msam-tiny has LoRA: only LoRA trains
    assert groups["mask_decoder"]["lr"] == pytest.approx(8e-5) and groups["adapter"]["lr"] == pytest.approx(8e-4)


def test_loop_reference_semantics():
    torch.manual_seed(0)
    model = build_model("msam-tiny")
    img, lab, _ = blob_case(0, shape=(32, 32, 32))
    x = torch.from_numpy((img - img.mean()) / img.std())[None, None].float()
    y = torch.from_numpy(lab)[None, None].float()
    res = interaction_loss(model, x, y, n_clicks=3, rng=np.random.default_rng(0))
    assert len(res.dice_per_click) == 3 and res.loss.requires_grad
    res.loss.backward()
    # gradients flow through the fed-back logits into the prompt encoder's mask branch
    g = [p.grad for n, p in model.prompt_encoder.named_parameters() if "mask" in n and p.grad is not None]
    assert g and any(float(t.abs().sum()) > 0 for t in g)
    perfect = torch.full_like(y, 20.0) * (2 * y - 1)
    assert float(soft_dice_loss(perfect, y)) < 1e-3


def test_fine_tuning_inherits_the_click_prior_unless_overridden(tmp_path):
    """A checkpoint trained with a click prior is fine-tuned with the same prior, not silently without it."""
    parent = Trainer(_blob_cfg(tmp_path / "p", epochs=1, steps_per_epoch=1, click_prior_radius=2.0,
                               click_prior_value=6.0)).fit()
    ckpt = str(parent.last_path)
    assert load_checkpoint(ckpt).metadata["click_prior"] == {"radius": 2.0, "value": 6.0}
    child = Trainer(_blob_cfg(tmp_path / "c", epochs=1, steps_per_epoch=1, init_checkpoint=ckpt)).fit()
    assert load_checkpoint(str(child.last_path)).metadata["click_prior"] == {"radius": 2.0, "value": 6.0}
    off = Trainer(_blob_cfg(tmp_path / "o", epochs=1, steps_per_epoch=1, init_checkpoint=ckpt,
                            click_prior_radius=0.0)).fit()
    assert "click_prior" not in load_checkpoint(str(off.last_path)).metadata


def test_cpu_bf16_autocast_trains_and_saves_fp32(tmp_path):
    """--cpu-bf16 really changes the arithmetic (losses differ from the fp32 run with the same seed, but
    stay close and finite) and checkpoints stay fp32."""
    res = Trainer(_blob_cfg(tmp_path / "bf16", epochs=1, steps_per_epoch=2, cpu_bf16=True)).fit()
    ref = Trainer(_blob_cfg(tmp_path / "fp32", epochs=1, steps_per_epoch=2)).fit()
    losses = [h["loss"] for h in res.history["steps"]]
    ref_losses = [h["loss"] for h in ref.history["steps"]]
    assert len(losses) == 2 and all(np.isfinite(v) for v in losses)
    assert losses != ref_losses and np.allclose(losses, ref_losses, rtol=0.1)
    sd = load_checkpoint(str(res.last_path)).model.state_dict()
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())


def test_zoom_augmentation_is_recorded_and_inherited(tmp_path):
    """--zoom is stored in the checkpoint (the Session reads it) and fine-tuning keeps it unless set."""
    parent = Trainer(_blob_cfg(tmp_path / "p", epochs=1, steps_per_epoch=1, max_zoom=2.0, zoom_prob=1.0)).fit()
    ckpt = str(parent.last_path)
    assert load_checkpoint(ckpt).metadata["roi_zoom"] == {"max": 2.0, "prob": 1.0}
    child = Trainer(_blob_cfg(tmp_path / "c", epochs=1, steps_per_epoch=1, init_checkpoint=ckpt)).fit()
    assert load_checkpoint(str(child.last_path)).metadata["roi_zoom"]["max"] == 2.0
    off = Trainer(_blob_cfg(tmp_path / "o", epochs=1, steps_per_epoch=1, init_checkpoint=ckpt, max_zoom=1.0)).fit()
    assert "roi_zoom" not in load_checkpoint(str(off.last_path)).metadata
    with pytest.raises(TrainingError, match="max_zoom"):
        Trainer(_blob_cfg(tmp_path / "bad", max_zoom=0.5)).fit()


def test_session_validation_is_the_auto_protocol_on_the_saved_weights(tmp_path):
    """val_protocol="session" scores each validation case with a Session and run_protocol: replaying the
    protocol on the saved last checkpoint gives the recorded per-click Dice, and it picks best.safetensors."""
    from napari_msam.evaluation import run_protocol
    from napari_msam.session import Session
    from napari_msam.training.data import prepare_cases

    cfg = _blob_cfg(tmp_path / "s", epochs=1, val_protocol="session", val_clicks=3, val_seeds=2)
    res = Trainer(cfg).fit()
    rec = res.history["epochs"][-1]
    assert len(rec["val_dice"]) == 3 and all(0.0 <= d <= 1.0 for d in rec["val_dice"])
    assert rec["val_loss"] == pytest.approx(1.0 - np.mean(rec["val_dice"]))

    loaded = load_checkpoint(res.last_path)
    (val_case,) = prepare_cases([cfg.cases[2]], loaded.preprocess, img_size=loaded.config.img_size, max_jitter=2)
    session = Session(loaded, "cpu", edge_refine="off")
    session.set_image(val_case.image, loaded.preprocess.spacing_mm, "other")
    replay = []
    for seed in range(2):
        d = [r.dice for r in run_protocol(session, val_case.label, 3, "random", seed=cfg.seed + 1000 * seed).records]
        replay.append(d + [d[-1]] * (3 - len(d)))
    assert np.allclose(np.mean(replay, 0), rec["val_dice"], atol=1e-6)

    with pytest.raises(TrainingError, match="val_protocol"):
        Trainer(_blob_cfg(tmp_path / "bad", val_protocol="auto")).fit()
