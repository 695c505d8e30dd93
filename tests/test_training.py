"""Training: prompt simulation, losses, data module, Lightning module, train_model, resume, fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_engine.data import rle
from sam_engine.data.corpus import ImageRecord, MaskCorpus
from sam_engine.data.images import save_png
from sam_engine.tracking import metric_name
from sam_engine.training.losses import LossWeights, dice_loss, focal_loss, mask_iou, sam_loss
from sam_engine.training.prompts import (
    LABEL_BOX_BR,
    LABEL_BOX_TL,
    LABEL_NEG,
    LABEL_PAD,
    LABEL_POS,
    PromptSchedule,
    error_points,
    first_prompts,
    interior_weights,
    mask_boxes,
    noisy_boxes,
    sample_uniform,
)

# ---------------------------------------------------------------------------------------------- data helpers


def shapes_corpus(root, n_images: int, seed: int, textured: bool = False, size=(56, 72)) -> MaskCorpus:
    """Tiny corpus of flat-colour rectangles / ellipses (domain-A-like) or textured rings (domain-B-like)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images, anns = [], {}
    yy, xx = np.mgrid[: size[0], : size[1]]
    for i in range(n_images):
        h, w = size
        if textured:
            img = (rng.integers(60, 200, 3) + rng.normal(0, 25, (h, w, 3))).clip(0, 255)
        else:
            img = np.broadcast_to(rng.integers(0, 255, 3).astype(float), (h, w, 3)).copy()
        taken = np.zeros((h, w), bool)
        masks = []
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.integers(10, h - 10), rng.integers(10, w - 10)
            ry, rx = rng.integers(5, 14), rng.integers(5, 16)
            if textured:  # rings: ambiguous inside/outside, unlike anything in the flat corpus
                d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
                m = (d <= 1.0) & (d >= 0.35)
            elif rng.random() < 0.5:
                m = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            else:
                m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            m &= ~taken
            if m.sum() < 20:
                continue
            colour = rng.integers(0, 255, 3).astype(float)
            img[m] = colour + (rng.normal(0, 20, (int(m.sum()), 3)) if textured else 0)
            taken |= m
            masks.append(m)
        path = root / f"im{i:04d}.png"
        save_png(img.clip(0, 255).astype(np.uint8), path)
        iid = 1000 * seed + i
        images.append(ImageRecord(iid, path, w, h, path.name, region="b" if textured else "a"))
        anns[iid] = [
            {
                "id": iid * 10 + k,
                "image_id": iid,
                "segmentation": rle.encode(m),
                "area": int(m.sum()),
                "iscrowd": 0,
            }
            for k, m in enumerate(masks)
        ]
    return MaskCorpus(images=images, annotations=anns, source=str(root))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- prompts


def test_sample_uniform_stays_in_region_and_covers_it():
    region = torch.zeros(2, 6, 6, dtype=torch.bool)
    region[0, 1:3, 2:5] = True
    yx, found = sample_uniform(region, gen(0))
    assert found.tolist() == [True, False]
    assert region[0, yx[0, 0], yx[0, 1]]
    seen = set()
    g = gen(1)
    for _ in range(200):
        yx, _ = sample_uniform(region[:1], g)
        seen.add(tuple(yx[0].tolist()))
    assert seen == {(y, x) for y in range(1, 3) for x in range(2, 5)}


def test_sample_weighted_follows_the_weights():
    from sam_engine.training.prompts import sample_weighted

    weights = torch.zeros(3, 4, 5)
    weights[0, 1, 2], weights[0, 3, 4] = 1.0, 3.0  # 1:3 odds, every other pixel weight 0
    weights[1] = 1.0  # uniform
    draws = [sample_weighted(weights, gen(seed)) for seed in range(400)]
    yx = torch.stack([d[0] for d in draws])  # (400, 3, 2)
    assert all(bool(d[1][:2].all()) and not bool(d[1][2]) for d in draws)  # row 2 is empty
    row0 = {tuple(p) for p in yx[:, 0].tolist()}
    assert row0 == {(1, 2), (3, 4)}
    share = (yx[:, 0] == torch.tensor([3, 4])).all(dim=1).float().mean().item()
    assert 0.68 < share < 0.82  # 3/4 expected; 400 draws give a standard deviation of ~0.02
    assert len({tuple(p) for p in yx[:, 1].tolist()}) > 15  # the uniform row reaches most of its 20 pixels
    assert torch.equal(sample_weighted(weights, gen(7))[0], sample_weighted(weights, gen(7))[0])  # seeded


