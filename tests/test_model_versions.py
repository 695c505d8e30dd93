"""Model versions without training: carrying a version forward, and evaluations reused by checkpoint hash."""

from __future__ import annotations

import pytest


@pytest.fixture
def ws_with_v2(smoke_cfg, smoke_data_dir, tmp_path):
    from sam_engine.engine.workspace import Workspace
    from sam_engine.model import build_sam
    from sam_engine.model.checkpoint import save_checkpoint

    ws = Workspace(smoke_cfg.model_copy(update={"data_dir": smoke_data_dir}, deep=True))
    ckpt = tmp_path / "v2.pt"
    save_checkpoint(build_sam("tiny", seed=3), ckpt)
    return ws, ws.model_store.put("model_v2", ckpt, data={"images": 3, "masks": 7, "data_sha256": "abc"})


@pytest.mark.slow
def test_carry_forward_registers_the_same_weights_once(ws_with_v2):
    from sam_engine.engine.models import carry_forward

    ws, v2 = ws_with_v2
    v3, stored = carry_forward(ws, "model_v3", v2, "stage 3 kept 0 masks")
    assert stored and v3.sha256 == v2.sha256 and v3.parent == "model_v2"
    assert v3.data["carried_from"] == "model_v2" and v3.data["steps"] == 0 and v3.data["masks"] == 7
    client = ws.tracking.client()
    run = client.get_run(v3.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["carried_from"] == "model_v2"
    mv = client.get_model_version(ws.tracking.registered_model, v3.registered_version)
    assert mv.run_id == v3.mlflow_run_id
    # idempotent: the same parent and reason reuse the stored version (no second run or registered version)
    from sam_engine.engine.report import carried_forward_notes

    assert carried_forward_notes(ws, ["v2", "v3", "v9"]) == [
        "v3: model_v2's weights carried forward, not trained (stage 3 kept 0 masks)"
    ]
    again, stored_again = carry_forward(ws, "model_v3", v2, "stage 3 kept 0 masks")
    assert not stored_again and again.registered_version == v3.registered_version
    assert len(client.search_model_versions(f"name='{ws.tracking.registered_model}'")) == 1


@pytest.mark.slow
def test_evaluation_is_reused_for_the_same_weights_only(ws_with_v2, monkeypatch, tmp_path):
    from sam_engine.engine import models
    from sam_engine.model import build_sam
    from sam_engine.model.checkpoint import save_checkpoint

    ws, v2 = ws_with_v2
    assert models.stored_evaluation(ws, v2, with_amg=False) is None
    first = models.evaluate_version(ws, v2, with_amg=False)
    assert first["gold/n_objects"] > 0 and "by_region" in first
    # the per-object table the gate pairs: one row per evaluated object
    assert len(first["per_object"]["key"]) == len(first["per_object"]["noc@90"]) == first["gold/n_objects"]
    assert models.stored_evaluation(ws, v2, with_amg=False) == first
    v3, _ = models.carry_forward(ws, "model_v3", v2, "no new masks")

    def not_again(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(models, "_evaluate_on_gold", not_again)
    reused = models.evaluate_version(ws, v3, with_amg=False)
    assert reused == first
    # the gate's tolerances are not evaluation settings: changing them reuses the evaluation
    monkeypatch.setattr(ws.cfg.eval, "noc_tolerance", 3.0)
    monkeypatch.setattr(ws.cfg.eval, "regression_z", 2.0)
    assert models.evaluate_version(ws, v3, with_amg=False) == first
    assert ws.model_store.get("model_v3").metrics["gold/miou@1"] == first["gold/miou@1"]
    other = tmp_path / "other.pt"
    save_checkpoint(build_sam("tiny", seed=4), other)
    changed = ws.model_store.put("model_v4", other)
    with pytest.raises(AssertionError, match="evaluated again"):
        models.evaluate_version(ws, changed, with_amg=False)


@pytest.mark.parametrize("people_only", [True, False])
def test_v3_learns_from_the_shards_and_the_stage_1_2_masks(smoke_cfg, smoke_data_dir, people_only):
    """v3's corpus: the shards' masks, the stage-1/2 human masks and, unless ``v3_people_masks_only``, stage
    2's accepted model proposals; an image in both the shards and the store gets both its masks."""
    from store_masks import box, people_and_proposal

    from sam_engine.data.corpus import MaskCorpus
    from sam_engine.engine.training_data import v3_corpus
    from sam_engine.engine.workspace import Workspace

    cfg = smoke_cfg.model_copy(update={"data_dir": smoke_data_dir}, deep=True)
    cfg.train.v3_people_masks_only = people_only
    ws = Workspace(cfg)
    a, b = ws.pool.images[:2]
    people_and_proposal(ws, a, b)
    shard_mask = {"id": 900, "image_id": a.image_id, "segmentation": box(a, 30, 40, 30, 40), "iscrowd": 0}
    shards = MaskCorpus(images=[a], annotations={a.image_id: [shard_mask]})
    corpus = v3_corpus(ws, shards)
    assert [im.image_id for im in corpus.images] == sorted([a.image_id, b.image_id])
    assert len(corpus.masks_for(a.image_id)) == 2  # the shard's mask and the stage-1 one
    assert len(corpus.masks_for(b.image_id)) == (1 if people_only else 2)


@pytest.mark.slow
def test_the_gold_evaluation_fits_the_output_choice_on_peoples_masks_and_the_predictor_uses_it(ws_with_v2):
    """No store: the IoU head chooses. With people's stage-1 masks: a choice fitted on them before the gold
    protocol, kept with the evaluation, and the version's interactive predictor answers with it."""
    from sam_engine.engine import models
    from sam_engine.engine.human_stage import register_images
    from sam_engine.output_choice import ChoicePredictor

    ws, v2 = ws_with_v2
    ws.cfg.eval.output_choice_objects = 80
    assert models.evaluate_version(ws, v2, with_amg=False)["output_choice"] is None
    assert not isinstance(models.version_predictor(ws, v2), ChoicePredictor)
    images, n = [], 0
    for rec in ws.pool.images:
        images.append(rec)
        n += len(ws.pool_gt.masks_for(rec.image_id))
        if n >= 80:
            break
    with ws.open_store() as store:
        register_images(store, images, "stage1", "pool")
        store.add_annotator("ann", role="annotator")
        for rec in images:
            for ann in ws.pool_gt.masks_for(rec.image_id):
                store.commit_mask(
                    task_id=None, image_id=rec.image_id, annotator_id="ann", stage=1, source="human",
                    rle=ann["segmentation"], predicted_iou=None, clicks=2, seconds=5.0,
                )  # fmt: skip
    ws.cfg.eval.output_choice_objects = 70  # another setting: evaluated again, now with the masks
    ev = models.evaluate_version(ws, v2, with_amg=False)
    assert ev["output_choice"]["objects"] >= 50
    assert isinstance(models.version_predictor(ws, v2), ChoicePredictor)
    assert models.stored_output_choice(ws, v2).as_dict() == ev["output_choice"]
    assert not isinstance(ws.predictor(v2), ChoicePredictor)
