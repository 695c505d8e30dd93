"""Annotation server: auth and roles, path checks, WebSocket protocol limits, idempotent accept, history /
revert, review, export, and durability of acknowledged masks across a SIGKILL of the server process."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from annotation_fixtures import (
    RefiningFakePredictor,
    World,
    auth_header,
    build_app,
    free_port,
    make_world,
    pending_proposal,
    serve_command,
    wait_http,
)
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from starlette.websockets import WebSocketDisconnect

from sam_engine.data import rle as rle_utils
from sam_engine.quality.store import connect_read_only

HERE = Path(__file__).resolve().parent


@pytest.fixture
def client(world: World) -> TestClient:
    app, service = build_app(world.store, world.images_dir, rate_limit=(1000.0, 1000))
    with TestClient(app) as c:
        yield c
    service.close()


class Ws:
    """A small synchronous WebSocket helper over the TestClient."""

    def __init__(self, conn) -> None:  # noqa: ANN001
        self.conn = conn
        self.seq = 0

    def send(self, **msg) -> dict:
        self.seq += 1
        self.conn.send_text(json.dumps({"seq": self.seq, **msg}))
        return self.conn.receive_json()

    def raw(self, text: str) -> dict:
        self.conn.send_text(text)
        return self.conn.receive_json()


def open_ws(client: TestClient, world: World, name: str):  # noqa: ANN201
    conn = client.websocket_connect(f"/ws?token={world.tokens[name]}")
    ws = conn.__enter__()
    ready = ws.receive_json()
    assert ready["type"] == "ready" and ready["user"]["annotator_id"] == name
    return conn, Ws(ws)


def _inside(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs[len(xs) // 2]) + 0.5, float(ys[len(ys) // 2]) + 0.5


def _click_accept(ws: Ws, world: World, image_id: int, obj: str, request_id: str) -> dict:
    x, y = _inside(world.objects[image_id][obj])
    r = ws.send(type="point", x=x, y=y)
    assert r["type"] == "masks", r
    return ws.send(type="accept", request_id=request_id)


# ------------------------------------------------------------------------------------------------ auth
def test_http_requires_a_valid_token(client: TestClient, world: World) -> None:
    r = client.get("/api/tasks")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    for bad in ("nonsense", "alice.wrongsecret", "mallory.abc", world.tokens["alice"] + "x", ""):
        assert client.get("/api/tasks", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
    assert client.get("/api/tasks", headers={"Authorization": world.tokens["alice"]}).status_code == 401
    assert client.get("/api/tasks", headers=auth_header(world, "alice")).status_code == 200
    world.store.set_annotator_active("alice", False)
    assert client.get("/api/tasks", headers=auth_header(world, "alice")).status_code == 401


def test_websocket_auth(client: TestClient, world: World) -> None:
    with client.websocket_connect("/ws?token=alice.bad") as ws:
        assert ws.receive_json()["code"] == "unauthorized"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4401
    with client.websocket_connect("/ws") as ws:  # token in the first message
        ws.send_text(json.dumps({"type": "point", "x": 1, "y": 1}))
        assert ws.receive_json()["code"] == "unauthorized"
    with client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "auth", "token": world.tokens["bob"]}))
        assert ws.receive_json()["user"]["annotator_id"] == "bob"


def test_annotator_cannot_touch_another_annotators_task(client: TestClient, world: World) -> None:
    bobs = world.tasks["bob"][0]
    h = auth_header(world, "alice")
    # another's task or image answers as a missing one does (404), so ids cannot be probed
    assert client.get(f"/api/tasks/{bobs}", headers=h).status_code == 404
    assert client.post(f"/api/tasks/{bobs}/skip", headers=h, json={}).status_code == 404
    assert client.post(f"/api/tasks/{bobs}/done", headers=h).status_code == 404
    assert client.get("/api/tasks?annotator_id=bob", headers=h).status_code == 403
    assert client.get(f"/api/images/{world.image_ids[-1]}", headers=h).status_code == 404  # only bob's image
    assert client.get(f"/api/tasks/{world.tasks['alice'][0]}", headers=h).status_code == 200
    assert client.get("/api/tasks/99999", headers=h).status_code == 404
    listed = client.get("/api/tasks?annotator_id=bob", headers=auth_header(world, "adam")).json()["tasks"]
    assert [t["task_id"] for t in listed] == sorted(world.tasks["bob"], key=lambda t: t)
    conn, ws = open_ws(client, world, "alice")
    try:
        r = ws.send(type="open", task_id=bobs)
        assert r["type"] == "error" and r["code"] == "not_found"
        r = ws.send(type="open", image_id=world.image_ids[0])  # free image access is for reviewers
        assert r["code"] == "forbidden"
    finally:
        conn.__exit__(None, None, None)
    assert world.store.get_task(bobs)["status"] == "pending"


def test_roles_are_enforced(client: TestClient, world: World) -> None:
    cases = [
        ("get", "/api/review/queue", {"alice": 403, "rita": 200, "adam": 200}),
        ("get", "/api/export/coco", {"alice": 403, "rita": 403, "adam": 200}),
        ("get", "/api/export/sa1b", {"alice": 403, "rita": 403, "adam": 200}),
    ]
    for method, url, expected in cases:
        for name, status in expected.items():
            assert getattr(client, method)(url, headers=auth_header(world, name)).status_code == status, (
                url,
                name,
            )
    body = {"name": "zoe", "role": "admin"}
    assert client.post("/api/annotators", json=body, headers=auth_header(world, "rita")).status_code == 403
    r = client.post("/api/annotators", json=body, headers=auth_header(world, "adam"))
    assert r.status_code == 200
    assert (
        client.get("/api/me", headers={"Authorization": f"Bearer {r.json()['token']}"}).json()["role"]
        == "admin"
    )


# ------------------------------------------------------------------------------------------- images
def test_images_only_from_dataset_folders(client: TestClient, world: World, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    (world.images_dir / "link.png").symlink_to(secret)
    rows = [
        {"image_id": 101, "file_name": "../secret.txt", "width": 4, "height": 4, "source": "pool"},
        {"image_id": 102, "file_name": str(secret), "width": 4, "height": 4, "source": "pool"},
        {"image_id": 103, "file_name": "link.png", "width": 4, "height": 4, "source": "pool"},
        {"image_id": 104, "file_name": "img_1.png", "width": 128, "height": 96, "source": "elsewhere"},
        {"image_id": 105, "file_name": "missing.png", "width": 4, "height": 4, "source": "pool"},
    ]
    world.store.add_images(rows)
    h = auth_header(world, "adam")
    for image_id, status in ((101, 403), (102, 403), (103, 403), (104, 403), (105, 404), (999, 404)):
        r = client.get(f"/api/images/{image_id}", headers=h)
        assert r.status_code == status, (image_id, r.text)
        assert "TOP SECRET" not in r.text
    assert client.get("/api/images/..%2F..%2Fetc%2Fpasswd", headers=h).status_code in (404, 422)
    r = client.get("/api/images/1", headers=h)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (128, 96)


# ------------------------------------------------------------------------------------------ protocol
def test_malformed_messages_get_errors_not_crashes(client: TestClient, world: World) -> None:
    conn, ws = open_ws(client, world, "alice")
    try:
        assert ws.raw("{not json")["code"] == "bad_json"
        assert ws.raw("[1, 2]")["code"] == "bad_message"
        assert ws.raw("[" * 30000 + "]" * 30000)["code"] == "bad_json"
        ws.conn.send_bytes(b'{"type": "ping", "seq": 2, "x": "\xff"}')
        assert ws.conn.receive_json()["code"] == "bad_json"
        r = ws.raw(json.dumps({"type": "teleport", "seq": 9}))
        assert (
            r["type"] == "error"
            and r["code"] == "unknown_type"
            and r["seq"] == 9
            and "teleport" in r["message"]
        )
        r = ws.raw(json.dumps({"type": "point", "x": "left", "y": 3, "seq": 4}))
        assert r["code"] == "bad_message" and "x" in r["message"] and r["seq"] == 4
        assert ws.raw('{"type": "point", "x": NaN, "y": 3}')["code"] == "bad_message"
        assert ws.raw(json.dumps({"type": "point", "x": 1, "y": 1, "extra": True}))["code"] == "bad_message"
        r = ws.send(type="point", x=3, y=3)
        assert r["code"] == "bad_request" and "open" in r["message"]
        assert ws.send(type="ping")["type"] == "pong"  # still alive
    finally:
        conn.__exit__(None, None, None)


def test_out_of_range_clicks_are_rejected_with_a_clear_message(client: TestClient, world: World) -> None:
    conn, ws = open_ws(client, world, "alice")
    try:
        assert ws.send(type="open", task_id=world.tasks["alice"][0])["type"] == "opened"
        r = ws.send(type="point", x=128, y=10)
        assert r["code"] == "bad_prompt" and "outside the image" in r["message"] and "128" in r["message"]
        r = ws.send(type="box", x0=-5, y0=0, x1=20, y1=20)
        assert r["code"] == "bad_prompt" and "outside the image" in r["message"]
        assert ws.send(type="choose", index=5)["code"] == "bad_message"
        assert ws.send(type="point", x=127.5, y=95.5)["type"] == "masks"
    finally:
        conn.__exit__(None, None, None)


def test_oversized_message_closes_connection(world: World) -> None:
    app, service = build_app(world.store, world.images_dir, max_message_bytes=2048)
    with TestClient(app) as c, c.websocket_connect(f"/ws?token={world.tokens['alice']}") as ws:
        ws.receive_json()
        ws.send_text(json.dumps({"type": "comment", "text": "x" * 4000}))
        assert ws.receive_json()["code"] == "too_large"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1009
    service.close()


def test_rate_limit_per_connection(world: World) -> None:
    app, service = build_app(world.store, world.images_dir, rate_limit=(0.001, 3))
    with TestClient(app) as c, c.websocket_connect(f"/ws?token={world.tokens['alice']}") as ws:
        ws.receive_json()
        answers = []
        for i in range(5):
            ws.send_text(json.dumps({"type": "ping", "seq": i}))
            answers.append(ws.receive_json())
        assert [a["type"] for a in answers] == ["pong", "pong", "pong", "error", "error"]
        assert answers[3]["code"] == "rate_limited" and answers[3]["seq"] == 3
    service.close()


def test_http_body_limit_and_closed_cors(world: World) -> None:
    app, service = build_app(world.store, world.images_dir, max_body_bytes=1000)
    with TestClient(app) as c:
        r = c.post("/api/masks/1/comment", headers=auth_header(world, "adam"), content=b"x" * 5000)
        assert r.status_code == 413
        r = c.get("/api/tasks", headers=auth_header(world, "alice") | {"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        pre = c.options(
            "/api/tasks", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
        )
        assert "access-control-allow-origin" not in pre.headers
        with pytest.raises(WebSocketDisconnect):
            with c.websocket_connect(
                f"/ws?token={world.tokens['alice']}", headers={"Origin": "http://evil.example"}
            ):
                pass
    service.close()


def test_masks_on_the_wire_are_rle_or_png(client: TestClient, world: World) -> None:
    conn, ws = open_ws(client, world, "alice")
    try:
        obj = world.objects[1]["disc"]
        ws.send(type="open", task_id=world.tasks["alice"][0])
        r = ws.send(type="point", x=_inside(obj)[0], y=_inside(obj)[1])
        assert len(r["masks"]) == 3 and r["selected"] == 0 and r["areas"][0] == obj.sum()
        assert np.array_equal(rle_utils.decode(r["masks"][0]), obj)
        assert len(json.dumps(r)) < 2000  # RLE keeps the answer small
        ws.send(type="open", task_id=world.tasks["alice"][0], format="png")
        r = ws.send(type="point", x=_inside(obj)[0], y=_inside(obj)[1])
        png = np.asarray(Image.open(io.BytesIO(base64.b64decode(r["masks"][0])))) > 127
        assert np.array_equal(png, obj)
        assert ws.send(type="undo")["masks"] == []
    finally:
        conn.__exit__(None, None, None)


def test_progressive_clicks_get_the_quick_masks_then_the_refined_ones(world: World) -> None:
    """After ``open`` with ``progressive``, a click is answered twice under its seq: the whole-image masks
    (``final: false``) and then the refined ones (``final: true``); without it, once."""
    app, service = build_app(world.store, world.images_dir, predictor=RefiningFakePredictor())
    objs = world.objects[1]
    x, y = _inside(objs["part"])
    with TestClient(app) as c:
        conn, ws = open_ws(c, world, "alice")
        try:
            assert ws.send(type="open", task_id=world.tasks["alice"][0], progressive=True)["type"] == "opened"
            quick = ws.send(type="point", x=x, y=y)
            refined = ws.conn.receive_json()
            assert quick["type"] == refined["type"] == "masks"
            assert quick["final"] is False and refined["final"] is True
            assert quick["seq"] == refined["seq"] == ws.seq
            assert np.array_equal(rle_utils.decode(quick["masks"][quick["selected"]]), objs["whole"])
            assert np.array_equal(rle_utils.decode(refined["masks"][refined["selected"]]), objs["part"])
            assert quick["server_ms"] <= refined["server_ms"]
            assert ws.send(type="ping")["type"] == "pong"  # nothing else was queued for that click
            # a box is answered progressively too; undo (no model call) once
            box = ws.send(type="box", x0=1, y0=1, x1=60, y1=50)
            assert box["final"] is False and ws.conn.receive_json()["final"] is True
            assert ws.send(type="undo")["final"] is True
            # the same click without progressive: one answer, the refined masks
            ws.send(type="open", task_id=world.tasks["alice"][0])
            only = ws.send(type="point", x=x, y=y)
            assert only["final"] is True and only["masks"] == refined["masks"]
            assert ws.send(type="ping")["type"] == "pong"
        finally:
            conn.__exit__(None, None, None)
    service.close()


# ------------------------------------------------------------------------------------------ accept
def test_accept_is_idempotent_per_annotator_and_request_id(client: TestClient, world: World) -> None:
    conn, ws = open_ws(client, world, "alice")
    try:
        opened = ws.send(type="open", task_id=world.tasks["alice"][0])
        assert opened["task"]["status"] == "in_progress"
        assert ws.send(type="accept", request_id="r1")["code"] == "bad_request"  # nothing clicked yet
        first = _click_accept(ws, world, 1, "disc", "r1")
        assert first["type"] == "accepted" and not first["duplicate"]
        again = ws.send(type="accept", request_id="r1")
        assert again["mask_id"] == first["mask_id"] and again["duplicate"]
        second = _click_accept(ws, world, 1, "square", "r2")
        assert second["mask_id"] != first["mask_id"]
    finally:
        conn.__exit__(None, None, None)
    conn, ws = open_ws(client, world, "bob")  # same request id from someone else is a different mask
    try:
        ws.send(type="open", task_id=world.tasks["bob"][1])
        other = _click_accept(ws, world, 1, "disc", "r1")
        assert other["mask_id"] not in (first["mask_id"], second["mask_id"]) and not other["duplicate"]
    finally:
        conn.__exit__(None, None, None)
    df = world.store.masks()
    assert sorted(df["mask_id"]) == sorted([first["mask_id"], second["mask_id"], other["mask_id"]])
    row = df[df["mask_id"] == first["mask_id"]].iloc[0]
    assert row["annotator_id"] == "alice" and row["clicks"] == 1 and row["stage"] == 1
    assert np.array_equal(rle_utils.decode(row["rle"]), world.objects[1]["disc"])


def test_skip_done_comment_and_progress(client: TestClient, world: World) -> None:
    conn, ws = open_ws(client, world, "alice")
    try:
        t1, t2 = world.tasks["alice"]
        ws.send(type="open", task_id=t1)
        assert ws.send(type="comment", text="blurry corner")["type"] == "commented"
        done = ws.send(type="done")
        assert done["status"] == "done" and done["next_task"]["task_id"] == t2
        assert ws.send(type="point", x=3, y=3)["code"] == "bad_request"  # session closed with the task
        ws.send(type="open", task_id=t2)
        skipped = ws.send(type="skip", reason="no objects")
        assert skipped["next_task"] is None and skipped["progress"]["skipped"] == 1
    finally:
        conn.__exit__(None, None, None)
    assert world.store.get_task(t1)["status"] == "done" and world.store.get_task(t2)["status"] == "skipped"
    kinds = world.store.events()["kind"].tolist()
    assert kinds == ["comment", "done", "skip"]


# ---------------------------------------------------------------------------------- history / revert
def test_history_and_revert_permissions(client: TestClient, world: World) -> None:
    conn, ws = open_ws(client, world, "alice")
    try:
        ws.send(type="open", task_id=world.tasks["alice"][0])
        mask_id = _click_accept(ws, world, 1, "disc", "h1")["mask_id"]
        keep_id = _click_accept(ws, world, 1, "square", "h2")["mask_id"]
    finally:
        conn.__exit__(None, None, None)
    h = client.get(f"/api/masks/{mask_id}/history", headers=auth_header(world, "alice")).json()
    assert [e["kind"] for e in h["events"]] == ["commit"] and h["next_revert"]["kind"] == "commit"
    assert client.get(f"/api/masks/{mask_id}/history", headers=auth_header(world, "bob")).status_code == 404
    assert client.post(f"/api/masks/{mask_id}/revert", headers=auth_header(world, "bob")).status_code == 404
    r = client.post(f"/api/masks/{mask_id}/revert", headers=auth_header(world, "alice"))
    assert r.status_code == 200 and world.store.get_mask(mask_id)["status"] == "reverted"
    assert client.post(f"/api/masks/{mask_id}/revert", headers=auth_header(world, "alice")).status_code == 404
    # a reviewer's verdict cannot be undone by the annotator, but by the reviewer
    review = {"verdict": "reject", "comment": "spills over"}
    assert (
        client.post(f"/api/review/{keep_id}", json=review, headers=auth_header(world, "rita")).status_code
        == 200
    )
    assert client.post(f"/api/masks/{keep_id}/revert", headers=auth_header(world, "alice")).status_code == 403
    assert client.post(f"/api/masks/{keep_id}/revert", headers=auth_header(world, "rita")).status_code == 200
    assert world.store.get_mask(keep_id)["status"] == "accepted"
    events = client.get(f"/api/masks/{keep_id}/history", headers=auth_header(world, "rita")).json()["events"]
    assert [(e["kind"], e["reverted"]) for e in events] == [
        ("commit", False),
        ("review_reject", True),
        ("revert", False),
    ]


# ------------------------------------------------------------------------------------------- review
def test_review_verdicts_over_http_and_websocket(client: TestClient, world: World) -> None:
    store = world.store
    disc = world.objects[1]["disc"]
    ids = [
        store.commit_mask(
            task_id=None,
            image_id=1,
            annotator_id=None,
            stage=2,
            source="model",
            rle=rle_utils.encode(disc),
            predicted_iou=0.8,
            clicks=0,
            seconds=0.0,
            status="pending_review",
        )
        for _ in range(4)
    ]
    queue = client.get("/api/review/queue", headers=auth_header(world, "rita")).json()["items"]
    assert {i["mask_id"] for i in queue} >= set(ids)
    h = auth_header(world, "rita")
    assert (
        client.post(
            f"/api/review/{ids[0]}", json={"verdict": "accept"}, headers=auth_header(world, "alice")
        ).status_code
        == 403
    )
    assert (
        client.post(f"/api/review/{ids[0]}", json={"verdict": "accept"}, headers=h).json()["status"]
        == "accepted"
    )
    assert client.post(f"/api/review/{ids[1]}", json={"verdict": "fix"}, headers=h).status_code == 400
    bad = {"verdict": "fix", "fixed_rle": rle_utils.encode(np.ones((5, 5), bool))}
    assert client.post(f"/api/review/{ids[1]}", json=bad, headers=h).status_code == 400
    fixed_mask = disc.copy()
    fixed_mask[:5, :5] = True
    r = client.post(
        f"/api/review/{ids[1]}", json={"verdict": "fix", "fixed_rle": rle_utils.encode(fixed_mask)}, headers=h
    )
    assert r.status_code == 200 and store.get_mask(ids[1])["status"] == "superseded"
    assert store.get_mask(r.json()["fixed_mask_id"])["manual_fix"]  # a mask drawn elsewhere: by hand
    assert np.array_equal(rle_utils.decode(store.get_mask(r.json()["fixed_mask_id"])["rle"]), fixed_mask)
    # fix over the WebSocket with the reviewer's own clicks
    conn, ws = open_ws(client, world, "rita")
    try:
        assert ws.send(type="open", image_id=1)["type"] == "opened"
        sq = world.objects[1]["square"]
        ws.send(type="point", x=_inside(sq)[0], y=_inside(sq)[1])
        out = ws.send(type="review", mask_id=ids[2], verdict="fix", comment="wrong object")
        assert out["type"] == "reviewed" and out["fixed_mask_id"] is not None
        # clicks, then an edit by hand: the client says so, as with accept
        ws.send(type="point", x=_inside(sq)[0], y=_inside(sq)[1])
        edited = ws.send(type="review", mask_id=ids[3], verdict="fix", manual_fix=True)
        assert store.get_mask(edited["fixed_mask_id"])["manual_fix"]
        assert ws.send(type="accept", request_id="nope")["code"] == "bad_request"  # no task: review only
    finally:
        conn.__exit__(None, None, None)
    fixed = store.get_mask(out["fixed_mask_id"])
    # made with the model's clicks: counted as clicks, not as a manual fix
    assert fixed["annotator_id"] == "rita" and not fixed["manual_fix"] and fixed["clicks"] == 1
    assert np.array_equal(rle_utils.decode(fixed["rle"]), sq)
    assert fixed["prompt"]["points"] == [[*_inside(sq), 1]]  # the clicks that made it are kept with it
    assert store.reviews()["verdict"].tolist() == ["accept", "fix", "fix", "fix"]


def test_review_fix_starts_from_the_proposals_stored_prompt(client: TestClient, world: World) -> None:
    store = world.store
    sq = world.objects[1]["square"]
    cut = sq.copy()
    cut[np.nonzero(sq)[0].min() : np.nonzero(sq)[0].min() + 3] = False  # a proposal a few rows short
    x, y = _inside(sq)

    point = {"points": [[x, y, 1]], "box": None}
    with_prompt = pending_proposal(store, 1, cut, point)
    without, elsewhere = pending_proposal(store, 1, cut), pending_proposal(store, 2, cut, point)
    queue = {
        i["mask_id"]: i
        for i in client.get("/api/review/queue", headers=auth_header(world, "rita")).json()["items"]
    }
    assert queue[with_prompt]["has_prompt"] and not queue[without]["has_prompt"]
    conn, ws = open_ws(client, world, "rita")
    try:
        assert ws.send(type="start_from", mask_id=with_prompt)["code"] == "bad_request"  # no image open
        ws.send(type="open", image_id=1)
        masks = ws.send(type="start_from", mask_id=with_prompt)
        assert masks["type"] == "masks" and masks["clicks"] == 0 and masks["points"] == [[x, y, 1]]
        for mask_id, why in ((without, "no stored prompt"), (elsewhere, "the open image is 1")):
            err = ws.send(type="start_from", mask_id=mask_id)
            assert err["code"] == "bad_request" and why in err["message"]
        ws.send(type="start_from", mask_id=with_prompt)
        out = ws.send(type="review", mask_id=with_prompt, verdict="fix")
    finally:
        conn.__exit__(None, None, None)
    fixed = store.get_mask(out["fixed_mask_id"])
    # the model's mask at the stored prompt: no click, no tracing by hand
    assert fixed["clicks"] == 0 and not fixed["manual_fix"] and fixed["prompt"]["points"] == [[x, y, 1]]
    assert np.array_equal(rle_utils.decode(fixed["rle"]), sq)
    conn, ws = open_ws(client, world, "alice")  # an annotator does not review
    try:
        ws.send(type="open", task_id=world.tasks["alice"][0])
        assert ws.send(type="start_from", mask_id=with_prompt)["code"] == "forbidden"
    finally:
        conn.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------- export
def test_exports_decode_with_pycocotools(client: TestClient, world: World, tmp_path: Path) -> None:
    conn, ws = open_ws(client, world, "alice")
    try:
        ws.send(type="open", task_id=world.tasks["alice"][0])
        for obj in ("disc", "square"):
            _click_accept(ws, world, 1, obj, f"e-{obj}")
        ws.send(type="open", task_id=world.tasks["alice"][1])
        _click_accept(ws, world, 2, "disc", "e-2")
    finally:
        conn.__exit__(None, None, None)
    coco = client.get("/api/export/coco", headers=auth_header(world, "adam")).json()
    path = tmp_path / "export.json"
    path.write_text(json.dumps(coco))
    api = COCO(str(path))
    assert sorted(api.getImgIds()) == [1, 2] and len(api.getAnnIds()) == 3
    for ann in api.loadAnns(api.getAnnIds(imgIds=[1])):
        m = api.annToMask(ann).astype(bool)
        assert m.sum() == ann["area"] and any(
            np.array_equal(m, world.objects[1][o]) for o in ("disc", "square")
        )
    records = client.get("/api/export/sa1b?image_id=2", headers=auth_header(world, "adam")).json()["records"]
    assert len(records) == 1 and records[0]["image"]["image_id"] == 2
    ann = records[0]["annotations"][0]
    seg = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
    assert np.array_equal(mask_utils.decode(seg).astype(bool), world.objects[2]["disc"])
    assert ann["crop_box"] == [0.0, 0.0, 128.0, 96.0] and len(ann["point_coords"]) == 1
    assert set(ann) >= {"id", "segmentation", "bbox", "area", "predicted_iou", "stability_score"}


# --------------------------------------------------------------------------------------- durability
@pytest.mark.slow
def test_acknowledged_masks_survive_server_sigkill(tmp_path: Path) -> None:
    from websockets.sync.client import connect

    world = make_world(tmp_path)
    token, task_id = world.tokens["alice"], world.tasks["alice"][0]
    world.store.close()  # the server process is the only writer
    port = free_port()
    cmd = [
        sys.executable,
        str(HERE / "annotation_fixtures.py"),
        "--db",
        str(world.db_path),
        "--images",
        str(world.images_dir),
        "--port",
        str(port),
    ]

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_http(f"http://127.0.0.1:{port}/healthz")
        return proc

    proc = start()
    acked: dict[str, int] = {}
    try:
        with connect(f"ws://127.0.0.1:{port}/ws?token={token}") as ws:
            assert json.loads(ws.recv())["type"] == "ready"
            ws.send(json.dumps({"type": "open", "task_id": task_id}))
            assert json.loads(ws.recv())["type"] == "opened"
            objs = world.objects[1]
            for i, name in enumerate(["disc", "square", "part", "disc", "square"]):
                x, y = _inside(objs[name])
                ws.send(json.dumps({"type": "point", "x": x, "y": y}))
                assert json.loads(ws.recv())["type"] == "masks"
                ws.send(json.dumps({"type": "accept", "request_id": f"k{i}"}))
                reply = json.loads(ws.recv())
                assert reply["type"] == "accepted"
                acked[f"k{i}"] = reply["mask_id"]
            x, y = _inside(objs["whole"] & ~objs["part"])
            ws.send(json.dumps({"type": "point", "x": x, "y": y}))
            json.loads(ws.recv())
            ws.send(json.dumps({"type": "accept", "request_id": "in-flight"}))  # killed before/after: either
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc = start()
        with connect(f"ws://127.0.0.1:{port}/ws?token={token}") as ws:
            json.loads(ws.recv())
            for rid, mask_id in acked.items():  # a retried accept finds the stored mask
                ws.send(json.dumps({"type": "accept", "request_id": rid}))
                reply = json.loads(ws.recv())
                assert reply.get("mask_id") == mask_id and reply["duplicate"], reply
            # a reader process (Dagster) gets its turn while the server runs, then the server writes again
            reader = connect_read_only(world.db_path, lock_timeout_s=30)
            assert set(acked.values()) <= set(reader.masks()["mask_id"])
            reader.close()
            ws.send(json.dumps({"type": "open", "task_id": task_id}))
            json.loads(ws.recv())
            x, y = _inside(world.objects[1]["square"])
            ws.send(json.dumps({"type": "point", "x": x, "y": y}))
            json.loads(ws.recv())
            ws.send(json.dumps({"type": "accept", "request_id": "after-reader"}))
            assert json.loads(ws.recv())["type"] == "accepted"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    store = world.store.__class__(world.db_path)
    stored = set(store.masks()["mask_id"])
    assert set(acked.values()) <= stored and len(stored) in (6, 7)
    store.close()


# -------------------------------------------------------------------------------------------- CLI
def test_cli_add_annotator_prints_a_working_token(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sam_engine.annotation.__main__ import _dataset_dirs, main
    from sam_engine.annotation.auth import authenticate
    from sam_engine.quality.store import QualityStore

    db = tmp_path / "q.duckdb"
    assert (
        main(
            ["add-annotator", "--db", str(db), "--name", "zed", "--role", "reviewer", "--expertise", "r1,r2"]
        )
        == 0
    )
    token = capsys.readouterr().out.strip().splitlines()[-1]
    store = QualityStore(db)
    assert authenticate(store, token).role == "reviewer"
    assert store.get_annotator("zed")["expertise"] == ["r1", "r2"]
    store.close()
    assert _dataset_dirs(["pool=/a", "gold=/b"], tmp_path) == {"pool": Path("/a"), "gold": Path("/b")}
    assert _dataset_dirs(None, tmp_path)[0] == tmp_path / "corpora/target_pool/images"
    with pytest.raises(SystemExit):
        _dataset_dirs(["pool=/a", "/b"], tmp_path)


def test_default_lanes_follow_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from sam_engine.annotation import __main__ as cli

    for cores, threads, lanes in [(2, 1, 2), (1, 1, 1), (16, 1, 4), (8, 4, 2), (2, 4, 1), (None, 1, 1)]:
        monkeypatch.setattr(cli.os, "cpu_count", lambda c=cores: c)
        assert cli.default_lanes(threads) == lanes


@pytest.mark.slow
def test_cli_serves_the_real_model(tmp_path: Path) -> None:
    pytest.importorskip("sam_engine.predictor")
    import httpx

    world = make_world(tmp_path)
    token, task_id = world.tokens["alice"], world.tasks["alice"][0]
    world.store.close()
    port = free_port()
    cmd = serve_command(port, world.db_path, world.images_dir)
    proc = subprocess.Popen(cmd, cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        assert httpx.get(f"http://127.0.0.1:{port}/api/tasks").status_code == 401
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{port}/ws?token={token}") as ws:
            json.loads(ws.recv())
            ws.send(json.dumps({"type": "open", "task_id": task_id}))
            assert json.loads(ws.recv())["type"] == "opened"
            ws.send(json.dumps({"type": "point", "x": 40.5, "y": 30.5}))
            reply = json.loads(ws.recv())
            assert reply["type"] == "masks" and len(reply["masks"]) == 3
            assert rle_utils.decode(reply["masks"][0]).shape == (96, 128)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
