"""Shapes, prompt handling, attention numerics and trainability of the SAM model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sam_engine.model import MODEL_CONFIGS, SamConfig, build_sam, get_config
from sam_engine.model.hybrid_encoder import packed_channels, split_high_res
from sam_engine.model.image_encoder import (
    Attention,
    ImageEncoderViT,
    decomposed_rel_pos_bias,
    window_partition,
    window_unpartition,
)

TINY = MODEL_CONFIGS["tiny"]
# smaller than tiny so gradient tests stay fast; window 3 on a 8x8 grid exercises window padding
SMALL = dataclasses.replace(
    TINY,
    img_size=128,
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_window_size=3,
    encoder_global_attn_indexes=(1,),
    out_chans=32,
    decoder_mlp_dim=32,
    decoder_num_heads=2,
    iou_head_hidden_dim=16,
    mask_in_chans=8,
)


@pytest.fixture(scope="module")
def tiny():
    return build_sam("tiny", seed=0).eval()


def test_tiny_sizes(tiny):
    cfg = tiny.config
    assert cfg.embedding_size == cfg.img_size // cfg.patch_size == 16
    assert cfg.low_res_size == 4 * cfg.embedding_size
    with torch.no_grad():
        emb = tiny.image_encoder(torch.randn(2, 3, cfg.img_size, cfg.img_size))
    assert emb.shape == (2, cfg.out_chans, 16, 16)
    assert tiny.prompt_encoder.get_dense_pe().shape == (1, cfg.out_chans, 16, 16)


def test_prompt_encoder_shapes(tiny):
    pe = tiny.prompt_encoder
    c = tiny.config.out_chans
    coords = torch.rand(3, 2, 2) * 256
    labels = torch.tensor([[1, 0], [1, -1], [0, 0]])
    sparse, dense = pe(points=(coords, labels), boxes=None, masks=None)
    assert sparse.shape == (3, 3, c)  # 2 points + 1 padding point
    assert dense.shape == (3, c, 16, 16)
    boxes = torch.tensor([[10.0, 20.0, 100.0, 120.0]] * 3)
    sparse, _ = pe(points=(coords, labels), boxes=boxes, masks=None)
    assert sparse.shape == (3, 4, c)  # no padding point when a box is given
    sparse, dense = pe(points=None, boxes=None, masks=torch.randn(3, 1, 64, 64))
    assert sparse.shape == (3, 0, c) and dense.shape == (3, c, 16, 16)
    sparse, dense = pe(points=None, boxes=None, masks=None)
    assert sparse.shape == (1, 0, c)
    assert torch.equal(dense[0, :, 3, 5], pe.no_mask_embed.weight[0])


def test_point_labels(tiny):
    pe = tiny.prompt_encoder
    with torch.no_grad():
        coords = torch.tensor([[[10.0, 20.0], [200.0, 30.0]]])
        moved = torch.tensor([[[10.0, 20.0], [5.0, 250.0]]])
        labels = torch.tensor([[1, -1]])
        a, _ = pe(points=(coords, labels), boxes=None, masks=None)
        b, _ = pe(points=(moved, labels), boxes=None, masks=None)
        # a padding point ignores its coordinates and carries only not_a_point_embed
        assert torch.equal(a, b)
        assert torch.equal(a[0, 1], pe.not_a_point_embed.weight[0])
        fg, _ = pe(points=(coords[:, :1], torch.tensor([[1]])), boxes=None, masks=None)
        bg, _ = pe(points=(coords[:, :1], torch.tensor([[0]])), boxes=None, masks=None)
        delta = pe.point_embeddings[1].weight[0] - pe.point_embeddings[0].weight[0]
        torch.testing.assert_close(fg[0, 0] - bg[0, 0], delta)
        # labels 2 / 3 are box corners: same tokens as the box prompt
        box = torch.tensor([[12.0, 30.0, 140.0, 200.0]])
        corners, _ = pe(points=(box.reshape(1, 2, 2), torch.tensor([[2, 3]])), boxes=None, masks=None)
        boxed, _ = pe(points=None, boxes=box, masks=None)
        torch.testing.assert_close(corners[:, :2], boxed)


def test_decoder_multimask_vs_single(tiny):
    cfg = tiny.config
    with torch.no_grad():
        emb = torch.randn(1, cfg.out_chans, 16, 16)
        coords = torch.rand(4, 2, 2) * 256
        labels = torch.tensor([[1, 0]] * 4)
        multi, iou_m = tiny.decode(emb, coords, labels, multimask_output=True)
        single, iou_s = tiny.decode(emb, coords, labels, multimask_output=False)
        sparse, dense = tiny.prompt_encoder((coords, labels), None, None)
        all_masks, all_iou = tiny.mask_decoder.predict_masks(
            emb, tiny.prompt_encoder.get_dense_pe(), sparse, dense
        )
    assert multi.shape == (4, 3, 64, 64) and iou_m.shape == (4, 3)
    assert single.shape == (4, 1, 64, 64) and iou_s.shape == (4, 1)
    assert all_masks.shape == (4, 4, 64, 64)
    torch.testing.assert_close(single, all_masks[:, :1])
    torch.testing.assert_close(multi, all_masks[:, 1:])
    torch.testing.assert_close(iou_s, all_iou[:, :1])
    assert not torch.allclose(all_masks[:, 0], all_masks[:, 1])


def test_decoder_shared_or_per_prompt_embedding(tiny):
    with torch.no_grad():
        emb = torch.randn(1, tiny.config.out_chans, 16, 16)
        coords = torch.rand(3, 1, 2) * 256
        labels = torch.ones(3, 1, dtype=torch.long)
        seen = []
        hook = tiny.mask_decoder.transformer.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
        try:
            shared, shared_iou = tiny.decode(emb, coords, labels)
            repeated, repeated_iou = tiny.decode(emb.expand(3, -1, -1, -1).contiguous(), coords, labels)
            masks_in = torch.randn(3, 1, 64, 64)
            with_mask, _ = tiny.decode(emb, coords, labels, mask_input=masks_in)
            with_mask_rep, _ = tiny.decode(emb.expand(3, -1, -1, -1), coords, labels, mask_input=masks_in)
        finally:
            hook.remove()
        # One image, no mask inputs: the transformer sees the image tokens once and broadcasts them.
        assert seen == [1, 3, 3, 3]
        torch.testing.assert_close(shared, repeated)
        torch.testing.assert_close(shared_iou, repeated_iou)
        torch.testing.assert_close(with_mask, with_mask_rep)
        with pytest.raises(ValueError, match="batch"):
            tiny.decode(emb.expand(2, -1, -1, -1), coords, labels)


def test_window_partition_round_trip():
    x = torch.randn(2, 7, 10, 5)
    windows, pad_hw = window_partition(x, 4)
    assert pad_hw == (8, 12) and windows.shape == (2 * 2 * 3, 4, 4, 5)
    assert torch.equal(window_unpartition(windows, 4, pad_hw, (7, 10)), x)


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, use_rel_pos=True, rel_pos_zero_init=False, input_size=(4, 5))
    x = torch.randn(3, 4, 5, 16)
    with torch.no_grad():
        b, h, w, c = x.shape
        qkv = attn.qkv(x).reshape(b, h * w, 3, 2, 8).permute(2, 0, 3, 1, 4).reshape(3, b * 2, h * w, 8)
        q, k, v = qkv.unbind(0)
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        logits = logits + decomposed_rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, (h, w), (h, w))
        out = (logits.softmax(-1) @ v).view(b, 2, h, w, 8).permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
        torch.testing.assert_close(attn(x), attn.proj(out), atol=1e-5, rtol=1e-5)
        # the relative-position bias changes the result (it is really applied)
        attn.rel_pos_h.zero_()
        attn.rel_pos_w.zero_()
        assert not torch.allclose(attn(x), attn.proj(out), atol=1e-4)


@pytest.mark.parametrize("encoder_type", ["vit", "hybrid"])
def test_forward_trains_every_parameter(encoder_type):
    cfg = SMALL_HYBRID if encoder_type == "hybrid" else SMALL
    model = build_sam(cfg, seed=1).train()
    if encoder_type == "hybrid":  # zero-initialised projections pass no gradient to the branch until a step
        for proj in model.image_encoder.detail_proj:
            torch.nn.init.normal_(proj.weight, std=0.1)
    s = SMALL.img_size
    lr = cfg.low_res_size
    batch = [
        {
            "image": torch.rand(3, s, s - 20) * 255,
            "original_size": (90, 80),
            "point_coords": torch.rand(2, 2, 2) * (s - 20),
            "point_labels": torch.tensor([[1, 0], [1, 1]]),
        },
        {
            "image": torch.rand(3, s - 30, s) * 255,
            "original_size": (50, 66),
            "point_coords": torch.rand(2, 2, 2) * s,
            "point_labels": torch.tensor([[2, 3], [1, 0]]),
            "boxes": torch.tensor([[5.0, 6.0, 70.0, 80.0], [0.0, 0.0, 20.0, 30.0]]),
            "mask_inputs": torch.randn(2, 1, lr, lr),
        },
        {"image": torch.rand(3, s, s) * 255, "original_size": (s, s), "point_coords": None},
    ]
    batch[2]["boxes"] = torch.tensor([[1.0, 2.0, 50.0, 60.0]])
    out = model(batch, multimask_output=True)
    assert out[0]["masks"].shape == (2, 3, 90, 80) and out[1]["masks"].shape == (2, 3, 50, 66)
    assert out[0]["masks"].dtype == torch.bool
    assert out[0]["low_res_logits"].requires_grad  # forward is not wrapped in no_grad
    # token 0 (single-mask output) only runs with multimask_output=False: use both
    out_single = model(batch[:1], multimask_output=False)
    assert out_single[0]["low_res_logits"].shape == (2, 1, lr, lr)
    loss = sum(
        o["low_res_logits"].square().mean() + o["iou_predictions"].square().mean() for o in out + out_single
    )
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []


def test_build_is_seeded_and_keeps_global_rng():
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = build_sam(SMALL, seed=3).state_dict()
    after = torch.rand(1)
    b = build_sam(SMALL, seed=3).state_dict()
    c = build_sam(SMALL, seed=4).state_dict()
    assert torch.equal(before, after)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_config_round_trip_and_errors():
    for cfg in MODEL_CONFIGS.values():
        assert SamConfig.from_dict(cfg.to_dict()) == cfg
    assert get_config(TINY.to_dict()) == TINY
    assert MODEL_CONFIGS["vit_b"].img_size == 1024 and MODEL_CONFIGS["vit_b"].out_chans == 256
    with pytest.raises(ValueError, match="unknown model config"):
        get_config("vit_x")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        dataclasses.replace(TINY, img_size=250)
    with pytest.raises(ValueError, match="global_attn_indexes"):
        dataclasses.replace(TINY, encoder_global_attn_indexes=(9,))
    with pytest.raises(ValueError, match="unknown fields"):
        SamConfig.from_dict({**TINY.to_dict(), "bogus": 1})


def test_preprocess_and_postprocess(tiny):
    img = torch.full((3, 100, 256), 255.0)
    x = tiny.preprocess(img)
    assert x.shape == (3, 256, 256)
    assert torch.all(x[:, 100:] == 0)
    torch.testing.assert_close(x[:, 0, 0], (255.0 - tiny.pixel_mean[:, 0, 0]) / tiny.pixel_std[:, 0, 0])
    with pytest.raises(ValueError, match="larger than img_size"):
        tiny.preprocess(torch.zeros(3, 300, 10))
    low = torch.zeros(1, 1, 64, 64)
    low[..., :25, :] = 5.0  # the valid (unpadded) region of a 100x256 input is the top 25 rows
    low[..., 25:, :] = -5.0
    up = tiny.postprocess_masks(low, (100, 256), (50, 128))
    assert up.shape == (1, 1, 50, 128)
    assert (up > 0).float().mean() > 0.95


SMALL_HYBRID = dataclasses.replace(SMALL, encoder_type="hybrid", stem_chans=(8, 8, 16), mask_scale=8)


@pytest.mark.parametrize("mask_scale", [4, 8])
def test_hybrid_embedding_packs_detail_features(mask_scale):
    cfg = dataclasses.replace(SMALL_HYBRID, mask_scale=mask_scale)
    model = build_sam(cfg, seed=0).eval()
    for proj in model.image_encoder.detail_proj:  # non-zero, so the packing is checked on real values
        torch.nn.init.normal_(proj.weight)
    c, g = cfg.out_chans, cfg.embedding_size
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        emb = model.image_encoder(x)
        assert emb.shape == (2, packed_channels(c, mask_scale), g, g)
        base, feats = split_high_res(emb, c)
        assert base.shape == (2, c, g, g)
        assert [f.shape[1:] for f in feats] == [
            (c // 4, 2 * g, 2 * g),
            (c // 8, 4 * g, 4 * g),
            (c // 8, 8 * g, 8 * g),
        ][: 2 if mask_scale == 4 else 3]
        # the packing is exactly the inverse of the decoder's unpacking
        enc = model.image_encoder
        s2 = enc.detail[0](x)
        s4 = enc.detail[1](s2)
        torch.testing.assert_close(feats[0], enc.detail_proj[0](enc.detail[2](s4)))
        torch.testing.assert_close(feats[1], enc.detail_proj[1](s4))
        if mask_scale == 8:
            torch.testing.assert_close(feats[2], enc.detail_proj[2](s2))
        # the ViT path is untouched: the first channels are the plain ViT encoder's embedding
        torch.testing.assert_close(base, ImageEncoderViT.forward(enc, x))
        plain, none = split_high_res(base, c)  # a plain embedding passes through
        assert plain is base and none == []
        with pytest.raises(ValueError, match="channels"):
            split_high_res(emb[:, : 2 * c], c)


def test_hybrid_decoder_predicts_8x_masks_from_detail_features():
    model = build_sam(SMALL_HYBRID, seed=0).eval()
    c, g = SMALL_HYBRID.out_chans, SMALL_HYBRID.embedding_size
    assert SMALL_HYBRID.low_res_size == 8 * g == model.prompt_encoder.mask_input_size[0]
    emb = torch.randn(1, packed_channels(c, 8), g, g)
    coords = torch.rand(3, 1, 2) * SMALL_HYBRID.img_size
    labels = torch.ones(3, 1, dtype=torch.long)
    with torch.no_grad():
        shared, _ = model.decode(emb, coords, labels)
        per_prompt, _ = model.decode(emb.expand(3, -1, -1, -1).contiguous(), coords, labels)
        torch.testing.assert_close(shared, per_prompt)  # batch-1 features broadcast to every prompt
        changed = emb.clone()
        changed[:, -(c // 8) * 64 :] += 1.0  # only the stride-2 features
        other, _ = model.decode(changed, coords, labels)
        # 8x logits fed back as the mask input (pooled to the mask encoder's 4x grid)
        again, _ = model.decode(emb, coords, labels, mask_input=shared[:, :1])
        with pytest.raises(ValueError, match="detail feature"):
            model.decode(emb[:, :c], coords, labels)  # a plain embedding cannot make 8x masks
    assert shared.shape == (3, 3, 8 * g, 8 * g) and again.shape == shared.shape
    assert not torch.allclose(shared, other)
    with pytest.raises(ValueError, match="mask_scale"):
        dataclasses.replace(SMALL, mask_scale=8)  # 8x masks need the hybrid encoder


def test_hybrid_starts_as_the_vit_and_round_trips(tmp_path):
    from sam_engine.model.checkpoint import load_model, save_checkpoint

    model = build_sam(SMALL_HYBRID, seed=2).eval()
    enc = model.image_encoder
    assert all(not p.weight.any() for p in enc.detail_proj)  # zero-initialised projections
    save_checkpoint(model, tmp_path / "h.pt")
    loaded = load_model(tmp_path / "h.pt").eval()
    assert loaded.config == SMALL_HYBRID
    x = torch.randn(1, 3, SMALL_HYBRID.img_size, SMALL_HYBRID.img_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_encoder(x), enc(x))
    with pytest.raises(ValueError, match="encoder_type"):
        dataclasses.replace(SMALL, encoder_type="resnet")
