"""Load: 32 simulated annotators over real WebSockets against the annotation server on loopback, while Dagster
materializes a DuckDB-reading asset from the same store.

* The server is the real command line (``python -m sam_engine.annotation serve --random-init``: the tiny model
  with random weights; latency and durability do not depend on the weights) in a subprocess on 127.0.0.1, with
  its default options. It is the only writer of the store.
* Each annotator is a thread with its own token, two tasks on two smoke-sized pool scenes and a seeded think
  time before every click and accept. It drives :class:`sam_engine.workforce.simulated.ClickWorker` (the
  simulated annotators' click policy against hidden ground truth) through :class:`WsSession`, which turns every
  ``add_point`` / ``choose`` / ``reset`` into one WebSocket frame and its answer. It accepts 2 masks on its
  first task and 1 on its second (96 masks in all), each with its own request id, sends the last accept of each
  task again (a client that lost the acknowledgement must get the same mask back) and marks the task done.
  Bounded: 96 masks, a deadline for the client phase and a receive timeout per frame.
* Meanwhile this process materializes ``annotator_stats`` (assets/quality.py; it reads the store through
  ``Workspace.open_store(read_only=True)``) with the smoke profile pointed at the same data folder, in a loop.
* Then the server is SIGKILLed and the store is read: every acknowledged mask is there exactly once, with the
  pixels the annotator had selected, and nothing else.

The reader must get turns while the annotators work: the server's store never idles long enough to release
the DuckDB file under this load, so it gives the file up when a reader asks once it has held it ``--max-hold-s``
(default 2 s); without that the reader waited the whole session (and failed with ``StoreBusyError`` once that
was longer than its 30 s lock timeout; docs/reliability.md, Load).

Latency percentiles are printed (``pytest -s``) and attached to the junit XML with
``record_testsuite_property`` (``load_*``; ``record_property`` warns under pytest's default xunit2), never
asserted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from annotation_fixtures import free_port, serve_command, wait_http

from sam_engine.data import rle as rle_utils

pytestmark = pytest.mark.load

if TYPE_CHECKING:
    from dagster import ExecuteInProcessResult
    from websockets.sync.client import ClientConnection

REPO = Path(__file__).resolve().parent.parent

N_ANNOTATORS = 32
MASKS_PER_TASK = (2, 1)  # two tasks per annotator: 2 masks on the first, 1 on the second
THINK_S = (0.15, 0.45)  # seeded think time before each click and each accept
CLICK_CAP = 4  # per object; the untrained model never reaches the IoU target, so this bounds the clicks
DEADLINE_S = 90.0  # the whole client phase; annotators stop between steps once it has passed
RECV_TIMEOUT_S = 30.0  # one frame's answer
SEED = 0


class ClientError(RuntimeError):
    """An error frame, a wrong answer or a transport failure seen by a client."""


# ----------------------------------------------------------------------------------------------- world
@dataclass
class LoadWorld:
    data_dir: Path
    images_dir: Path
    db_path: Path
    tokens: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # name -> [(task_id, image_id)]
    gt: dict[int, list[np.ndarray]] = field(default_factory=dict)  # image_id -> objects, largest first


def build_world(root: Path) -> LoadWorld:
    """Pool scenes of the smoke profile's size, one annotator per thread with two tasks each (own images)."""
    from sam_engine.config import load_config
    from sam_engine.data.images import save_png
    from sam_engine.data.synthetic import pool_scene
    from sam_engine.quality.store import QualityStore

    cfg = load_config("smoke", {"data_dir": str(root / "data")})
    world = LoadWorld(data_dir=cfg.data_dir, images_dir=root / "images", db_path=cfg.duckdb_path)
    n_tasks = len(MASKS_PER_TASK)
    rows = []
    for image_id in range(N_ANNOTATORS * n_tasks):
        scene = pool_scene(SEED, image_id, cfg.corpus.pool_size, cfg.corpus.regions)
        save_png(scene.image, world.images_dir / f"{image_id}.png")
        h, w = scene.image.shape[:2]
        rows.append(
            {"image_id": image_id, "file_name": f"{image_id}.png", "width": w, "height": h, "source": "pool"}
        )
        objects = [rle_utils.decode(a["segmentation"]) for a in scene.annotations]
        world.gt[image_id] = sorted((m for m in objects if m.sum() >= 20), key=lambda m: -int(m.sum()))
        assert len(world.gt[image_id]) >= max(MASKS_PER_TASK), f"scene {image_id} has too few objects"
    with QualityStore(world.db_path) as store:
        store.add_images(rows)
        for k in range(N_ANNOTATORS):
            name = f"ann{k:02d}"
            _, world.tokens[name] = store.add_annotator(name, "annotator", expertise=["r0"])
            images = [k + N_ANNOTATORS * j for j in range(n_tasks)]
            ids = store.create_tasks(
                [
                    {"image_id": i, "stage": 1, "annotator_id": name, "priority": -float(j)}
                    for j, i in enumerate(images)
                ]
            )
            world.tasks[name] = list(zip(ids, images, strict=True))
    return world


