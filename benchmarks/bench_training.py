"""Training throughput: the Lightning loop against a plain PyTorch loop over the same model and batches.

Both loops run the same ``SamModule`` computation (encoder once per image, the prompt rounds, SAM's loss,
AdamW) on the same pre-built batches; the ratio is Lightning's images/s over the plain loop's.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from sam_engine.data import rle
from sam_engine.data.corpus import ImageRecord, MaskCorpus
from sam_engine.data.images import save_png
from sam_engine.training.datamodule import MaskDataModule
from sam_engine.training.module import SamModule

MICRO = {
    "img_size": 64,
    "patch_size": 8,
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_window_size": 4,
    "encoder_global_attn_indexes": [1],
    "out_chans": 32,
    "mask_in_chans": 8,
    "decoder_depth": 1,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 2,
    "iou_head_hidden_dim": 32,
}


def _corpus(root: Path, n: int, seed: int = 0) -> MaskCorpus:
    rng = np.random.default_rng(seed)
    images, anns = [], {}
    yy, xx = np.mgrid[:96, :128]
    for i in range(n):
        img = np.broadcast_to(rng.integers(0, 255, 3), (96, 128, 3)).astype(np.uint8).copy()
        masks = []
        for _ in range(3):
            cy, cx, ry, rx = (
                rng.integers(15, 80),
                rng.integers(15, 110),
                rng.integers(6, 18),
                rng.integers(6, 20),
            )
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            img[m] = rng.integers(0, 255, 3)
            masks = [p & ~m for p in masks] + [m]
        path = root / f"{i}.png"
        save_png(img, path)
        images.append(ImageRecord(i, path, 128, 96, path.name))
        anns[i] = [
            {"id": i * 10 + k, "segmentation": rle.encode(m), "area": int(m.sum()), "iscrowd": 0}
            for k, m in enumerate(masks)
            if m.sum() > 10
        ]
    return MaskCorpus(images, anns, source="bench")


def _plain(module: SamModule, batches: list[dict], lr: float) -> float:
    opt = torch.optim.AdamW(module.parameters(), lr=lr)
    module.train()
    t0 = time.perf_counter()
    for step, batch in enumerate(batches):
        if step == 1:  # the first batch is a warm-up
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        valid = batch["valid"]
        b_idx, k_idx = valid.nonzero(as_tuple=True)
        emb = module.encode(batch["image"], batch["size"])
        gen = torch.Generator().manual_seed(step)
        out = module.interactive_loss(emb[b_idx], batch["masks"][b_idx, k_idx], batch["size"][b_idx], gen)
        out["loss"].backward()
        opt.step()
    return time.perf_counter() - t0


class _Timer(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: D401
        if batch_idx == 1:
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.t1 = time.perf_counter()


def _lightning(module: SamModule, batches: list[dict]) -> float:
    timer = _Timer()
    trainer = L.Trainer(
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    return timer.t1 - timer.t0


def run(quick: bool = False) -> list[dict]:
    """Images/s of both loops; each loop runs ``repeats`` times, alternating, and its best run counts
    (the machine is shared, so the best run is the least disturbed one)."""
    torch.manual_seed(0)
    config = MICRO if quick else "tiny"
    n_steps, batch_size, repeats = (3, 2, 1) if quick else (10, 8, 3)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = _corpus(Path(tmp), n=batch_size * (n_steps + 1))
        probe = SamModule(config, max_steps=n_steps + 1, warmup_steps=0)
        dm = MaskDataModule(
            corpus, probe.model.img_size, batch_size=batch_size, masks_per_image=8, val_fraction=0.0
        )
        dm.setup()
        batches = list(dm.train_dataloader())[: n_steps + 1]
        images = batch_size * n_steps  # the first batch of each run is a warm-up
        plain_s, lit_s = [], []
        for _ in range(repeats):
            plain_s.append(
                _plain(SamModule(config, max_steps=n_steps + 1, warmup_steps=0, seed=0), batches, 1e-4)
            )
            lit_s.append(
                _lightning(SamModule(config, max_steps=n_steps + 1, warmup_steps=0, seed=0), batches)
            )
    masks = float(np.mean([int(b["valid"].sum()) for b in batches]))
    plain_ips, lit_ips = images / min(plain_s), images / min(lit_s)
    name = "training_micro" if quick else "training_tiny"
    return [
        {"benchmark": name, "metric": "plain_loop_images_per_s", "value": plain_ips, "unit": "images/s"},
        {
            "benchmark": name,
            "metric": "lightning_images_per_s",
            "value": lit_ips,
            "unit": "images/s",
            "baseline": plain_ips,
            "ratio": lit_ips / plain_ips,
        },
        {"benchmark": name, "metric": "masks_per_image", "value": masks / batch_size, "unit": "masks"},
    ]


if __name__ == "__main__":
    for row in run(quick=False):
        print(row)
