"""The first click's output choice: fitted on labelled clicks, it learns which output tends to be right where the
IoU head ranks wrongly; it re-scores only fresh answers; the engine fits it before each gold evaluation and the
version's predictor uses it afterwards."""

from __future__ import annotations

import numpy as np
import pytest

from sam_engine.data import rle as rle_utils


class HeadPrefersTheWrongOutput:
    """Answers a click at an object with: output 0 a small square (the head's favourite), output 1 nothing, and
    output 2 the object itself (scored lowest)."""

    mask_threshold = 0.0

    def __init__(self, corpus):
        self.corpus = corpus
        self.image_id = None
        self.fresh_calls = 0

    def set_image(self, image, image_key=None):
        self.image_id, self.shape = image_key, image.shape[:2]

    def reset_image(self):
        self.image_id = None

    def predict(self, point_coords, point_labels, box=None, mask_input=None, multimask_output=True,
                return_logits=False):  # fmt: skip
        x, y = (int(v) for v in np.asarray(point_coords)[0])
        objects = [rle_utils.decode(a["segmentation"]) for a in self.corpus.masks_for(self.image_id)]
        hit = [m for m in objects if m[y, x]]
        target = min(hit, key=lambda m: m.sum()) if hit else np.zeros(self.shape, bool)
        square = np.zeros(self.shape, bool)
        square[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] = True
        masks = np.stack([square, np.zeros(self.shape, bool), target])
        logits = np.where(masks, 5.0, -5.0).astype(np.float32)
        if mask_input is None:
            self.fresh_calls += 1
        out = logits if return_logits else masks
        return out, np.array([0.9, 0.2, 0.5], np.float32), np.zeros((3, 16, 16), np.float32)


@pytest.fixture
def gold(smoke_cfg, smoke_data_dir):
    from sam_engine.engine.workspace import Workspace

    return Workspace(smoke_cfg.model_copy(update={"data_dir": smoke_data_dir}, deep=True)).gold


def test_the_fitted_choice_picks_the_output_that_matches_where_the_head_does_not(gold):
    from sam_engine.evaluation.interactive import ClickProtocol, evaluate_corpus
    from sam_engine.output_choice import ChoicePredictor, OutputChoice, fit_output_choice

    fake = HeadPrefersTheWrongOutput(gold)
    choice = fit_output_choice(fake, gold, max_objects=120, seed=0, workers=2)
    assert choice is not None and choice.objects >= 50
    # the images spread over forked workers give the fit of one process
    assert fit_output_choice(fake, gold, max_objects=120, seed=0, workers=1) == choice
    assert OutputChoice.from_dict(choice.as_dict()) == choice
    # the click protocol's 1-click IoU: the head's pick (the square) against the re-scored one (the object)
    protocol = ClickProtocol(max_clicks=1)
    head, _ = evaluate_corpus(fake, gold, protocol, max_objects=60, seed=1, workers=1)
    chosen, _ = evaluate_corpus(
        ChoicePredictor(fake, choice), gold, protocol, max_objects=60, seed=1, workers=1
    )
    assert chosen["iou@1"].mean() > 0.85 and head["iou@1"].mean() < 0.5


def test_the_choice_rescores_only_fresh_three_output_answers(gold):
    from sam_engine.output_choice import ChoicePredictor, OutputChoice

    fake = HeadPrefersTheWrongOutput(gold)
    picks_first = OutputChoice((1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), objects=60)
    picks_last = OutputChoice((0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0), objects=60)
    rec = gold.images[0]
    ann = gold.masks_for(rec.image_id)[0]
    y, x = (int(v[0]) for v in np.nonzero(rle_utils.decode(ann["segmentation"])))
    image = np.zeros((rec.height, rec.width, 3), np.uint8)
    for choice, best in ((picks_first, 0), (picks_last, 2)):
        p = ChoicePredictor(fake, choice)
        p.set_image(image, image_key=rec.image_id)
        masks, scores, _ = p.predict(np.array([[x, y]]), np.array([1]))
        assert int(np.argmax(scores)) == best and masks.dtype == bool and masks.shape[0] == 3
        # a refining call (a previous mask fed back) keeps the model's own scores
        _, kept, _ = p.predict(np.array([[x, y]]), np.array([1]), mask_input=np.zeros((1, 16, 16)))
        assert list(kept) == pytest.approx([0.9, 0.2, 0.5])
    with pytest.raises(ValueError, match="features"):
        OutputChoice.from_dict({"features": ["predicted_iou"], "weights": [1.0], "objects": 60})