# ---------------------------------------------------------------------------------------------- client
@dataclass
class WsResult:
    """What ``ClickWorker`` reads from a click: the three candidates, their scores and the selected one."""

    masks: np.ndarray
    scores: np.ndarray
    selected: int


@dataclass
class Ack:
    annotator_id: str
    request_id: str
    task_id: int
    image_id: int
    mask_id: int
    mask: np.ndarray  # the selected candidate the annotator saw when it accepted
    at: float  # time.monotonic() when the acknowledgement arrived


class WsSession:
    """``simulated.Session`` over a real WebSocket: every call is one frame and its answer.

    Waits a seeded think time before each click; records each frame's round-trip time by message type."""

    def __init__(self, ws: ClientConnection, rng: np.random.Generator, stats: dict) -> None:
        self.ws = ws
        self.image_id, self.width, self.height = -1, 0, 0
        self.rng = rng
        self.stats = stats
        self.seq = 0
        self.result: WsResult | None = None

    def call(self, kind: str, **fields: object) -> dict:
        self.seq += 1
        t0 = time.perf_counter()
        self.ws.send(json.dumps({"type": kind, "seq": self.seq, **fields}))
        try:
            raw = self.ws.recv(timeout=RECV_TIMEOUT_S)
        except TimeoutError:
            raise ClientError(f"{kind}: no answer in {RECV_TIMEOUT_S} s") from None
        self.stats.setdefault(kind, []).append(time.perf_counter() - t0)
        reply = json.loads(raw)
        if "server_ms" in reply:
            self.stats.setdefault(f"{kind}_server", []).append(reply["server_ms"] / 1000.0)
        if reply.get("type") == "error":
            raise ClientError(f"{kind}: error frame {reply.get('code')}: {reply.get('message')}")
        if reply.get("seq") != self.seq:
            raise ClientError(f"{kind}: answer to seq {reply.get('seq')}, expected {self.seq}")
        return reply

    def think(self) -> None:
        time.sleep(float(self.rng.uniform(*THINK_S)))

    def add_point(self, x: float, y: float, positive: bool = True) -> WsResult:
        self.think()
        reply = self.call("point", x=float(x), y=float(y), positive=bool(positive))
        if reply["type"] != "masks" or len(reply["masks"]) != 3:
            raise ClientError(f"point: unexpected answer {str(reply)[:200]}")
        masks = np.stack([rle_utils.decode(m) for m in reply["masks"]])
        if masks.shape[1:] != (self.height, self.width):
            raise ClientError(
                f"point: masks of shape {masks.shape[1:]} on a {self.height}x{self.width} image"
            )
        self.result = WsResult(masks, np.asarray(reply["scores"], dtype=np.float32), int(reply["selected"]))
        return self.result

    def choose(self, index: int) -> None:
        if self.call("choose", index=int(index))["selected"] != index:
            raise ClientError("choose: the server selected another candidate")
        if self.result is not None:
            self.result.selected = int(index)

    def reset(self) -> None:
        self.call("reset")
        self.result = None

    def open(self, task_id: int, image_id: int) -> None:
        opened = self.call("open", task_id=task_id)
        img = opened["image"]
        if opened["task"]["task_id"] != task_id or img["image_id"] != image_id:
            raise ClientError(f"open: wrong task or image {str(opened)[:200]}")
        self.image_id, self.width, self.height = image_id, img["width"], img["height"]
        self.result = None


