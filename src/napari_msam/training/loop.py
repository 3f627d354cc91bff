"""The reference interaction loop (train_msam.py semantics) and its loss.

Per batch: encode once; N iterations, each with one simulated click drawn from the current error region
(prediction = logits > 0) and the previous raw low-res logits fed back as the mask prompt (not detached,
so gradients flow through every iteration); loss = sum over iterations of
``dice_weight * soft Dice + bce_weight * BCE-with-logits`` on the upsampled logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from napari_msam.clicks import next_click
from napari_msam.metrics import dice

__all__ = ["LoopResult", "soft_dice_loss", "interaction_loss"]


@dataclass
class LoopResult:
    loss: Tensor  # scalar, summed over iterations (batch mean per iteration)
    dice_per_click: list[list[float]] = field(default_factory=list)  # [iteration][sample], hard Dice
    final_logits: Tensor | None = None  # (B,1,S,S,S), detached


def soft_dice_loss(logits: Tensor, target: Tensor, squared: bool = True, eps: float = 1e-5) -> Tensor:
    """1 - soft Dice per sample (squared denominators like monai's squared_pred=True), batch mean."""
    p = torch.sigmoid(logits.float()).flatten(1)
    g = target.float().flatten(1)
    inter = (p * g).sum(1)
    den = (p * p).sum(1) + (g * g).sum(1) if squared else p.sum(1) + g.sum(1)
    return (1.0 - (2.0 * inter + eps) / (den + eps)).mean()


def interaction_loss(
    model,
    images: Tensor,
    gts: Tensor,
    *,
    n_clicks: int = 11,
    rng: np.random.Generator,
    strategy: str = "random",
    dice_weight: float = 0.5,
    bce_weight: float = 0.5,
    multi_click: bool = False,
    compute_loss: bool = True,
    autocast: bool = False,
    click_prior=None,
) -> LoopResult:
    """Run the N-click loop on a batch. images (B,1,S,S,S) normalised; gts (B,1,S,S,S) {0,1}.

    ``click_prior`` (a ``model.click_prior.ClickPrior``) paints all clicks so far into the mask input
    before each refinement, exactly as the Session does for checkpoints trained with it.
    """
    device = images.device
    b = images.shape[0]
    gt_np = gts[:, 0].detach().cpu().numpy() > 0.5
    gts_f = gts.float()
    # bf16 autocast on the batch's device: CUDA, or a CPU with bf16 GEMMs (AVX512-BF16 / AMX)
    ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if autocast else _null()
    with ctx:
        emb = model.encode(images)
        if hasattr(model, "prepare"):
            emb = model.prepare(emb)
    low = None
    pred = np.zeros_like(gt_np)
    pts: list[list[tuple[int, int, int]]] = [[] for _ in range(b)]
    lbl: list[list[int]] = [[] for _ in range(b)]
    total = images.new_zeros(())
    dices: list[list[float]] = []
    logits = None
    for _k in range(n_clicks):
        for i in range(b):
            c = next_click(gt_np[i], pred[i], rng, strategy=strategy)
            if c is None:  # perfect prediction: repeat the last click (the reference would crash)
                c = (pts[i][-1], bool(lbl[i][-1])) if pts[i] else (tuple(int(x) for x in np.argwhere(gt_np[i])[0]), True)
            pts[i].append(tuple(int(x) for x in c[0]))
            lbl[i].append(1 if c[1] else 0)
        if multi_click:
            points = torch.tensor(pts, dtype=torch.int64, device=device)
            labels = torch.tensor(lbl, dtype=torch.int64, device=device)
        else:
            points = torch.tensor([[p[-1]] for p in pts], dtype=torch.int64, device=device)
            labels = torch.tensor([[x[-1]] for x in lbl], dtype=torch.int64, device=device)
        mask_in = low
        if click_prior is not None:
            mask_in = click_prior.apply(
                low, torch.tensor(pts, dtype=torch.int64, device=device),
                torch.tensor(lbl, dtype=torch.int64, device=device), images.shape[-1],
                4 * (images.shape[-1] // model.config.patch_size))
        with ctx:
            low = model.refine(emb, points, labels, mask_in)
            logits = model.upsample(low)
        logits = logits.float()
        if compute_loss:
            loss_k = images.new_zeros(())
            if dice_weight:
                loss_k = loss_k + dice_weight * soft_dice_loss(logits, gts_f)
            if bce_weight:
                loss_k = loss_k + bce_weight * F.binary_cross_entropy_with_logits(logits, gts_f)
            total = total + loss_k
        pred = logits[:, 0].detach().cpu().numpy() > 0
        dices.append([float(dice(pred[i], gt_np[i])) for i in range(b)])
    return LoopResult(total, dices, logits.detach() if logits is not None else None)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def mean_dice_per_click(results: Sequence[list[list[float]]]) -> list[float]:
    """Average [iteration][sample] Dice lists of several batches into one value per click."""
    if not results:
        return []
    n = len(results[0])
    return [float(np.mean([d for r in results for d in r[k]])) for k in range(n)]
