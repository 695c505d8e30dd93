"""Task queue: expertise and load, overlap share, honeypot rate and placement, determinism, store wiring."""

from __future__ import annotations

import pandas as pd
import pytest

from sam_engine.workforce.queue import (
    Annotator,
    ImageItem,
    QueueConfig,
    create_review_tasks,
    create_stage_tasks,
    plan_summary,
    plan_tasks,
)

REGIONS = ["north", "south", "east"]


def images(n: int = 120) -> list[ImageItem]:
    return [ImageItem(i, REGIONS[i % 3]) for i in range(n)]


def team() -> list[Annotator]:
    return [
        Annotator("n", frozenset({"north"})),
        Annotator("s", frozenset({"south"})),
        Annotator("e", frozenset({"east"})),
        Annotator("g", frozenset()),
    ]


NO_EXTRAS = QueueConfig(overlap_fraction=0.0, honeypot_rate=0.0)


def test_expertise_preferred_within_load_slack():
    rows = plan_tasks(
        images(),
        team(),
        stage=1,
        config=QueueConfig(overlap_fraction=0.0, honeypot_rate=0.0, expertise_slack=3),
    )
    df = pd.DataFrame(rows)
    region = {im.image_id: im.region for im in images()}
    df["region"] = df["image_id"].map(region)
    for a, r in (("n", "north"), ("s", "south"), ("e", "east")):
        mine = df[df["annotator_id"] == a]
        assert (mine["region"] == r).mean() > 0.9, a
    loads = df.groupby("annotator_id").size()
    assert loads.max() - loads.min() <= 3 + 1  # the slack bounds the imbalance
    # slack 0: load first, everybody within one task of each other
    cfg0 = QueueConfig(overlap_fraction=0.0, honeypot_rate=0.0, expertise_slack=0)
    loads0 = pd.DataFrame(plan_tasks(images(), team(), stage=1, config=cfg0)).groupby("annotator_id").size()
    assert loads0.max() - loads0.min() <= 1


def test_existing_load_is_counted():
    busy = [Annotator("busy", load=30), Annotator("free", load=0)]
    df = pd.DataFrame(plan_tasks(images(40), busy, stage=1, config=NO_EXTRAS))
    counts = df.groupby("annotator_id").size()
    assert counts["free"] == 35 and counts["busy"] == 5  # free catches up to 30, then they alternate


@pytest.mark.parametrize("fraction,k", [(0.25, 3), (0.1, 2), (0.5, 4)])
def test_overlap_share_and_distinct_annotators(fraction, k):
    cfg = QueueConfig(overlap_fraction=fraction, overlap_k=k, honeypot_rate=0.0, seed=3)
    rows = plan_tasks(images(), team(), stage=1, config=cfg)
    df = pd.DataFrame(rows)
    per_image = df.groupby("image_id")["annotator_id"].agg(["size", "nunique"])
    assert (per_image["size"] == per_image["nunique"]).all()  # never twice the same annotator
    assert set(per_image["size"]) == {1, k}
    assert plan_summary(rows)["overlap_share"] == pytest.approx(round(fraction * 120) / 120)


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.15])
def test_honeypot_rate_and_placement(rate):
    gold = list(range(1000, 1030))
    cfg = QueueConfig(overlap_fraction=0.2, honeypot_rate=rate, seed=11)
    rows = plan_tasks(images(), team(), stage=1, gold_images=gold, config=cfg)
    summary = plan_summary(rows)
    assert summary["honeypot_share"] == pytest.approx(rate, abs=1.0 / summary["tasks"])  # one task's step
    if rate == 0.1:
        assert 0.05 <= summary["honeypot_share"] <= 0.15
    df = pd.DataFrame(rows)
    honey = df[df["kind"] == "honeypot"]
    assert set(honey["image_id"]) <= set(gold)
    assert not honey.duplicated(["annotator_id", "image_id"]).any()  # no gold image twice to one person
    # Indistinguishable: same batch / status / stage, a priority some ordinary task of theirs also has,
    # and not all at the end or the start of the annotator's list.
    for _, mine in df.groupby("annotator_id", sort=False):
        work = mine[mine["kind"] != "honeypot"]
        assert set(mine.loc[mine["kind"] == "honeypot", "priority"]) <= set(work["priority"]) | {
            work["priority"].min()
        }
        assert list(mine["priority"]) == sorted(mine["priority"], reverse=True)
    positions = [
        i / len(mine)
        for _, mine in df.groupby("annotator_id")
        for i, kind in enumerate(mine["kind"])
        if kind == "honeypot"
    ]
    assert min(positions) < 0.3 and max(positions) > 0.7