def annotator_run(
    port: int, name: str, token: str, world: LoadWorld, deadline: float, acks: list, stats: dict
) -> bool:
    """One simulated annotator over one WebSocket; True when it finished its plan before the deadline."""
    from websockets.sync.client import connect

    from sam_engine.evaluation.clicks import next_click
    from sam_engine.workforce.simulated import PROFILES, ClickWorker, seeded_rng

    profiles = list(PROFILES.values())
    profile = profiles[int(name[3:]) % len(profiles)]
    worker = ClickWorker(dataclasses.replace(profile, click_cap=CLICK_CAP))
    with connect(
        f"ws://127.0.0.1:{port}/ws?token={token}", max_size=2**22, open_timeout=RECV_TIMEOUT_S
    ) as ws:
        ready = json.loads(ws.recv(timeout=RECV_TIMEOUT_S))
        if ready.get("type") != "ready" or ready["user"]["annotator_id"] != name:
            raise ClientError(f"handshake: {str(ready)[:200]}")
        for (task_id, image_id), n_masks in zip(world.tasks[name], MASKS_PER_TASK, strict=True):
            rng = seeded_rng(SEED, name, image_id)
            session = WsSession(ws, rng, stats)
            session.open(task_id, image_id)
            for j in range(n_masks):
                if time.monotonic() > deadline:
                    return False
                target = world.gt[image_id][j]
                worker.segment_object(session, target, rng)
                r = session.result
                if r is None or not r.masks[r.selected].any():  # never accept an empty mask: pick or click
                    nonempty = [] if r is None else [i for i in range(3) if r.masks[i].any()]
                    if nonempty:
                        session.choose(max(nonempty, key=lambda i: int(r.masks[i].sum())))
                    else:
                        c = next_click(target, np.zeros_like(target))
                        session.add_point(c.x, c.y, True)
                        if not session.result.masks[session.result.selected].any():
                            raise ClientError(f"image {image_id}: the model gave no mask to accept")
                selected = session.result.masks[session.result.selected].copy()
                session.think()
                request_id = f"{name}-t{task_id}-m{j}"
                reply = session.call("accept", request_id=request_id)
                if reply["type"] != "accepted" or reply["duplicate"] or reply["area"] != int(selected.sum()):
                    raise ClientError(f"accept: {str(reply)[:200]}")
                last = Ack(
                    name, request_id, task_id, image_id, int(reply["mask_id"]), selected, time.monotonic()
                )
                acks.append(last)
            again = session.call("accept", request_id=request_id)  # a client retrying a lost acknowledgement
            if not again["duplicate"] or again["mask_id"] != last.mask_id:
                raise ClientError(f"retried accept made a new mask: {str(again)[:200]}")
            if session.call("done")["status"] != "done":
                raise ClientError("done: task not done")
    return True


# ------------------------------------------------------------------------------------------------- run
@dataclass
class LoadRun:
    """Everything one load run observed; the tests below assert on it."""

    world: LoadWorld
    acks: list[Ack]
    errors: list[str]
    finished: dict[str, bool]
    stats: dict[str, dict[str, list[float]]]  # annotator -> message type -> seconds
    passes: list[dict]  # one per materialization: start / end (s from t0), ok, masks seen, error
    t0: float
    load_s: float
    server_log: str
    masks: pd.DataFrame | None = None  # the store after the server was killed
    tasks: pd.DataFrame | None = None
    commits: pd.DataFrame | None = None

    def times(self, kind: str) -> list[float]:
        return [v for s in self.stats.values() for v in s.get(kind, [])]


