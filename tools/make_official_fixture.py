"""Make the official-SAM compatibility fixture used by tests/test_official_fixture.py.

The fixture is produced by the OFFICIAL segment-anything package, so our re-implementation can be
checked against it without network access or real weights.

How to regenerate (from the repository root)::

    python3.11 -m venv .refenv
    .refenv/bin/pip install torch==2.14.1 torchvision==0.29.1 segment-anything
    .refenv/bin/python tools/make_official_fixture.py

What it writes (all small, committed):

- ``tests/fixtures/official_tiny/config.json``: the fixture model size, in ``SamConfig`` field names,
  plus the versions that made it.
- ``tests/fixtures/official_tiny/sam_official_tiny.pth``: the official ``Sam`` built from the official
  classes (ImageEncoderViT, PromptEncoder, MaskDecoder, TwoWayTransformer) at that size, seeded random
  init with every parameter perturbed (so relative positions and norms are non-trivial); a plain
  state dict in the official key layout.
- ``tests/fixtures/official_tiny/outputs.npz``: fixed inputs and the official outputs: the official
  SamPredictor on a fixed image (embedding, points multi/single, box, box+points, mask input, logits),
  batched ``predict_torch`` with padding labels, and the batched ``Sam.forward``.
- ``tests/fixtures/official_vit_b_keys.json`` and ``official_tiny/official_vit_{l,h}_keys.json``:
  key -> shape of the official vit_b / vit_l / vit_h (built on the meta device; no weights).

The fixture is smaller than the "tiny" config (its weights would exceed the ~3 MB budget), but it
uses the same code paths, including window padding (window 3 on an 8x8 grid).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import segment_anything
import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "official_tiny"
SEED = 1234

# Field names are those of sam_engine.model.build.SamConfig.
FIXTURE_CONFIG = {
    "img_size": 128,
    "patch_size": 16,
    "encoder_embed_dim": 64,
    "encoder_depth": 3,
    "encoder_num_heads": 2,
    "encoder_window_size": 3,
    "encoder_global_attn_indexes": [1],
    "encoder_mlp_ratio": 4.0,
    "out_chans": 32,
    "mask_in_chans": 8,
    "decoder_depth": 2,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 2,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 32,
    "pixel_mean": [123.675, 116.28, 103.53],
    "pixel_std": [58.395, 57.12, 57.375],
}


def build_official(cfg: dict) -> Sam:
    grid = cfg["img_size"] // cfg["patch_size"]
    encoder = ImageEncoderViT(
        depth=cfg["encoder_depth"],
        embed_dim=cfg["encoder_embed_dim"],
        img_size=cfg["img_size"],
        mlp_ratio=cfg["encoder_mlp_ratio"],
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=cfg["encoder_num_heads"],
        patch_size=cfg["patch_size"],
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=tuple(cfg["encoder_global_attn_indexes"]),
        window_size=cfg["encoder_window_size"],
        out_chans=cfg["out_chans"],
    )
    prompt = PromptEncoder(
        embed_dim=cfg["out_chans"],
        image_embedding_size=(grid, grid),
        input_image_size=(cfg["img_size"], cfg["img_size"]),
        mask_in_chans=cfg["mask_in_chans"],
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=cfg["decoder_depth"],
            embedding_dim=cfg["out_chans"],
            mlp_dim=cfg["decoder_mlp_dim"],
            num_heads=cfg["decoder_num_heads"],
        ),
        transformer_dim=cfg["out_chans"],
        iou_head_depth=cfg["iou_head_depth"],
        iou_head_hidden_dim=cfg["iou_head_hidden_dim"],
    )
    return Sam(encoder, prompt, decoder, pixel_mean=cfg["pixel_mean"], pixel_std=cfg["pixel_std"])


def fixed_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Flat-coloured rectangles on a noisy background."""
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for _ in range(4):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        y1, x1 = y0 + rng.integers(6, h // 2), x0 + rng.integers(6, w // 2)
        img[y0:y1, x0:x1] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


def key_shapes(name: str) -> dict[str, list[int]]:
    with torch.device("meta"):
        model = sam_model_registry[name]()
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def main() -> None:
    torch.manual_seed(SEED)
    model = build_official(FIXTURE_CONFIG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    OUT.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    torch.save(state, OUT / "sam_official_tiny.pth")

    rng = np.random.default_rng(SEED)
    out: dict[str, np.ndarray] = {}
    image = fixed_image(rng, 50, 77)
    out["image"] = image
    predictor = SamPredictor(model)
    predictor.set_image(image)
    out["input_image"] = predictor.transform.apply_image(image)
    out["input_size"] = np.array(predictor.input_size)
    out["embedding"] = predictor.get_image_embedding().numpy()

    points = np.array([[20.0, 15.0], [60.0, 40.0]])
    labels = np.array([1, 0])
    box = np.array([5.0, 4.0, 48.0, 37.0])
    out["points"], out["labels"], out["box"] = points, labels, box
    cases = {
        "points_multi": dict(point_coords=points, point_labels=labels, multimask_output=True),
        "points_single": dict(point_coords=points, point_labels=labels, multimask_output=False),
        "box_single": dict(box=box, multimask_output=False),
        "box_points_multi": dict(
            point_coords=points[:1], point_labels=labels[:1], box=box, multimask_output=True
        ),
    }
    for name, kwargs in cases.items():
        masks, iou, low = predictor.predict(**kwargs)
        logits, _, _ = predictor.predict(**kwargs, return_logits=True)
        out[f"{name}/masks"], out[f"{name}/iou"], out[f"{name}/low_res"] = masks, iou, low
        out[f"{name}/logits"] = logits
    mask_input = out["points_multi/low_res"][np.argmax(out["points_multi/iou"])][None]
    out["mask_input"] = mask_input
    masks, iou, low = predictor.predict(
        point_coords=points, point_labels=labels, mask_input=mask_input, multimask_output=False
    )
    out["mask_input_single/masks"], out["mask_input_single/iou"], out["mask_input_single/low_res"] = (
        masks,
        iou,
        low,
    )

    # batched predict_torch with -1 padding labels (already transformed coordinates)
    bcoords = rng.uniform(0, FIXTURE_CONFIG["img_size"] - 1, size=(3, 3, 2)).astype(np.float32)
    blabels = np.array([[1, -1, -1], [1, 0, -1], [0, 1, 1]], dtype=np.int64)
    out["batch/coords"], out["batch/labels"] = bcoords, blabels
    with torch.no_grad():
        m, i, lo = predictor.predict_torch(
            torch.from_numpy(bcoords), torch.from_numpy(blabels), multimask_output=True, return_logits=True
        )
    out["batch/logits"], out["batch/iou"], out["batch/low_res"] = m.numpy(), i.numpy(), lo.numpy()

    # batched Sam.forward over two pre-resized images
    images = [fixed_image(rng, 40, 64), fixed_image(rng, 64, 48)]
    records = []
    for k, img in enumerate(images):
        resized = predictor.transform.apply_image(img)
        coords = predictor.transform.apply_coords(np.array([[[10.0, 12.0]], [[30.0, 20.0]]]), img.shape[:2])
        out[f"forward{k}/image"] = img
        out[f"forward{k}/coords"] = coords.astype(np.float32)
        records.append(
            {
                "image": torch.as_tensor(resized).permute(2, 0, 1).contiguous().float(),
                "original_size": img.shape[:2],
                "point_coords": torch.as_tensor(coords, dtype=torch.float32),
                "point_labels": torch.ones(2, 1, dtype=torch.int64),
            }
        )
    results = model(records, multimask_output=True)
    for k, res in enumerate(results):
        out[f"forward{k}/masks"] = res["masks"].numpy()
        out[f"forward{k}/iou"] = res["iou_predictions"].numpy()
        out[f"forward{k}/low_res"] = res["low_res_logits"].numpy()
    np.savez_compressed(OUT / "outputs.npz", **out)

    meta = {
        "config": FIXTURE_CONFIG,
        "seed": SEED,
        "torch": torch.__version__,
        "segment_anything": getattr(segment_anything, "__version__", "1.0"),
        "num_keys": len(state),
    }
    (OUT / "config.json").write_text(json.dumps(meta, indent=2) + "\n")

    vit_b = key_shapes("vit_b")
    if len(vit_b) != 314:
        raise SystemExit(f"official vit_b has {len(vit_b)} keys, expected 314")
    (ROOT / "tests" / "fixtures" / "official_vit_b_keys.json").write_text(json.dumps(vit_b, indent=1) + "\n")
    for name in ("vit_l", "vit_h"):
        (OUT / f"official_{name}_keys.json").write_text(json.dumps(key_shapes(name), indent=1) + "\n")
    print(f"wrote fixture to {OUT} ({len(state)} keys); vit_b has {len(vit_b)} keys")


if __name__ == "__main__":
    main()
