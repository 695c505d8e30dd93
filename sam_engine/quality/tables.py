"""Schema of the quality store as an ordered list of migrations, and the allowed values of its enum columns.

A migration is ``(version, description, statements)``; :class:`~sam_engine.quality.store.QualityStore` applies
every migration newer than the database's ``schema_version`` in one transaction when it opens the file for
writing. Never edit a released migration: append a new one.
"""

from __future__ import annotations

ROLES = ("annotator", "reviewer", "admin")
TASK_KINDS = ("annotate", "review", "honeypot", "complete")
TASK_STATUSES = ("pending", "in_progress", "done", "skipped")
MASK_SOURCES = ("human", "model", "consensus", "auto")
# 'superseded': an older version replaced by a reviewer's fix (revert restores it).
MASK_STATUSES = ("accepted", "rejected", "reverted", "pending_review", "superseded")
EVENT_KINDS = (
    "commit",
    "revert",
    "comment",
    "review_accept",
    "review_fix",
    "review_reject",
    "skip",
    "done",
    "assign",
)
VERDICTS = ("accept", "fix", "reject")


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


_V1 = [
    "CREATE SEQUENCE task_id_seq START 1",
    "CREATE SEQUENCE mask_id_seq START 1",
    "CREATE SEQUENCE event_id_seq START 1",
    "CREATE SEQUENCE review_id_seq START 1",
    """CREATE TABLE images (
        image_id BIGINT PRIMARY KEY,
        file_name VARCHAR NOT NULL,
        width INTEGER NOT NULL CHECK (width > 0),
        height INTEGER NOT NULL CHECK (height > 0),
        region VARCHAR,
        split VARCHAR,
        source VARCHAR
    )""",
    f"""CREATE TABLE annotators (
        annotator_id VARCHAR PRIMARY KEY,
        name VARCHAR NOT NULL,
        role VARCHAR NOT NULL CHECK (role IN {_in(ROLES)}),
        token_hash VARCHAR NOT NULL,
        expertise VARCHAR[],
        profile VARCHAR,
        active BOOLEAN NOT NULL DEFAULT TRUE,
        created_at TIMESTAMP NOT NULL
    )""",
    f"""CREATE TABLE tasks (
        task_id BIGINT PRIMARY KEY DEFAULT nextval('task_id_seq'),
        image_id BIGINT NOT NULL,
        stage INTEGER NOT NULL,
        kind VARCHAR NOT NULL CHECK (kind IN {_in(TASK_KINDS)}),
        annotator_id VARCHAR,
        status VARCHAR NOT NULL CHECK (status IN {_in(TASK_STATUSES)}),
        priority DOUBLE NOT NULL DEFAULT 0,
        created_at TIMESTAMP NOT NULL,
        updated_at TIMESTAMP NOT NULL,
        batch VARCHAR,
        mask_id BIGINT,
        payload VARCHAR
    )""",
    f"""CREATE TABLE masks (
        mask_id BIGINT PRIMARY KEY DEFAULT nextval('mask_id_seq'),
        image_id BIGINT NOT NULL,
        task_id BIGINT,
        annotator_id VARCHAR,
        stage INTEGER NOT NULL,
        source VARCHAR NOT NULL CHECK (source IN {_in(MASK_SOURCES)}),
        segmentation VARCHAR NOT NULL,
        bbox_x DOUBLE NOT NULL,
        bbox_y DOUBLE NOT NULL,
        bbox_w DOUBLE NOT NULL,
        bbox_h DOUBLE NOT NULL,
        area BIGINT NOT NULL,
        predicted_iou DOUBLE,
        stability_score DOUBLE,
        clicks INTEGER NOT NULL DEFAULT 0,
        seconds DOUBLE NOT NULL DEFAULT 0,
        manual_fix BOOLEAN NOT NULL DEFAULT FALSE,
        status VARCHAR NOT NULL CHECK (status IN {_in(MASK_STATUSES)}),
        version INTEGER NOT NULL DEFAULT 1,
        parent_mask_id BIGINT,
        root_mask_id BIGINT NOT NULL,
        prompt VARCHAR,
        created_at TIMESTAMP NOT NULL,
        request_id VARCHAR UNIQUE
    )""",
    f"""CREATE TABLE events (
        event_id BIGINT PRIMARY KEY DEFAULT nextval('event_id_seq'),
        mask_id BIGINT,
        task_id BIGINT,
        actor VARCHAR,
        kind VARCHAR NOT NULL CHECK (kind IN {_in(EVENT_KINDS)}),
        payload VARCHAR,
        created_at TIMESTAMP NOT NULL
    )""",
    f"""CREATE TABLE reviews (
        review_id BIGINT PRIMARY KEY DEFAULT nextval('review_id_seq'),
        mask_id BIGINT NOT NULL,
        task_id BIGINT,
        reviewer VARCHAR NOT NULL,
        verdict VARCHAR NOT NULL CHECK (verdict IN {_in(VERDICTS)}),
        comment VARCHAR,
        fixed_mask_id BIGINT,
        created_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE gold_scores (
        annotator_id VARCHAR,
        mask_id BIGINT,
        gold_ann_id BIGINT,
        iou DOUBLE NOT NULL,
        created_at TIMESTAMP NOT NULL
    )""",
]

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "initial schema", _V1),
]
