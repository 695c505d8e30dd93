"""Backup, verify and restore of an engine data folder: the quality store, MLflow and the model store.

A backup is one timestamped folder ``sam-engine-backup-<UTC time>`` (or the same as a ``.tar.gz``) holding:

* ``quality.duckdb`` — a consistent copy of the DuckDB quality store. With ``store=`` (the process that owns
  the writer) it is :meth:`QualityStore.snapshot`; otherwise the file is checkpointed when no process holds it,
  then copied (with its write-ahead log, if a killed writer left one) under a read-only connection, whose shared
  lock keeps every writer out while the bytes are read. A writer that holds the file for longer than
  ``lock_timeout_s`` makes the backup fail with :class:`StoreBusyError` rather than copy a moving file.
* ``mlflow.db`` — copied with SQLite's online backup API (never a raw copy of a live SQLite file), plus the
  ``mlartifacts/`` (and legacy ``mlruns/``) artifact folders.
* ``models/`` — the model store (complete versions only; hidden staging folders are skipped).
* ``manifest.json`` — format version, creation time, source folder, the store's ``schema_version`` and the
  sha256 and size of every file. Written last; the folder appears under its final name only when complete.

``extra=`` (CLI ``--include``) adds more folders of the data folder (``corpora``, ``shards``, ``reports``), copied
file by file: only for folders without a live database (not ``dagster_home`` while Dagster runs).

:func:`restore` verifies the backup, refuses a non-empty target unless ``force``, stages everything beside the
target and renames it into place, drops stale write-ahead logs, and rewrites MLflow's absolute artifact
locations from the old folder to the new one. CLI: ``python -m sam_engine.backup create|restore|verify``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import duckdb

from .io import atomic_write_json, sha256_file
from .quality.lease import LOCK_RETRY_CAP_S, StoreBusyError, request_turn, withdraw_turn_request
from .quality.store import QualityStore

FORMAT = "sam-engine-backup"
FORMAT_VERSION = 1
PREFIX = "sam-engine-backup-"
MANIFEST = "manifest.json"
DUCKDB_NAME = "quality.duckdb"
MLFLOW_DB_NAME = "mlflow.db"
# Folders copied file by file when present; ``extra`` adds more (e.g. "corpora", "shards", "reports").
DEFAULT_FOLDERS = ("mlartifacts", "mlruns", "models")
# Files beside a database that belong to its previous life and must not survive a restore.
_STALE_SIDE_FILES = (
    f"{DUCKDB_NAME}.wal",
    f"{MLFLOW_DB_NAME}-wal",
    f"{MLFLOW_DB_NAME}-shm",
    f"{MLFLOW_DB_NAME}-journal",
)
# MLflow columns that hold absolute artifact locations (missing ones are skipped).
_MLFLOW_PATH_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)
_CHUNK = 1 << 20


class BackupError(RuntimeError):
    """A backup that cannot be made, verified or restored; the message says why."""


@dataclass
class VerifyResult:
    """What :func:`verify` found: ``ok`` when ``problems`` is empty."""

    backup: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# ------------------------------------------------------------------------------------------- helpers
def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy_file(src: Path, dst: Path) -> None:
    """Copy bytes and fsync the copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo, _CHUNK)
        fo.flush()
        os.fsync(fo.fileno())
    shutil.copystat(src, dst)


def _copy_tree(src: Path, dst: Path, skip_hidden_top: bool = False) -> None:
    """Copy regular files of ``src`` into ``dst`` (symlinks are not followed; hidden top entries optional)."""
    for root, dirs, files in os.walk(src, followlinks=False):
        rel = Path(root).relative_to(src)
        if skip_hidden_top and rel == Path("."):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files = [f for f in files if not f.startswith(".")]
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            if p.is_symlink() or not p.is_file():
                continue
            _copy_file(p, dst / rel / name)