def _failure(result: ExecuteInProcessResult) -> str:
    """The root exceptions of a failed materialization (e.g. ``StoreBusyError: ...``)."""
    out = []
    for event in result.all_events:
        if event.is_step_failure:
            err = event.step_failure_data.error
            while err.cause is not None:
                err = err.cause
            out.append(f"{err.cls_name}: {err.message.strip()[:400]}")
    return "; ".join(out) or "run failed"


def _server_cmd(world: LoadWorld, port: int) -> list[str]:
    return serve_command(port, world.db_path, world.images_dir, subcommand=True)


def run_load(root: Path) -> LoadRun:
    """Build the world, serve it, run the annotators and the Dagster reader, SIGKILL the server, read the store."""
    from dagster import DagsterInstance, materialize

    from assets.quality import annotator_stats
    from assets.resources import EngineResource
    from sam_engine.quality.store import QualityStore

    world = build_world(root)
    port = free_port()
    log_path = root / "server.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            _server_cmd(world, port), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    engine = EngineResource(profile="smoke", overrides=json.dumps({"data_dir": str(world.data_dir)}))
    run = LoadRun(world, [], [], {}, {name: {} for name in world.tokens}, [], 0.0, 0.0, "")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        start = threading.Barrier(N_ANNOTATORS + 1)
        deadline = time.monotonic() + DEADLINE_S

        def client(name: str) -> None:
            try:
                start.wait(timeout=RECV_TIMEOUT_S)
                run.finished[name] = annotator_run(
                    port, name, world.tokens[name], world, deadline, run.acks, run.stats[name]
                )
            except Exception as exc:  # noqa: BLE001 - every failure is collected and asserted on
                run.errors.append(f"{name}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=client, args=(n,), name=n, daemon=True) for n in world.tokens]
        for t in threads:
            t.start()
        with DagsterInstance.ephemeral() as instance:

            def read_pass(during_load: bool) -> None:
                begin = time.monotonic() - run.t0
                result = materialize(
                    [annotator_stats], resources={"engine": engine}, instance=instance, raise_on_error=False
                )
                entry = {"during_load": during_load, "start": round(begin, 2)}
                entry |= {"end": round(time.monotonic() - run.t0, 2), "ok": result.success}
                if result.success:
                    df = result.output_for_node("annotator_stats")
                    entry["masks"] = int(df["masks"].sum()) if len(df) else 0
                    entry["checks_ok"] = all(c.passed for c in result.get_asset_check_evaluations())
                else:
                    entry["error"] = _failure(result)
                run.passes.append(entry)

            start.wait(timeout=RECV_TIMEOUT_S)
            run.t0 = time.monotonic()
            while any(t.is_alive() for t in threads):
                read_pass(during_load=True)
            run.load_s = time.monotonic() - run.t0
            for t in threads:
                t.join(timeout=RECV_TIMEOUT_S)
            read_pass(during_load=False)  # the server is idle now: this reader must see every mask
        if proc.poll() is not None:
            run.errors.append(f"the server exited with {proc.returncode} under load")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # hard stop: only what the store made durable counts
        proc.wait(timeout=15)
        run.server_log = log_path.read_text(errors="replace")[-3000:]
    with QualityStore(world.db_path) as store:  # replays the write-ahead log of the killed server
        run.masks = store.masks(status=None)
        run.tasks = store.tasks()
        run.commits = store.events(kind="commit")
    return run


@pytest.fixture(scope="module")
def load_run(tmp_path_factory: pytest.TempPathFactory) -> LoadRun:
    run = run_load(tmp_path_factory.mktemp("load"))
    print("\n" + json.dumps(figures(run)) + "\nreader passes: " + json.dumps(run.passes))
    return run


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 1) if values else float("nan")


