"""Model versions v0..v3 and their held-out evaluations, with the no-regression gate (blocking where the next
stage uses the model: v1, v2)."""

import json

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from assets._common import model_metadata, numeric, picture_metadata, workspace
from assets.resources import EngineResource
from sam_engine.data.corpora import load_public
from sam_engine.engine import pseudo_labels, registry, training_data
from sam_engine.engine.models import (
    carry_forward,
    evaluate_version,
    released_version,
    stored_evaluation,
    train_version,
)
from sam_engine.evaluation.regression import no_regression
from sam_engine.model_store import ModelRef

GROUP = "models"


@asset(
    group_name=GROUP,
    deps=["public_corpus"],
    description="v0: the released public-data checkpoint (released/, `make pretrain`) when its recipe and "
    "corpus match this configuration, else pretrained here from scratch on the public corpus.",
)
def model_v0(context: AssetExecutionContext, engine: EngineResource) -> Output[ModelRef]:
    ws = workspace(engine)
    released = released_version(ws, "model_v0", log_fn=context.log.info)
    if released is not None:
        ref, _ = released
        return Output(
            ref,
            metadata={
                **model_metadata(ref),
                **picture_metadata(ws, ref, context.log),
                "trained_now": False,
                "released": True,
            },
        )
    train = load_public(ws.cfg, "train")
    val = load_public(ws.cfg, "val") if not ws.cfg.corpus.public_coco_json else None
    ref, trained = train_version(ws, "model_v0", train, None, val_corpus=val, log_fn=context.log.info)
    return Output(
        ref,
        metadata={
            **model_metadata(ref),
            **picture_metadata(ws, ref, context.log),
            "trained_now": trained,
            "released": False,
        },
    )


@asset(
    group_name=GROUP,
    ins={"model_v0": AssetIn()},
    deps=["stage1_masks"],
    description="v1: v0 fine-tuned on the stage-1 (assisted-manual) masks.",
)
def model_v1(context: AssetExecutionContext, engine: EngineResource, model_v0: ModelRef) -> Output[ModelRef]:
    ws = workspace(engine)
    ref, trained = train_version(
        ws, "model_v1", training_data.store_masks_corpus(ws, [1]), model_v0, log_fn=context.log.info
    )
    return Output(
        ref,
        metadata={**model_metadata(ref), **picture_metadata(ws, ref, context.log), "trained_now": trained},
    )


@asset(
    group_name=GROUP,
    ins={"model_v1": AssetIn(), "v1_pseudo_labels": AssetIn()},
    deps=["stage1_masks", "stage2_masks"],
    description="v2: v1 fine-tuned on stage-1 and stage-2 masks (with train.v2_people_masks_only, the default, "
    "the masks people made: stage 2's model proposals are left out), plus v1's pseudo-labels on the stage-3 "
    "images when train.v2_pseudo_labels is on (off by default).",
)
def model_v2(
    context: AssetExecutionContext, engine: EngineResource, model_v1: ModelRef, v1_pseudo_labels: dict
) -> Output[ModelRef]:
    ws = workspace(engine)
    pseudo = pseudo_labels.pseudo_label_corpus(v1_pseudo_labels, ws)
    corpus = training_data.v2_corpus(ws, pseudo)
    ref, trained = train_version(ws, "model_v2", corpus, model_v1, log_fn=context.log.info)
    return Output(
        ref,
        metadata={
            **model_metadata(ref),
            **picture_metadata(ws, ref, context.log),
            "trained_now": trained,
            "pseudo_label_masks": pseudo.num_masks,
        },
    )


