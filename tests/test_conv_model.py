"""The CPU default model: convolutional encoder, 8x masks from its detail features, and the click refiner."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sam_engine.model import MODEL_CONFIGS, build_sam
from sam_engine.model.hybrid_encoder import UnpackedEmbedding, packed_channels, split_high_res
from sam_engine.training.prompts import deepest_error_points, region_depth

# the default's layout at a size that keeps the tests fast
SMALL_CONV = dataclasses.replace(
    MODEL_CONFIGS["tiny_conv"],
    img_size=64,
    conv_widths=(8, 8, 16, 16),
    conv_depths=(1, 1, 1, 1),
    out_chans=32,
)


def test_default_is_the_conv_model_with_8x_masks_and_refiner():
    from sam_engine.config import load_config

    cfg = MODEL_CONFIGS[load_config("default").model.name]
    assert cfg.encoder_type == "conv" and cfg.mask_scale == 8 and cfg.click_refiner
    assert cfg.low_res_size == 8 * cfg.embedding_size


def test_conv_embedding_packs_the_stride_8_4_2_features():
    model = build_sam(SMALL_CONV, seed=0).eval()
    c, g = SMALL_CONV.out_chans, SMALL_CONV.embedding_size
    x = torch.randn(2, 3, SMALL_CONV.img_size, SMALL_CONV.img_size)
    with torch.no_grad():
        emb = model.image_encoder(x)
        assert emb.shape == (2, packed_channels(c, 8), g, g)
        base, feats = split_high_res(emb, c)
        enc = model.image_encoder
        s2 = enc.stages[0](x)
        s4 = enc.stages[1](s2)
        s8 = enc.stages[2](s4)
        for got, proj, src in zip(feats, enc.detail_proj, (s8, s4, s2), strict=True):
            torch.testing.assert_close(got, proj(src))
        unpacked = UnpackedEmbedding.of(emb, c, torch.tensor([1, 1, 0]))
        torch.testing.assert_close(unpacked.embedding, base[[1, 1, 0]])
        torch.testing.assert_close(unpacked.high_res[2], feats[2][[1, 1, 0]])


def test_forward_trains_every_parameter_of_the_conv_model():
    model = build_sam(SMALL_CONV, seed=1).train()
    for block in model.image_encoder.modules():  # zero-initialised residual branches pass no gradient yet
        if hasattr(block, "bn2"):
            torch.nn.init.normal_(block.bn2.weight, std=0.1)
    s, lr = SMALL_CONV.img_size, SMALL_CONV.low_res_size
    emb = model.image_encoder(torch.rand(2, 3, s, s) * 255)
    unpacked = UnpackedEmbedding.of(emb, SMALL_CONV.out_chans, torch.tensor([0, 1, 1]))
    coords = torch.rand(3, 3, 2) * s
    labels = torch.tensor([[1, 0, -1], [2, 3, 1], [1, 1, 0]])
    logits, iou = model.decode_all(unpacked, coords, labels, None, torch.randn(3, 1, lr, lr))
    assert logits.shape == (3, 4, lr, lr) and iou.shape == (3, 4)
    (logits.square().mean() + iou.square().mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    # the no-mask embedding only trains on prompts without a mask input
    assert no_grad == ["prompt_encoder.no_mask_embed.weight"]


def test_refiner_keys_computed_once_per_image_decode_and_train_as_per_prompt():
    """Training computes the click refiner's key map per image before gathering rows per mask; the masks,
    IoUs and every gradient equal those of keys computed from each mask's own copy of the features."""
    model = build_sam(SMALL_CONV, seed=2).train()
    s, lr = SMALL_CONV.img_size, SMALL_CONV.low_res_size
    images = torch.rand(2, 3, s, s) * 255
    index = torch.tensor([0, 1, 1, 0])
    coords = torch.rand(4, 2, 2) * s
    labels = torch.tensor([[1, 0], [1, 1], [1, -1], [0, 1]])
    mask_in = torch.randn(4, 1, lr, lr)
    results = []
    for key_fn in (None, model.mask_decoder.refiner.keys):
        model.zero_grad()
        emb = model.image_encoder(images)
        unpacked = UnpackedEmbedding.of(emb, SMALL_CONV.out_chans, index, key_fn=key_fn)
        assert (unpacked.keys is None) == (key_fn is None)
        logits, iou = model.decode_all(unpacked, coords, labels, None, mask_in)
        (logits.sigmoid().mean() + iou.square().mean()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), iou.detach(), grads))
    (la, ia, ga), (lb, ib, gb) = results
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(ia, ib)
    assert ga.keys() == gb.keys() and "mask_decoder.refiner.key.weight" in ga
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], msg=name)