def test_too_few_labelled_objects_fit_no_choice(gold):
    from sam_engine.output_choice import fit_output_choice

    assert fit_output_choice(HeadPrefersTheWrongOutput(gold), gold, max_objects=10, seed=0) is None


def test_the_annotation_server_answers_with_the_choice_recorded_beside_the_checkpoint(tmp_path):
    """`make annotate` serves a model-store checkpoint: its version's choice (written into meta.json by the gold
    evaluation) answers first clicks; --no-output-choice, or none recorded, leaves the IoU head's; a damaged
    record names the file and field."""
    import json

    from sam_engine.annotation.__main__ import load_predictor
    from sam_engine.model import build_sam
    from sam_engine.model.checkpoint import save_checkpoint
    from sam_engine.model_store import ModelStore
    from sam_engine.output_choice import ChoicePredictor, OutputChoice

    store = ModelStore(tmp_path / "models")
    src = save_checkpoint(build_sam("tiny", seed=0), tmp_path / "v1.pt")
    ref = store.put("model_v1", src)
    checkpoint = store.path("model_v1")
    assert not any(isinstance(p, ChoicePredictor) for p in load_predictor(checkpoint, "tiny", False, lanes=2))
    choice = OutputChoice((0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0), objects=60)
    store.update("model_v1", data={**ref.data, "output_choice": choice.as_dict()})
    lanes = load_predictor(checkpoint, "tiny", False, lanes=2)
    assert len(lanes) == 2 and all(isinstance(p, ChoicePredictor) and p.choice == choice for p in lanes)
    plain = load_predictor(checkpoint, "tiny", False, output_choice=False)
    assert not isinstance(plain[0], ChoicePredictor)
    meta = checkpoint.parent / "meta.json"
    doc = json.loads(meta.read_text())
    doc["data"]["output_choice"]["weights"] = [1.0]
    meta.write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match=r"meta.json: record 'model_v1': field 'data.output_choice'"):
        load_predictor(checkpoint, "tiny", False)


@pytest.mark.parametrize(
    "damage",
    [
        lambda choice: {**choice, "weights": [1.0]},  # too few weights
        lambda choice: {**choice, "features": ["bias_0"]},  # fitted on other features
        lambda choice: {k: v for k, v in choice.items() if k != "objects"},  # a field missing
        lambda choice: "not a record",
    ],
)
def test_a_damaged_recorded_choice_names_the_file_the_version_and_the_field(tmp_path, damage):
    """The library reader (`make annotate` and `make bench` read through it) answers a damaged record with a
    DataError, not a crash deep in the predictor; a checkpoint without meta.json or without a choice has none."""
    import json

    from sam_engine.data.errors import DataError
    from sam_engine.output_choice import OutputChoice, recorded_output_choice

    version = tmp_path / "models" / "model_v2"
    version.mkdir(parents=True)
    checkpoint = version / "model.pt"
    assert recorded_output_choice(checkpoint) is None
    (version / "meta.json").write_text(json.dumps({"data": {"images": 3}}))
    assert recorded_output_choice(checkpoint) is None
    choice = OutputChoice((0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0), objects=60)
    (version / "meta.json").write_text(json.dumps({"data": {"output_choice": choice.as_dict()}}))
    assert recorded_output_choice(checkpoint) == choice
    (version / "meta.json").write_text(json.dumps({"data": {"output_choice": damage(choice.as_dict())}}))
    with pytest.raises(DataError) as err:
        recorded_output_choice(checkpoint)
    assert (err.value.file, err.value.record, err.value.field) == (
        str(version / "meta.json"),
        "model_v2",
        "data.output_choice",
    )
