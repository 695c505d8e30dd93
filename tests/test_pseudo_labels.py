"""v1's pseudo-labels on the stage-3 images: written at the calibrated stage-2 accept cut, read back as v2's
training data beside the people's masks, and never in the dataset's shards."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def ws_and_v1(smoke_cfg, smoke_data_dir, tmp_path):
    from sam_engine.engine.workspace import Workspace
    from sam_engine.model import build_sam
    from sam_engine.model.checkpoint import save_checkpoint

    ws = Workspace(smoke_cfg.model_copy(update={"data_dir": smoke_data_dir}, deep=True))
    ws.cfg.train.v2_pseudo_labels = True  # off by default: these tests are about what it does when on
    ckpt = tmp_path / "v1.pt"
    save_checkpoint(build_sam("tiny", seed=1), ckpt)
    return ws, ws.model_store.put("model_v1", ckpt)


def _store_calibration(ws, ref, cuts: dict[str, float]) -> None:
    """A stored gold evaluation of ``ref`` whose calibration keeps predicted IoU above ``cuts[target]``."""
    from sam_engine.amg.calibration import Calibration, Thresholds
    from sam_engine.engine import models

    def cal(cut: float) -> dict:
        return Calibration(Thresholds(cut, 0.0), 0.9, 0.9, 1, 0.9, 1.0, 1, 0.9, 1.0).as_dict()

    path = models._evaluation_path(ws, ref, True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"calibration": {t: cal(c) for t, c in cuts.items()}}))


@pytest.mark.slow
def test_pseudo_labels_keep_v1s_stage_2_accept_cut_and_are_rewritten_byte_for_byte(ws_and_v1):
    from sam_engine.engine.pseudo_labels import pseudo_label_corpus, pseudo_label_dir, write_pseudo_labels
    from sam_engine.engine.splits import stage_split
    from sam_engine.stage3 import read_manifest

    ws, v1 = ws_and_v1
    images = stage_split(ws.pool, ws.cfg)[3][:3]
    # stage 3's cut keeps nothing: masks come only through the stage-2 accept calibration
    _store_calibration(ws, v1, {"stage2_accept": -1.0, "stage3": 2.0})
    info = write_pseudo_labels(ws, images, v1)
    assert info["masks"] > 0 and info["images"] == 3 and info["model_sha256"] == v1.sha256
    entry = read_manifest(pseudo_label_dir(ws))["shards"]["sa_000000.tar"]
    assert entry["amg_params"]["pred_iou_thresh"] == -1.0
    assert not ws.shard_paths()  # not the dataset: stage 3's shard folder stays empty
    corpus = pseudo_label_corpus(info, ws)
    assert corpus.num_masks == info["masks"]
    assert sorted(im.image_id for im in corpus.images) == sorted(r.image_id for r in images)
    again = write_pseudo_labels(ws, images, v1)
    assert again["sha256"] == info["sha256"]

    _store_calibration(ws, v1, {"stage2_accept": 2.0, "stage3": -1.0})
    none_kept = write_pseudo_labels(ws, images, v1)
    assert none_kept["masks"] == 0 and pseudo_label_corpus(none_kept, ws).num_masks == 0


def test_pseudo_labels_off_or_without_images_write_nothing(ws_and_v1):
    from sam_engine.engine.pseudo_labels import pseudo_label_corpus, pseudo_label_dir, write_pseudo_labels
    from sam_engine.engine.splits import stage_split

    ws, v1 = ws_and_v1
    assert write_pseudo_labels(ws, [], v1)["path"] is None
    ws.cfg.train.v2_pseudo_labels = False
    info = write_pseudo_labels(ws, stage_split(ws.pool, ws.cfg)[3][:2], v1)
    assert info["path"] is None and info["masks"] == 0
    assert not pseudo_label_dir(ws).exists() and pseudo_label_corpus(info, ws).num_masks == 0


def test_a_damaged_pseudo_label_shard_is_refused_with_its_file(ws_and_v1):
    from sam_engine.data.errors import DataError
    from sam_engine.engine.pseudo_labels import pseudo_label_corpus, write_pseudo_labels
    from sam_engine.engine.splits import stage_split

    ws, v1 = ws_and_v1
    _store_calibration(ws, v1, {"stage2_accept": -1.0})
    info = write_pseudo_labels(ws, stage_split(ws.pool, ws.cfg)[3][:3], v1)
    assert info["masks"] > 0
    with open(info["path"], "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match="sa_000000.tar"):
        pseudo_label_corpus(info, ws)


@pytest.mark.slow
def test_v2_learns_from_the_people_masks_and_v1s_pseudo_labels(ws_and_v1):
    """v2's corpus: the stage-1/2 masks people made (stage 2's accepted proposals left out by default) with the
    pseudo-labels on other images."""
    from store_masks import box, people_and_proposal

    from sam_engine.data.corpus import MaskCorpus
    from sam_engine.engine.training_data import v2_corpus

    ws, _ = ws_and_v1
    a, b, c = ws.pool.images[:3]
    people_and_proposal(ws, a, b)
    pseudo_mask = {"id": 900, "image_id": c.image_id, "segmentation": box(c, 30, 40, 30, 40), "iscrowd": 0}
    pseudo = MaskCorpus(images=[c], annotations={c.image_id: [pseudo_mask, dict(pseudo_mask, id=901)]})
    corpus = v2_corpus(ws, pseudo)
    assert [im.image_id for im in corpus.images] == sorted([a.image_id, b.image_id, c.image_id])
    assert [len(corpus.masks_for(i.image_id)) for i in (a, b, c)] == [1, 1, 2]
    ws.cfg.train.v2_people_masks_only = False
    assert len(v2_corpus(ws, MaskCorpus(images=[], annotations={})).masks_for(b.image_id)) == 2
