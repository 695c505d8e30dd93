"""Interactive segmentation sessions: the one click-loop API behind the browser page and simulated annotators.

Contract (others build on it; keep it stable)::

    service = SegmentationService(predictor, image_loader, cache_size=16)   # one per process
    service.prefetch([image_id, ...])          # background thread computes the next images' embeddings
    session = service.open_session(image_id, task_id=None, annotator_id=None)   # embedding computed / cached
    result = session.add_point(x, y, positive=True)   # -> MaskResult(masks (3,H,W) bool, scores (3,), selected, clicks)
    result = session.set_box(x0, y0, x1, y1)
    result = session.load_prompt({"points": [[x, y, 1]], "box": None})   # a stored prompt: adds no clicks
    result = session.undo()                    # previous state's result; None when back to no prompt
    session.choose(index); session.current_mask() -> (H,W) bool; session.reset(); session.elapsed_seconds()

``predictor`` is a :class:`sam_engine.predictor.SamPredictor` (or anything with its ``set_image(img,
image_key=)`` / ``predict(point_coords, point_labels, box, mask_input, multimask_output)`` interface), or a
list of them: *lanes* over one model and shared embedding caches (see :func:`sam_engine.zoom.predictor_lanes`);
``image_loader(image_id) -> HxWx3 uint8``. Coordinates are original-image pixels, x right, y down.
Each click sends every prompt so far plus the previous low-res logits of the selected mask (SAM's iterative
refinement); the selected mask is the highest-scoring one until :meth:`AnnotationSession.choose` picks another.
``clicks`` counts prompts given since the session opened or was last reset, undone ones included (effort);
``elapsed_seconds`` runs from the same moment. A bad prompt raises :class:`PromptError` (a ``ValueError``).

The lanes serve every session of the process. A call takes a free lane for its ``set_image`` + ``predict``
(the prefetch thread too), so with N lanes N calls run at once (torch releases the GIL). Free lanes go to
waiting calls by priority: a click's first answer (:data:`CLICK`) before a zoom-in refinement
(:data:`REFINE`) before a background prefetch (:data:`PREFETCH`). One lane per CPU core, each with one torch
thread, answers concurrent annotators faster than one lane with several threads.

Progressive answers: ``add_point`` / ``set_box`` take ``on_coarse``. When the predictor refines on a crop
(:class:`sam_engine.zoom.ZoomPredictor`), the session first answers from the cached whole-image embedding
(decoder only), hands that :class:`MaskResult` to ``on_coarse``, then refines on the crop at a lower lane
priority and returns the refined result, which is what the session keeps. The refined result is the same as
without ``on_coarse``; a predictor without refinement answers once and ``on_coarse`` is not called.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from ..predictor import InteractivePredictor, RefiningPredictor

MAX_PROMPTS = 128


def _is_number(v: object) -> bool:
    """A real number: ints and floats (Python or NumPy), never a string or a boolean."""
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)


_clock = time.monotonic  # the session timer (tests swap it)

# Lane priorities, most urgent first: a click's first answer, its zoom-in refinement, a background prefetch.
CLICK, REFINE, PREFETCH = 0, 1, 2


class PromptError(ValueError):
    """A click or box the session cannot take (outside the image, degenerate, too many prompts)."""


@dataclass
class MaskResult:
    """The model's answer to the prompts so far: 3 candidate masks, their predicted IoUs, the chosen one."""

    masks: np.ndarray
    scores: np.ndarray
    selected: int
    clicks: int
    low_res: np.ndarray | None = field(default=None, repr=False)

    @property
    def mask(self) -> np.ndarray:
        return self.masks[self.selected]

    @property
    def score(self) -> float:
        return float(self.scores[self.selected])


class LanePool:
    """Lane numbers handed out by priority: a free lane goes to the most urgent waiting call (lowest
    priority number); among equals, no order is promised. The most recently freed lane is handed out first."""

    def __init__(self, n: int, levels: int = 3) -> None:
        self._free = list(range(n))
        self._waiting = [0] * levels
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, priority: int = CLICK) -> Iterator[int]:
        """Hold a lane for the ``with`` block (blocks while none is free or a more urgent call waits)."""
        with self._cond:
            self._waiting[priority] += 1
            try:
                while not self._free or any(self._waiting[:priority]):
                    self._cond.wait()
                lane = self._free.pop()
            finally:
                self._waiting[priority] -= 1
                if self._free:
                    self._cond.notify_all()  # less urgent callers may now go
        try:
            yield lane
        finally:
            with self._cond:
                self._free.append(lane)
                self._cond.notify_all()