def test_seeded_and_validated():
    gold = [900, 901, 902]
    a = plan_tasks(images(), team(), stage=1, gold_images=gold, config=QueueConfig(seed=5))
    b = plan_tasks(images(), team(), stage=1, gold_images=gold, config=QueueConfig(seed=5))
    c = plan_tasks(images(), team(), stage=1, gold_images=gold, config=QueueConfig(seed=6))
    assert a == b and a != c
    with pytest.raises(ValueError, match="gold images"):
        plan_tasks(images(), team(), stage=1, config=QueueConfig(honeypot_rate=0.1))
    with pytest.raises(ValueError, match="honeypot_rate"):
        QueueConfig(honeypot_rate=0.6)
    with pytest.raises(ValueError, match="no active annotators"):
        plan_tasks(images(), [], stage=1, config=NO_EXTRAS)
    with pytest.raises(ValueError, match="duplicate image"):
        plan_tasks(images(3) + images(1), team(), stage=1, config=NO_EXTRAS)


def test_caller_priorities_set_the_order():
    items = [ImageItem(i, "north", priority=float(p)) for i, p in enumerate([1, 5, 3])]
    rows = plan_tasks(items, [Annotator("a")], stage=2, kind="complete", config=NO_EXTRAS)
    assert [r["image_id"] for r in rows] == [1, 2, 0]
    assert {r["kind"] for r in rows} == {"complete"}


# ------------------------------------------------------------------------------------------ with the store


@pytest.fixture
def store(tmp_path):
    from sam_engine.quality.store import QualityStore

    s = QualityStore(tmp_path / "q.duckdb")
    s.add_images(
        [
            {"image_id": i, "file_name": f"{i}.png", "width": 32, "height": 32, "region": REGIONS[i % 3]}
            for i in range(30)
        ]
        + [
            {"image_id": 500 + i, "file_name": f"g{i}.png", "width": 32, "height": 32, "source": "gold"}
            for i in range(5)
        ]
    )
    s.add_annotator("n", expertise=["north"])
    s.add_annotator("s", expertise=["south"])
    s.add_annotator("off", expertise=["north"], active=False)
    s.add_annotator("r1", role="reviewer")
    s.add_annotator("r2", role="reviewer", expertise=["east"])
    yield s
    s.close()


def test_create_stage_tasks_in_the_store(store):
    cfg = QueueConfig(overlap_fraction=0.2, overlap_k=2, honeypot_rate=0.1, seed=1)
    ids = create_stage_tasks(store, 1, list(range(30)), gold_images=range(500, 505), config=cfg, batch="b1")
    tasks = store.tasks()
    assert len(ids) == len(tasks) and set(tasks["batch"]) == {"b1"}
    assert set(tasks["annotator_id"]) == {"n", "s"}  # the inactive annotator gets nothing, reviewers neither
    assert 0.05 <= (tasks["kind"] == "honeypot").mean() <= 0.15
    first = store.tasks_for("n", status="pending")
    assert [t["priority"] for t in first] == sorted((t["priority"] for t in first), reverse=True)
    # A second batch sees the open load and the gold images already shown.
    before = store.tasks()
    create_stage_tasks(store, 1, list(range(30)), gold_images=range(500, 505), config=cfg, batch="b2")
    after = store.tasks()
    honey = after[after["kind"] == "honeypot"]
    assert len(after) > len(before)
    for _, mine in honey.groupby("annotator_id"):
        if len(mine) <= 5:
            assert not mine["image_id"].duplicated().any()
    with pytest.raises(ValueError, match="not in the store"):
        create_stage_tasks(store, 1, [12345], config=NO_EXTRAS)


def test_review_tasks_go_to_reviewers_by_expertise_and_load(store):
    ids = create_review_tasks(store, [(2, None), (5, None), (8, None), (0, None), (3, None)], stage=1)
    tasks = pd.DataFrame([store.get_task(t) for t in ids])
    assert set(tasks["kind"]) == {"review"}
    assert set(tasks["annotator_id"]) == {"r1", "r2"}
    east = tasks[tasks["image_id"].isin([2, 5, 8])]
    assert (east["annotator_id"] == "r2").all()  # 2, 5, 8 are east: r2's expertise, within the slack
    # No reviewer at all: the tasks wait unassigned.
    store.set_annotator_active("r1", False)
    store.set_annotator_active("r2", False)
    (t,) = create_review_tasks(store, [1], stage=1)
    assert store.get_task(t)["annotator_id"] is None
