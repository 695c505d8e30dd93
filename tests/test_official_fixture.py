"""Our model reproduces the official segment-anything outputs and key layout.

Fixture made by tools/make_official_fixture.py with the official package (see its docstring).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sam_engine.model import MODEL_CONFIGS, SamConfig, build_sam
from sam_engine.model.checkpoint import load_official_checkpoint, read_checkpoint
from sam_engine.predictor import EmbeddingCache, SamPredictor

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "official_tiny"
TOL = 1e-4


@pytest.fixture(scope="module")
def fixture_config() -> SamConfig:
    return SamConfig.from_dict(json.loads((TINY / "config.json").read_text())["config"])


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(TINY / "outputs.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def model(fixture_config):
    return load_official_checkpoint(TINY / "sam_official_tiny.pth", fixture_config).eval()


@pytest.fixture(scope="module")
def predictor(model, ref):
    p = SamPredictor(model, cache=EmbeddingCache())
    p.set_image(ref["image"])
    return p


def close(actual, expected, tol: float = TOL) -> None:
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), expected.astype(np.float64), atol=tol, rtol=0
    )


def same_masks(actual: np.ndarray, expected: np.ndarray, logits: np.ndarray) -> None:
    """Boolean masks agree except where the official logit is within tolerance of the threshold."""
    assert actual.shape == expected.shape
    differ = actual != expected
    assert not np.any(differ & (np.abs(logits) > TOL))


def test_official_checkpoint_loads_strictly(fixture_config):
    ckpt = read_checkpoint(TINY / "sam_official_tiny.pth", fixture_config)
    assert ckpt.official
    ours = build_sam(fixture_config).state_dict()
    assert set(ckpt.state_dict) == set(ours)
    assert all(tuple(ckpt.state_dict[k].shape) == tuple(v.shape) for k, v in ours.items())
    assert len(ours) == json.loads((TINY / "config.json").read_text())["num_keys"]


def test_resize_and_embedding(predictor, ref):
    np.testing.assert_array_equal(predictor.transform.apply_image(ref["image"]), ref["input_image"])
    assert predictor.input_size == tuple(ref["input_size"])
    close(predictor.get_image_embedding().numpy(), ref["embedding"])


@pytest.mark.parametrize("case", ["points_multi", "points_single", "box_single", "box_points_multi"])
def test_predictor_cases(predictor, ref, case):
    kwargs = {
        "points_multi": dict(point_coords=ref["points"], point_labels=ref["labels"], multimask_output=True),
        "points_single": dict(point_coords=ref["points"], point_labels=ref["labels"], multimask_output=False),
        "box_single": dict(box=ref["box"], multimask_output=False),
        "box_points_multi": dict(
            point_coords=ref["points"][:1],
            point_labels=ref["labels"][:1],
            box=ref["box"],
            multimask_output=True,
        ),
    }[case]
    masks, iou, low = predictor.predict(**kwargs)
    logits, _, _ = predictor.predict(**kwargs, return_logits=True)
    close(iou, ref[f"{case}/iou"])
    close(low, ref[f"{case}/low_res"])
    close(logits, ref[f"{case}/logits"])
    same_masks(masks, ref[f"{case}/masks"], ref[f"{case}/logits"])


def test_mask_input_prompt(predictor, ref):
    masks, iou, low = predictor.predict(
        point_coords=ref["points"],
        point_labels=ref["labels"],
        mask_input=ref["mask_input"],
        multimask_output=False,
    )
    close(iou, ref["mask_input_single/iou"])
    close(low, ref["mask_input_single/low_res"])
    assert masks.shape == ref["mask_input_single/masks"].shape


def test_batched_predict_torch_with_padding(predictor, ref):
    logits, iou, low = predictor.predict_torch(
        torch.from_numpy(ref["batch/coords"]),
        torch.from_numpy(ref["batch/labels"]),
        multimask_output=True,
        return_logits=True,
    )
    close(logits.numpy(), ref["batch/logits"])
    close(iou.numpy(), ref["batch/iou"])
    close(low.numpy(), ref["batch/low_res"])


def test_batched_forward(model, ref, fixture_config):
    records = []
    for k in range(2):
        img = ref[f"forward{k}/image"]
        resized = SamPredictor(model, cache=EmbeddingCache()).transform.apply_image(img)
        records.append(
            {
                "image": torch.as_tensor(resized).permute(2, 0, 1).float(),
                "original_size": img.shape[:2],
                "point_coords": torch.from_numpy(ref[f"forward{k}/coords"]),
                "point_labels": torch.ones(2, 1, dtype=torch.int64),
            }
        )
    with torch.no_grad():
        results = model(records, multimask_output=True)
    for k, res in enumerate(results):
        close(res["iou_predictions"].numpy(), ref[f"forward{k}/iou"])
        close(res["low_res_logits"].numpy(), ref[f"forward{k}/low_res"])
        assert res["masks"].shape == ref[f"forward{k}/masks"].shape
        assert (res["masks"].numpy() != ref[f"forward{k}/masks"]).mean() < 1e-3


@pytest.mark.parametrize(
    "name,path",
    [
        ("vit_b", FIXTURES / "official_vit_b_keys.json"),
        ("vit_l", TINY / "official_vit_l_keys.json"),
        ("vit_h", TINY / "official_vit_h_keys.json"),
    ],
)
def test_official_key_layout(name, path):
    expected = {k: tuple(v) for k, v in json.loads(path.read_text()).items()}
    with torch.device("meta"):
        ours = build_sam(MODEL_CONFIGS[name]).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected
    if name == "vit_b":
        assert len(expected) == 314
