"""Backup / verify / restore of a data folder: DuckDB rows and MLflow runs survive a round trip into a new
folder, tampering is detected, restores refuse to clobber, failures leave nothing half-written, migrations run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pytest

from sam_engine import backup as bk
from sam_engine.data import rle as rle_utils
from sam_engine.model_store import ModelStore
from sam_engine.quality import migrations as migrations_mod
from sam_engine.quality.lease import StoreBusyError
from sam_engine.quality.migrations import SCHEMA_VERSION
from sam_engine.quality.store import QualityStore

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ fixtures
def _fill_store(db: Path, n_masks: int = 2) -> None:
    with QualityStore(db) as store:
        store.add_images(
            [
                {"image_id": i, "file_name": f"img_{i}.png", "width": 16, "height": 12, "region": "r0"}
                for i in (1, 2)
            ]
        )
        store.add_annotator("alice", "annotator")
        tasks = store.create_tasks([{"image_id": 1, "stage": 1, "annotator_id": "alice"}])
        for k in range(n_masks):
            m = np.zeros((12, 16), dtype=bool)
            m[2 : 4 + k, 3 : 9 + k] = True
            store.commit_mask(
                task_id=tasks[0],
                image_id=1,
                annotator_id="alice",
                stage=1,
                source="human",
                rle=rle_utils.encode(m),
                predicted_iou=0.9,
                clicks=2,
                seconds=3.5,
                request_id=f"req-{k}",
            )
        store.comment("alice", "looks fine", mask_id=1)


def _fill_models(root: Path, tmp: Path) -> None:
    ckpt = tmp / "ckpt.pt"
    ckpt.write_bytes(b"fake checkpoint bytes " * 100)
    ModelStore(root).put("v0", ckpt, metrics={"miou": 0.5})
    (root / ".v1.staging").mkdir()  # an interrupted put: must not be backed up
    (root / ".v1.staging" / "model.pt").write_bytes(b"partial")


def _make_mlflow(data_dir: Path) -> dict:
    from mlflow import MlflowClient

    uri = f"sqlite:///{data_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment(
        "sam-engine", artifact_location=(data_dir / "mlartifacts" / "sam-engine").as_uri()
    )
    run = client.create_run(exp, run_name="model_v0", tags={"stage": "0"})
    rid = run.info.run_id
    client.log_param(rid, "lr", "0.001")
    for step in range(3):
        client.log_metric(rid, "loss", 1.0 / (step + 1), step=step)
    client.log_dict(rid, {"miou": 0.5}, "metrics.json")
    client.set_terminated(rid, "FINISHED")
    client.create_registered_model("sam-engine-model")
    client.create_model_version("sam-engine-model", f"{run.info.artifact_uri}/metrics.json", rid)
    return {"uri": uri, "experiment_id": exp, "run_id": rid}


@pytest.fixture(scope="module")
def full_data(tmp_path_factory) -> tuple[Path, dict]:
    """A data folder with a filled quality store, an MLflow DB + artifacts, and a model store (built once)."""
    data_dir = tmp_path_factory.mktemp("full") / "data"
    data_dir.mkdir()
    _fill_store(data_dir / "quality.duckdb")
    _fill_models(data_dir / "models", data_dir.parent)
    info = _make_mlflow(data_dir)
    (data_dir / "reports").mkdir()
    (data_dir / "reports" / "report.md").write_text("# report\n")
    return data_dir, info


@pytest.fixture
def small_data(tmp_path: Path) -> Path:
    """A data folder with a quality store and a model store only (cheap, per test)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _fill_store(data_dir / "quality.duckdb")
    _fill_models(data_dir / "models", tmp_path)
    return data_dir


def _tables(db: Path) -> dict[str, list[tuple]]:
    conn = duckdb.connect(str(db), read_only=True)
    try:
        names = [
            r[0]
            for r in conn.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()
        ]
        return {n: conn.execute(f"SELECT * FROM {n} ORDER BY ALL").fetchall() for n in names}
    finally:
        conn.close()


