"""LightningModule: SAM trained with simulated interactive prompts.

One training step: the image encoder runs once per image; every mask of the batch then goes through the
prompt rounds (first point/box, error-region points, mask-only rounds), each round one decoder pass over
all masks at once with the previous round's most confident low-res logits (detached) as mask input. A
single-point round trains the 3 multimask outputs (min loss among them); every other round trains token 0.
Validation runs the click protocol's first click on a held-out slice (mIoU@1, most confident output).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.interactive import ClickProtocol, EvalObject, run_clicks
from ..model import build_sam
from ..model.hybrid_encoder import UnpackedEmbedding
from .losses import LossWeights, sam_loss
from .prompts import PromptSchedule, error_points, first_prompts


def align_prompt_attention(model: torch.nn.Module, gain: float = 3.0, both_directions: bool = False) -> None:
    """Start the decoder's cross-attention with tied, scaled query/key projections (from-scratch runs only).

    With ``W_k = W_q`` the image-to-token attention logit between an image position and a prompt token
    starts as a scaled inner product of their random-Fourier positional encodings, largest near the prompt,
    so a randomly initialised decoder localises prompts after tens of steps instead of hundreds (the
    projections then train freely). ``both_directions`` ties the token-to-image attentions too. A loaded
    checkpoint overrides all of it.
    """
    transformer = model.mask_decoder.transformer
    attns = [layer.cross_attn_image_to_token for layer in transformer.layers]
    if both_directions:
        attns += [layer.cross_attn_token_to_image for layer in transformer.layers]
        attns.append(transformer.final_attn_token_to_image)
    with torch.no_grad():
        for attn in attns:
            attn.q_proj.weight.mul_(gain)
            attn.k_proj.weight.copy_(attn.q_proj.weight)


def _step_generator(seed: int, step: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))
    return gen


class SamModule(L.LightningModule):
    """Trains a SAM model (built from ``model_config``) with SAM's interactive training recipe."""

    def __init__(
        self,
        model_config: str | dict[str, Any] = "tiny",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        max_steps: int = 4000,
        max_minutes: float | None = None,
        decay_at: tuple[float, ...] = (0.85, 0.95),
        decay_factor: float = 0.1,
        schedule: dict[str, Any] | None = None,
        loss_weights: dict[str, Any] | None = None,
        seed: int = 0,
        prompts_per_mask: int = 2,
        attention_init_gain: float | None = 3.0,
        attention_init_both: bool = False,
        encoder_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_sam(model_config, seed=seed)
        if attention_init_gain:
            align_prompt_attention(self.model, attention_init_gain, attention_init_both)
        self.schedule = PromptSchedule(**(schedule or {}))
        self.loss_weights = LossWeights(**(loss_weights or {}))

    # ---- schedule -------------------------------------------------------------------------------------
    def _progress(self, step: int) -> float:
        """Training progress in [0, 1]: the larger of the step fraction and the time fraction."""
        frac = step / max(1, self.hparams.max_steps)
        if self.hparams.max_minutes and self._trainer is not None:
            for cb in self.trainer.callbacks:
                if type(cb).__name__ == "Timer":
                    elapsed = cb.time_elapsed("train")
                    frac = max(frac, elapsed / (60.0 * self.hparams.max_minutes))
        return frac

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, then step decay by ``decay_factor`` at each ``decay_at`` fraction of training."""
        warm = self.hparams.warmup_steps
        if warm and step < warm:
            return (step + 1) / warm
        progress = self._progress(step)
        passed = sum(progress >= d for d in self.hparams.decay_at)
        return self.hparams.decay_factor**passed

    def configure_optimizers(self) -> dict[str, Any]:
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim < 2 or "rel_pos" in name or "embed" in name
            groups.setdefault((name.startswith("image_encoder."), no_decay), []).append(p)
        lr = self.hparams.lr
        opt = torch.optim.AdamW(
            [
                {
                    "params": params,
                    "lr": lr * (self.hparams.encoder_lr_scale if encoder else 1.0),
                    "weight_decay": 0.0 if no_decay else self.hparams.weight_decay,
                }
                for (encoder, no_decay), params in sorted(groups.items())
            ],
            lr=lr,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- training -------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """uint8 (B,3,S,S) padded images to image embeddings (padding is zero after normalisation)."""
        x = (images.to(torch.float32) - self.model.pixel_mean) / self.model.pixel_std
        s = x.shape[-1]
        ar = torch.arange(s, device=x.device)
        valid = (ar[None, :, None] < sizes[:, 0, None, None]) & (ar[None, None, :] < sizes[:, 1, None, None])
        x = x * valid[:, None].to(x.dtype)
        return self.model.image_encoder(x)

    def interactive_loss(
        self,
        embeddings: torch.Tensor,
        gt_full: torch.Tensor,
        bounds: torch.Tensor,
        generator: torch.Generator,
        image_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the prompt rounds for M masks (gt (M,S,S) bool) and return the losses. ``embeddings`` is
        (M,C,h,w), or one row per image with ``image_index`` (M,) naming each mask's image."""
        model = self.model
        # unpacked (and gathered per mask) once for all rounds; the refiner's key map is computed per image
        refiner = model.mask_decoder.refiner
        embeddings = UnpackedEmbedding.of(
            embeddings,
            model.mask_decoder.transformer_dim,
            image_index,
            key_fn=None if refiner is None else refiner.keys,
        )
        s = gt_full.shape[-1]
        low = model.prompt_encoder.mask_input_size[0]
        factor = s // low
        gt_low = F.avg_pool2d(gt_full[:, None].to(torch.float32), factor)[:, 0]
        gt_low_bin = gt_low > 0.5
        sch = self.schedule
        prompts = first_prompts(
            gt_full, generator, sch.box_prob, sch.box_noise_frac, sch.box_noise_max, bounds, sch.interior_prob
        )
        m = gt_full.shape[0]
        single = torch.zeros((m, 4), dtype=torch.bool, device=gt_full.device)
        single[:, 0] = True
        mask_input: torch.Tensor | None = None
        prev_logits = torch.zeros_like(gt_low)
        totals, ious = [], []
        first = None
        kinds = sch.rounds(generator)
        graded = [True] + [False] * sch.ungraded_rounds(generator) + [True] * len(kinds)
        adds = [True] * (len(graded) - len(kinds)) + kinds
        for r, (adds_point, grad) in enumerate(zip(adds, graded, strict=True)):
            if r > 0 and adds_point:
                xy, lab = error_points(
                    prev_logits.detach() > 0, gt_low_bin, generator, float(factor), sch.center_prob
                )
                prompts = prompts.append(xy, lab)
            if not grad:  # an ungraded round only moves the prompts and the fed-back logits on
                with torch.no_grad():
                    logits, _ = model.decode_all(embeddings, prompts.coords, prompts.labels, None, mask_input)
                prev_logits = logits[:, 0]
                mask_input = prev_logits[:, None]
                continue
            logits, iou_pred = model.decode_all(embeddings, prompts.coords, prompts.labels, None, mask_input)
            if r == 0:
                multi = ~prompts.is_box
                allowed = torch.where(multi[:, None], ~single, single)
            else:
                allowed = single
            out = sam_loss(logits, iou_pred, gt_low, self.loss_weights, allowed)
            totals.append(out.total)
            ious.append(out.iou.mean())
            if first is None:
                first = out
            conf = torch.where(allowed, iou_pred.detach(), torch.full_like(iou_pred, -torch.inf)).argmax(
                dim=1
            )
            prev_logits = logits[torch.arange(m), conf]
            mask_input = prev_logits.detach()[:, None]
        total = torch.stack(totals).mean()
        return {
            "loss": total,
            "loss_first": first.total.detach(),
            "focal_first": first.focal,
            "dice_first": first.dice,
            "iou_mse_first": first.iou_mse,
            "iou_first": ious[0],
            "iou_last": ious[-1],
        }

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        valid = batch["valid"]
        b_idx, k_idx = valid.nonzero(as_tuple=True)
        # several independent prompt draws per mask share one encoder pass
        reps = max(1, int(self.hparams.prompts_per_mask))
        b_idx, k_idx = b_idx.repeat(reps), k_idx.repeat(reps)
        embeddings = self.encode(batch["image"], batch["size"])
        gt_full = batch["masks"][b_idx, k_idx]
        gen = _step_generator(self.hparams.seed, self.global_step)
        out = self.interactive_loss(embeddings, gt_full, batch["size"][b_idx], gen, b_idx)
        n = int(b_idx.numel())
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=n)
        self.log("train/iou_1", out["iou_first"], prog_bar=True, batch_size=n)
        self.log("train/iou_last", out["iou_last"], batch_size=n)
        self.log("train/focal", out["focal_first"], batch_size=n)
        self.log("train/dice", out["dice_first"], batch_size=n)
        self.log("train/iou_mse", out["iou_mse_first"], batch_size=n)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=n)
        self.log("train/masks", float(n), batch_size=1)
        return out["loss"]

    # ---- validation -----------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        from ..predictor import EmbeddingCache, SamPredictor

        self._val_predictor = SamPredictor(self.model, cache=EmbeddingCache(1))

    def validation_step(self, batch: list[EvalObject], batch_idx: int) -> None:
        predictor = self._val_predictor
        image = batch[0].image() if callable(batch[0].image) else batch[0].image
        predictor.set_image(image)
        protocol = ClickProtocol(max_clicks=1, report_clicks=(1,), thresholds=(), multimask="first")
        ious = []
        for obj in batch:
            gt = obj.gt() if callable(obj.gt) else obj.gt
            if not gt.any():
                continue
            ious.append(run_clicks(predictor, gt, obj.ignore, protocol).ious[0])
        if ious:
            self.log("val/miou_1", float(np.mean(ious)), prog_bar=True, batch_size=len(ious))

    def on_validation_epoch_end(self) -> None:
        self._val_predictor = None

    def describe(self) -> dict[str, Any]:
        """Flat description of the recipe (for tracking)."""
        return {
            **{f"prompt_{k}": v for k, v in asdict(self.schedule).items()},
            **{f"loss_{k}": v for k, v in asdict(self.loss_weights).items()},
        }
