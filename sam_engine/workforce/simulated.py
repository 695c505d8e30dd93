"""Simulated annotators: seeded profiles that work through the session API against hidden ground truth.

An annotator never sees the GT directly; it plays a human who *looks* at the image: for each object it
places clicks by the standard protocol (:mod:`sam_engine.evaluation.clicks`: first click at the GT's
distance-transform maximum, then the deepest point of the larger error region, positive on false negatives,
negative on false positives), with Gaussian placement noise; after each click it picks the one of the 3
outputs that best matches the object (what a person does by eye) and stops once that mask reaches the
profile's IoU target or the click cap. The submitted mask is the model's mask, not the GT.

When the model cannot reach the target (click cap, or ``patience`` clicks without improvement) the annotator
does a costly **manual fix**: the submitted mask is then the GT outline traced as a polygon and simplified
with ``cv2.approxPolyDP`` at ``fix_tolerance_px`` (the deviation a human polygon / brush correction leaves);
``manual_fix`` is recorded. Clicks are counted; seconds come from :mod:`.timing`.

Stage 1 (``annotate`` / ``honeypot`` tasks): all GT objects of the image, largest first (as SAM's stage-1
annotators worked), until the object list ends or the per-image time budget is spent. Stage 2 (``complete``
tasks): only the GT objects that no accepted mask covers (best IoU < ``cover_iou``, 0.5).
Habits: skip objects below an area, miss an object with some probability, sometimes merge an object with a
touching one (the union becomes the target). Every random draw comes from a generator seeded by
(seed, annotator, image), so results do not depend on the order images are worked.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np
from scipy import ndimage

from ..data import rle as rle_utils
from ..evaluation.clicks import next_click
from .timing import DEFAULT_TIME_MODEL, TimeModel

if TYPE_CHECKING:
    from ..quality.store import QualityStore


class Session(Protocol):
    """The part of :class:`sam_engine.annotation.session.AnnotationSession` a simulated annotator uses."""

    image_id: int
    width: int
    height: int

    def add_point(self, x: float, y: float, positive: bool) -> Any: ...

    def choose(self, i: int) -> Any: ...

    def reset(self) -> None: ...

    def load_prompt(self, prompt: dict) -> Any: ...


@dataclass(frozen=True)
class AnnotatorProfile:
    """How one simulated annotator behaves.

    ``click_noise_px``: std of the Gaussian click offset (a noisy click that leaves the intended error region
    is redrawn, up to 5 times, then placed exactly). ``speed``: time-model factor (1 = reference, 2 = twice as
    slow). ``iou_target`` / ``click_cap`` / ``patience``: when the annotator is satisfied or gives up on the
    model. ``fix_tolerance_px``: polygon simplification of a manual fix. Habits: ``skip_area_below`` (pixels),
    ``miss_prob``, ``merge_touching_prob``. ``time_jitter``: log-normal sigma on each mask's seconds.
    """

    name: str = "reference"
    click_noise_px: float = 1.0
    speed: float = 1.0
    iou_target: float = 0.9
    click_cap: int = 10
    patience: int | None = 4
    fix_tolerance_px: float = 1.0
    skip_area_below: int = 0
    miss_prob: float = 0.0
    merge_touching_prob: float = 0.0
    time_jitter: float = 0.1

    def __post_init__(self) -> None:
        checks = {
            "click_noise_px": self.click_noise_px >= 0,
            "speed": self.speed > 0,
            "iou_target": 0.0 < self.iou_target <= 1.0,
            "click_cap": self.click_cap >= 0,
            "patience": self.patience is None or self.patience >= 1,
            "fix_tolerance_px": self.fix_tolerance_px >= 0,
            "skip_area_below": self.skip_area_below >= 0,
            "miss_prob": 0.0 <= self.miss_prob <= 1.0,
            "merge_touching_prob": 0.0 <= self.merge_touching_prob <= 1.0,
            "time_jitter": self.time_jitter >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"AnnotatorProfile {self.name!r}: invalid field(s) {bad}")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# A few ready-made profiles (a team is a mix of these).
PROFILES: dict[str, AnnotatorProfile] = {
    "expert": AnnotatorProfile(name="expert", click_noise_px=0.5, speed=0.9, iou_target=0.92, click_cap=12),
    "reference": AnnotatorProfile(),
    "fast": AnnotatorProfile(
        name="fast",
        click_noise_px=2.0,
        speed=0.7,
        iou_target=0.85,
        click_cap=6,
        skip_area_below=30,
        miss_prob=0.05,
    ),
    "sloppy": AnnotatorProfile(
        name="sloppy",
        click_noise_px=3.0,
        speed=0.8,
        iou_target=0.8,
        click_cap=4,
        fix_tolerance_px=2.5,
        skip_area_below=60,
        miss_prob=0.15,
        merge_touching_prob=0.3,
    ),
}


@dataclass
class SubmittedMask:
    """One object an annotator submitted: the mask (model's, or the manual fix), effort and quality."""

    mask: np.ndarray
    gt_indices: tuple[int, ...]
    clicks: int
    seconds: float
    manual_fix: bool
    predicted_iou: float | None
    iou: float  # vs the (possibly merged) target the annotator aimed at; for analysis only
    prompt: dict | None = None  # the session's prompts behind the submitted model mask


@dataclass
class ImageWork:
    """Everything an annotator did on one image."""

    image_id: int
    masks: list[SubmittedMask] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # GT indices skipped by habit (area / miss / budget)
    covered: list[int] = field(default_factory=list)  # GT indices already covered (stage 2)
    seconds: float = 0.0
    mask_ids: list[Any] = field(default_factory=list)
    feedback: list[Any] = field(default_factory=list)  # GoldFeedback, for honeypot tasks

    @property
    def clicks(self) -> int:
        return sum(m.clicks for m in self.masks)


@dataclass
class StartedTask:
    """An annotation task taken from the store (:meth:`SimulatedAnnotator.start`), with the accepted masks
    (RLE) a ``complete`` task finds on its image."""

    task_id: Any
    image_id: int
    stage: int
    kind: str
    accepted: list[Any] = field(default_factory=list)


def seeded_rng(seed: int, *keys: Any) -> np.random.Generator:
    """A generator keyed by ``seed`` and any ints / strings (strings through CRC32), order-independent."""
    parts = [int(seed) & 0xFFFFFFFF]
    for k in keys:
        parts.append(int(k) & 0xFFFFFFFF if isinstance(k, (int, np.integer)) else zlib.crc32(str(k).encode()))
    return np.random.default_rng(parts)


def polygon_fix(mask: np.ndarray, tolerance_px: float) -> np.ndarray:
    """The mask as a human polygon tool would leave it: traced outlines (holes kept) simplified by
    ``approxPolyDP(tolerance_px)`` and rasterized. Falls back to the mask itself if simplification empties it."""
    mask = np.asarray(mask, dtype=bool)
    if tolerance_px <= 0 or not mask.any():
        return mask.copy()
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    out = np.zeros(mask.shape, dtype=np.uint8)
    if hierarchy is None:
        return mask.copy()
    parents = hierarchy[0][:, 3]
    for fill, want_outer in ((1, True), (0, False)):
        for contour, parent in zip(contours, parents, strict=True):
            if (parent == -1) != want_outer:
                continue
            poly = cv2.approxPolyDP(contour, float(tolerance_px), True)
            if len(poly) < 3:
                poly = contour  # too small to simplify: trace it as is
            cv2.fillPoly(out, [poly], fill)
    fixed = out.astype(bool)
    return fixed if fixed.any() else mask.copy()


def _touching(a: np.ndarray, b: np.ndarray) -> bool:
    """Adjacent (within 1 px) but not nested / heavily overlapping."""
    inter = np.logical_and(a, b).sum()
    if inter > 0.05 * min(a.sum(), b.sum()):
        return False
    return bool(np.logical_and(ndimage.binary_dilation(a, iterations=1), b).any())


def _noisy_point(
    x: int, y: int, region: np.ndarray, sigma: float, rng: np.random.Generator
) -> tuple[int, int]:
    if sigma <= 0:
        return x, y
    h, w = region.shape
    for _ in range(5):
        nx = int(round(x + rng.normal(0.0, sigma)))
        ny = int(round(y + rng.normal(0.0, sigma)))
        if 0 <= nx < w and 0 <= ny < h and region[ny, nx]:
            return nx, ny
    return x, y


def covered_by(gt: Sequence[np.ndarray], accepted: Sequence[np.ndarray], cover_iou: float = 0.5) -> list[int]:
    """Indices of GT objects whose best IoU with any accepted mask is >= ``cover_iou``."""
    if not accepted or not gt:
        return []
    gt_rles = rle_utils.encode_batch(np.stack(gt))
    acc_rles = rle_utils.encode_batch(np.stack(accepted))
    best = rle_utils.iou_matrix(gt_rles, acc_rles).max(axis=1)
    return [i for i, v in enumerate(best) if v >= cover_iou]


class ClickWorker:
    """Annotates objects on an open session with one profile and time model (no store involved)."""

    def __init__(self, profile: AnnotatorProfile, time_model: TimeModel = DEFAULT_TIME_MODEL):
        self.profile = profile
        self.time_model = time_model

    def segment_object(
        self,
        session: Session,
        target: np.ndarray,
        rng: np.random.Generator,
        start: dict | None = None,
    ) -> SubmittedMask:
        """Click on ``target`` until the IoU target, the click cap or ``patience``; manual fix if needed.
        ``start``: a stored prompt the object begins from (a proposal's point; it costs no clicks)."""
        p = self.profile
        session.reset()
        pred = np.zeros(target.shape, dtype=bool)
        clicked = np.zeros(target.shape, dtype=bool)
        best_iou, best_mask, best_score, best_prompt = -1.0, pred, None, None
        clicks, since_better = 0, 0
        result = session.load_prompt(start) if start is not None else None
        while True:
            if result is None:
                if clicks >= p.click_cap:
                    break
                click = next_click(target, pred, clicked=clicked)
                if click is None:
                    break
                clicked[click.y, click.x] = True
                region = target & ~pred if click.positive else pred & ~target
                x, y = _noisy_point(click.x, click.y, region, p.click_noise_px, rng)
                result = session.add_point(x, y, click.positive)
                clicks += 1
            masks = np.asarray(result.masks, dtype=bool)
            ious = [rle_utils.mask_iou(m, target, empty=0.0) for m in masks]
            pick = int(np.argmax(ious))
            if pick != int(getattr(result, "selected", pick)):
                session.choose(pick)
            pred = masks[pick]
            if ious[pick] > best_iou + 1e-6:
                best_iou, best_mask, since_better = ious[pick], pred, 0
                best_score = float(np.asarray(result.scores)[pick])
                best_prompt = session.prompt() if hasattr(session, "prompt") else None
            else:
                since_better += 1
            result = None
            if best_iou >= p.iou_target:
                break
            if p.patience is not None and since_better >= p.patience:
                break
        manual_fix = best_iou < p.iou_target
        mask = polygon_fix(target, p.fix_tolerance_px) if manual_fix else best_mask
        seconds = self.time_model.mask_seconds(clicks, manual_fix, p.speed, p.time_jitter, rng)
        return SubmittedMask(
            mask=mask,
            gt_indices=(),
            clicks=clicks,
            seconds=seconds,
            manual_fix=manual_fix,
            predicted_iou=best_score,
            iou=rle_utils.mask_iou(mask, target, empty=0.0),
            prompt=best_prompt,
        )

    def annotate_image(
        self,
        session: Session,
        gt: Sequence[np.ndarray],
        rng: np.random.Generator,
        *,
        covered: Sequence[int] = (),
        budget_s: float | None = None,
    ) -> ImageWork:
        """Work through the GT objects not in ``covered``, largest first, within ``budget_s`` seconds."""
        p = self.profile
        work = ImageWork(image_id=int(getattr(session, "image_id", -1)), covered=sorted(covered))
        work.seconds = self.time_model.image_seconds(p.speed)
        gt = [np.asarray(g, dtype=bool) for g in gt]
        areas = np.array([int(g.sum()) for g in gt])
        order = sorted((i for i in range(len(gt)) if i not in set(covered)), key=lambda i: (-areas[i], i))
        # Habit dice for every object up front, so click noise never shifts which objects are missed / merged.
        miss_draw, merge_draw = rng.random(len(gt)), rng.random(len(gt))
        done: set[int] = set()
        for i in order:
            if i in done:
                continue
            if budget_s is not None and work.seconds >= budget_s:
                work.skipped.extend(j for j in order if j not in done)  # out of time: the rest stays undone
                break
            done.add(i)
            if areas[i] == 0 or areas[i] < p.skip_area_below or miss_draw[i] < p.miss_prob:
                work.skipped.append(i)
                continue
            members = [i]
            if merge_draw[i] < p.merge_touching_prob:
                partner = next((j for j in order if j not in done and _touching(gt[i], gt[j])), None)
                if partner is not None:
                    members.append(partner)
                    done.add(partner)
            target = np.logical_or.reduce([gt[j] for j in members])
            sub = self.segment_object(session, target, rng)
            sub.gt_indices = tuple(members)
            work.masks.append(sub)
            work.seconds += sub.seconds
        work.skipped = sorted(set(work.skipped))
        return work


GroundTruth = Callable[[int], Sequence[np.ndarray]] | Mapping[int, Sequence[Any]]


def _gt_masks(ground_truth: GroundTruth, image_id: int, height: int, width: int) -> list[np.ndarray]:
    items = ground_truth(image_id) if callable(ground_truth) else ground_truth.get(image_id, [])
    out = []
    for item in items:
        if isinstance(item, Mapping):
            item = rle_utils.decode(item["segmentation"] if "segmentation" in item else item)
        arr = np.asarray(item, dtype=bool)
        if arr.shape != (height, width):
            raise ValueError(f"image {image_id}: GT mask shape {arr.shape} != image ({height}, {width})")
        out.append(arr)
    return out


class SimulatedAnnotator:
    """A simulated annotator working its queue through the session API and committing to the store.

    ``service``: a :class:`~sam_engine.annotation.session.SegmentationService` (``open_session``).
    ``store``: a :class:`~sam_engine.quality.store.QualityStore`. ``ground_truth``: hidden GT per image id,
    a mapping (or callable) to RLE dicts / COCO annotations / HxW bool masks. ``gold``: a
    :class:`~sam_engine.workforce.gold.GoldStandard`; when given, honeypot submissions are scored at once
    (the feedback lands in ``ImageWork.feedback``). The annotator treats honeypots as ordinary tasks.
    """

    def __init__(
        self,
        annotator_id: Any,
        profile: AnnotatorProfile,
        service: Any,
        store: QualityStore,
        ground_truth: GroundTruth,
        *,
        seed: int = 0,
        time_model: TimeModel = DEFAULT_TIME_MODEL,
        image_budget_s: float | None = None,
        cover_iou: float = 0.5,
        gold: Any = None,
    ):
        self.annotator_id = annotator_id
        self.profile = profile
        self.service = service
        self.store = store
        self.ground_truth = ground_truth
        self.seed = seed
        self.worker = ClickWorker(profile, time_model)
        self.image_budget_s = image_budget_s
        self.cover_iou = cover_iou
        self.gold = gold  # a GoldStandard: honeypot tasks get scored (and feedback) right after submission

    def _task_field(self, task: Any, name: str) -> Any:
        return task[name] if isinstance(task, Mapping) else getattr(task, name)

    def work(self, task: Any) -> ImageWork:
        """Do one task (``annotate`` / ``honeypot`` / ``complete``): annotate, commit every mask, mark done."""
        started = self.start(task)
        return self.finish(started, self.annotate(started))

    def start(self, task: Any) -> StartedTask:
        """The store's side of taking a task: mark it in progress and read what is already covered."""
        task_id = self._task_field(task, "task_id")
        image_id = int(self._task_field(task, "image_id"))
        stage = int(self._task_field(task, "stage"))
        kind = self._task_field(task, "kind")
        if kind not in ("annotate", "honeypot", "complete"):
            raise ValueError(f"task {task_id}: kind {kind!r} is not an annotation task")
        self.store.set_task_status(task_id, "in_progress")
        accepted: list[str] = []
        if kind == "complete":
            rows = self.store.masks(stage=stage, status="accepted", image_id=image_id)
            accepted = list(rows["rle"]) if len(rows) else []
        return StartedTask(task_id, image_id, stage, kind, accepted)

    def annotate(self, started: StartedTask) -> ImageWork:
        """The clicks of a started task through the session API; touches no store (so it can run in a worker
        process, :func:`~sam_engine.engine.human_stage.simulate_stage`)."""
        session = self.service.open_session(
            started.image_id, task_id=started.task_id, annotator_id=self.annotator_id
        )
        gt = _gt_masks(self.ground_truth, started.image_id, session.height, session.width)
        covered: list[int] = []
        if started.kind == "complete":
            covered = covered_by(gt, [rle_utils.decode(r) for r in started.accepted], self.cover_iou)
        rng = seeded_rng(self.seed, self.annotator_id, started.image_id, started.stage)
        return self.worker.annotate_image(session, gt, rng, covered=covered, budget_s=self.image_budget_s)

    def finish(self, started: StartedTask, result: ImageWork) -> ImageWork:
        """Commit the task's masks with its "done" status in one transaction; score a honeypot."""
        with self.store.transaction():  # the image's masks and the task's status land together
            self._commit(result, started.task_id, started.image_id, started.stage)
        if started.kind == "honeypot" and self.gold is not None:
            result.feedback = self.gold.score_task(self.store, started.task_id)
        return result

    def _commit(self, result: ImageWork, task_id: Any, image_id: int, stage: int) -> None:
        for sub in result.masks:
            mask_id = self.store.commit_mask(
                task_id=task_id,
                image_id=image_id,
                annotator_id=self.annotator_id,
                stage=stage,
                source="human",
                rle=rle_utils.encode(sub.mask),
                predicted_iou=sub.predicted_iou,
                clicks=sub.clicks,
                seconds=sub.seconds,
                manual_fix=sub.manual_fix,
                prompt=sub.prompt,
            )
            result.mask_ids.append(mask_id)
        self.store.set_task_status(task_id, "done")

    def work_queue(self, limit: int | None = None) -> list[ImageWork]:
        """Work this annotator's pending annotation tasks in the store's order (up to ``limit``)."""
        tasks = self.store.tasks_for(self.annotator_id, status="pending")
        rows = tasks.to_dict("records") if hasattr(tasks, "to_dict") else list(tasks)
        rows = [t for t in rows if self._task_field(t, "kind") in ("annotate", "honeypot", "complete")]
        out = []
        for task in rows[: limit if limit is not None else len(rows)]:
            out.append(self.work(task))
        return out


@dataclass(frozen=True)
class ReviewPolicy:
    """How a simulated reviewer judges a mask against the hidden GT (best-matching object's IoU), and how it
    fixes one. With a click session (the reviewer's ``service``) a fix starts from the mask's stored prompt
    (no clicks), picks the best of the model's outputs by eye and adds up to ``fix_clicks`` corrective clicks
    by the standard protocol; a fix that reaches ``fix_target_iou`` is the model's mask, otherwise the
    reviewer traces the GT object by hand (a manual fix). Without a session every fix is traced by hand."""

    accept_iou: float = 0.85  # at or above: accept
    fix_iou: float = 0.5  # at or above (below accept): fix
    fix_tolerance_px: float = 1.0
    speed: float = 1.0
    fix_clicks: int = 1
    fix_target_iou: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.fix_iou <= self.accept_iou <= 1.0:
            raise ValueError(f"need 0 <= fix_iou <= accept_iou <= 1, got {self.fix_iou}, {self.accept_iou}")
        if self.fix_clicks < 0 or not 0.0 < self.fix_target_iou <= 1.0:
            raise ValueError(
                f"need fix_clicks >= 0 and 0 < fix_target_iou <= 1, got {self.fix_clicks}, {self.fix_target_iou}"
            )

    def fixer(self, time_model: TimeModel) -> ClickWorker:
        """The click worker a fix with the model runs: no click noise, no patience, this policy's cap."""
        profile = AnnotatorProfile(
            name="reviewer-fix",
            click_noise_px=0.0,
            speed=self.speed,
            iou_target=self.fix_target_iou,
            click_cap=self.fix_clicks,
            patience=None,
            fix_tolerance_px=self.fix_tolerance_px,
            time_jitter=0.0,
        )
        return ClickWorker(profile, time_model)


class SimulatedReviewer:
    """Works review tasks: accept / fix / reject each pending mask by its IoU with the hidden GT.

    A task with a ``mask_id`` reviews that mask; one without reviews every ``pending_review`` mask of its
    image and stage. ``service``: a :class:`~sam_engine.annotation.session.SegmentationService` to fix with
    the model's clicks (:class:`ReviewPolicy`); without one every fix is traced by hand. Seconds: ``REVIEW_S``
    per verdict, plus ``PER_CLICK_S`` per corrective click and ``MANUAL_FIX_S`` per manual fix (by speed).
    """

    def __init__(
        self,
        reviewer_id: str,
        store: QualityStore,
        ground_truth: GroundTruth,
        policy: ReviewPolicy | None = None,
        time_model: TimeModel = DEFAULT_TIME_MODEL,
        service: Any = None,
    ):
        self.reviewer_id = reviewer_id
        self.store = store
        self.ground_truth = ground_truth
        self.policy = policy or ReviewPolicy()
        self.time_model = time_model
        self.service = service

    def verdict(self, mask: np.ndarray, gt: Sequence[np.ndarray]) -> tuple[str, np.ndarray | None, float]:
        """(verdict, fixed mask traced by hand or None, best IoU) for one mask."""
        best, iou = _best_match(mask, gt)
        kind = self._judge(iou)
        return kind, polygon_fix(gt[best], self.policy.fix_tolerance_px) if kind == "fix" else None, iou

    def _judge(self, iou: float) -> str:
        if iou >= self.policy.accept_iou:
            return "accept"
        return "fix" if iou >= self.policy.fix_iou else "reject"

    def fix_with_model(self, session: Session, target: np.ndarray, prompt: dict | None) -> SubmittedMask:
        """Fix one mask with the model's clicks on an open session of its image, from its stored ``prompt``
        (the corrective clicks start from scratch without one); a manual fix when they do not reach the
        policy's target. Deterministic: the fixer places its clicks without noise."""
        worker = self.policy.fixer(self.time_model)
        return worker.segment_object(session, target, np.random.default_rng(0), start=prompt)

    def work(self, task: Mapping[str, Any]) -> list[dict]:
        """Review one task; returns the store's review results."""
        if task["kind"] != "review":
            raise ValueError(f"task {task['task_id']}: kind {task['kind']!r} is not a review task")
        image_id, stage = int(task["image_id"]), int(task["stage"])
        pending = self.store.masks(stage=stage, status="pending_review", image_id=image_id)
        if task.get("mask_id") is not None and not _isna(task["mask_id"]):
            pending = pending[pending["mask_id"] == int(task["mask_id"])]
        out = []
        gt: list[np.ndarray] | None = None
        session = None
        with self.store.transaction():
            for row in pending.itertuples(index=False):
                mask = rle_utils.decode(row.rle)
                if gt is None:
                    gt = _gt_masks(self.ground_truth, image_id, *mask.shape)
                best, iou = _best_match(mask, gt)
                verdict, fixed = self._judge(iou), None
                speed, t = self.policy.speed, self.time_model
                seconds, clicks, manual, prompt = t.review_seconds(speed), 0, True, None
                if verdict == "fix" and self.service is not None:
                    if session is None:
                        session = self.service.open_session(image_id, annotator_id=self.reviewer_id)
                    sub = self.fix_with_model(session, gt[best], _stored_prompt(row))
                    fixed, clicks, manual, prompt = sub.mask, sub.clicks, sub.manual_fix, sub.prompt
                    seconds += t.per_click_s * speed * clicks
                elif verdict == "fix":
                    fixed = polygon_fix(gt[best], self.policy.fix_tolerance_px)
                if verdict == "fix" and manual:
                    seconds += t.manual_fix_s * speed
                out.append(
                    self.store.review(
                        int(row.mask_id),
                        self.reviewer_id,
                        verdict,
                        comment=f"simulated review: IoU vs reference {iou:.2f}",
                        fixed_rle=None if fixed is None else rle_utils.encode(fixed),
                        clicks=clicks,
                        seconds=seconds,
                        manual_fix=manual,
                        prompt=None if manual else prompt,
                    )
                )
            self.store.set_task_status(int(task["task_id"]), "done")
        return out

    def work_queue(self, limit: int | None = None) -> list[dict]:
        """Work this reviewer's pending review tasks in the store's order."""
        tasks = [t for t in self.store.tasks_for(self.reviewer_id, status="pending") if t["kind"] == "review"]
        out: list[dict] = []
        for task in tasks[: limit if limit is not None else len(tasks)]:
            out.extend(self.work(task))
        return out


def _best_match(mask: np.ndarray, gt: Sequence[np.ndarray]) -> tuple[int, float]:
    """(index, IoU) of the GT object ``mask`` matches best; (-1, 0.0) without GT."""
    ious = [rle_utils.mask_iou(mask, g, empty=0.0) for g in gt]
    best = int(np.argmax(ious)) if ious else -1
    return best, (ious[best] if ious else 0.0)


def _stored_prompt(row: Any) -> dict | None:
    """A store row's prompt as a dict (the store keeps it as JSON text); None when it has none."""
    prompt = getattr(row, "prompt", None)
    if prompt is None or (isinstance(prompt, float) and np.isnan(prompt)):
        return None
    return json.loads(prompt) if isinstance(prompt, str) else dict(prompt)


def _isna(value: Any) -> bool:
    try:
        return bool(np.isnan(value))
    except TypeError:
        return False
