"""Validation during training: the training interaction on tumour-centred crops, or the Auto protocol
through the Session (``TrainConfig.val_protocol``); both average over the ranks of a data-parallel run."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

import napari_msam.training.distributed as D
from napari_msam.training.data import MODALITY_FOR_PREPROCESS, PreparedCase
from napari_msam.training.loop import interaction_loss

__all__ = ["validate", "validate_session"]


def validate(trainer, model, val: Sequence[PreparedCase], img_size: int, device: str, info: D.DistInfo,
             use_amp: bool) -> tuple[list[float], float] | None:
    """Dice per click and mean loss on the validation cases, by ``config.val_protocol``; None without cases."""
    cfg = trainer.config
    if not val:
        return None
    if cfg.val_protocol == "session":
        return validate_session(trainer, model, val, device, info)
    n_clicks = cfg.val_clicks or cfg.clicks
    sums = [0.0] * n_clicks
    loss_sum = 0.0
    count = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for j in D.shard(list(range(len(val))), info):
            rng = np.random.default_rng([cfg.seed, 99, j])
            x, y = trainer.batch(val, [j], rng, img_size, 0, False, device)
            res = interaction_loss(model, x, y, n_clicks=n_clicks, rng=rng, strategy=cfg.click_strategy,
                                   dice_weight=cfg.dice_weight, bce_weight=cfg.bce_weight,
                                   multi_click=cfg.multi_click, autocast=use_amp,
                                   click_prior=trainer.click_prior)
            for k in range(n_clicks):
                sums[k] += float(np.mean(res.dice_per_click[k]))
            loss_sum += float(res.loss)
            count += 1
    model.train(was_training)
    tot = D.all_reduce_sum(sums + [loss_sum, count], info)
    count = tot[-1]
    if count == 0:
        return None
    return [s / count for s in tot[:n_clicks]], tot[n_clicks] / count


def validate_session(trainer, model, val: Sequence[PreparedCase], device: str,
                     info: D.DistInfo) -> tuple[list[float], float] | None:
    """Validation by the Auto protocol: a ``Session`` on each validation case (at the model's spacing, as
    cached), random clicks, network alone (no edge refinement); Dice per click averaged over cases.

    Why: the crop validation (tumour-centred, zoom 1) can rank runs differently from the Auto protocol
    (docs/model-card.md), so it cannot pick what users get. The Session adds the parts the crops leave
    out: a first click anywhere in the tumour, re-centring and zoom-out for large tumours, paste-back. The val "loss" is 1 - mean Dice (there is no loss here).
    """
    from napari_msam.evaluation import run_protocol
    from napari_msam.model.weights import LoadedModel
    from napari_msam.session import Session
    cfg = trainer.config
    n_clicks = cfg.val_clicks or cfg.clicks
    loaded = LoadedModel(model=model, config=model.config, preprocess=trainer.preprocess,
                         metadata=trainer.metadata(0, 0, 0, None))
    spacing = tuple(float(v) for v in trainer.preprocess.spacing_mm)
    sums = [0.0] * n_clicks
    count = 0
    was_training = model.training
    try:
        session = Session(loaded, device, edge_refine="off")
        for j in D.shard(list(range(len(val))), info):
            case = val[j]
            session.set_image(case.image, spacing, MODALITY_FOR_PREPROCESS.get(case.modality, "other"))
            for seed in range(cfg.val_seeds):  # >= 1, checked in _fit
                res = run_protocol(session, case.label, n_clicks, "random", seed=cfg.seed + 1000 * seed + j)
                dice = [r.dice for r in res.records]
                dice += [dice[-1]] * (n_clicks - len(dice))  # a perfect mask stops early: it carries on
                for k in range(n_clicks):
                    sums[k] += dice[k]
                count += 1
    finally:
        model.to(device)  # the Session moves the model to the CPU after a CUDA out-of-memory
        model.train(was_training)
    tot = D.all_reduce_sum(sums + [float(count)], info)
    count = tot[-1]
    if count == 0:
        return None
    per_click = [v / count for v in tot[:n_clicks]]
    return per_click, 1.0 - float(np.mean(per_click))