def _mlflow_state(uri: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            runs[run.info.run_id] = {
                "experiment": exp.name,
                "name": run.info.run_name,
                "status": run.info.status,
                "start": run.info.start_time,
                "params": run.data.params,
                "metrics": run.data.metrics,
                "tags": run.data.tags,
                "loss_history": sorted(
                    (m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")
                ),
            }
    versions = [(v.name, v.version, v.run_id) for v in client.search_model_versions()]
    return {"runs": runs, "versions": sorted(versions), "client": client}


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_round_trip_into_new_folder_keeps_duckdb_rows_and_mlflow_runs(full_data, tmp_path: Path) -> None:
    data_dir, info = full_data
    out = bk.backup(data_dir, tmp_path / "backups")
    assert out.parent == tmp_path / "backups" and out.name.startswith(bk.PREFIX)
    target = tmp_path / "restored"
    assert bk.restore(out, target) == target.resolve()

    assert _tables(target / "quality.duckdb") == _tables(data_dir / "quality.duckdb")
    with QualityStore(target / "quality.duckdb") as restored:  # the sequences continue: no id reuse
        m = np.zeros((12, 16), dtype=bool)
        m[5:9, 5:9] = True
        new_id = restored.commit_mask(
            task_id=None,
            image_id=2,
            annotator_id=None,
            stage=1,
            source="model",
            rle=rle_utils.encode(m),
            predicted_iou=0.8,
            clicks=0,
            seconds=0.0,
        )
        assert new_id == 3
        assert (
            restored.commit_mask(
                task_id=None,
                image_id=1,
                annotator_id="alice",
                stage=1,
                source="human",
                rle=rle_utils.encode(m),
                predicted_iou=0.8,
                clicks=1,
                seconds=1.0,
                request_id="req-0",
            )
            == 1
        )  # idempotency key survived

    before = _mlflow_state(info["uri"])
    after = _mlflow_state(f"sqlite:///{target / 'mlflow.db'}")
    assert before["runs"] == after["runs"] and info["run_id"] in after["runs"]
    assert before["versions"] == after["versions"]
    # Artifact locations now point into the restored folder, and the artifact is readable there.
    run = after["client"].get_run(info["run_id"])
    assert run.info.artifact_uri.startswith((target / "mlartifacts").resolve().as_uri())
    local = after["client"].download_artifacts(info["run_id"], "metrics.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text()) == {"miou": 0.5}
    (version,) = after["client"].search_model_versions()
    assert version.source.startswith(target.resolve().as_uri())

    assert ModelStore(target / "models").names() == ["v0"]
    assert (target / "models" / "v0" / "model.pt").read_bytes() == (
        data_dir / "models" / "v0" / "model.pt"
    ).read_bytes()
    assert not (target / "reports").exists()  # not a backed-up component by default


def test_manifest_has_schema_version_and_a_sha256_per_file(small_data: Path, tmp_path: Path) -> None:
    out = bk.backup(small_data, tmp_path / "b")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == bk.FORMAT and manifest["schema_version"] == SCHEMA_VERSION
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    assert "quality.duckdb" in files and "models/v0/model.pt" in files and "models/v0/meta.json" in files
    assert not any(".staging" in f for f in files)
    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((out / rel).read_bytes()).hexdigest()
    assert bk.verify(out).ok


@pytest.mark.parametrize("tamper", ["flip_byte", "delete", "add", "truncate_db"])
def test_verify_detects_tampering(small_data: Path, tmp_path: Path, tamper: str) -> None:
    out = bk.backup(small_data, tmp_path / "b")
    victim = out / "models" / "v0" / "model.pt"
    if tamper == "flip_byte":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
    elif tamper == "delete":
        victim.unlink()
    elif tamper == "add":
        (out / "models" / "evil.pt").write_bytes(b"x")
    else:
        db = out / "quality.duckdb"
        db.write_bytes(db.read_bytes()[:4096])
    result = bk.verify(out)
    assert not result.ok
    expected = {
        "flip_byte": "models/v0/model.pt",
        "delete": "models/v0/model.pt",
        "add": "models/evil.pt",
        "truncate_db": "quality.duckdb",
    }[tamper]
    assert any(expected in p for p in result.problems), result.problems
    assert bk.main(["verify", str(out)]) == 1
    with pytest.raises(bk.BackupError, match="verification failed"):
        bk.restore(out, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_restore_refuses_non_empty_target_unless_forced(small_data: Path, tmp_path: Path) -> None:
    out = bk.backup(small_data, tmp_path / "b")
    target = tmp_path / "target"
    target.mkdir()
    (target / "reports").mkdir()
    (target / "reports" / "keep.txt").write_text("mine")
    (target / "quality.duckdb").write_bytes(b"an older, different database")
    (target / "quality.duckdb.wal").write_bytes(b"\x00garbage write-ahead log of another database")
    with pytest.raises(bk.BackupError, match="not empty"):
        bk.restore(out, target)
    assert (target / "quality.duckdb").read_bytes() == b"an older, different database"
    assert bk.main(["restore", str(out), "--data-dir", str(target)]) == 1

    assert bk.main(["restore", str(out), "--data-dir", str(target), "--force"]) == 0
    assert not (
        target / "quality.duckdb.wal"
    ).exists()  # a stale WAL would be replayed onto the restored file
    assert (target / "reports" / "keep.txt").read_text() == "mine"  # unrelated files stay
    assert _tables(target / "quality.duckdb") == _tables(small_data / "quality.duckdb")
    assert not [p for p in target.iterdir() if p.name.startswith(".restore")]
    assert not [p for p in tmp_path.iterdir() if ".restore-" in p.name]


def test_failed_backup_leaves_nothing_behind(small_data: Path, tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bk, "_copy_tree", boom)
    dest = tmp_path / "b"
    with pytest.raises(OSError, match="disk full"):
        bk.backup(small_data, dest)
    assert list(dest.iterdir()) == []


def test_tarball_round_trip(small_data: Path, tmp_path: Path) -> None:
    out = bk.backup(small_data, tmp_path / "b", tarball=True)
    assert out.name.endswith(".tar.gz") and out.is_file()
    assert [p.name for p in (tmp_path / "b").iterdir()] == [out.name]  # no temp folder or file left
    assert bk.verify(out).ok
    bk.restore(out, tmp_path / "r")
    assert _tables(tmp_path / "r" / "quality.duckdb") == _tables(small_data / "quality.duckdb")


def test_hostile_tarball_members_are_refused(small_data: Path, tmp_path: Path) -> None:
    good = bk.backup(small_data, tmp_path / "b")
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for p in sorted(good.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=p.relative_to(good).as_posix())
        payload = tmp_path / "payload"
        payload.write_text("owned")
        tar.add(payload, arcname="../escaped.txt")
    result = bk.verify(evil)
    assert not result.ok and any("unsafe member" in p for p in result.problems)
    with pytest.raises(bk.BackupError, match="unsafe member"):
        bk.restore(evil, tmp_path / "r")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "r").exists()


_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    sys.path.insert(0, {repo!r})
    from sam_engine.data import rle as rle_utils
    from sam_engine.quality.store import QualityStore
    store = QualityStore({db!r})
    m = np.zeros((12, 16), dtype=bool); m[1:6, 1:6] = True
    store.commit_mask(task_id=None, image_id=2, annotator_id=None, stage=2, source="model",
                      rle=rle_utils.encode(m), predicted_iou=0.7, clicks=0, seconds=0.0, request_id="late")
    print("committed", flush=True)
    if {mode!r} == "crash":
        os._exit(0)  # killed writer: no checkpoint, the commit lives only in the WAL
    time.sleep(60)
    """
)


def _writer(db: Path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER.format(repo=str(REPO), db=str(db), mode=mode)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "committed"
    return proc


def test_killed_writer_commit_is_in_the_backup(small_data: Path, tmp_path: Path) -> None:
    proc = _writer(small_data / "quality.duckdb", "crash")
    assert proc.wait(timeout=30) == 0
    out = bk.backup(small_data, tmp_path / "b")
    bk.restore(out, tmp_path / "r")
    with QualityStore(tmp_path / "r" / "quality.duckdb") as store:
        assert store.mask_for_request("late") is not None
        assert len(store.masks(status=None)) == 3


@pytest.mark.slow
def test_live_writer_in_another_process_makes_backup_fail_busy(small_data: Path, tmp_path: Path) -> None:
    proc = _writer(small_data / "quality.duckdb", "hold")
    try:
        with pytest.raises(StoreBusyError):
            bk.backup(small_data, tmp_path / "b", lock_timeout_s=0.3)
        assert list((tmp_path / "b").iterdir()) == []
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    out = bk.backup(small_data, tmp_path / "b")  # the writer is gone: its commit is in the backup
    assert bk.verify(out).ok
    assert "late" in {row[-1] for row in _tables(out / "quality.duckdb")["masks"]}  # request_id is last


def test_backup_from_the_owning_process_uses_the_store_snapshot(small_data: Path, tmp_path: Path) -> None:
    store = QualityStore(small_data / "quality.duckdb")  # holds the file for the whole test
    try:
        m = np.zeros((12, 16), dtype=bool)
        m[0:3, 0:3] = True
        mid = store.commit_mask(
            task_id=None,
            image_id=2,
            annotator_id=None,
            stage=1,
            source="auto",
            rle=rle_utils.encode(m),
            predicted_iou=0.95,
            clicks=0,
            seconds=0.0,
            request_id="in-process",
        )
        out = bk.backup(small_data, tmp_path / "b", store=store)
        assert store.get_mask(mid) is not None  # the store still works after the snapshot
    finally:
        store.close()
    assert bk.verify(out).ok
    bk.restore(out, tmp_path / "r")
    with QualityStore(tmp_path / "r" / "quality.duckdb", read_only=True) as restored:
        assert restored.mask_for_request("in-process") == mid


def test_older_schema_migrates_after_restore_and_newer_is_refused(
    small_data: Path, tmp_path: Path, monkeypatch
) -> None:
    out = bk.backup(small_data, tmp_path / "b")
    assert json.loads((out / "manifest.json").read_text())["schema_version"] == SCHEMA_VERSION
    bk.restore(out, tmp_path / "r")
    v2 = SCHEMA_VERSION + 1
    migrations = [
        *migrations_mod.MIGRATIONS,
        (v2, "test: masks.note", ["ALTER TABLE masks ADD COLUMN note VARCHAR"]),
    ]
    monkeypatch.setattr(migrations_mod, "MIGRATIONS", migrations)
    with QualityStore(tmp_path / "r" / "quality.duckdb") as store:
        assert store.schema_version == v2
        rows = store.query("SELECT mask_id, note FROM masks ORDER BY mask_id")
        assert list(rows["mask_id"]) == [1, 2] and rows["note"].isna().all()
        history = store.query("SELECT version FROM schema_version ORDER BY version")["version"].tolist()
        assert history == [*range(1, SCHEMA_VERSION + 1), v2]
    out2 = bk.backup(tmp_path / "r", tmp_path / "b2")
    assert json.loads((out2 / "manifest.json").read_text())["schema_version"] == v2
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="newer than this code"):  # code that is too old refuses, no damage
        QualityStore(tmp_path / "r" / "quality.duckdb")


def test_empty_database_file_migrates_to_current_schema(tmp_path: Path) -> None:
    db = tmp_path / "quality.duckdb"
    duckdb.connect(str(db)).close()  # a version-0 file: no schema_version table
    with QualityStore(db) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert len(store.images()) == 0


@pytest.mark.slow
def test_cli_entry_point(small_data: Path, tmp_path: Path) -> None:
    env = dict(os.environ, SAM_ENGINE_DATA_DIR=str(small_data), PYTHONPATH=str(REPO))
    create = subprocess.run(
        [sys.executable, "-m", "sam_engine.backup", "create", "--dest", str(tmp_path / "b"), "--tar"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert create.returncode == 0, create.stderr
    out = Path(create.stdout.strip().splitlines()[-1])
    assert out.is_file() and out.parent == tmp_path / "b"
    check = subprocess.run(
        [sys.executable, "-m", "sam_engine.backup", "verify", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert check.returncode == 0 and "OK" in check.stdout, check.stderr