def test_mask_boxes_and_noisy_boxes():
    masks = torch.zeros(3, 100, 100, dtype=torch.bool)
    masks[0, 10:20, 30:70] = True
    masks[1, 0:100, 0:100] = True
    boxes = mask_boxes(masks)
    assert boxes[0].tolist() == [30, 10, 69, 19]
    assert boxes[1].tolist() == [0, 0, 99, 99]
    assert boxes[2].tolist() == [0, 0, 0, 0]
    noisy = torch.stack([noisy_boxes(masks[:2], gen(s)) for s in range(300)])  # (S, 2, 4)
    err = noisy - boxes[:2]
    # std 10 % of the side: 4 px along x, 1 px along y for the first box; capped at 20 px (and clipped) for the big one
    assert 3.0 < err[:, 0, 0].std() < 5.0 and 0.7 < err[:, 0, 1].std() < 1.3
    assert (noisy[..., 0] <= noisy[..., 2]).all() and (noisy >= 0).all() and (noisy <= 99).all()
    assert torch.equal(noisy_boxes(masks, gen(5)), noisy_boxes(masks, gen(5)))


def test_first_prompts_mix_points_and_boxes():
    masks = torch.zeros(64, 32, 32, dtype=torch.bool)
    masks[:, 8:20, 4:28] = True
    p = first_prompts(masks, gen(3), box_prob=0.5)
    assert p.coords.shape == (64, 2, 2) and p.labels.shape == (64, 2)
    assert 10 < int(p.is_box.sum()) < 54  # about half
    pts = ~p.is_box
    assert (p.labels[pts] == torch.tensor([LABEL_POS, LABEL_PAD])).all()
    assert (p.labels[p.is_box] == torch.tensor([LABEL_BOX_TL, LABEL_BOX_BR])).all()
    xy = p.coords[pts, 0].long()
    assert masks[0][xy[:, 1], xy[:, 0]].all()  # points lie on the mask
    assert (p.num_points == pts.long()).all()
    q = first_prompts(masks, gen(3), box_prob=0.5)
    assert torch.equal(p.coords, q.coords) and torch.equal(p.labels, q.labels)


def test_interior_points_lie_deeper_than_uniform_ones():
    masks = torch.zeros(200, 48, 48, dtype=torch.bool)
    masks[:, 4:44, 4:44] = True  # a 40 px square: depth = distance to its edge
    masks[:10] = False
    masks[:10, 20, 2:46] = True  # a 1 px line: empty on the coarse grid, must still get points on it
    w = interior_weights(masks)
    assert (w[~masks] == 0).all() and (w[masks] > 0).all()
    assert w[10, 24, 24] > w[10, 5, 24]  # centre weighs more than the border

    def depth(p):
        xy = p.coords[~p.is_box, 0].long()
        dx = torch.minimum(xy[:, 0] - 4, 43 - xy[:, 0])
        dy = torch.minimum(xy[:, 1] - 4, 43 - xy[:, 1])
        return torch.minimum(dx, dy).float()

    uniform = first_prompts(masks[10:], gen(1), box_prob=0.0, interior_prob=0.0)
    interior = first_prompts(masks[10:], gen(1), box_prob=0.0, interior_prob=1.0)
    assert depth(interior).mean() > depth(uniform).mean() + 3
    lines = first_prompts(masks[:10], gen(2), box_prob=0.0, interior_prob=1.0)
    xy = lines.coords[:, 0].long()
    assert masks[0][xy[:, 1], xy[:, 0]].all()  # thin masks: points still on the mask
    again = first_prompts(masks[10:], gen(1), box_prob=0.0, interior_prob=1.0)
    assert torch.equal(interior.coords, again.coords)


