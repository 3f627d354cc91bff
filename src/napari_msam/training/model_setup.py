"""What a run trains: the model (from scratch or from ``--init``), its preprocessing, its optimizer groups."""

from __future__ import annotations

import dataclasses

import torch

from napari_msam.training.config import TrainConfig, TrainingError

__all__ = ["build_model_for", "default_preprocess", "param_groups"]


def build_model_for(cfg: TrainConfig, device: str):
    """The model to train, its preprocessing, and whether it starts from scratch (fresh weights)."""
    from napari_msam.model.builder import build_model
    from napari_msam.model.config import get_config

    torch.manual_seed(cfg.seed)
    if cfg.init_checkpoint:
        from napari_msam.model.weights import load_checkpoint

        # An adapter-less init (SAM-Med3D or our ablation) gets a fresh adapter when the requested
        # config has one (the M-SAM recipe); with an adapter-less config it stays as it is.
        try:
            want_adapter = get_config(cfg.model_config).use_adapter
        except KeyError:
            want_adapter = True
        loaded = load_checkpoint(cfg.init_checkpoint, device="cpu", as_msam=want_adapter)
        model, preprocess = loaded.model, loaded.preprocess
        from_scratch = False
        _inherit_click_prior(cfg, loaded.metadata)
        _inherit_zoom(cfg, loaded.metadata)
    else:
        try:
            mcfg = get_config(cfg.model_config)
        except KeyError as exc:
            raise TrainingError(str(exc.args[0]) if exc.args else str(exc)) from exc
        model = build_model(mcfg)
        preprocess = default_preprocess(mcfg)
        from_scratch = True
    overrides = {}
    if cfg.spacing_mm is not None:
        overrides["spacing_mm"] = tuple(float(s) for s in cfg.spacing_mm)
    if cfg.normalization is not None:
        overrides["normalization"] = cfg.normalization
    if overrides:
        preprocess = dataclasses.replace(preprocess, **overrides)
    model = model.to(device)
    return model, preprocess, from_scratch


def param_groups(cfg: TrainConfig, model, from_scratch: bool) -> list[dict]:
    """AdamW groups: encoder and adapter at ``lr``; prompt encoder and decoder at ``lr * decoder_lr_factor``."""
    mc = model.config
    enc = model.image_encoder
    if getattr(mc, "lora_rank", 0) > 0:  # frozen base encoder, only LoRA adapts
        for name, p in enc.named_parameters():
            p.requires_grad = any(k in name for k in ("linear_a", "linear_b", "lora"))
    else:
        for p in enc.parameters():
            p.requires_grad = True
    f = cfg.decoder_lr_factor if cfg.decoder_lr_factor is not None else (1.0 if from_scratch else 0.1)
    groups: list[dict] = []
    seen: set[int] = set()

    def add(mod, lr, name):
        if mod is None:
            return
        ps = [p for p in mod.parameters() if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in mod.parameters())
        if ps:
            groups.append({"params": ps, "lr": lr, "base_lr": lr, "name": name})

    add(enc, cfg.lr, "image_encoder")
    add(getattr(model, "adapter", None), cfg.lr, "adapter")
    add(model.prompt_encoder, cfg.lr * f, "prompt_encoder")
    add(model.mask_decoder, cfg.lr * f, "mask_decoder")
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr": cfg.lr, "base_lr": cfg.lr, "name": "other"})
    return groups


def _inherit_click_prior(cfg: TrainConfig, metadata) -> None:
    """Fine-tuning keeps the init checkpoint's click prior unless one was given: dropping it silently
    would train a model that no longer matches how the Session feeds clicks to its parent."""
    from napari_msam.model.click_prior import ClickPrior

    prior = ClickPrior.from_metadata(metadata)
    if cfg.click_prior_radius is None and prior is not None:
        cfg.click_prior_radius = prior.radius
        if cfg.click_prior_value is None:
            cfg.click_prior_value = prior.value


def _inherit_zoom(cfg: TrainConfig, metadata) -> None:
    """Fine-tuning keeps the parent's zoom range unless one was given (as the click prior)."""
    from napari_msam.model.roi_zoom import RoiZoom

    zoom = RoiZoom.from_metadata(metadata)
    if cfg.max_zoom is None and zoom is not None:
        cfg.max_zoom = zoom.max


def default_preprocess(mcfg):
    """Preprocessing of a from-scratch model: our own SPL conventions (``DEFAULT_PREPROCESS``, 2.5 mm for
    the 64^3 small/tiny models; 1.5 mm like the reference for 128^3 inputs)."""
    from napari_msam.model import config as mc

    default = getattr(mc, "DEFAULT_PREPROCESS", None) or mc.PreprocessConfig(spacing_mm=(2.5, 2.5, 2.5))
    if mcfg.img_size >= 128:
        return dataclasses.replace(default, spacing_mm=(1.5, 1.5, 1.5))
    return default
