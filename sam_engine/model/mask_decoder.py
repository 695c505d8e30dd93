"""Mask decoder: IoU token + 4 mask tokens through the two-way transformer, upscaling, hypernetwork MLPs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sam_engine.model.common import MLP, LayerNorm2d
from sam_engine.model.hybrid_encoder import UnpackedEmbedding, split_high_res
from sam_engine.model.prompt_encoder import PromptMaps
from sam_engine.model.transformer import TwoWayTransformer


class ClickRefiner(nn.Module):
    """Prompt-aware refinement of the decoder's stride-4 mask features.

    SAM's prompts reach the masks only through the tokens and the embedding grid (16 px cells at 256 px), so
    a corrective click on a detail smaller than a cell has nothing to act on, and nothing tells the decoder
    what the clicked pixel looks like. This block sees the prompts at the mask-feature resolution instead, as
    interactive models with early fusion do (RITM's click disks, FocalClick's refiner):

    - *click keys*: a learned key map of the stride-4 image features (``keys``), read at every click
      (``click_keys``); the decoder adds them to the clicks' tokens, so the tokens know the clicked pixel;
    - *affinity maps*: the cosine similarity of every position's key to the positive clicks' keys (the
      highest) and to the negative clicks' (``affinity``), the cue "looks like what was clicked";
    - the decoder's upscaled features, the positive / negative click maps, the box, the fed-back mask
      (:class:`~sam_engine.model.prompt_encoder.PromptMaps`) and the affinity maps go through three small
      convolutions (the middle one dilated, so a click reaches about 9 cells) whose output is added back.

    It runs per prompt at stride 4, a small fraction of a decode.
    """

    def __init__(self, chans: int, maps: int = 4, hidden: int = 16, key_dim: int = 16) -> None:
        super().__init__()
        self.key = nn.Conv2d(chans, key_dim, 1)
        self.conv1 = nn.Conv2d(chans + maps + 2, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2)
        self.conv3 = nn.Conv2d(hidden, chans, 1)
        self.act = nn.ReLU()

    def keys(self, features: torch.Tensor) -> torch.Tensor:
        """Unit-length key map (B, K, H, W) of stride-4 image features (B, C, H, W)."""
        return F.normalize(self.key(features), dim=1)

    @staticmethod
    def click_keys(keys: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """The key map read (bilinearly) at each click: (B, N, K); ``coords`` B x N x 2 in the input frame
        (4 x the key map's size)."""
        b = coords.shape[0]
        h, w = keys.shape[-2:]
        grid = (
            torch.stack([(coords[..., 0] + 0.5) / (4 * w), (coords[..., 1] + 0.5) / (4 * h)], dim=-1) * 2 - 1
        )
        keys = keys.expand(b, -1, -1, -1) if keys.shape[0] != b else keys
        return F.grid_sample(keys, grid[:, :, None, :], align_corners=False)[..., 0].transpose(1, 2)

    @staticmethod
    def affinity(keys: torch.Tensor, clicked: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, 2, H, W): the highest similarity of each position to a positive click and to a negative one
        (0 where a row has no such click)."""
        b = clicked.shape[0]
        keys = keys.expand(b, -1, -1, -1) if keys.shape[0] != b else keys
        sim = torch.einsum("bkhw,bnk->bnhw", keys, clicked)
        out = []
        for label in (1, 0):
            hit = (labels == label)[..., None, None]
            out.append(torch.where(hit, sim, torch.full_like(sim, -1.0)).amax(dim=1).clamp(min=0.0))
        return torch.stack(out, dim=1)

    def forward(
        self, x: torch.Tensor, maps: PromptMaps, keys: torch.Tensor, clicked: torch.Tensor | None
    ) -> torch.Tensor:
        b = x.shape[0]
        dense = maps.maps if maps.maps.shape[0] == b else maps.maps.expand(b, -1, -1, -1)
        if clicked is None or maps.labels is None:
            aff = x.new_zeros((b, 2, *x.shape[-2:]))
        else:
            aff = self.affinity(keys, clicked, maps.labels)
        z = torch.cat([x, dense, aff], dim=1)
        if not self.training:
            z = z.contiguous(memory_format=torch.channels_last)  # eval mode's layout (see _upscale)
        y = self.act(self.conv1(z))
        return x + self.conv3(self.act(self.conv2(y)))


class TokenIoUHead(nn.Module):
    """The IoU of each output from the IoU token *and that output's mask token*.

    SAM's head reads the IoU token alone. Trained for the few thousand steps a CPU allows, that token's output
    barely varies between prompts (its learned embedding dominates), so the head predicts one number for every
    mask. The mask tokens do vary (they make the masks), so each output's IoU is read from the pair
    (IoU token, its mask token) by one shared MLP (GELU: no dead units).
    """

    def __init__(self, dim: int, hidden: int, num_mask_tokens: int) -> None:
        super().__init__()
        self.num_mask_tokens = num_mask_tokens
        self.net = nn.Sequential(
            nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, C) decoder output tokens (IoU token first, then the mask tokens) to (B, num_mask_tokens)."""
        k = self.num_mask_tokens
        pair = torch.cat([tokens[:, :1].expand(-1, k, -1), tokens[:, 1 : 1 + k]], dim=-1)
        return self.net(pair).squeeze(-1)


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
        click_refiner: bool = False,
        iou_from_mask_tokens: bool = False,
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
        # prompt maps at stride 4 refine the mask features (ClickRefiner); off in the official layout
        self.refiner = ClickRefiner(transformer_dim // 8) if click_refiner else None
        if click_refiner:  # the clicked pixels' keys, added to the clicks' tokens
            self.click_token = nn.Linear(self.refiner.key.out_channels, transformer_dim)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head: nn.Module
        if iou_from_mask_tokens:
            self.iou_prediction_head = TokenIoUHead(
                transformer_dim, iou_head_hidden_dim, self.num_mask_tokens
            )
        else:  # SAM's: the IoU token alone
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
        prompt_maps: PromptMaps | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (masks Bx{1|3}x4hx4w logits, iou_pred Bx{1|3}).

        ``image_embeddings`` is 1xCxhxw (shared by all B prompts) or BxCxhxw (one per prompt);
        ``prompt_maps`` feed the click refiner when the decoder has one.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, prompt_maps
        )
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sel], iou_pred[:, sel]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        prompt_maps: PromptMaps | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks and IoU predictions (no output selection).

        ``image_embeddings`` may also be an :class:`UnpackedEmbedding` (training unpacks once per step).

        An embedding from the hybrid encoder also carries its detail features (strides 8, 4 and, for 8x masks,
        2; see :mod:`~sam_engine.model.hybrid_encoder`), added to the upscaling layers as in SAM 2.
        """
        hs, src, high_res, clicks = self._attend(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, prompt_maps
        )
        masks = self._mask_logits(hs, src, high_res, prompt_maps, clicks)
        return masks, self._iou(hs)

    def predict_masks_where(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        keep: Callable[[torch.Tensor], torch.Tensor],
        prompt_maps: PromptMaps | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`predict_masks`, with masks only for the prompts ``keep`` selects.

        ``keep`` maps the IoU predictions (B x num_mask_tokens) to a (B,) bool. The IoU head reads only the
        IoU token, so rejected prompts skip the upscaling and the hypernetwork product. Returns (rows (K,),
        masks K x num_mask_tokens x 4hx4w of those rows, iou_pred of all B prompts).
        """
        hs, src, high_res, clicks = self._attend(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, prompt_maps
        )
        iou_pred = self._iou(hs)
        rows = torch.nonzero(keep(iou_pred)).flatten()
        high_res = [d if d.shape[0] == 1 else d[rows] for d in high_res]
        if prompt_maps is not None:
            prompt_maps = prompt_maps.rows(rows)
        if clicks is not None:
            keys, clicked = clicks
            clicks = (keys if keys.shape[0] == 1 else keys[rows], None if clicked is None else clicked[rows])
        return rows, self._mask_logits(hs[rows], src[rows], high_res, prompt_maps, clicks), iou_pred

    def _iou(self, hs: torch.Tensor) -> torch.Tensor:
        """IoU predictions (B, num_mask_tokens) from the decoder's output tokens."""
        if isinstance(self.iou_prediction_head, TokenIoUHead):
            return self.iou_prediction_head(hs)
        return self.iou_prediction_head(hs[:, 0, :])

    def _attend(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        prompt_maps: PromptMaps | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], tuple | None]:
        """The two-way transformer: (output tokens B x T x C, image tokens B x C x h x w, detail features,
        the click refiner's (key map, clicked keys) or None)."""
        b = sparse_prompt_embeddings.shape[0]
        keys = None
        if isinstance(image_embeddings, UnpackedEmbedding):
            image_embeddings, high_res, keys = image_embeddings
        else:
            image_embeddings, high_res = split_high_res(image_embeddings, self.transformer_dim)
        clicks = None
        if self.refiner is not None and prompt_maps is not None and len(high_res) >= 2:
            keys = self.refiner.keys(high_res[1]) if keys is None else keys
            clicked = None
            if prompt_maps.coords is not None and prompt_maps.coords.shape[1] > 0:
                clicked = self.refiner.click_keys(keys, prompt_maps.coords)
                n = clicked.shape[1]
                is_click = ((prompt_maps.labels == 0) | (prompt_maps.labels == 1))[..., None]
                extra = self.click_token(clicked) * is_click.to(clicked.dtype)
                sparse_prompt_embeddings = torch.cat(
                    [sparse_prompt_embeddings[:, :n] + extra, sparse_prompt_embeddings[:, n:]], dim=1
                )
            clicks = (keys, clicked)
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
        return hs, src.transpose(1, 2).reshape(b, c, h, w), high_res, clicks

    def _mask_logits(
        self,
        hs: torch.Tensor,
        src: torch.Tensor,
        high_res: list[torch.Tensor],
        prompt_maps: PromptMaps | None = None,
        clicks: tuple | None = None,
    ) -> torch.Tensor:
        """Mask logits from the mask tokens' hypernetworks and the upscaled image tokens."""
        b = hs.shape[0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        if self.refiner is not None and prompt_maps is None:
            raise ValueError("MaskDecoder: this decoder refines with prompt maps; pass prompt_maps=")
        upscaled = self._upscale(src, high_res, prompt_maps if self.refiner is not None else None, clicks)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        _, uc, uh, uw = upscaled.shape
        return (hyper_in @ upscaled.reshape(b, uc, uh * uw)).reshape(b, hyper_in.shape[1], uh, uw)

    def _upscale(
        self,
        src: torch.Tensor,
        detail: list[torch.Tensor],
        prompt_maps: PromptMaps | None = None,
        clicks: tuple | None = None,
    ) -> torch.Tensor:
        """Upscale the decoder's image tokens 4x (8x), adding the detail features (coarse first) per layer;
        the click refiner works on the 4x features when the decoder has one."""
        needed = 3 if self.mask_scale == 8 else 2
        if not detail and self.mask_scale == 4 and self.refiner is None:
            return self.output_upscaling(src)
        if len(detail) != needed and (detail or self.mask_scale == 8):
            raise ValueError(
                f"MaskDecoder: {self.mask_scale}x masks need {needed} detail feature maps in the image "
                f"embedding, got {len(detail)} (an embedding from another encoder?)"
            )
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        if not self.training:
            # eval mode: CPU convolutions with these few channels run about twice as fast channels-last (the
            # same sums in another order); training, its ungraded click rounds too, keeps the default layout
            src = src.contiguous(memory_format=torch.channels_last)
            detail = [d.contiguous(memory_format=torch.channels_last) for d in detail]
        # detail features have batch 1 (shared image) or one row per prompt: broadcasting serves both
        if detail:
            x = act2(dc2(act1(ln1(dc1(src) + detail[0]))) + detail[1])
        else:
            x = act2(dc2(act1(ln1(dc1(src)))))
        if prompt_maps is not None:
            if clicks is None:
                raise ValueError("MaskDecoder: the click refiner needs the stride-4 detail features")
            x = self.refiner(x, prompt_maps, *clicks)
        if self.mask_scale == 8:
            x = act2(self.output_upscaling_fine(x) + detail[2])
        return x
