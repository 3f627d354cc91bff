"""The M-SAM model: encode once per ROI, then refine click by click."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .adapter import AdapterImageCache, MaskEnhancedAdapter
from .adapter_fold import MaskFold, fold_mask_stream, forward_folded
from .config import MSAMConfig
from .image_encoder import ImageEncoderViT3D
from .lora import apply_lora
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D
from .upsample import upsample_trilinear


@dataclass
class PreparedEmbedding:
    """An encoder embedding plus the per-ROI work that does not depend on the mask (reused every click)."""

    embedding: Tensor
    dense_pe: Tensor
    adapter_cache: AdapterImageCache | None
    mask_fold: MaskFold | None = None

    def to(self, device: torch.device | str) -> PreparedEmbedding:
        cache = self.adapter_cache
        if cache is not None:
            cache = AdapterImageCache(e0=cache.e0.to(device), eu=cache.eu.to(device))
        fold = self.mask_fold.to(device) if self.mask_fold is not None else None
        return PreparedEmbedding(self.embedding.to(device), self.dense_pe.to(device), cache, fold)


class MSAM(nn.Module):
    """Children ``image_encoder``, ``prompt_encoder``, ``mask_decoder``, ``adapter`` (None without MEA)."""

    def __init__(self, config: MSAMConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoderViT3D(config)
        if config.lora_rank > 0:
            apply_lora(self.image_encoder, config.lora_rank)
        self.prompt_encoder = PromptEncoder3D(
            config.out_chans, config.grid, config.img_size, config.mask_in_chans
        )
        self.mask_decoder = MaskDecoder3D(
            config.out_chans,
            depth=config.decoder_depth,
            num_heads=config.decoder_heads,
            mlp_dim=config.decoder_mlp_dim,
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_hidden_dim=config.iou_head_hidden,
        )
        self.adapter: MaskEnhancedAdapter | None = (
            MaskEnhancedAdapter(config.out_chans, config.adapter_heads, config.grid)
            if config.use_adapter
            else None
        )

    @property
    def device(self) -> torch.device:
        return self.image_encoder.pos_embed.device

    @property
    def low_res(self) -> int:
        return self.config.low_res

    def encode(self, image: Tensor) -> Tensor:
        """(B, 1, S, S, S) normalised image -> (B, C, g, g, g)."""
        return self.image_encoder(image)

    def prepare(self, embedding: Tensor) -> PreparedEmbedding:
        """Cache the dense PE, the adapter's image-only branch and its folded mask stream
        (:mod:`.adapter_fold`) for repeated :meth:`refine` calls."""
        if isinstance(embedding, PreparedEmbedding):
            return embedding
        self._check_embedding(embedding)
        cache = fold = None
        if self.adapter is not None:
            cache = self.adapter.prepare_image(embedding)
            fold = fold_mask_stream(self.adapter, self.prompt_encoder.mask_projection, cache)
        return PreparedEmbedding(embedding, self.prompt_encoder.get_dense_pe(), cache, fold)

    def _check_embedding(self, e: Tensor) -> None:
        c, g = self.config.out_chans, self.config.grid
        if e.ndim != 5 or tuple(e.shape[1:]) != (c, g, g, g):
            raise ValueError(f"embedding must be (B, {c}, {g}, {g}, {g}), got {tuple(e.shape)}")

    def refine(
        self,
        embedding: Tensor | PreparedEmbedding,
        points: Tensor,
        labels: Tensor,
        mask_logits: Tensor | None = None,
        return_iou: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """One click iteration -> low-res logits (B, 1, L, L, L), L = 4 * grid.

        ``points`` (B, N, 3) int64 voxel indices (d, h, w) of the S^3 input; ``labels`` (B, N) 1/0;
        ``mask_logits`` the previous low-res logits, raw (None = zeros, as in the first reference iteration).
        """
        prepared = embedding if isinstance(embedding, PreparedEmbedding) else None
        e = prepared.embedding if prepared is not None else embedding
        self._check_embedding(e)
        b = points.shape[0]
        if e.shape[0] not in (1, b):
            raise ValueError(f"embedding batch {e.shape[0]} does not match the points batch {b}")
        lr = self.config.low_res
        if mask_logits is None:
            mask_logits = torch.zeros((b, 1, lr, lr, lr), dtype=e.dtype, device=e.device)
        pe = self.prompt_encoder
        sparse = pe.embed_points(points.to(e.device), labels.to(e.device))
        mask_logits = mask_logits.to(e.dtype)
        adapter_fn = None
        if self.adapter is not None:
            # one path for prepared and plain embeddings (bit-identical): the folded mask stream
            prepared = self.prepare(e) if prepared is None or prepared.mask_fold is None else prepared
            fold, adapter = prepared.mask_fold, self.adapter
            dense = pe.mask_features(mask_logits)  # the adapter absorbs the 1x1 projection

            def adapter_fn(_e: Tensor, feats: Tensor) -> Tensor:
                return forward_folded(adapter, fold, feats)
        else:
            dense = pe.embed_masks(mask_logits)
        dense_pe = prepared.dense_pe if prepared is not None else pe.get_dense_pe()
        low, iou = self.mask_decoder(e, dense_pe.to(e.dtype), sparse.to(e.dtype), dense, False, adapter_fn)
        return (low, iou) if return_iou else low

    def upsample(self, low_res: Tensor) -> Tensor:
        """Trilinear (align_corners=False) from L^3 to the model input side S^3; still logits."""
        return upsample_trilinear(low_res, self.config.img_size)

    def forward(
        self, image: Tensor, points: Tensor, labels: Tensor, mask_logits: Tensor | None = None
    ) -> Tensor:
        """Convenience single-shot: encode + one refinement, low-res logits."""
        return self.refine(self.encode(image), points, labels, mask_logits)  # type: ignore[return-value]
