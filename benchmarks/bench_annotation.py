"""Click-to-mask latency of the annotation server over a real WebSocket, against the in-process session call.

Setup: pool-like scenes (``sam_engine.data.synthetic.pool_scene``), the server's zoom-in predictor over the
checkpoint in ``SAM_ENGINE_BENCH_CHECKPOINT`` (for instance ``data/models/model_v0/model.pt`` after ``make run``)
or the tiny model with random weights (``SAM_ENGINE_BENCH_ZOOM=0``: SAM's single pass), in as many lanes as
the server's default (one per core; ``SAM_ENGINE_BENCH_LANES=N`` to choose), the server in a subprocess on a
loopback port (this file with ``--serve``, which builds the same app as ``python -m sam_engine.annotation``),
clients with ``websockets``' sync API in this process. Clients click as annotators do: object after object,
the click protocol's next click (``sam_engine.evaluation.clicks.next_click``) from the error region of the
mask they got back, at most 3 clicks or IoU 0.9 per object.

Clients open images with ``progressive`` answers, as the browser page does: a click gets the whole-image masks
from the cached embedding at once and the zoomed-in masks after them (``SAM_ENGINE_BENCH_PROGRESSIVE=0``: one
answer per click, the zoomed-in one). ``click_*`` rows time the first masks the annotator sees,
``click_refined_*`` rows the refined ones (the same numbers when there is no refinement).

* ``click_*_1_annotator``: one client, embedding cached, a click every few ms (closed loop); baseline = the
  same click through ``AnnotationSession.add_point`` in this process (no server, no RLE, no JSON), until its
  quick answer (``on_coarse``) for ``click_*`` and until it returns for ``click_refined_*``.
* ``click_*_16_annotators``: 16 clients on 16 different images (embeddings cached), each clicking after a
  seeded think time uniform in [0.1, 0.5] s (human annotators click about once a second; this is ~40
  clicks/s offered in total); baseline = the in-process p99 / p50.
* ``image_open_cold``: an admin opens images nobody opened before (decode + image encoder);
  ``image_open_prefetched``: an annotator opens its next task after the server prefetched it.
  Baselines: ``SegmentationService.open_session`` cold / cached in this process.
* ``mask_message_bytes``: mean size of one answer (3 masks as COCO RLE + scores).

Targets on a 2-core CPU with the tiny model: click p99 <= 20 ms for one annotator, <= 50 ms with 16.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sam_engine.data import rle as rle_utils  # noqa: E402
from sam_engine.data.images import save_png  # noqa: E402
from sam_engine.data.synthetic import pool_scene  # noqa: E402
from sam_engine.evaluation.clicks import next_click  # noqa: E402
from sam_engine.quality.store import QualityStore  # noqa: E402

N_CONCURRENT = 16
PROGRESSIVE = os.environ.get("SAM_ENGINE_BENCH_PROGRESSIVE", "1") != "0"
TORCH_THREADS = 1  # as the server's --torch-threads default; baseline and server alike


# ------------------------------------------------------------------------------------------- setup
def _predictor() -> tuple[object, str]:
    """The server's predictor (zoom-in on, as ``python -m sam_engine.annotation serve``) over the checkpoint in
    ``SAM_ENGINE_BENCH_CHECKPOINT`` or an untrained tiny model; the tests' fake predictor if there is none yet.

    With zoom-in the weights matter: a trained model's object-sized masks make later clicks answer on crops
    (an encoder pass whenever the crop moves), an untrained model's image-sized masks rarely do.
    """
    try:
        from sam_engine.annotation.__main__ import default_lanes
        from sam_engine.zoom import predictor_lanes
    except ImportError:
        sys.path.insert(0, str(REPO / "tests"))
        from annotation_fixtures import FakePredictor

        return FakePredictor(), "fake (sam_engine.predictor missing)"
    checkpoint = os.environ.get("SAM_ENGINE_BENCH_CHECKPOINT")
    zoom = os.environ.get("SAM_ENGINE_BENCH_ZOOM", "1") != "0"
    suffix = ", zoom-in" if zoom else ", single pass"
    if checkpoint:
        from sam_engine.model.checkpoint import load_model

        model, name = load_model(checkpoint).eval(), Path(checkpoint).parent.name
    else:
        from sam_engine.model import build_sam

        model, name = build_sam("tiny", seed=0).eval(), "tiny (random init)"
    lanes = int(os.environ.get("SAM_ENGINE_BENCH_LANES", "0")) or default_lanes(TORCH_THREADS)
    suffix += f", {lanes} lane{'s' if lanes > 1 else ''}"
    return predictor_lanes(model, lanes, zoom=zoom), name + suffix


def _make_data(root: Path, n_images: int) -> tuple[dict[str, str], dict[str, list[int]], dict[int, list]]:
    """Images + store: annotators ann0..ann15 (ann_k has tasks on images k, k+16, ...), admin 'boss'."""
    images_dir = root / "images"
    store = QualityStore(root / "quality.duckdb")
    rows, clicks = [], {}  # clicks: the objects (GT masks) each image's annotator segments
    for i in range(n_images):
        scene = pool_scene(seed=0, index=i, size_range=(192, 320), n_regions=5)
        save_png(scene.image, images_dir / f"{i}.png")
        h, w = scene.image.shape[:2]
        rows.append({"image_id": i, "file_name": f"{i}.png", "width": w, "height": h, "source": "pool"})
        clicks[i] = [
            m
            for m in (rle_utils.decode(a["segmentation"]).astype(bool) for a in scene.annotations[:12])
            if m.any()
        ]
    store.add_images(rows)
    tokens, tasks = {}, {}
    for k in range(N_CONCURRENT):
        name = f"ann{k}"
        _, tokens[name] = store.add_annotator(name)
        ids = [k, k + N_CONCURRENT]  # two tasks each; images from 2 * N_CONCURRENT on stay unopened (cold)
        tasks[name] = store.create_tasks(
            [
                {"image_id": i, "stage": 1, "annotator_id": name, "priority": -float(j)}
                for j, i in enumerate(ids)
            ]
        )
    _, tokens["boss"] = store.add_annotator("boss", "admin")
    store.close()
    return tokens, tasks, clicks


def _serve(args: argparse.Namespace) -> None:
    import torch

    from sam_engine.annotation.server import create_app, run

    torch.set_num_threads(TORCH_THREADS)
    from sam_engine.annotation.service import ImageResolver
    from sam_engine.annotation.session import SegmentationService

    store = QualityStore(args.db, idle_release_s=1.0)
    dirs = {"pool": args.images}
    predictor, _ = _predictor()
    service = SegmentationService(predictor, ImageResolver(store, dirs).load, cache_size=64)
    app = create_app(store, service, dirs, rate_limit=(1000.0, 1000))
    run(app, "127.0.0.1", args.port, log_level="warning")


def _start_server(root: Path, port: int) -> subprocess.Popen:
    import httpx

    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        "--db",
        str(root / "quality.duckdb"),
        "--images",
        str(root / "images"),
        "--port",
        str(port),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script(
    service: object, image_id: int, objects: list[np.ndarray], n: int
) -> tuple[list[tuple[float, float, bool, bool]], list[float], list[float]]:
    """``n`` clicks as an annotator makes them, and their in-process times (the baseline): to the quick answer
    (the refined answer's time without progressive answers or refinement) and to the refined one.

    Object after object, the click protocol's next click (``next_click``) from the error region of the mask
    just returned, at most 3 clicks or IoU 0.9 per object. Made in this process with the server's predictor
    before the run, so the clients only replay (x, y, positive, new_object): the protocol's distance
    transforms would otherwise load the CPU the server runs on (an annotator's browser is elsewhere).
    """
    session = service.open_session(image_id)
    script: list[tuple[float, float, bool, bool]] = []
    times: list[float] = []
    first: list[float] = []
    k = 0
    while len(script) < n:
        gt = objects[k % len(objects)]
        k += 1
        session.reset()
        pred = np.zeros_like(gt)
        clicked = np.zeros_like(gt)
        for j in range(3):
            click = next_click(gt, pred, clicked=clicked)
            if click is None:
                break
            clicked[click.y, click.x] = True
            x, y = click.x + 0.5, click.y + 0.5
            seen: list[float] = []
            t0 = time.perf_counter()
            result = session.add_point(
                x,
                y,
                positive=click.positive,
                on_coarse=(lambda _r, seen=seen: seen.append(time.perf_counter())) if PROGRESSIVE else None,
            )
            times.append(time.perf_counter() - t0)
            first.append(seen[0] - t0 if seen else times[-1])
            script.append((x, y, bool(click.positive), j == 0))
            pred = result.mask
            if len(script) >= n or (pred & gt).sum() >= 0.9 * (pred | gt).sum():
                break
    return script, first, times


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


# ------------------------------------------------------------------------------------------- clients
class _Client:
    def __init__(self, port: int, token: str) -> None:
        from websockets.sync.client import connect

        self._cm = connect(f"ws://127.0.0.1:{port}/ws?token={token}", max_size=2**22)
        self.ws = self._cm.__enter__()
        assert json.loads(self.ws.recv())["type"] == "ready"
        self.bytes: list[int] = []
        self.server_s: list[float] = []  # server-side time of the first masks of each click
        self.server_refined_s: list[float] = []  # ... and of the refined (final) masks
        self.first_s: list[float] = []  # client-side time to the first masks of each click

    def call(self, **msg: object) -> tuple[dict, float]:
        """Send ``msg``; wait for its final answer (a click's quick masks are timed on the way)."""
        if msg.get("type") == "open":
            msg = {"progressive": PROGRESSIVE, **msg}
        t0 = time.perf_counter()
        self.ws.send(json.dumps(msg))
        first = None
        while True:
            raw = self.ws.recv()
            dt = time.perf_counter() - t0
            out = json.loads(raw)
            if out["type"] == "error":
                raise RuntimeError(out["message"])
            if out["type"] != "masks" or not out["masks"]:
                return out, dt
            self.bytes.append(len(raw))
            if first is None:
                first = dt
                self.first_s.append(dt)
                self.server_s.append(out["server_ms"] / 1000.0)
            if out.get("final", True):
                self.server_refined_s.append(out["server_ms"] / 1000.0)
                return out, dt

    def clicks(
        self,
        script: list[tuple[float, float, bool, bool]],
        n: int,
        think: tuple[float, float] | None = None,
        seed: int = 0,
    ) -> list[float]:
        """Replay the first ``n`` clicks of a :func:`_script` (reset where it starts a new object); returns the
        times to the refined masks (those to the first masks land in ``first_s``)."""
        rng = np.random.default_rng(seed)
        times = []
        for x, y, positive, new_object in script[:n]:
            if new_object:
                self.call(type="reset")
            if think:
                time.sleep(rng.uniform(*think))
            _, dt = self.call(type="point", x=x, y=y, positive=positive)
            times.append(dt)
        return times

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------- runs
def _baseline(root: Path, n_cold: int, cold_ids: list[int]) -> tuple[object, dict]:
    """The in-process service (images read straight from their files, no store) and its open timings."""
    from sam_engine.annotation.session import SegmentationService
    from sam_engine.data.images import load_image

    predictor, _ = _predictor()
    service = SegmentationService(
        predictor, lambda i: load_image(root / "images" / f"{i}.png"), cache_size=64
    )
    cold = []
    for image_id in cold_ids[:n_cold]:
        t0 = time.perf_counter()
        service.open_session(image_id)
        cold.append(time.perf_counter() - t0)
    cached = []
    for image_id in cold_ids[:n_cold]:
        service.open_session(0)  # make another image current first
        t0 = time.perf_counter()
        service.open_session(image_id)
        cached.append(time.perf_counter() - t0)
    return service, {"cold": cold, "cached": cached}


def run(quick: bool = False) -> list[dict]:
    n_single = 20 if quick else 300
    n_each = 4 if quick else 30
    n_cold = 2 if quick else 8
    n_images = N_CONCURRENT * 2 + n_cold
    import torch

    _, model_name = _predictor()
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        rows = _run(quick, n_single, n_each, n_cold, n_images, model_name)
    finally:
        torch.set_num_threads(threads)
    return rows


def _run(quick: bool, n_single: int, n_each: int, n_cold: int, n_images: int, model_name: str) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench_annotation_") as tmp:
        root = Path(tmp)
        tokens, tasks, clicks = _make_data(root, n_images)
        cold_ids = list(range(N_CONCURRENT * 2, n_images))
        base_service, base = _baseline(root, n_cold, cold_ids)
        scripts = {}
        for k in range(N_CONCURRENT):
            scripts[k], first, times = _script(
                base_service, k, clicks[k], max(n_single if k == 0 else n_each, 5)
            )
            if k == 0:
                base["click_first"], base["click"] = first, times
        clicks = scripts
        port = _free_port()
        proc = _start_server(root, port)
        try:
            server = _measure_server(
                port,
                tokens,
                tasks,
                clicks,
                n_single,
                n_each,
                cold_ids,
                n_cold,
                1.0 if quick else 3.0,
            )
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            base_service.close()
    b50, b99 = _pct(base["click_first"], 50), _pct(base["click_first"], 99)
    r50, r99 = _pct(base["click"], 50), _pct(base["click"], 99)
    rows = []

    def row(metric: str, value: float, unit: str, baseline: float | None = None, **extra: object) -> None:
        r = {"benchmark": "annotation", "metric": metric, "value": round(value, 3), "unit": unit}
        if baseline is not None:
            r |= {
                "baseline": round(baseline, 3),
                "ratio": round(value / baseline, 3) if baseline else float("nan"),
            }
        rows.append(r | extra | {"model": model_name})

    for who, n in (("1_annotator", "single"), ("16_annotators", "multi")):
        target = {"single": 20.0, "multi": 50.0}[n]
        row(f"click_p50_{who}", _pct(server[f"{n}_first"], 50), "ms", b50)
        row(f"click_p99_{who}", _pct(server[f"{n}_first"], 99), "ms", b99, target=target)
        row(f"click_server_side_p50_{who}", _pct(server[f"{n}_server"], 50), "ms", b50)
        row(f"click_server_side_p99_{who}", _pct(server[f"{n}_server"], 99), "ms", b99)
        row(f"click_refined_p50_{who}", _pct(server[n], 50), "ms", r50)
        row(f"click_refined_p99_{who}", _pct(server[n], 99), "ms", r99)
        row(f"click_refined_server_side_p99_{who}", _pct(server[f"{n}_server_refined"], 99), "ms", r99)
    row("clicks_per_s_16_annotators", server["rate"], "1/s")
    row("image_open_cold_p50", _pct(server["cold"], 50), "ms", _pct(base["cold"], 50))
    row("image_open_prefetched_p50", _pct(server["prefetched"], 50), "ms", _pct(base["cached"], 50))
    row("mask_message_bytes", float(np.mean(server["bytes"])), "bytes")
    return rows


def _measure_server(
    port: int,
    tokens: dict,
    tasks: dict,
    clicks: dict,
    n_single: int,
    n_each: int,
    cold_ids: list[int],
    n_prefetched: int,
    settle_s: float,
) -> dict:
    # one annotator, cached embedding (the open also prefetches its next task; let that finish first)
    c = _Client(port, tokens["ann0"])
    c.call(type="open", task_id=tasks["ann0"][0])
    time.sleep(settle_s / 3)
    c.clicks(clicks[0], 5)  # warm-up
    c.server_s.clear()
    c.server_refined_s.clear()
    c.first_s.clear()
    single = c.clicks(clicks[0], n_single)
    sizes = list(c.bytes)
    single_first, single_server, single_refined = list(c.first_s), list(c.server_s), list(c.server_refined_s)
    c.close()
    # cold opens by an admin (admins without tasks trigger no prefetch)
    boss = _Client(port, tokens["boss"])
    cold = []
    for image_id in cold_ids:
        _, dt = boss.call(type="open", image_id=image_id)
        cold.append(dt)
    boss.close()
    # 16 annotators, each on its own image (embedding cached once the opens and prefetches are done)
    clients = [_Client(port, tokens[f"ann{k}"]) for k in range(N_CONCURRENT)]
    for k, cl in enumerate(clients):
        cl.call(type="open", task_id=tasks[f"ann{k}"][0])
    time.sleep(settle_s)
    for k, cl in enumerate(clients):
        cl.clicks(clicks[k], 2)
    results: list[list[float]] = [[] for _ in clients]
    barrier = threading.Barrier(len(clients))

    def work(k: int) -> None:
        barrier.wait()
        results[k] = clients[k].clicks(clicks[k], n_each, think=(0.1, 0.5), seed=k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(clients))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    # next task of a few annotators: prefetched by the server while they clicked on the first
    prefetched = []
    for k in range(1, 1 + n_prefetched):
        _, dt = clients[k].call(type="open", task_id=tasks[f"ann{k}"][1])
        prefetched.append(dt)
    for cl in clients:
        cl.close()
    multi = [v for r in results for v in r]
    return {
        "single": single,
        "single_first": single_first,
        "single_server": single_server,
        "single_server_refined": single_refined,
        "multi": multi,
        "multi_first": [v for cl in clients for v in cl.first_s[-n_each:]],
        "multi_server": [v for cl in clients for v in cl.server_s[-n_each:]],
        "multi_server_refined": [v for cl in clients for v in cl.server_refined_s[-n_each:]],
        "rate": len(multi) / elapsed,
        "cold": cold,
        "prefetched": prefetched,
        "bytes": sizes,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--db", type=Path)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--port", type=int)
    parser.add_argument("--quick", action="store_true")
    cli = parser.parse_args()
    if cli.serve:
        _serve(cli)
    else:
        for r in run(quick=cli.quick):
            print(json.dumps(r))