def test_prompt_attention_init_ties_keys_to_queries():
    from sam_engine.training.module import SamModule

    plain = SamModule(MICRO, attention_init_gain=None, seed=0).model
    tied = SamModule(MICRO, attention_init_gain=3.0, attention_init_both=True, seed=0).model
    for a, b in zip(plain.mask_decoder.transformer.layers, tied.mask_decoder.transformer.layers, strict=True):
        for name in ("cross_attn_image_to_token", "cross_attn_token_to_image"):
            qa, qb = getattr(a, name), getattr(b, name)
            assert torch.allclose(qb.q_proj.weight, 3.0 * qa.q_proj.weight)
            assert torch.equal(qb.k_proj.weight, qb.q_proj.weight)
            assert not torch.equal(qa.k_proj.weight, qa.q_proj.weight)
    one_way = SamModule(MICRO, attention_init_gain=3.0, attention_init_both=False, seed=0).model
    layer = one_way.mask_decoder.transformer.layers[0]
    assert torch.equal(
        layer.cross_attn_image_to_token.k_proj.weight, layer.cross_attn_image_to_token.q_proj.weight
    )
    assert not torch.equal(
        layer.cross_attn_token_to_image.k_proj.weight, layer.cross_attn_token_to_image.q_proj.weight
    )


def test_error_points_labels_follow_error_type():
    gt = torch.zeros(3, 16, 16, dtype=torch.bool)
    pred = torch.zeros_like(gt)
    gt[0, 4:8, 4:8] = True  # row 0: only false negatives
    pred[1, 0:3, 0:3] = True  # row 1: only false positives
    gt[2, 2:5, 2:5] = True
    pred[2] = gt[2]  # row 2: perfect
    xy, labels = error_points(pred, gt, gen(0), scale=4.0)
    assert labels.tolist() == [LABEL_POS, LABEL_NEG, LABEL_PAD]
    # low-res cell (x, y) maps to input-frame [4x - 0.5, 4x + 3.5)
    cell = torch.floor((xy[:2] + 0.5) / 4).long()
    assert gt[0, cell[0, 1], cell[0, 0]] and pred[1, cell[1, 1], cell[1, 0]]


def test_schedule_rounds_seeded():
    s = PromptSchedule(point_rounds=4, mask_only_rounds=2)
    r = s.rounds(gen(0))
    assert r.count(True) == 4 and r.count(False) == 2 and r[-1] is False
    assert r == s.rounds(gen(0))
    assert PromptSchedule(point_rounds=0, mask_only_rounds=1).rounds(gen(0)) == [False]


# ---------------------------------------------------------------------------------------------- losses


def test_focal_and_dice_prefer_the_right_mask():
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    good = (target * 2 - 1) * 8
    bad = -good
    assert focal_loss(good, target) < focal_loss(bad, target)
    assert dice_loss(good, target) < 0.05 < 0.9 < dice_loss(bad, target)
    assert mask_iou(good, target).item() == 1.0 and mask_iou(bad, target).item() == 0.0


def test_sam_loss_min_over_allowed_outputs_and_iou_head():
    target = torch.zeros(2, 8, 8)
    target[:, 2:6, 2:6] = 1
    good = (target * 2 - 1) * 8
    logits = torch.stack([-good, good, -good, -good], dim=1).clone().requires_grad_(True)  # (2, 4, 8, 8)
    iou_pred = torch.full((2, 4), 0.5, requires_grad=True)
    allowed = torch.tensor([[False, True, True, True], [True, False, False, False]])
    out = sam_loss(logits, iou_pred, target, LossWeights(), allowed)
    assert out.chosen.tolist() == [1, 0]
    assert out.iou.tolist() == [1.0, 0.0]
    out.total.backward()
    g = logits.grad.abs().flatten(2).sum(-1)
    # the mask gradient flows only through the chosen output of each row
    assert g[0, 1] > 0 and g[0, 0] == 0 and g[0, 2] == 0 and g[1, 0] > 0 and g[1, 1] == 0
    # the IoU head is trained on every allowed output, towards the actual IoU
    assert iou_pred.grad[0, 1] < 0 < iou_pred.grad[0, 2] and iou_pred.grad[1, 1] == 0