def figures(run: LoadRun) -> dict:
    """The measured figures (printed with ``pytest -s``, recorded as junit properties; never asserted).

    ``*_server`` is the server's own handling time of a frame (``server_ms``); the rest are client round trips."""
    out: dict = {
        "annotators": N_ANNOTATORS,
        "masks_acknowledged": len(run.acks),
        "masks_in_store": len(run.masks),
        "client_errors": len(run.errors),
        "clicks": len(run.times("point")),
        "load_s": round(run.load_s, 1),
    }
    for kind in ("point", "point_server", "accept", "accept_server", "open"):
        values = run.times(kind)
        for q in (50, 95, 99):
            out[f"{kind.replace('point', 'click')}_p{q}_ms"] = _pct(values, q)
    during = [p for p in run.passes if p["during_load"]]
    out["reader_passes_during_load"] = len(during)
    out["reader_pass_max_s"] = round(max((p["end"] - p["start"] for p in run.passes), default=0.0), 2)
    return out


# ----------------------------------------------------------------------------------------------- tests
def test_32_annotators_lose_no_acknowledged_mask_while_dagster_reads(
    load_run: LoadRun, record_testsuite_property: Callable[[str, object], None]
) -> None:
    run = load_run
    for k, v in figures(run).items():  # junit XML (testsuite level: valid in the default xunit2 format too)
        record_testsuite_property(f"load_{k}", v)
    assert not run.errors, (
        f"{len(run.errors)} client errors:\n"
        + "\n".join(run.errors[:20])
        + (f"\nserver log:\n{run.server_log}")
    )
    planned = N_ANNOTATORS * sum(MASKS_PER_TASK)
    if not all(run.finished.get(n) for n in run.world.tokens):
        pytest.fail(
            f"only {len(run.acks)} of {planned} masks before the {DEADLINE_S} s bound (machine too busy?)"
        )
    assert len(run.acks) == planned

    # the reader: every materialization succeeded, saw a growing count, and the last one saw every mask
    failed = [p for p in run.passes if not p["ok"]]
    assert not failed, f"{len(failed)} of {len(run.passes)} Dagster materializations failed: {failed[:3]}"
    assert all(p["checks_ok"] for p in run.passes), "annotator_stats_schema check failed"
    seen = [p["masks"] for p in run.passes]
    assert seen == sorted(seen), f"a reader saw masks disappear: {seen}"
    assert seen[-1] == planned, "the final materialization does not count every acknowledged mask"

    # the store after a SIGKILL: every acknowledged mask exactly once, with the pixels the annotator accepted
    masks = run.masks
    assert len(masks) == len({a.mask_id for a in run.acks}) == planned, "masks in the store != acknowledged"
    by_request = {r: g for r, g in masks.groupby("request_id")}
    for a in run.acks:
        rows = by_request.get(f"{a.annotator_id}:{a.request_id}")
        assert rows is not None and len(rows) == 1, f"acknowledged mask {a.mask_id} ({a.request_id}) lost"
        row = rows.iloc[0]
        assert int(row["mask_id"]) == a.mask_id and row["annotator_id"] == a.annotator_id
        assert int(row["task_id"]) == a.task_id and int(row["image_id"]) == a.image_id
        assert np.array_equal(rle_utils.decode(row["rle"]), a.mask), f"mask {a.mask_id}: pixels differ"
    assert set(run.tasks["status"]) == {"done"}, run.tasks["status"].value_counts().to_dict()
    assert len(run.commits) == planned, "one commit event per mask"


def test_dagster_reader_gets_a_turn_while_annotators_work(load_run: LoadRun) -> None:
    """Some materialization must read the store while the annotators are still committing masks."""
    assert not load_run.errors and len(load_run.acks) == N_ANNOTATORS * sum(MASKS_PER_TASK)
    first_ack = min(a.at for a in load_run.acks) - load_run.t0
    last_ack = max(a.at for a in load_run.acks) - load_run.t0
    turns = [p for p in load_run.passes if p["ok"] and p["end"] < last_ack]
    assert turns, (
        f"acknowledgements from {first_ack:.1f} s to {last_ack:.1f} s; no materialization finished before the "
        f"last one: {load_run.passes}"
    )