def _safe_rel(name: str) -> bool:
    pure = PurePosixPath(name)
    return (
        bool(name)
        and not pure.is_absolute()
        and ".." not in pure.parts
        and "\\" not in name
        and "\x00" not in name
    )


def _duckdb_version_of(path: Path) -> int | None:
    """``max(version)`` of the ``schema_version`` table of a DuckDB file (0 without the table)."""
    conn = duckdb.connect(str(path), read_only=True)
    try:
        try:
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        except duckdb.CatalogException:
            return 0
        return int(row[0]) if row and row[0] is not None else 0
    finally:
        conn.close()


def _connect_with_retry(path: Path, read_only: bool, timeout_s: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            conn = duckdb.connect(str(path), read_only=read_only)
            withdraw_turn_request(path)
            return conn
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            text = str(exc).lower()
            if "lock" not in text or time.monotonic() >= deadline:
                if "lock" in text:
                    raise StoreBusyError(
                        f"{path}: another process holds the quality store for writing; waited {timeout_s:.1f} s. "
                        "Stop the writer, or back up from inside it with backup(..., store=the_store)."
                    ) from exc
                raise
            request_turn(path)  # a busy annotation server gives the file up between its calls
            time.sleep(delay)
            delay = min(delay * 2, LOCK_RETRY_CAP_S)


def _copy_duckdb(src: Path, dst: Path, lock_timeout_s: float) -> None:
    """Checkpoint ``src`` if nobody holds it, then copy it (and any WAL) under a read-only connection."""
    try:
        conn = duckdb.connect(str(src), read_only=False)
    except (duckdb.IOException, duckdb.ConnectionException):
        conn = None  # a writer holds it right now; the read-only open below waits for it
    if conn is not None:
        try:
            conn.execute("CHECKPOINT")
        finally:
            conn.close()
    reader = _connect_with_retry(src, read_only=True, timeout_s=lock_timeout_s)
    try:  # the shared lock keeps writers out while the bytes are copied
        _copy_file(src, dst)
        wal = src.with_name(src.name + ".wal")
        if wal.is_file() and wal.stat().st_size > 0:
            _copy_file(wal, dst.with_name(dst.name + ".wal"))
    finally:
        reader.close()


def _backup_sqlite(src: Path, dst: Path) -> None:
    """Online, consistent copy of a SQLite database with the backup API."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
    try:
        target = sqlite3.connect(str(dst))
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def _manifest_files(root: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(root).as_posix()
            out[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def _external_artifact_locations(mlflow_db: Path, data_dir: Path) -> list[str]:
    """MLflow artifact locations outside ``data_dir`` (their files are not in the backup)."""
    out = []
    prefixes = (str(data_dir), data_dir.as_uri())
    conn = sqlite3.connect(str(mlflow_db))
    try:
        for table, column in _MLFLOW_PATH_COLUMNS[:2]:
            try:
                rows = conn.execute(f"SELECT {column} FROM {table}").fetchall()
            except sqlite3.OperationalError:
                continue
            for (value,) in rows:
                if isinstance(value, str) and value and not value.startswith(prefixes):
                    out.append(value)
    finally:
        conn.close()
    return sorted(set(out))


# -------------------------------------------------------------------------------------------- backup
def backup(
    data_dir: str | Path,
    dest: str | Path,
    *,
    store: QualityStore | None = None,
    tarball: bool = False,
    extra: Sequence[str] = (),
    lock_timeout_s: float = 30.0,
) -> Path:
    """Back up ``data_dir`` into a new timestamped folder (or ``.tar.gz`` with ``tarball``) under ``dest``.

    ``store``: the open, writable :class:`QualityStore` of this process, if it holds the DuckDB file (its
    :meth:`~QualityStore.snapshot` is used). ``extra``: more folders of ``data_dir`` to include. Returns the
    backup's path; nothing appears under ``dest`` unless the backup completed.
    """
    data_dir = Path(data_dir).resolve()
    dest = Path(dest).resolve()
    if not data_dir.is_dir():
        raise BackupError(f"{data_dir}: data folder not found")
    for name in extra:
        if not _safe_rel(name):
            raise BackupError(f"extra folder {name!r} must be a relative path inside the data folder")
    dest.mkdir(parents=True, exist_ok=True)
    name = PREFIX + _utc_stamp()
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=dest))
    try:
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "source_data_dir": str(data_dir),
            "duckdb_version": duckdb.__version__,
            "schema_version": None,
            "components": [],
            "warnings": [],
        }
        db = data_dir / DUCKDB_NAME
        if store is not None:
            if Path(store.path).resolve() != db:
                raise BackupError(f"store= is {store.path}, not this data folder's {db}")
            store.snapshot(staging / DUCKDB_NAME)
        elif db.is_file():
            _copy_duckdb(db, staging / DUCKDB_NAME, lock_timeout_s)
        if (staging / DUCKDB_NAME).is_file():
            manifest["schema_version"] = _duckdb_version_of(staging / DUCKDB_NAME)
            manifest["components"].append(DUCKDB_NAME)
        mlflow_db = data_dir / MLFLOW_DB_NAME
        if mlflow_db.is_file():
            _backup_sqlite(mlflow_db, staging / MLFLOW_DB_NAME)
            manifest["components"].append(MLFLOW_DB_NAME)
            external = _external_artifact_locations(staging / MLFLOW_DB_NAME, data_dir)
            if external:
                manifest["warnings"].append(
                    {
                        "external_artifact_locations": external,
                        "note": "outside the data folder; not backed up",
                    }
                )
        for folder in (*DEFAULT_FOLDERS, *extra):
            src = data_dir / folder
            if src.is_dir() and not src.is_symlink():
                _copy_tree(src, staging / folder, skip_hidden_top=(folder == "models"))
                manifest["components"].append(folder)
        manifest["files"] = _manifest_files(staging)
        atomic_write_json(staging / MANIFEST, manifest, indent=2)
        _fsync_dir(staging)
        if tarball:
            final = dest / f"{name}.tar.gz"
            _write_tarball(staging, final)
            shutil.rmtree(staging)
        else:
            final = dest / name
            os.rename(staging, final)
        _fsync_dir(dest)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_tarball(folder: Path, final: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w:gz") as tar:
                for p in sorted(folder.rglob("*")):
                    if p.is_file():
                        tar.add(p, arcname=p.relative_to(folder).as_posix(), recursive=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def _opened(backup_path: Path) -> Iterator[Path]:
    """The backup as a folder: itself, or a tarball safely extracted into a temp folder."""
    if backup_path.is_dir():
        yield backup_path
        return
    if not backup_path.is_file():
        raise BackupError(f"{backup_path}: backup not found")
    with tempfile.TemporaryDirectory(prefix="sam-engine-backup-") as tmp:
        root = Path(tmp)
        try:
            tar = tarfile.open(backup_path, mode="r:*")
        except (tarfile.TarError, OSError) as exc:
            raise BackupError(f"{backup_path}: not a readable tarball: {exc}") from exc
        with tar:
            for member in tar.getmembers():
                if not _safe_rel(member.name):
                    raise BackupError(f"{backup_path}: unsafe member name {member.name!r} (absolute or '..')")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BackupError(f"{backup_path}: member {member.name!r} is not a regular file")
                target = root / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
        yield root


# -------------------------------------------------------------------------------------------- verify
def _verify_folder(root: Path, result: VerifyResult) -> None:
    manifest_path = root / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        result.problems.append(f"{MANIFEST} is missing")
        return
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        result.problems.append(f"{MANIFEST} is not valid JSON: {exc}")
        return
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        result.problems.append(f"{MANIFEST} is not a {FORMAT} manifest")
        return
    if manifest.get("format_version") != FORMAT_VERSION:
        result.problems.append(
            f"format_version {manifest.get('format_version')!r}; this code reads {FORMAT_VERSION}"
        )
        return
    result.manifest = manifest
    files = manifest.get("files")
    if not isinstance(files, dict):
        result.problems.append(f"{MANIFEST} has no 'files' table")
        return
    for rel, entry in sorted(files.items()):
        if not _safe_rel(rel):
            result.problems.append(f"{rel}: unsafe path in the manifest")
            continue
        p = root / rel
        if not p.is_file():
            result.problems.append(f"{rel}: missing")
            continue
        if p.stat().st_size != entry.get("bytes"):
            result.problems.append(f"{rel}: size {p.stat().st_size} != {entry.get('bytes')} in the manifest")
        elif sha256_file(p) != entry.get("sha256"):
            result.problems.append(f"{rel}: sha256 differs from the manifest (corrupted or tampered)")
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {MANIFEST}
    for rel in sorted(present - set(files)):
        result.problems.append(f"{rel}: not listed in the manifest")
    if result.problems:
        return
    db = root / DUCKDB_NAME
    if DUCKDB_NAME in files:
        try:
            with tempfile.TemporaryDirectory(
                prefix=".sam-engine-verify-"
            ) as tmp:  # never write into the backup
                copy = Path(tmp) / DUCKDB_NAME
                shutil.copyfile(db, copy)
                if (root / f"{DUCKDB_NAME}.wal").is_file():
                    shutil.copyfile(root / f"{DUCKDB_NAME}.wal", Path(tmp) / f"{DUCKDB_NAME}.wal")
                version = _duckdb_version_of(copy)
        except duckdb.Error as exc:
            result.problems.append(f"{DUCKDB_NAME}: DuckDB cannot open it: {exc}")
        else:
            if version != manifest.get("schema_version"):
                result.problems.append(
                    f"{DUCKDB_NAME}: schema_version {version} != {manifest.get('schema_version')} in the manifest"
                )
    if MLFLOW_DB_NAME in files:
        try:
            conn = sqlite3.connect(f"{(root / MLFLOW_DB_NAME).resolve().as_uri()}?mode=ro", uri=True)
            try:
                status = conn.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            status = str(exc)
        if status != "ok":
            result.problems.append(f"{MLFLOW_DB_NAME}: SQLite quick_check says {status!r}")


def verify(backup_path: str | Path) -> VerifyResult:
    """Check a backup against its manifest: every file present with its sha256, nothing unlisted, databases open."""
    backup_path = Path(backup_path)
    result = VerifyResult(backup=backup_path)
    try:
        with _opened(backup_path) as root:
            _verify_folder(root, result)
    except BackupError as exc:
        result.problems.append(str(exc))
    return result


# ------------------------------------------------------------------------------------------- restore
def _relocate_mlflow(db: Path, old: str, new: Path) -> int:
    """Point MLflow's absolute artifact locations under ``old`` at ``new``; returns the rows changed."""
    if not old or not Path(old).is_absolute():
        return 0
    old_path = Path(old)
    pairs = [(old_path.as_uri(), new.as_uri()), (str(old_path), str(new))]
    if pairs[0][0] == pairs[0][1]:
        return 0
    changed = 0
    conn = sqlite3.connect(str(db))
    try:
        with conn:
            for table, column in _MLFLOW_PATH_COLUMNS:
                try:
                    rows = conn.execute(f"SELECT rowid, {column} FROM {table}").fetchall()
                except sqlite3.OperationalError:
                    continue
                for rowid, value in rows:
                    if not isinstance(value, str):
                        continue
                    for before, after in pairs:
                        if value == before or value.startswith(before + "/"):
                            conn.execute(
                                f"UPDATE {table} SET {column} = ? WHERE rowid = ?",
                                [after + value[len(before) :], rowid],
                            )
                            changed += 1
                            break
    finally:
        conn.close()
    return changed


def restore(backup_path: str | Path, data_dir: str | Path, *, force: bool = False) -> Path:
    """Restore a verified backup into ``data_dir``; returns ``data_dir``.

    A non-empty ``data_dir`` is refused unless ``force``; then each backed-up component replaces the existing
    one (other files stay) and stale database side files (WAL, journal) are removed. Stop every process that
    writes to ``data_dir`` first.
    """
    backup_path = Path(backup_path).resolve()
    data_dir = Path(data_dir).resolve()
    occupied = data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir()))
    if occupied and not force:
        raise BackupError(f"{data_dir} is not empty; pass force=True (CLI: --force) to overwrite it")
    with _opened(backup_path) as root:
        result = VerifyResult(backup=backup_path)
        _verify_folder(root, result)
        if not result.ok:
            raise BackupError(f"{backup_path}: verification failed: " + "; ".join(result.problems))
        manifest = result.manifest
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{data_dir.name}.restore-", suffix=".tmp", dir=data_dir.parent)
        )
        try:
            for rel in manifest["files"]:
                _copy_file(root / rel, staging / rel)
            if (staging / MLFLOW_DB_NAME).is_file():
                _relocate_mlflow(staging / MLFLOW_DB_NAME, manifest.get("source_data_dir", ""), data_dir)
            if not occupied:
                if data_dir.exists():
                    data_dir.rmdir()
                os.rename(staging, data_dir)
            else:
                _swap_components(staging, data_dir)
                shutil.rmtree(staging, ignore_errors=True)
            _fsync_dir(data_dir.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return data_dir


def _swap_components(staging: Path, data_dir: Path) -> None:
    """Move each top-level entry of ``staging`` over ``data_dir``'s, dropping stale database side files."""
    if not data_dir.is_dir():
        raise BackupError(f"{data_dir} exists and is not a folder")
    for name in _STALE_SIDE_FILES:
        if not (staging / name).exists():
            (data_dir / name).unlink(missing_ok=True)
    trash = data_dir / f".restore-old-{_utc_stamp()}"
    trash.mkdir()
    try:
        for entry in sorted(staging.iterdir()):
            target = data_dir / entry.name
            if target.exists() or target.is_symlink():
                os.rename(target, trash / entry.name)
            os.rename(entry, target)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- CLI
def _default_data_dir() -> Path:
    from .config import load_config

    return load_config().data_dir


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sam_engine.backup create|restore|verify``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m sam_engine.backup", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="back up a data folder")
    c.add_argument("--data-dir", type=Path, default=None, help="default: $SAM_ENGINE_DATA_DIR or ./data")
    c.add_argument("--dest", type=Path, default=Path("backups"), help="folder to put the backup in")
    c.add_argument("--tar", action="store_true", help="write a .tar.gz instead of a folder")
    c.add_argument(
        "--include", action="append", default=[], help="extra folder of the data folder to include"
    )
    c.add_argument("--lock-timeout", type=float, default=30.0, help="seconds to wait for a DuckDB writer")
    r = sub.add_parser("restore", help="restore a backup into a data folder")
    r.add_argument("backup", type=Path)
    r.add_argument("--data-dir", type=Path, default=None, help="default: $SAM_ENGINE_DATA_DIR or ./data")
    r.add_argument("--force", action="store_true", help="overwrite a non-empty data folder")
    v = sub.add_parser("verify", help="check a backup against its manifest")
    v.add_argument("backup", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            out = backup(
                args.data_dir or _default_data_dir(),
                args.dest,
                tarball=args.tar,
                extra=args.include,
                lock_timeout_s=args.lock_timeout,
            )
            print(out)
            return 0
        if args.command == "restore":
            print(restore(args.backup, args.data_dir or _default_data_dir(), force=args.force))
            return 0
        result = verify(args.backup)
        if result.ok:
            print(
                f"{args.backup}: OK ({len(result.manifest['files'])} files, "
                f"schema_version {result.manifest.get('schema_version')})"
            )
            return 0
        for problem in result.problems:
            print(f"{args.backup}: {problem}", file=sys.stderr)
        return 1
    except (BackupError, StoreBusyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