# ---------------------------------------------------------------------------------------------- data module

MICRO = {
    "img_size": 64,
    "patch_size": 8,
    "encoder_embed_dim": 48,
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
# the hybrid encoder's detail branch and 8x masks (patch 16: a 4x4 embedding, 32x32 masks)
MICRO_HYBRID = {
    **MICRO,
    "patch_size": 16,
    "encoder_window_size": 2,
    "encoder_type": "hybrid",
    "stem_chans": [8, 8, 16],
    "mask_scale": 8,
}


@pytest.fixture(scope="module")
def corpus_a(tmp_path_factory):
    return shapes_corpus(tmp_path_factory.mktemp("a"), 24, seed=1)


def test_split_by_image_is_seeded_and_disjoint(corpus_a):
    from sam_engine.training.datamodule import split_by_image

    tr, va = split_by_image(corpus_a, 0.25, seed=0)
    tr2, va2 = split_by_image(corpus_a, 0.25, seed=0)
    ids_tr = {im.image_id for im in tr.images}
    ids_va = {im.image_id for im in va.images}
    assert len(ids_va) == 6 and not ids_tr & ids_va and len(ids_tr | ids_va) == 24
    assert ids_va == {im.image_id for im in va2.images}
    assert set(va.annotations) <= ids_va


def test_dataset_resizes_pads_and_picks_masks_deterministically(corpus_a):
    from sam_engine.training.datamodule import MaskDataset

    ds = MaskDataset(corpus_a, img_size=64, masks_per_image=2, seed=0)
    item = ds[(0, 0)]
    h, w = item["size"].tolist()
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.uint8
    assert max(h, w) == 64 and (h, w) == (50, 64)  # 56x72 image, longest side 72 -> 64
    assert not item["image"][:, h:, :].any() and not item["masks"][:, h:, :].any()
    assert item["valid"].sum() >= 1 and item["masks"][item["valid"]].flatten(1).any(1).all()
    again = ds[(0, 0)]
    assert torch.equal(item["masks"], again["masks"])
    # some image with 3 masks: different epochs draw different pairs
    idx = next(i for i, (_, anns) in enumerate(ds.items) if len(anns) == 3)
    picks = {tuple(ds[(idx, e)]["masks"].flatten(1).sum(1).tolist()) for e in range(8)}
    assert len(picks) > 1


def test_datamodule_batches(corpus_a):
    from sam_engine.training.datamodule import MaskDataModule

    dm = MaskDataModule(
        corpus_a, 64, batch_size=4, masks_per_image=3, val_fraction=0.25, val_max_objects=5, seed=0
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["masks"].shape == (4, 3, 64, 64)
    assert sum(len(g) for g in dm.val_groups) == 5
    assert all(len({o.image_key for o in g}) == 1 for g in dm.val_groups)


# ---------------------------------------------------------------------------------------------- module


def test_lr_schedule_warmup_and_step_decay():
    from sam_engine.training.module import SamModule

    m = SamModule(MICRO, lr=1e-3, warmup_steps=10, max_steps=100, decay_at=(0.5, 0.9), decay_factor=0.1)
    assert m.lr_factor(0) == pytest.approx(0.1) and m.lr_factor(9) == pytest.approx(1.0)
    assert (
        m.lr_factor(49) == 1.0
        and m.lr_factor(50) == pytest.approx(0.1)
        and m.lr_factor(95) == pytest.approx(0.01)
    )


@pytest.mark.slow
@pytest.mark.parametrize("config", [MICRO, MICRO_HYBRID], ids=["vit", "hybrid_8x"])
def test_interactive_loss_trains_on_a_fixed_batch(corpus_a, config):
    from sam_engine.training.datamodule import MaskDataModule
    from sam_engine.training.module import SamModule

    torch.manual_seed(0)
    m = SamModule(config, schedule={"point_rounds": 1, "mask_only_rounds": 1})
    dm = MaskDataModule(corpus_a, 64, batch_size=8, masks_per_image=3, val_fraction=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    losses = []
    for _step in range(50):  # the default loss (focal alpha 0.75) starts lower and leaves its plateau later
        b_idx, k_idx = batch["valid"].nonzero(as_tuple=True)
        emb = m.encode(batch["image"], batch["size"])
        out = m.interactive_loss(emb[b_idx], batch["masks"][b_idx, k_idx], batch["size"][b_idx], gen(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.6 * losses[0]
    assert all(p.grad is not None for p in m.model.image_encoder.parameters() if p.requires_grad)


def test_ungraded_rounds_feed_later_clicks_without_gradients(corpus_a, monkeypatch):
    """Ungraded rounds run between round 0 and the graded rounds under no_grad, each adding a point, so the
    graded round sees as many clicks as the draw says; the draw is seeded and covers 0..max."""
    from sam_engine.training.datamodule import MaskDataModule
    from sam_engine.training.module import SamModule

    sch = PromptSchedule(ungraded_rounds_max=3)
    draws = [sch.ungraded_rounds(gen(i)) for i in range(40)]
    assert set(draws) == {0, 1, 2, 3} and draws == [sch.ungraded_rounds(gen(i)) for i in range(40)]
    assert PromptSchedule(ungraded_rounds_max=0).ungraded_rounds(gen(0)) == 0

    torch.manual_seed(0)
    m = SamModule(MICRO, schedule={"point_rounds": 1, "ungraded_rounds_max": 3})
    dm = MaskDataModule(corpus_a, 64, batch_size=4, masks_per_image=2, val_fraction=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    calls = []
    original = m.model.mask_decoder.predict_masks

    def spy(emb, pe, sparse, dense, *maps):
        calls.append((torch.is_grad_enabled(), sparse.shape[1]))
        return original(emb, pe, sparse, dense, *maps)

    monkeypatch.setattr(m.model.mask_decoder, "predict_masks", spy)
    b_idx, k_idx = batch["valid"].nonzero(as_tuple=True)
    ks = []
    for seed in range(6):
        calls.clear()
        emb = m.encode(batch["image"], batch["size"])
        out = m.interactive_loss(emb[b_idx], batch["masks"][b_idx, k_idx], batch["size"][b_idx], gen(seed))
        out["loss"].backward()
        k = len(calls) - 2
        ks.append(k)
        assert 0 <= k <= 3
        assert [g for g, _ in calls] == [True] + [False] * k + [True]
        # sparse tokens: 2 prompt slots at round 0 (+ SAM's padding point), one more per later round
        tokens = [t for _, t in calls]
        assert tokens == list(range(tokens[0], tokens[0] + k + 2))
    assert max(ks) > 0  # the seeds drew some ungraded rounds


# ---------------------------------------------------------------------------------------------- train_model

FAST = {
    "batch_size": 6,
    "masks_per_image": 3,
    "warmup_steps": 5,
    "val_max_objects": 8,
    "val_every_n_steps": 1000,
    "progress_bar": False,
    "final_eval_clicks": 5,
}


@pytest.fixture(scope="module")
def corpus_b(tmp_path_factory):
    root = tmp_path_factory.mktemp("b")
    return shapes_corpus(root / "train", 40, seed=2, textured=True), shapes_corpus(
        root / "val", 12, seed=3, textured=True
    )


def _evaluate(checkpoint, corpus):
    from sam_engine.evaluation import ClickProtocol, evaluate_corpus
    from sam_engine.model.checkpoint import load_model
    from sam_engine.predictor import EmbeddingCache, SamPredictor

    model = load_model(checkpoint).eval()
    _, summary = evaluate_corpus(
        SamPredictor(model, cache=EmbeddingCache(2)), corpus, ClickProtocol(max_clicks=10)
    )
    return summary


@pytest.mark.slow
def test_train_then_finetune_on_domain_b_improves_and_is_tracked(tmp_path, corpus_a, corpus_b):
    from sam_engine.model.checkpoint import read_checkpoint
    from sam_engine.tracking import TrackingSettings
    from sam_engine.training import train_model

    b_train, b_val = corpus_b
    mlflow = TrackingSettings(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_dir=tmp_path / "art"
    )
    v0 = train_model(
        corpus_a, MICRO, tmp_path / "v0", max_steps=40, max_minutes=5, lr=2e-3, seed=0, mlflow=mlflow, **FAST
    )
    assert v0.steps == 40 and v0.model_version == "1" and v0.run_id
    assert 0.0 <= v0.metrics["val/miou@1"] <= 1.0 and "val/noc@90" in v0.metrics
    ckpt = read_checkpoint(v0.checkpoint)
    assert ckpt.config.img_size == 64 and ckpt.metadata["steps"] == 40

    v1 = train_model(
        b_train,
        v0.checkpoint,
        tmp_path / "v1",
        max_steps=60,
        max_minutes=5,
        lr=1e-3,
        seed=0,
        val_corpus=b_val,
        mlflow=mlflow,
        **FAST,
    )
    assert v1.model_version == "2" and v1.resumed_from_step is None
    before, after = _evaluate(v0.checkpoint, b_val), _evaluate(v1.checkpoint, b_val)
    assert after["miou@1"] > before["miou@1"]
    # at smoke scale NoC@90 can sit at the click cap for both models; it must not get worse
    assert after["noc@90"] <= before["noc@90"]

    client = mlflow.client()
    run = client.get_run(v1.run_id)
    assert run.data.params["start"] == str(v0.checkpoint) and metric_name("val/miou@1") in run.data.metrics
    assert [m.step for m in client.get_metric_history(v1.run_id, "train/loss")][-1] >= 50
    files = {f.path for d in ("model", "overlays", "plots") for f in client.list_artifacts(v1.run_id, d)}
    assert (
        "model/model.pt" in files
        and "plots/curves.png" in files
        and any(f.startswith("overlays/") for f in files)
    )


_RESUME_SCRIPT = """
import pickle, sys
from sam_engine.training import train_model
corpus, config, out = pickle.load(open(sys.argv[1], "rb"))
train_model(corpus, config, out, max_steps=100000, max_minutes=10, checkpoint_every_n_steps=2, seed=0,
            batch_size=4, masks_per_image=2, val_max_objects=0, progress_bar=False)
"""


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, corpus_a):
    import os
    import pickle
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from sam_engine.training import train_model

    out = tmp_path / "run"
    args = tmp_path / "args.pkl"
    args.write_bytes(pickle.dumps((corpus_a, MICRO, out)))
    script = tmp_path / "train.py"
    script.write_text(_RESUME_SCRIPT)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(args)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    last = out / "checkpoints" / "last.ckpt"
    step = 0
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if last.exists():
                step = int(torch.load(last, map_location="cpu", weights_only=False)["global_step"])
                if step >= 4:
                    break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert step >= 4, err.decode()[-2000:]
    killed_at = int(torch.load(last, map_location="cpu", weights_only=False)["global_step"])  # still readable
    assert killed_at >= step

    result = train_model(
        corpus_a,
        MICRO,
        out,
        max_steps=killed_at + 3,
        max_minutes=10,
        seed=0,
        batch_size=4,
        masks_per_image=2,
        val_max_objects=0,
        progress_bar=False,
        checkpoint_every_n_steps=2,
    )
    assert result.resumed_from_step == killed_at
    assert result.steps == killed_at + 3
    state = torch.load(result.lightning_checkpoint, map_location="cpu", weights_only=False)
    assert state["global_step"] == killed_at + 3
    assert state["optimizer_states"] and state["lr_schedulers"]


def test_wise_ft_blends_float_weights_and_keeps_step_counts():
    from sam_engine.training.train import wise_ft

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.add_(2.0)
        model[1].num_batches_tracked.fill_(7)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    wise_ft(model, start, 0.25)
    state = model.state_dict()
    for key in ("0.weight", "0.bias", "1.weight", "1.running_mean"):
        assert torch.allclose(state[key], start[key] + 0.25 * (trained[key] - start[key]))
    assert int(state["1.num_batches_tracked"]) == 7  # an integer buffer stays as trained
    with pytest.raises(ValueError, match="wise_ft_alpha"):
        wise_ft(model, start, 1.5)
    with pytest.raises(ValueError, match="start's parameters"):
        wise_ft(model, {k: v for k, v in start.items() if k != "0.bias"}, 0.5)