class SegmentationService:
    """Owns the predictor for a process: image and embedding caches, background prefetch, session factory."""

    def __init__(
        self,
        predictor: InteractivePredictor | Sequence[InteractivePredictor],
        image_loader: Callable[[int], np.ndarray],
        cache_size: int = 16,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.lanes: list[InteractivePredictor] = (
            list(predictor) if isinstance(predictor, list | tuple) else [predictor]
        )
        if not self.lanes:
            raise ValueError("SegmentationService needs at least one predictor")
        self.predictor = self.lanes[0]
        self.image_loader = image_loader
        self.cache_size = cache_size
        self._pool = LanePool(len(self.lanes))
        self._current: list[int | None] = [None] * len(self.lanes)  # each lane's image
        self._cache_lock = threading.Lock()  # guards the two LRU dicts
        self._images: OrderedDict[int, np.ndarray] = OrderedDict()
        self._encoded: OrderedDict[int, None] = OrderedDict()
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stats = {"loads": 0, "encodes": 0, "prefetched": 0, "predicts": 0}

    # ------------------------------------------------------------------------------------- caches
    def image(self, image_id: int) -> np.ndarray:
        """The decoded image (LRU-cached)."""
        image_id = int(image_id)
        with self._cache_lock:
            img = self._images.get(image_id)
            if img is not None:
                self._images.move_to_end(image_id)
                return img
        img = np.ascontiguousarray(self.image_loader(image_id))
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"image {image_id}: loader returned {img.dtype} {img.shape}, expected HxWx3 uint8"
            )
        with self._cache_lock:
            self.stats["loads"] += 1
            self._images[image_id] = img
            while len(self._images) > self.cache_size:
                self._images.popitem(last=False)
        return img

    def is_cached(self, image_id: int) -> bool:
        """Whether the image's embedding has been computed (and is expected in the predictor's cache)."""
        with self._cache_lock:
            return int(image_id) in self._encoded

    def _activate(self, lane: int, image_id: int) -> None:
        """Make ``image_id`` the current image of ``lane`` (call while holding that lane)."""
        if self._current[lane] == image_id:
            return
        img = self.image(image_id)
        self.lanes[lane].set_image(img, image_key=image_id)
        self._current[lane] = image_id
        with self._cache_lock:
            if image_id not in self._encoded:
                self.stats["encodes"] += 1
            self._encoded[image_id] = None
            self._encoded.move_to_end(image_id)
            while len(self._encoded) > self.cache_size:
                self._encoded.popitem(last=False)

    def predict(
        self,
        image_id: int,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        on_coarse: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the predictor on ``image_id`` (3 masks): ``(masks, scores, low_res_logits)``.

        With ``on_coarse`` and a :class:`~sam_engine.predictor.RefiningPredictor` (``refines``), the whole-image
        answer is passed to ``on_coarse(masks, scores, low_res)`` first (see the module docstring); any other
        predictor answers once.
        """
        prompts = {
            "point_coords": point_coords,
            "point_labels": point_labels,
            "box": box,
            "mask_input": mask_input,
        }
        coarse = None
        if on_coarse is not None and self.lanes[0].refines:
            with self._pool.hold(CLICK) as lane:
                self._activate(lane, int(image_id))
                coarse = cast("RefiningPredictor", self.lanes[lane]).coarse(**prompts)
            on_coarse(
                coarse[0] > self.lanes[0].mask_threshold, np.asarray(coarse[1], dtype=np.float32), coarse[2]
            )
        with self._pool.hold(CLICK if coarse is None else REFINE) as lane:
            self._activate(lane, int(image_id))
            extra = {} if coarse is None else {"coarse": coarse}
            masks, scores, low_res = self.lanes[lane].predict(**prompts, multimask_output=True, **extra)
        with self._cache_lock:
            self.stats["predicts"] += 1
        return (
            np.asarray(masks).astype(bool, copy=False),
            np.asarray(scores, dtype=np.float32),
            np.asarray(low_res),
        )

    # ------------------------------------------------------------------------------------ prefetch
    def prefetch(self, image_ids: Sequence[int]) -> None:
        """Queue images whose embeddings a background thread computes ahead of time, in order (FIFO).

        Images already cached are skipped; a failing image is dropped silently (opening it reports the error).
        """
        if self._closed:
            return
        for image_id in image_ids:
            if not self.is_cached(image_id):
                self._queue.put(int(image_id))
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._prefetch_loop, name="sam-prefetch", daemon=True)
            self._thread.start()

    def _prefetch_loop(self) -> None:
        while not self._closed:
            try:
                image_id = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if image_id is None:
                    break
                if self.is_cached(image_id):
                    continue
                self.image(image_id)  # disk I/O outside the predictor lock
                with self._pool.hold(PREFETCH) as lane:
                    self._activate(lane, image_id)
                self.stats["prefetched"] += 1
            except Exception:  # noqa: BLE001 - a bad image must not kill the thread; opening it reports the error
                continue
            finally:
                self._queue.task_done()

    def wait_prefetch(self, timeout: float = 10.0) -> bool:
        """Block until every queued prefetch has finished (tests, benchmarks); True when it has."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Stop the prefetch thread."""
        self._closed = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------------------------ sessions
    def open_session(
        self, image_id: int, *, task_id: int | None = None, annotator_id: str | None = None
    ) -> AnnotationSession:
        """Open a click session on ``image_id`` (computes or reuses its embedding)."""
        image_id = int(image_id)
        img = self.image(image_id)
        with self._pool.hold(CLICK) as lane:
            self._activate(lane, image_id)
        return AnnotationSession(
            self,
            image_id,
            width=int(img.shape[1]),
            height=int(img.shape[0]),
            task_id=task_id,
            annotator_id=annotator_id,
        )


class AnnotationSession:
    """Prompts, results and undo stack for one object at a time on one image."""

    def __init__(
        self,
        service: SegmentationService,
        image_id: int,
        *,
        width: int,
        height: int,
        task_id: int | None = None,
        annotator_id: str | None = None,
    ) -> None:
        self.service = service
        self.image_id = image_id
        self.width = width
        self.height = height
        self.task_id = task_id
        self.annotator_id = annotator_id
        self.points: list[tuple[float, float, int]] = []
        self.box: tuple[float, float, float, float] | None = None
        self.clicks = 0
        self.result: MaskResult | None = None
        self._undo: list[tuple[list[tuple[float, float, int]], Any, MaskResult | None]] = []
        self._started = _clock()

    # ------------------------------------------------------------------------------------- prompts
    def _check_point(self, x: float, y: float) -> tuple[float, float]:
        if not (_is_number(x) and _is_number(y)):
            raise PromptError(f"point ({x!r}, {y!r}): coordinates must be numbers (not strings or booleans)")
        x, y = float(x), float(y)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise PromptError(f"point ({x}, {y}): coordinates must be finite")
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise PromptError(
                f"point ({x:g}, {y:g}) is outside the image: need 0 <= x < {self.width} and 0 <= y < {self.height}"
            )
        return x, y

    def _check_room(self) -> None:
        if len(self.points) + (self.box is not None) >= MAX_PROMPTS:
            raise PromptError(f"too many prompts on one object (max {MAX_PROMPTS}); reset or accept first")

    def _push(self) -> None:
        self._undo.append((list(self.points), self.box, self.result))

    def add_point(
        self, x: float, y: float, positive: bool, on_coarse: Callable[[MaskResult], None] | None = None
    ) -> MaskResult:
        """Add a positive (object) or negative (background) click and return the new masks (``on_coarse``:
        see the module docstring)."""
        x, y = self._check_point(x, y)
        self._check_room()
        self._push()
        self.points.append((x, y, 1 if positive else 0))
        self.clicks += 1
        return self._run(on_coarse)

    def set_box(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        on_coarse: Callable[[MaskResult], None] | None = None,
    ) -> MaskResult:
        """Set (or replace) the box prompt; corners in any order, inside the image, at least 1 px each way."""
        box = self._check_box(x0, y0, x1, y1)
        self._push()
        self.box = box
        self.clicks += 1
        return self._run(on_coarse)

    def _check_box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        if not all(_is_number(v) for v in (x0, y0, x1, y1)):
            raise PromptError(
                f"box ({x0!r}, {y0!r}, {x1!r}, {y1!r}): coordinates must be numbers (not strings or booleans)"
            )
        coords = [float(v) for v in (x0, y0, x1, y1)]
        if not all(math.isfinite(v) for v in coords):
            raise PromptError("box coordinates must be finite")
        x0, x1 = sorted(coords[0::2])
        y0, y1 = sorted(coords[1::2])
        if x0 < 0 or y0 < 0 or x1 > self.width or y1 > self.height:
            raise PromptError(
                f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the image ({self.width} x {self.height})"
            )
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is smaller than one pixel")
        return (x0, y0, x1, y1)

    def load_prompt(self, prompt: dict) -> MaskResult:
        """Start the object from a stored prompt (``{"points": [[x, y, label], ...], "box": [x0, y0, x1, y1]
        or None}``, as :meth:`prompt` writes it and stage-2 proposals record the point that made them). The
        prompt is the model's or an earlier person's, not this person's effort: it adds no clicks. Replaces
        any prompt in effect (undo returns to it)."""
        if not isinstance(prompt, dict) or not isinstance(prompt.get("points") or [], list):
            raise PromptError(f"stored prompt {prompt!r}: need a dict with a 'points' list and a 'box'")
        points = []
        for item in prompt.get("points") or []:
            if not isinstance(item, list | tuple) or len(item) != 3 or item[2] not in (0, 1):
                raise PromptError(f"stored prompt point {item!r}: need [x, y, label] with label 0 or 1")
            x, y = self._check_point(item[0], item[1])
            points.append((x, y, int(item[2])))
        box = prompt.get("box")
        if not points and box is None:
            raise PromptError("stored prompt has neither points nor a box")
        if len(points) + (box is not None) > MAX_PROMPTS:
            raise PromptError(f"stored prompt has more than {MAX_PROMPTS} prompts")
        if box is not None:
            if not isinstance(box, list | tuple) or len(box) != 4:
                raise PromptError(f"stored prompt box {box!r}: need [x0, y0, x1, y1]")
            box = self._check_box(*box)
        self._push()
        self.points, self.box, self.result = points, box, None  # a new start: no earlier mask as input
        return self._run()

    def _run(self, on_coarse: Callable[[MaskResult], None] | None = None) -> MaskResult:
        coords = labels = None
        if self.points:
            coords = np.array([[p[0], p[1]] for p in self.points], dtype=np.float32)
            labels = np.array([p[2] for p in self.points], dtype=np.int64)
        box = None if self.box is None else np.array(self.box, dtype=np.float32)
        prev = self.result
        mask_input = None
        if prev is not None and prev.low_res is not None:
            mask_input = prev.low_res[prev.selected][None]
        coarse = None
        if on_coarse is not None:

            def coarse(masks: np.ndarray, scores: np.ndarray, low_res: np.ndarray) -> None:
                on_coarse(self._result(masks, scores, low_res))

        masks, scores, low_res = self.service.predict(
            self.image_id, coords, labels, box, mask_input, on_coarse=coarse
        )
        self.result = self._result(masks, scores, low_res)
        return self.result

    def _result(self, masks: np.ndarray, scores: np.ndarray, low_res: np.ndarray) -> MaskResult:
        if masks.ndim != 3 or masks.shape[1:] != (self.height, self.width):
            raise RuntimeError(
                f"predictor returned masks of shape {masks.shape}, expected (K, {self.height}, {self.width})"
            )
        return MaskResult(masks, scores, int(np.argmax(scores)), self.clicks, low_res)

    def undo(self) -> MaskResult | None:
        """Drop the last prompt and restore the previous masks (None when no prompt is left)."""
        if not self._undo:
            return None
        self.points, self.box, self.result = self._undo.pop()
        return self.result

    def choose(self, index: int) -> None:
        """Select one of the candidate masks."""
        if self.result is None:
            raise PromptError("no masks to choose from yet: click on the image first")
        if not isinstance(index, int | np.integer) or not 0 <= index < len(self.result.masks):
            raise PromptError(f"mask index {index!r} out of range 0..{len(self.result.masks) - 1}")
        self.result.selected = int(index)

    def current_mask(self) -> np.ndarray:
        """The selected mask (all False before the first prompt)."""
        if self.result is None:
            return np.zeros((self.height, self.width), dtype=bool)
        return self.result.masks[self.result.selected]

    def prompt(self) -> dict:
        """The prompts in effect, JSON-ready (stored with an accepted mask)."""
        return {
            "points": [[p[0], p[1], p[2]] for p in self.points],
            "box": list(self.box) if self.box else None,
        }

    def reset(self) -> None:
        """Start the next object: clear prompts, masks, undo stack, click count and timer."""
        self.points = []
        self.box = None
        self.result = None
        self._undo = []
        self.clicks = 0
        self._started = _clock()

    def elapsed_seconds(self) -> float:
        """Seconds since the session opened or was last reset."""
        return _clock() - self._started