@asset(
    group_name=GROUP,
    ins={"model_v2": AssetIn()},
    deps=["sa1b_shards", "stage1_masks", "stage2_masks"],
    description="v3: v2 fine-tuned on the SA-1B shards of stage 3 plus the stage-1/2 masks (with "
    "train.v3_people_masks_only, the default, the masks people made: stage 2's model proposals are left out); v2's "
    "weights carried forward (a new version, no training) when stage 3 kept fewer masks than "
    "stages.retrain_min_new_masks.",
)
def model_v3(context: AssetExecutionContext, engine: EngineResource, model_v2: ModelRef) -> Output[ModelRef]:
    from sam_engine.data.sa1b import read_shards

    ws = workspace(engine)
    shards = read_shards(ws.shard_paths(), cache_dir=ws.cfg.data_dir / "shard_cache")
    floor = ws.cfg.stages.retrain_min_new_masks
    if shards.num_masks < floor:
        # nothing new to learn from: another fine-tune on the stage-1/2 masks only adds noise
        reason = f"stage 3 kept {shards.num_masks} masks, under the retrain floor of {floor}"
        ref, _ = carry_forward(ws, "model_v3", model_v2, reason, log_fn=context.log.info)
        trained = False
    else:
        corpus = training_data.v3_corpus(ws, shards)
        ref, trained = train_version(ws, "model_v3", corpus, model_v2, log_fn=context.log.info)
    return Output(
        ref,
        metadata={
            **model_metadata(ref),
            **picture_metadata(ws, ref, context.log),
            "trained_now": trained,
            "carried_from": ref.data.get("carried_from") or "",
            "shard_images": len(shards.images),
            "shard_masks": shards.num_masks,
        },
    )


def _eval_asset(version: int):
    name = f"eval_model_v{version}"

    @asset(
        name=name,
        group_name="evaluation",
        ins={"model": AssetIn(f"model_v{version}")},
        deps=["gold_set"],
        description=f"Held-out gold-set evaluation of model v{version}: click protocol (mIoU@k, NoC) per "
        "region"
        + (" and the automatic masks' calibration and recall." if version else " (v0 proposes no masks)."),
    )
    def _evaluate(context: AssetExecutionContext, engine: EngineResource, model: ModelRef) -> Output[dict]:
        ws = workspace(engine)
        # v0's automatic masks feed no stage (stage 2 proposes with v1, stage 3 with v2): no calibration
        metrics = evaluate_version(ws, model, with_amg=version > 0, log_fn=context.log.info)
        by_region = metrics.get("by_region", {})
        return Output(
            metrics,
            metadata={
                **numeric(metrics),
                "model": model.name,
                "registered_version": model.registered_version or "",
                "by_region": MetadataValue.json(json.loads(json.dumps(by_region, default=float))),
                **picture_metadata(ws, model, context.log),
            },
        )

    return _evaluate


eval_assets = [_eval_asset(v) for v in range(4)]


def _gate(version: int):
    @asset_check(
        asset=f"eval_model_v{version}",
        name=f"v{version}_not_worse_than_v{version - 1}",
        additional_ins={
            "previous": AssetIn(f"eval_model_v{version - 1}"),
            "model": AssetIn(f"model_v{version}"),
        },
        # v1 and v2 feed the next stage, so a regression stops the engine there; v3 feeds no stage, so its
        # verdict goes to the report (failed checks first) instead of withholding the report
        blocking=version < 3,
        description=f"v{version} is not worse than v{version - 1} on the gold set: 1-click IoU and NoC@90, paired "
        "over the same objects, fail only when the lower confidence bound of the loss exceeds the tolerance"
        + (" (blocking: the next stage uses this model)." if version < 3 else " (reported, not blocking)."),
    )
    def _no_regression(
        context: AssetCheckExecutionContext, engine: EngineResource, previous: dict, model: ModelRef
    ) -> AssetCheckResult:
        ws = workspace(engine)
        current = stored_evaluation(ws, model)
        if current is None or not previous.get("per_object") or not current.get("per_object"):
            return AssetCheckResult(
                passed=False,
                severity=AssetCheckSeverity.ERROR,
                description=f"no per-object gold evaluation of v{version} and v{version - 1} to compare; "
                "re-materialize both evaluations",
            )
        verdict = no_regression(ws.cfg.eval, previous["per_object"], current["per_object"])
        context.log.info(f"v{version} against v{version - 1}: {verdict.summary()}")
        registry.record_gate(ws, model, verdict.passed, verdict.summary())  # MLflow: gate, `champion` alias
        return AssetCheckResult(
            passed=verdict.passed,
            severity=AssetCheckSeverity.ERROR,
            metadata=verdict.as_metadata(),
            description=f"v{version} against v{version - 1}: {verdict.summary()}",
        )

    return _no_regression


gate_checks = [_gate(v) for v in (1, 2, 3)]
