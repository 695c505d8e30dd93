"""Mask decoder: IoU token + 4 mask tokens through the two-way transformer, upscaling, hypernetwork MLPs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sam_engine.model.common import MLP, LayerNorm2d
from sam_engine.model.hybrid_encoder import split_high_res
from sam_engine.model.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts masks and their IoU from an image embedding and prompt embeddings.

    Mask token 0 gives the single-mask output; tokens 1..num_multimask_outputs the multimask outputs.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        mask_scale: int = 4,
    ) -> None:
        super().__init__()
        if mask_scale not in (4, 8):
            raise ValueError(f"MaskDecoder: mask_scale must be 4 or 8, got {mask_scale}")
        self.mask_scale = mask_scale
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        # a third upscaling layer for 8x masks (needs the hybrid encoder's detail features)
        if mask_scale == 8:
            self.output_upscaling_fine = nn.ConvTranspose2d(
                transformer_dim // 8, transformer_dim // 8, kernel_size=2, stride=2
            )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (masks Bx{1|3}x4hx4w logits, iou_pred Bx{1|3}).

        ``image_embeddings`` is 1xCxhxw (shared by all B prompts) or BxCxhxw (one per prompt).
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sel], iou_pred[:, sel]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks and IoU predictions (no output selection).

        An embedding from the hybrid encoder also carries its detail features (strides 8, 4 and, for 8x masks,
        2; see :mod:`~sam_engine.model.hybrid_encoder`), added to the upscaling layers as in SAM 2.
        """
        hs, src, high_res = self._attend(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return self._mask_logits(hs, src, high_res), self.iou_prediction_head(hs[:, 0, :])

    def predict_masks_where(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        keep: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`predict_masks`, with masks only for the prompts ``keep`` selects.

        ``keep`` maps the IoU predictions (B x num_mask_tokens) to a (B,) bool. The IoU head reads only the
        IoU token, so rejected prompts skip the upscaling and the hypernetwork product. Returns (rows (K,),
        masks K x num_mask_tokens x 4hx4w of those rows, iou_pred of all B prompts).
        """
        hs, src, high_res = self._attend(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        iou_pred = self.iou_prediction_head(hs[:, 0, :])
        rows = torch.nonzero(keep(iou_pred)).flatten()
        high_res = [d if d.shape[0] == 1 else d[rows] for d in high_res]
        return rows, self._mask_logits(hs[rows], src[rows], high_res), iou_pred

    def _attend(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The two-way transformer: (output tokens B x T x C, image tokens B x C x h x w, detail features)."""
        b = sparse_prompt_embeddings.shape[0]
        image_embeddings, high_res = split_high_res(image_embeddings, self.transformer_dim)
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        if image_embeddings.shape[0] not in (1, b):
            raise ValueError(
                f"MaskDecoder: image_embeddings batch {image_embeddings.shape[0]} must be 1 or the prompt batch {b}"
            )
        if image_embeddings.shape[0] == 1 and dense_prompt_embeddings.stride(0) == 0:
            # One image and no mask inputs (the dense embedding is an expanded no-mask row): every prompt sees
            # the same image tokens, so the transformer gets them once (batch 1) and broadcasts.
            dense_prompt_embeddings = dense_prompt_embeddings[:1]
        src = image_embeddings + dense_prompt_embeddings
        _, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        return hs, src.transpose(1, 2).reshape(b, c, h, w), high_res

    def _mask_logits(self, hs: torch.Tensor, src: torch.Tensor, high_res: list[torch.Tensor]) -> torch.Tensor:
        """Mask logits from the mask tokens' hypernetworks and the upscaled image tokens."""
        b = hs.shape[0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self._upscale(src, high_res)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        _, uc, uh, uw = upscaled.shape
        return (hyper_in @ upscaled.reshape(b, uc, uh * uw)).reshape(b, hyper_in.shape[1], uh, uw)

    def _upscale(self, src: torch.Tensor, detail: list[torch.Tensor]) -> torch.Tensor:
        """Upscale the decoder's image tokens 4x (8x), adding the detail features (coarse first) per layer."""
        needed = 3 if self.mask_scale == 8 else 2
        if not detail and self.mask_scale == 4:
            return self.output_upscaling(src)
        if len(detail) != needed:
            raise ValueError(
                f"MaskDecoder: {self.mask_scale}x masks need {needed} detail feature maps in the image "
                f"embedding, got {len(detail)} (an embedding from another encoder?)"
            )
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        # detail features have batch 1 (shared image) or one row per prompt: broadcasting serves both
        x = act2(dc2(act1(ln1(dc1(src) + detail[0]))) + detail[1])
        if self.mask_scale == 8:
            x = act2(self.output_upscaling_fine(x) + detail[2])
        return x