def test_prompt_maps_place_clicks_boxes_and_the_fed_back_mask():
    model = build_sam(SMALL_CONV, seed=0).eval()
    pe = model.prompt_encoder
    g = 4 * SMALL_CONV.embedding_size
    stride = SMALL_CONV.img_size / g
    coords = torch.tensor([[[10.0, 20.0], [40.0, 8.0]], [[2.0, 2.0], [50.0, 60.0]]])
    labels = torch.tensor([[1, 0], [2, 3]])
    mask = torch.full((2, 1, 2 * g, 2 * g), -20.0)
    maps = pe.prompt_maps((coords, labels), None, mask).maps
    assert maps.shape == (2, 4, g, g)
    # the positive click peaks in its own cell, the negative one in another channel
    pos = divmod(int(maps[0, 0].argmax()), g)
    assert pos == (int(20.5 // stride), int(10.5 // stride))
    assert divmod(int(maps[0, 1].argmax()), g) == (int(8.5 // stride), int(40.5 // stride))
    assert maps[0, 2].sum() == 0 and maps[1, :2].sum() == 0  # no box in row 0, no clicks in row 1
    inside = maps[1, 2] > 0  # the box given as corner points fills its cells
    rows, cols = torch.nonzero(inside.any(1)).flatten(), torch.nonzero(inside.any(0)).flatten()

    def cells(lo: float, hi: float) -> list[int]:  # cells whose centre lies in [lo, hi]
        return [i for i in range(g) if lo <= (i + 0.5) * stride <= hi]

    assert rows.tolist() == cells(2.5, 60.5) and cols.tolist() == cells(2.5, 50.5)
    assert torch.allclose(maps[:, 3], torch.full_like(maps[:, 3], -1.0))  # clamped, scaled fed-back logits


def test_the_refiner_lets_a_click_change_the_mask_near_it_only():
    torch.manual_seed(0)
    model = build_sam(SMALL_CONV, seed=3).eval()
    for p in model.mask_decoder.refiner.parameters():
        torch.nn.init.normal_(p, std=0.3)
    s = SMALL_CONV.img_size
    with torch.no_grad():
        emb = model.image_encoder(torch.rand(1, 3, s, s) * 255)
        base, _ = model.decode(
            emb, torch.tensor([[[10.0, 10.0]]]), torch.tensor([[1]]), multimask_output=False
        )
        # a second click far away moves the maps only near it: pixels far from it see the same maps
        maps_a = model.prompt_encoder.prompt_maps(
            (torch.tensor([[[10.0, 10.0]]]), torch.tensor([[1]])), None, None
        ).maps
        maps_b = model.prompt_encoder.prompt_maps(
            (torch.tensor([[[10.0, 10.0], [60.0, 60.0]]]), torch.tensor([[1, 0]])), None, None
        ).maps
    assert torch.allclose(maps_a[..., :4, :4], maps_b[..., :4, :4], atol=1e-6)
    assert not torch.allclose(maps_a[..., -2:, -2:], maps_b[..., -2:, -2:])
    assert base.shape == (1, 1, SMALL_CONV.low_res_size, SMALL_CONV.low_res_size)


def test_decode_where_matches_decode_with_the_refiner():
    model = build_sam(SMALL_CONV, seed=5).eval()
    s = SMALL_CONV.img_size
    with torch.no_grad():
        emb = model.image_encoder(torch.rand(1, 3, s, s) * 255)
        coords = torch.rand(6, 1, 2) * s
        labels = torch.ones(6, 1, dtype=torch.long)
        full, iou = model.decode(emb, coords, labels)
        keep = iou.max(dim=1).values > iou.max(dim=1).values.median()
        rows, some, iou_all = model.decode_where(
            emb, coords, labels, lambda q: q.max(dim=1).values > iou.max(dim=1).values.median()
        )
    torch.testing.assert_close(iou_all, iou)
    assert rows.tolist() == torch.nonzero(keep).flatten().tolist()
    torch.testing.assert_close(some, full[rows], atol=1e-5, rtol=1e-4)


def test_inference_decodes_channels_last_to_the_masks_training_computes():
    """In eval mode the decoder's upscaling and click refiner run channels-last (faster convolutions on a
    CPU); the masks and IoUs equal those of training mode's layout, clicks, fed-back mask and all."""
    model = build_sam(SMALL_CONV, seed=3).train()
    s, lr = SMALL_CONV.img_size, SMALL_CONV.low_res_size
    emb = model.image_encoder(torch.rand(1, 3, s, s) * 255).detach()
    coords = torch.rand(5, 2, 2) * s
    labels = torch.tensor([[1, 0], [1, 1], [1, -1], [0, 1], [1, 0]])
    mask_in = torch.randn(5, 1, lr, lr)
    seen = []
    hook = model.mask_decoder.refiner.conv1.register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():  # training's ungraded click rounds: train mode without gradients
        trained_logits, trained_iou = model.decode(emb, coords, labels, mask_input=mask_in)
        logits, iou = model.eval().decode(emb, coords, labels, mask_input=mask_in)
    hook.remove()
    assert seen == [False, True]
    torch.testing.assert_close(logits, trained_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(iou, trained_iou)


def test_region_depth_is_the_click_protocols_distance():
    from sam_engine.evaluation.clicks import next_click, padded_distance

    gen = torch.Generator().manual_seed(0)
    regions = torch.rand(4, 20, 30, generator=gen) > 0.35
    depth = region_depth(regions)
    for r, d in zip(regions, depth, strict=True):
        torch.testing.assert_close(d, torch.from_numpy(padded_distance(r.numpy())).float())
    gt = torch.zeros(2, 20, 30, dtype=torch.bool)
    gt[:, 2:12, 3:20] = True
    pred = torch.zeros_like(gt)
    pred[1, 2:12, 3:20] = True
    pred[1, 14:20, 0:30] = True  # a deep false positive band
    yx, positive = deepest_error_points(pred, gt, gen)
    for i in range(2):
        click = next_click(gt[i].numpy(), pred[i].numpy())
        assert positive[i].item() == click.positive
        got = region_depth((gt[i] ^ pred[i])[None])[0]
        assert got[yx[i, 0], yx[i, 1]] == got.max()  # at the deepest point (ties broken at random)


def test_conv_checkpoint_round_trips(tmp_path):
    from sam_engine.model.checkpoint import load_model, save_checkpoint

    model = build_sam(SMALL_CONV, seed=2).eval()
    save_checkpoint(model, tmp_path / "c.pt")
    loaded = load_model(tmp_path / "c.pt").eval()
    assert loaded.config == SMALL_CONV
    x = torch.randn(1, 3, SMALL_CONV.img_size, SMALL_CONV.img_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_encoder(x), model.image_encoder(x))
    with pytest.raises(ValueError, match="mask_scale"):
        dataclasses.replace(SMALL_CONV, encoder_type="vit")  # 8x masks need detail features
