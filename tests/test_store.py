"""QualityStore: schema and migrations, idempotent durable commits, transactions, history / revert, review,
read-only access from another process while the writer runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sam_engine.data import rle as rle_utils
from sam_engine.data.errors import DataError
from sam_engine.quality import lease, migrations
from sam_engine.quality.migrations import SCHEMA_VERSION
from sam_engine.quality.store import QualityStore
from sam_engine.quality.tokens import hash_secret

REPO = Path(__file__).resolve().parent.parent


def _mask(h: int = 12, w: int = 16, y0: int = 2, y1: int = 6, x0: int = 3, x1: int = 9) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _commit(store: QualityStore, mask: np.ndarray | None = None, **kw) -> int:
    args = dict(
        task_id=kw.pop("task_id", None),
        image_id=1,
        annotator_id="alice",
        stage=1,
        source="human",
        rle=rle_utils.encode(_mask() if mask is None else mask),
        predicted_iou=0.9,
        clicks=3,
        seconds=4.5,
    )
    args.update(kw)
    return store.commit_mask(**args)


@pytest.fixture
def store(tmp_path: Path) -> QualityStore:
    s = QualityStore(tmp_path / "q.duckdb")
    s.add_images(
        [{"image_id": 1, "file_name": "a.png", "width": 16, "height": 12, "region": "r1", "source": "pool"}]
    )
    s.add_annotator("alice")
    yield s
    s.close()


def _run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# ------------------------------------------------------------------------------------------ schema
def test_schema_version_recorded_once(tmp_path: Path) -> None:
    s = QualityStore(tmp_path / "q.duckdb")
    assert s.schema_version == SCHEMA_VERSION
    s.close()
    s = QualityStore(tmp_path / "q.duckdb")
    rows = s.query("SELECT version FROM schema_version")
    assert rows["version"].tolist() == [SCHEMA_VERSION]
    tables = set(s.query("SELECT table_name FROM information_schema.tables")["table_name"])
    assert {"images", "annotators", "tasks", "masks", "events", "reviews", "gold_scores"} <= tables
    s.close()


def test_new_migration_is_applied_on_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    QualityStore(tmp_path / "q.duckdb").close()
    extra = (SCHEMA_VERSION + 1, "add a note column", ["ALTER TABLE masks ADD COLUMN note VARCHAR"])
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, extra])
    s = QualityStore(tmp_path / "q.duckdb")
    assert s.schema_version == SCHEMA_VERSION + 1
    assert "note" in set(s.query("DESCRIBE masks")["column_name"])
    s.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    QualityStore(tmp_path / "q.duckdb").close()
    con = duckdb.connect(str(tmp_path / "q.duckdb"))
    con.execute("INSERT INTO schema_version VALUES (?, now(), 'from the future')", [SCHEMA_VERSION + 5])
    con.close()
    with pytest.raises(RuntimeError, match="newer than this code"):
        QualityStore(tmp_path / "q.duckdb")


def test_read_only_store(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        QualityStore(tmp_path / "missing.duckdb", read_only=True)
    QualityStore(tmp_path / "q.duckdb").close()
    ro = QualityStore(tmp_path / "q.duckdb", read_only=True)
    with pytest.raises(PermissionError):
        ro.add_images([{"image_id": 1, "file_name": "a", "width": 1, "height": 1}])
    ro.close()


# ------------------------------------------------------------------------------------ annotators / tasks
def test_annotator_token_is_stored_hashed(store: QualityStore) -> None:
    annotator_id, token = store.add_annotator("bob", "reviewer", expertise=["r1"], profile={"skill": 0.8})
    row = store.get_annotator(annotator_id, with_secret=True)
    secret = token.rsplit(".", 1)[1]
    assert token.startswith("bob.") and len(secret) >= 40
    assert row["token_hash"] == hash_secret(secret) and secret not in json.dumps(row, default=str)
    assert row["expertise"] == ["r1"] and row["profile"] == {"skill": 0.8}
    assert "token_hash" not in store.get_annotator("bob")
    with pytest.raises(DataError, match="already exists"):
        store.add_annotator("bob")
    _, token2 = store.add_annotator("bob", "reviewer", exist_ok=True)
    assert token2 != token
    assert store.get_annotator("bob", with_secret=True)["token_hash"] == hash_secret(token2.rsplit(".", 1)[1])
    with pytest.raises(DataError, match="role"):
        store.add_annotator("carol", "boss")


def test_tasks_order_and_status(store: QualityStore) -> None:
    ids = store.create_tasks(
        [
            {"image_id": 1, "stage": 1, "annotator_id": "alice", "priority": 1.0},
            {"image_id": 1, "stage": 1, "annotator_id": "alice", "priority": 5.0, "batch": "b1"},
            {"image_id": 1, "stage": 2, "kind": "review", "annotator_id": "bob"},
        ]
    )
    assert len(set(ids)) == 3
    assert [t["task_id"] for t in store.tasks_for("alice")] == [ids[1], ids[0]]
    store.set_task_status(ids[1], "done")
    assert [t["task_id"] for t in store.tasks_for("alice", status="pending")] == [ids[0]]
    assert store.get_task(ids[1])["status"] == "done" and store.get_task(ids[1])["batch"] == "b1"
    with pytest.raises(DataError, match="status"):
        store.set_task_status(ids[0], "finished")
    with pytest.raises(KeyError):
        store.set_task_status(9999, "done")
    with pytest.raises(DataError, match="kind"):
        store.create_tasks([{"image_id": 1, "stage": 1, "kind": "draw"}])


# ------------------------------------------------------------------------------------------- masks
def test_commit_mask_fields_and_event(store: QualityStore) -> None:
    m = _mask()
    mask_id = _commit(store, m, request_id="r-1", prompt={"points": [[4, 3, 1]], "box": None})
    df = store.masks()
    assert df["mask_id"].tolist() == [mask_id]
    row = df.iloc[0]
    assert row["area"] == m.sum() and [row.bbox_x, row.bbox_y, row.bbox_w, row.bbox_h] == [3, 2, 6, 4]
    assert np.array_equal(rle_utils.decode(row["rle"]), m)
    assert json.loads(row["segmentation"]) == row["rle"]
    events = store.events()
    assert events["kind"].tolist() == ["commit"] and events["mask_id"].tolist() == [mask_id]


def test_commit_mask_is_idempotent_by_request_id(store: QualityStore) -> None:
    a = _commit(store, request_id="same")
    b = _commit(store, _mask(x0=0, x1=2), request_id="same")
    c = _commit(store, request_id="other")
    assert a == b != c
    assert len(store.masks()) == 2 and len(store.events()) == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rle": rle_utils.encode(np.ones((5, 5), bool))}, "segmentation"),
        ({"rle": rle_utils.encode(np.zeros((12, 16), bool))}, "segmentation"),
        ({"rle": {"size": [12, 16], "counts": "??bad"}}, "segmentation"),
        ({"image_id": 99}, "image_id"),
        ({"source": "robot"}, "source"),
    ],
)
def test_commit_mask_rejects_bad_input(store: QualityStore, kwargs: dict, field: str) -> None:
    with pytest.raises(DataError) as err:
        _commit(store, **kwargs)
    assert err.value.field == field
    assert len(store.masks(status=None)) == 0


def test_transaction_rolls_back_everything(store: QualityStore) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction():
            _commit(store, request_id="x1")
            _commit(store, request_id="x2")
            raise RuntimeError("boom")
    assert len(store.masks(status=None)) == 0 and len(store.events()) == 0
    with store.transaction():
        _commit(store, request_id="x1")
        _commit(store, request_id="x2")
    assert len(store.masks()) == 2


def test_masks_filters(store: QualityStore) -> None:
    a = _commit(store, stage=1)
    b = _commit(store, stage=2, status="pending_review", source="model", annotator_id=None)
    assert store.masks()["mask_id"].tolist() == [a]
    assert store.masks(status="pending_review")["mask_id"].tolist() == [b]
    assert store.masks(status=None)["mask_id"].tolist() == [a, b]
    assert store.masks(stage=2, status=["accepted", "pending_review"])["mask_id"].tolist() == [b]
    assert store.masks(annotator_id="alice")["mask_id"].tolist() == [a]
    with pytest.raises(DataError):
        store.masks(status="review")


def test_the_named_reads_that_replace_sql_outside_the_store(store: QualityStore) -> None:
    """What the sensor, stage 2, mask history and image access ask the store, each in one named call."""
    store.add_images(
        [{"image_id": 2, "file_name": "b.png", "width": 16, "height": 12, "region": "r1", "source": "pool"}]
    )
    a = _commit(store, stage=1)
    b = _commit(store, stage=2, image_id=2, status="pending_review", source="model", annotator_id=None)
    assert store.mask_sources()[["mask_id", "stage", "source"]].values.tolist() == [[a, 1, "human"]]
    assert store.mask_sources(status=None)["mask_id"].tolist() == [a, b]
    assert store.image_ids_with_masks(2, source="model") == {2}
    assert store.image_ids_with_masks(2, source="human") == set() and store.image_ids_with_masks(1) == {1}
    assert store.reviewed_mask_ids() == set()
    store.review(b, "rita", "accept")
    assert store.reviewed_mask_ids() == {b}
    fixed = store.review(a, "rita", "fix", fixed_rle=rle_utils.encode(_mask(x1=8)))["fixed_mask_id"]
    assert store.reviewed_mask_ids() == {b, a}  # the event names the mask that was fixed
    versions = store.mask_versions(a, ["mask_id", "version", "status"])
    assert versions.values.tolist() == [[a, 1, "superseded"], [fixed, 2, "accepted"]]
    with pytest.raises(ValueError, match="not columns"):
        store.mask_versions(a, ["mask_id; DROP TABLE masks"])
    store.create_tasks([{"image_id": 2, "stage": 1, "annotator_id": "alice"}])
    assert store.has_task_on_image("alice", 2) and not store.has_task_on_image("alice", 1)
    assert not store.has_task_on_image("bob", 2)


def test_concurrent_commits_from_threads(store: QualityStore) -> None:
    errors = []

    def work(k: int) -> None:
        try:
            for i in range(10):
                _commit(store, request_id=f"t{k}-{i}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    df = store.masks()
    assert len(df) == 40 and df["mask_id"].is_unique and len(store.events()) == 40


# ---------------------------------------------------------------------------------- history / revert
def test_revert_walks_back_through_changes(store: QualityStore) -> None:
    first = _commit(store)
    fixed = store.review(first, "rita", "fix", "tighter edge", fixed_rle=rle_utils.encode(_mask(x1=8)))
    assert fixed["status"] == "superseded"
    new_id = fixed["fixed_mask_id"]
    version = store.get_mask(new_id)
    assert version["version"] == 2 and version["parent_mask_id"] == first and version["manual_fix"]
    assert store.masks()["mask_id"].tolist() == [new_id]

    out = store.revert(new_id, "rita")  # undo the fix: old version back, new one reverted
    assert {c["mask_id"]: c["after"] for c in out["changes"]} == {first: "accepted", new_id: "reverted"}
    assert store.masks()["mask_id"].tolist() == [first]

    store.revert(first, "alice")  # undo the commit itself
    assert store.masks().empty
    assert store.get_mask(first)["status"] == "reverted"
    with pytest.raises(ValueError, match="nothing left to revert"):
        store.revert(first, "alice")

    kinds = [(e["kind"], e["reverted"]) for e in store.history(new_id)]
    assert kinds == [("commit", True), ("review_fix", True), ("revert", False), ("revert", False)]
    assert store.history(first) == store.history(new_id)


def test_review_verdicts(store: QualityStore) -> None:
    pending = _commit(store, status="pending_review", source="model", annotator_id=None)
    review_task = store.create_tasks([{"image_id": 1, "stage": 1, "kind": "review", "annotator_id": "rita"}])[
        0
    ]
    out = store.review(pending, "rita", "accept", task_id=review_task)
    assert out["status"] == "accepted" and store.get_task(review_task)["status"] == "done"
    store.revert(pending, "rita")
    assert store.get_mask(pending)["status"] == "pending_review"
    store.review(pending, "rita", "reject", "not an object")
    assert store.get_mask(pending)["status"] == "rejected"
    reviews = store.reviews()
    assert reviews["verdict"].tolist() == ["accept", "reject"]
    assert reviews["comment"].tolist()[1] == "not an object"
    with pytest.raises(ValueError, match="fixed_rle"):
        store.review(pending, "rita", "fix")
    with pytest.raises(DataError, match="verdict"):
        store.review(pending, "rita", "maybe")
    superseded = store.review(pending, "rita", "fix", fixed_rle=rle_utils.encode(_mask()))
    with pytest.raises(ValueError, match="superseded"):
        store.review(superseded["mask_id"], "rita", "accept")


def test_comment_and_gold_scores(store: QualityStore) -> None:
    mask_id = _commit(store)
    event = store.comment("rita", "check the left edge", mask_id=mask_id)
    assert store.history(mask_id)[-1]["event_id"] == event
    assert store.history(mask_id)[-1]["payload"] == {"text": "check the left edge"}
    with pytest.raises(KeyError):
        store.comment("rita", "x", mask_id=12345)
    store.add_gold_scores([{"annotator_id": "alice", "mask_id": mask_id, "gold_ann_id": 7, "iou": 0.83}])
    store.add_gold_score(annotator_id="alice", mask_id=mask_id, gold_ann_id=8, iou=0.5)
    assert store.gold_scores()["iou"].tolist() == [0.83, 0.5]


# ----------------------------------------------------------------------------- durability / processes
def test_acknowledged_commit_survives_a_killed_process(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    code = f"""
        import os, signal, numpy as np
        from sam_engine.quality.store import QualityStore
        from sam_engine.data import rle
        s = QualityStore({str(db)!r})
        s.add_images([{{"image_id": 1, "file_name": "a.png", "width": 16, "height": 12}}])
        m = np.zeros((12, 16), bool); m[2:5, 2:5] = True
        for i in range(5):
            mid = s.commit_mask(task_id=None, image_id=1, annotator_id="a", stage=1, source="human",
                                rle=rle.encode(m), predicted_iou=0.5, clicks=1, seconds=1.0, request_id=f"k{{i}}")
            print(mid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    result = _run_child(code)
    acknowledged = [int(v) for v in result.stdout.split()]
    assert result.returncode == -9 and len(acknowledged) == 5
    s = QualityStore(db)
    assert sorted(s.masks()["mask_id"]) == sorted(acknowledged)
    assert s.mask_for_request("k3") == acknowledged[3]
    s.close()


@pytest.mark.slow
def test_reader_process_takes_turns_with_idle_releasing_writer(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    writer = QualityStore(db, idle_release_s=0.1)
    writer.add_images([{"image_id": 1, "file_name": "a.png", "width": 16, "height": 12}])
    writer.add_annotator("alice")
    _commit(writer, request_id="w1")
    code = f"""
        import time
        from sam_engine.quality.store import connect_read_only
        r = connect_read_only({str(db)!r}, lock_timeout_s=30)
        n = len(r.masks())
        deadline = time.monotonic() + 10  # the reader lets the file go once it idles (bounded wait)
        while r.holds_connection and time.monotonic() < deadline:
            time.sleep(0.01)
        print(n, r.holds_connection)
    """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    for i in range(5):  # the writer keeps writing while the reader waits for its turn
        _commit(writer, request_id=f"w{i + 2}")
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    seen, holds = out.split()
    assert 1 <= int(seen) <= 6 and holds == "False"
    assert len(writer.masks()) == 6
    writer.close()


@pytest.mark.slow
def test_reader_gives_up_clearly_when_writer_never_releases(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    writer = QualityStore(db)  # idle_release_s=None: holds the file
    code = f"""
        from sam_engine.quality.lease import StoreBusyError
        from sam_engine.quality.store import connect_read_only
        try:
            connect_read_only({str(db)!r}, lock_timeout_s=0.3)
        except StoreBusyError as e:
            print("busy:", e)
    """
    result = _run_child(code)
    assert "busy:" in result.stdout and "export" in result.stdout, result.stderr
    # a snapshot is readable while the writer keeps the file
    writer.add_images([{"image_id": 1, "file_name": "a.png", "width": 16, "height": 12}])
    snap = writer.snapshot(tmp_path / "snap.duckdb")
    result = _run_child(
        f"""
        from sam_engine.quality.store import connect_read_only
        print(len(connect_read_only({str(snap)!r}, lock_timeout_s=1).images()))
        """
    )
    assert result.stdout.strip() == "1", result.stderr
    writer.add_images([{"image_id": 2, "file_name": "b.png", "width": 16, "height": 12}])  # still writable
    assert len(writer.images()) == 2
    writer.close()


def _busy(writer: QualityStore, stop: threading.Event, done: list[int], errors: list[str]) -> None:
    """A writer that is never idle: a commit or a read every few milliseconds until ``stop``."""
    i = 0
    while not stop.is_set():
        try:
            if i % 3 == 0:
                done.append(_commit(writer, request_id=f"busy{i}"))
            else:
                assert writer.get_image(1) is not None
        except Exception as exc:  # noqa: BLE001 - collected and asserted on
            errors.append(f"call {i}: {type(exc).__name__}: {exc}")
            return
        i += 1
        time.sleep(0.003)


_READ_PASS = """
    from sam_engine.quality.lease import StoreBusyError
    from sam_engine.quality.store import connect_read_only
    try:
        with connect_read_only({db!r}, lock_timeout_s={timeout}) as r, r.transaction():  # one turn, one state
            print("read", len(r.masks()), len(r.events()), len(r.images()))
    except StoreBusyError as e:
        print("busy:", e)
"""


@pytest.mark.slow
@pytest.mark.parametrize("max_hold_s", [0.5, None])
def test_busy_writer_gives_a_reader_process_a_turn_only_with_max_hold(
    tmp_path: Path, max_hold_s: float | None
) -> None:
    """Under constant load the idle release never fires; ``max_hold_s`` lets a reader in and loses no write."""
    db = tmp_path / "q.duckdb"
    writer = QualityStore(db, idle_release_s=5.0, max_hold_s=max_hold_s)
    writer.add_images([{"image_id": 1, "file_name": "a.png", "width": 16, "height": 12}])
    writer.add_annotator("alice")
    stop, done, errors = threading.Event(), [], []
    busy = threading.Thread(target=_busy, args=(writer, stop, done, errors), daemon=True)
    busy.start()
    try:
        result = _run_child(_READ_PASS.format(db=str(db), timeout=20.0 if max_hold_s else 2.0))
    finally:
        stop.set()
        busy.join(timeout=30)
    assert not busy.is_alive() and not errors, errors
    if max_hold_s is None:  # the bug this option fixes: the reader never gets in
        assert "busy:" in result.stdout, (result.stdout, result.stderr)
        assert writer.turns_given == 0
    else:
        assert result.stdout.startswith("read"), (result.stdout, result.stderr)
        masks, events, _ = (int(v) for v in result.stdout.split()[1:])
        assert 1 <= masks <= len(done) and events == masks  # one consistent state: a commit event per mask
        assert writer.turns_given >= 1
    assert sorted(writer.masks()["mask_id"]) == sorted(done)  # every write of the busy writer landed
    writer.close()


@pytest.mark.slow
def test_max_hold_writer_keeps_the_file_when_nobody_asks(tmp_path: Path) -> None:
    writer = QualityStore(tmp_path / "q.duckdb", max_hold_s=0.1)
    writer.add_images([{"image_id": 1, "file_name": "a.png", "width": 16, "height": 12}])
    writer.add_annotator("alice")
    stop, done, errors = threading.Event(), [], []
    busy = threading.Thread(target=_busy, args=(writer, stop, done, errors), daemon=True)
    busy.start()
    stop.wait(1.0)  # ten hold periods
    stop.set()
    busy.join(timeout=30)
    assert not errors and len(done) >= 1
    assert writer.turns_given == 0 and writer.holds_connection
    writer.close()


def test_own_turn_request_is_not_mistaken_for_another_process(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    writer = QualityStore(db, max_hold_s=0.1)
    writer._own_request_ns = lease.request_turn(db)  # as after waiting for the file itself
    assert not writer._turn_requested()
    time.sleep(0.01)
    lease.request_turn(db)  # another process asks
    assert writer._turn_requested()
    writer.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_hold_s": 0.0},
        {"max_hold_s": 1.0, "yield_s": lease.LOCK_RETRY_CAP_S},
        {"max_hold_s": 1.0, "yield_s": 0.0},
    ],
)
def test_max_hold_options_are_validated(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError, match="max_hold_s|LOCK_RETRY_CAP_S"):
        QualityStore(tmp_path / "q.duckdb", **kwargs)
    assert not (tmp_path / "q.duckdb").exists()


def test_image_resolver_serves_known_images_without_the_store(tmp_path: Path) -> None:
    """The annotation server loads images under its predictor lock: a known image must not wait for the store."""
    from sam_engine.annotation.protocol import NotFound
    from sam_engine.annotation.service import ImageResolver
    from sam_engine.data.images import save_png

    s = QualityStore(tmp_path / "q.duckdb")
    img = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    save_png(img, tmp_path / "images" / "a.png")
    s.add_images([{"image_id": 1, "file_name": "a.png", "width": 16, "height": 12, "source": "pool"}])
    resolver = ImageResolver(s, {"pool": tmp_path / "images"}, max_cached=1)
    assert np.array_equal(resolver.load(1), img)
    s.close()  # every further store call would raise now
    assert np.array_equal(resolver.load(1), img) and resolver.record(1)["width"] == 16
    with pytest.raises(RuntimeError, match="closed"):  # an image it has not seen still asks the store
        resolver.load(2)
    resolver.forget(1)
    with pytest.raises(RuntimeError, match="closed"):
        resolver.record(1)
    resolver.store = s2 = QualityStore(tmp_path / "q.duckdb")
    assert resolver.path(1) == (tmp_path / "images" / "a.png").resolve()
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(NotFound):  # a file that went away is looked up again, not served from the cache
        resolver.path(1)
    s2.close()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_rle_counts_parser_matches_pycocotools(h: int, w: int, seed: int, density: float) -> None:
    m = np.random.default_rng(seed).random((h, w)) < density
    encoded = rle_utils.encode(m)
    counts = rle_utils.counts_runs(encoded["counts"])
    assert sum(counts) == h * w
    flat = np.concatenate(
        [np.full(c, i % 2, dtype=bool) for i, c in enumerate(counts)] or [np.zeros(0, bool)]
    )
    assert np.array_equal(flat.reshape(w, h).T, m)
    rle_utils.check_rle(encoded, h, w)
    with pytest.raises(ValueError):
        rle_utils.check_rle(encoded, h + 1, w)
