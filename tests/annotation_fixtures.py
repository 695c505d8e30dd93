"""Shared helpers for the annotation tests and benchmark: a fake predictor, a generated scene, a populated
store with annotators and tasks, and servers (uvicorn in a thread, or a subprocess).

Run as a script to serve a world's store with the fake predictor (used by the durability test):
``python tests/annotation_fixtures.py --db Q --images DIR --port P``.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sam_engine.data.images import save_png  # noqa: E402
from sam_engine.quality.store import QualityStore  # noqa: E402

TOLERANCES = (12, 70, 250)


class FakePredictor:
    """Deterministic colour-region predictor with ``SamPredictor``'s interface (no torch).

    Mask k is the connected region around the positive clicks whose colour is within ``TOLERANCES[k]`` (sum of
    absolute channel differences) of the clicked pixel, clipped to the box; negative clicks remove their own
    region. It records every ``mask_input`` it receives and counts encodings.
    """

    refines = False
    mask_threshold = 0.0

    def __init__(self, low_res: int = 64, cache_size: int = 8, encode_delay_s: float = 0.0) -> None:
        self.low_res = low_res
        self.cache_size = cache_size
        self.encode_delay_s = encode_delay_s
        self._cache: OrderedDict = OrderedDict()
        self._feats: np.ndarray | None = None
        self.current_key = None
        self.set_image_calls = 0
        self.encodes = 0
        self.mask_inputs: list[np.ndarray | None] = []

    def set_image(self, image: np.ndarray, image_key: object = None) -> None:
        self.set_image_calls += 1
        if image_key is not None and image_key in self._cache:
            self._cache.move_to_end(image_key)
            feats = self._cache[image_key]
        else:
            self.encodes += 1
            if self.encode_delay_s:
                time.sleep(self.encode_delay_s)
            feats = image.astype(np.int16)
            if image_key is not None:
                self._cache[image_key] = feats
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        self._feats = feats
        self.current_key = image_key

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._feats is None:
            raise RuntimeError("set_image first")
        self.mask_inputs.append(None if mask_input is None else np.array(mask_input))
        img = self._feats
        h, w = img.shape[:2]
        pts = [] if point_coords is None else [(float(x), float(y)) for x, y in np.asarray(point_coords)]
        labels = [] if point_labels is None else [int(v) for v in np.asarray(point_labels)]
        pos = [p for p, lab in zip(pts, labels, strict=True) if lab == 1]
        neg = [p for p, lab in zip(pts, labels, strict=True) if lab == 0]
        if not pos and box is not None:
            pos = [((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)]
        masks = np.zeros((3, h, w), dtype=bool)
        for k, tol in enumerate(TOLERANCES):
            m = np.zeros((h, w), dtype=bool)
            for x, y in pos:
                m |= self._region(img, x, y, tol, box)
            for x, y in neg:
                m &= ~self._region(img, x, y, TOLERANCES[0], None)
            masks[k] = m
        scores = np.array([0.9, 0.8, 0.7], dtype=np.float32) - 0.01 * len(neg)
        idx_y = (np.arange(self.low_res) * h // self.low_res).clip(0, h - 1)
        idx_x = (np.arange(self.low_res) * w // self.low_res).clip(0, w - 1)
        low = np.where(masks[:, idx_y][:, :, idx_x], 8.0, -8.0).astype(np.float32)
        return masks, scores, low

    @staticmethod
    def _region(img: np.ndarray, x: float, y: float, tol: int, box: np.ndarray | None) -> np.ndarray:
        xi, yi = int(x), int(y)
        close = np.abs(img - img[yi, xi]).sum(axis=-1) <= tol
        if box is not None:
            clip = np.zeros_like(close)
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            clip[y0:y1, x0:x1] = True
            close &= clip
        lab, _ = ndimage.label(close)
        return lab == lab[yi, xi] if lab[yi, xi] else np.zeros_like(close)

    def encode_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [im.astype(np.int16) for im in images]


class RefiningFakePredictor(FakePredictor):
    """A :class:`FakePredictor` with a quick first answer, as :class:`sam_engine.zoom.ZoomPredictor` has.

    ``coarse`` answers all three candidates with the loosest colour region (as +-8 logits); ``predict`` is the
    exact answer and, when handed a ``coarse``, waits ``refine_delay_s`` first (a crop encode) and counts it.
    """

    refines = True

    def __init__(self, *args: object, refine_delay_s: float = 0.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.refine_delay_s = refine_delay_s
        self.coarse_calls = 0
        self.refined = 0

    def coarse(self, *args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.coarse_calls += 1
        masks, scores, low = super().predict(*args, **kwargs)
        loose = np.repeat(masks[-1:], len(masks), axis=0)
        return np.where(loose, 8.0, -8.0).astype(np.float32), scores, low

    def predict(self, *args: object, coarse: object = None, **kwargs: object):  # noqa: ANN201
        if coarse is not None:
            self.refined += 1
            if self.refine_delay_s:
                time.sleep(self.refine_delay_s)
        return super().predict(*args, **kwargs)


def pending_proposal(
    store: QualityStore,
    image_id: int,
    mask: np.ndarray,
    prompt: dict | None = None,
    predicted_iou: float = 0.8,
) -> int:
    """A stage-2 model proposal waiting for review (with the prompt that made it, when given); its mask id."""
    from sam_engine.data import rle as rle_utils

    return store.commit_mask(
        task_id=None,
        image_id=image_id,
        annotator_id=None,
        stage=2,
        source="model",
        rle=rle_utils.encode(mask),
        predicted_iou=predicted_iou,
        clicks=0,
        seconds=0.0,
        status="pending_review",
        prompt=prompt,
    )


# ------------------------------------------------------------------------------------------------ scenes
def make_scene(seed: int = 0, height: int = 96, width: int = 128) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A flat-colour scene: a red box with a lighter inner part, a blue disc, a small green square.

    Returns the image and the object masks (``whole``, ``part``, ``disc``, ``square``).
    """
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = (210, 210, 200)
    dy, dx = (int(v) for v in rng.integers(0, 8, size=2))
    yy, xx = np.mgrid[:height, :width]
    whole = (yy >= 10 + dy) & (yy < 50 + dy) & (xx >= 10 + dx) & (xx < 60 + dx)
    part = (yy >= 20 + dy) & (yy < 35 + dy) & (xx >= 20 + dx) & (xx < 40 + dx)
    disc = (yy - (60 - dy)) ** 2 + (xx - (95 - dx)) ** 2 <= 18**2
    square = (yy >= 70) & (yy < 82) & (xx >= 20 + dx) & (xx < 32 + dx)
    img[whole] = (200, 40, 40)
    img[part] = (230, 60, 50)
    img[disc] = (40, 60, 200)
    img[square] = (30, 160, 60)
    return img, {"whole": whole, "part": part, "disc": disc, "square": square}


