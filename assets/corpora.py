"""Corpora assets: the public corpus, the target pool (+ its hidden ground truth) and the gold set."""

from dagster import AssetExecutionContext, AssetOut, MetadataValue, Output, multi_asset

from assets.resources import EngineResource
from sam_engine.data import corpora as corpora_lib
from sam_engine.data.schemas import images_frame, masks_frame
from sam_engine.storage import data_cache_dir
from sam_engine.visualize import corpus_preview_markdown

GROUP = "corpora"


@multi_asset(
    outs={
        "public_corpus": AssetOut(
            description="Public data (domain A, COCO format): pretraining data for model v0."
        ),
        "target_pool": AssetOut(description="Unlabelled images the engine annotates, with region metadata."),
        "pool_ground_truth": AssetOut(
            description="Hidden ground truth of the pool: read only by simulated "
            "annotators and evaluation, never by the model paths."
        ),
        "gold_set": AssetOut(
            description="Expert-labelled held-out domain-B set: honeypots and the model test set."
        ),
    },
    group_name=GROUP,
)
def corpora(context: AssetExecutionContext, engine: EngineResource):
    """Generate the embedded default corpora (or ingest the configured real data) and validate their tables."""
    cfg = engine.config()
    manifest = None
    if not (cfg.corpus.public_coco_json and cfg.corpus.pool_images_dir):
        manifest = corpora_lib.generate_corpora(cfg, log=context.log.info)

    public = corpora_lib.load_public(cfg, "train")
    public_val = corpora_lib.load_public(cfg, "val") if not cfg.corpus.public_coco_json else None
    pool = corpora_lib.load_pool(cfg)
    pool_gt = corpora_lib.load_pool_ground_truth(cfg)
    gold = corpora_lib.load_gold(cfg)
    for name, corpus in (("public", public), ("pool", pool), ("gold", gold)):
        images_frame(corpus)
        if corpus.annotations:
            masks_frame(corpus)
        if len(corpus.quarantine):
            context.log.warning(
                f"{name}: {len(corpus.quarantine)} records quarantined:\n{corpus.quarantine.summary()}"
            )

    def meta(corpus, extra=None):
        m = {
            "images": len(corpus.images),
            "masks": corpus.num_masks,
            "quarantined": len(corpus.quarantine),
            "source": corpus.source,
        }
        if manifest:
            m["settings"] = MetadataValue.json(manifest["settings"])
        m.update(extra or {})
        return m

    regions: dict[str, int] = {}
    for im in pool.images:
        regions[im.region or "none"] = regions.get(im.region or "none", 0) + 1
    yield Output(
        {"train": public.source, "val": public_val.source if public_val else None},
        "public_corpus",
        metadata=meta(
            public,
            {
                "val_images": len(public_val.images) if public_val else 0,
                "preview": MetadataValue.md(corpus_preview_markdown(public, n=6)),
            },
        ),
    )
    yield Output(
        {"images": pool.source},
        "target_pool",
        metadata=meta(
            pool,
            {
                "regions": MetadataValue.json(regions),
                "preview": MetadataValue.md(
                    corpus_preview_markdown(pool, n=6, cache_dir=data_cache_dir(cfg.data_dir))
                ),
            },
        ),
    )
    yield Output(
        {"annotations": pool_gt.source if pool_gt else None},
        "pool_ground_truth",
        metadata={"masks": pool_gt.num_masks if pool_gt else 0},
    )
    yield Output(
        {"annotations": gold.source},
        "gold_set",
        metadata=meta(gold, {"preview": MetadataValue.md(corpus_preview_markdown(gold, n=6))}),
    )