@dataclass
class World:
    """A populated store: images on disk, annotators with tokens, tasks per annotator."""

    root: Path
    images_dir: Path
    db_path: Path
    store: QualityStore
    tokens: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, list[int]] = field(default_factory=dict)
    image_ids: list[int] = field(default_factory=list)
    objects: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


def make_world(root: Path, n_images: int = 3, **store_kwargs: object) -> World:
    """Images 1..n (PNG, source 'pool'); alice and bob (annotators), rita (reviewer), adam (admin); alice has
    tasks on images 1..n-1, bob on image n and on image 1 (overlap), rita a review task on image 1."""
    root = Path(root)
    images_dir = root / "images"
    store = QualityStore(root / "quality.duckdb", **store_kwargs)
    world = World(root=root, images_dir=images_dir, db_path=root / "quality.duckdb", store=store)
    rows = []
    for i in range(1, n_images + 1):
        img, objects = make_scene(seed=i)
        save_png(img, images_dir / f"img_{i}.png")
        rows.append(
            {
                "image_id": i,
                "file_name": f"img_{i}.png",
                "width": img.shape[1],
                "height": img.shape[0],
                "region": f"r{i % 2}",
                "split": "pool",
                "source": "pool",
            }
        )
        world.objects[i] = objects
        world.image_ids.append(i)
    store.add_images(rows)
    for name, role in (("alice", "annotator"), ("bob", "annotator"), ("rita", "reviewer"), ("adam", "admin")):
        _, world.tokens[name] = store.add_annotator(name, role, expertise=["r0", "r1"])
    alice_images = world.image_ids[:-1] if n_images > 1 else world.image_ids
    world.tasks["alice"] = store.create_tasks(
        [{"image_id": i, "stage": 1, "annotator_id": "alice", "priority": float(-i)} for i in alice_images]
    )
    world.tasks["bob"] = store.create_tasks(
        [
            {"image_id": world.image_ids[-1], "stage": 1, "annotator_id": "bob"},
            {"image_id": world.image_ids[0], "stage": 1, "annotator_id": "bob"},
        ]
    )
    world.tasks["rita"] = store.create_tasks(
        [{"image_id": world.image_ids[0], "stage": 1, "kind": "review", "annotator_id": "rita"}]
    )
    return world


def build_app(store: QualityStore, images_dir: Path, predictor: object | None = None, **kwargs: object):
    """The FastAPI app over ``store`` with a fake (or given) predictor; returns ``(app, segmentation_service)``."""
    from sam_engine.annotation.server import create_app
    from sam_engine.annotation.service import ImageResolver
    from sam_engine.annotation.session import SegmentationService

    dirs = {"pool": images_dir}
    service = SegmentationService(predictor or FakePredictor(), ImageResolver(store, dirs).load, cache_size=8)
    kwargs.setdefault("ws_hosts", ["testserver"])  # the Host header of FastAPI's TestClient
    return create_app(store, service, dirs, **kwargs), service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving an app on a free loopback port in a background thread (context manager)."""

    def __init__(self, app: object, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", ws_max_size=1 << 20
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_command(port: int, db_path: Path, images_dir: Path, *, subcommand: bool = False) -> list[str]:
    """The annotation server's real command line on loopback: random-init tiny model, one pool folder."""
    return [
        sys.executable,
        "-m",
        "sam_engine.annotation",
        *(["serve"] if subcommand else []),
        "--port",
        str(port),
        "--db",
        str(db_path),
        "--dataset-dir",
        f"pool={images_dir}",
        "--random-init",
        "--log-level",
        "warning",
    ]


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers 200."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not come up in {timeout} s")
        time.sleep(0.05)


def _serve_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="serve a test store with the fake predictor")
    parser.add_argument("--db", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from sam_engine.annotation.server import run

    store = QualityStore(args.db, idle_release_s=1.0, max_hold_s=2.0)  # the CLI's defaults
    app, _ = build_app(store, Path(args.images))
    run(app, "127.0.0.1", args.port, log_level="warning")


if __name__ == "__main__":
    _serve_main()


def auth_header(world: World, name: str) -> dict:
    """The bearer-token header of ``name`` (alice, bob, rita, adam) in ``world``."""
    return {"Authorization": f"Bearer {world.tokens[name]}"}
