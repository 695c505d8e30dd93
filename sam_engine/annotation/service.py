"""Transport-free annotation service: who may do what, and the wiring of sessions to the store.

The FastAPI server (``server.py``) only translates HTTP / WebSocket messages into these calls, so every rule
(task ownership, roles, idempotent accept, path checks) lives here once and is tested without a network.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sam_engine.data import rle as rle_utils
from sam_engine.data.errors import DataError
from sam_engine.data.images import DEFAULT_MAX_PIXELS, load_image, safe_join
from sam_engine.quality.store import QualityStore
from sam_engine.storage import safe_join_url

from . import export, history
from .auth import Principal
from .protocol import BadRequest, Forbidden, NotFound
from .session import AnnotationSession, MaskResult, SegmentationService

ANNOTATION_KINDS = ("annotate", "honeypot", "complete")


def _root(folder: str | Path) -> Path | str:
    """A dataset folder: a resolved local ``Path``, or a remote folder's URL."""
    from sam_engine import storage

    if storage.is_local(folder):
        return storage.local_path(folder).resolve()
    return str(storage.upath(folder))


class ImageResolver:
    """Maps an image id to its file inside the configured dataset folders, refusing anything outside them.

    ``dataset_dirs`` is either a mapping ``source -> folder`` (the image's ``source`` column picks the folder;
    key ``"*"`` is the fallback) or a list of folders searched in order. A folder may be an fsspec URL (a remote
    pool, ``s3://bucket/pool``): its images are served from local copies in ``cache_dir``
    (``sam_engine.storage``'s cache; ``storage.default_cache_dir()`` when None).

    An image's store row (file name, source, width, height) and its resolved file are cached after the first
    lookup (up to ``max_cached`` images, least recently used out): they do not change while it is served, and a
    click on an image whose pixels left the segmentation cache then reloads the file without waiting for the
    store (which another process may hold) under the predictor lock. :meth:`forget` drops entries.
    """

    def __init__(
        self,
        store: QualityStore,
        dataset_dirs: Mapping[str, str | Path] | Sequence[str | Path],
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_cached: int = 65536,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.store = store
        self.max_pixels = max_pixels
        self.max_cached = max_cached
        self.cache_dir = cache_dir
        if isinstance(dataset_dirs, Mapping):
            self.by_source: dict[str, Path | str] | None = {k: _root(v) for k, v in dataset_dirs.items()}
            self.roots = list(self.by_source.values())
        else:
            self.by_source = None
            self.roots = [_root(d) for d in dataset_dirs]
        if not self.roots:
            raise ValueError("at least one dataset folder must be configured")
        self._cache_lock = threading.Lock()
        self._records: OrderedDict[int, dict] = OrderedDict()
        self._paths: dict[int, Path] = {}

    def record(self, image_id: int) -> dict:
        """The image's store row (cached after the first lookup; a missing image is looked up every time)."""
        image_id = int(image_id)
        with self._cache_lock:
            row = self._records.get(image_id)
            if row is not None:
                self._records.move_to_end(image_id)
                return dict(row)
        row = self.store.get_image(image_id)
        if row is None:
            raise NotFound(f"image {image_id} is not in the store")
        with self._cache_lock:
            self._records[image_id] = dict(row)
            while len(self._records) > self.max_cached:
                old, _ = self._records.popitem(last=False)
                self._paths.pop(old, None)
        return row

    def forget(self, image_id: int | None = None) -> None:
        """Drop the cached row and file of one image (all images with None), e.g. after its row changed."""
        with self._cache_lock:
            if image_id is None:
                self._records.clear()
                self._paths.clear()
            else:
                self._records.pop(int(image_id), None)
                self._paths.pop(int(image_id), None)

    def path(self, image_id: int) -> Path:
        """The image's file; Forbidden if its name escapes the dataset folders, NotFound if it is missing."""
        image_id = int(image_id)
        row = self.record(image_id)
        with self._cache_lock:
            cached = self._paths.get(image_id)
        if cached is not None and cached.is_file():
            return cached
        if self.by_source is not None:
            root = self.by_source.get(row["source"] or "", self.by_source.get("*"))
            roots = [root] if root is not None else []
            if not roots:
                raise Forbidden(f"image {image_id}: source {row['source']!r} is not a served dataset")
        else:
            roots = self.roots
        for root in roots:
            try:
                if isinstance(root, str):  # a remote folder: the image's cached copy
                    candidate = self._cached(safe_join_url(root, row["file_name"]))
                    if candidate is None:
                        continue
                else:
                    candidate = safe_join(root, row["file_name"])
            except DataError as exc:
                raise Forbidden(f"image {image_id}: {exc.message}") from None
            if candidate.is_file():
                with self._cache_lock:
                    if image_id in self._records:
                        self._paths[image_id] = candidate
                return candidate
        raise NotFound(f"image {image_id}: file {row['file_name']!r} not found in the dataset folders")

    def _cached(self, url: str) -> Path | None:
        from sam_engine import storage

        try:
            return storage.cached_local(url, self.cache_dir)
        except FileNotFoundError:
            return None

    def load(self, image_id: int) -> np.ndarray:
        """Decoded HxWx3 uint8 image; its size must match the store's record."""
        row = self.record(image_id)
        path = self.path(image_id)
        img = load_image(path, max_pixels=self.max_pixels)
        if img.shape[:2] != (row["height"], row["width"]):
            raise DataError(
                str(path),
                image_id,
                "width/height",
                f"file is {img.shape[1]}x{img.shape[0]} but the store says {row['width']}x{row['height']}",
            )
        return img


class AnnotationService:
    """Role and ownership rules plus session ↔ store wiring, shared by HTTP and WebSocket handlers."""

    def __init__(
        self,
        store: QualityStore,
        segmentation: SegmentationService,
        resolver: ImageResolver,
        prefetch_ahead: int = 3,
    ) -> None:
        self.store = store
        self.segmentation = segmentation
        self.resolver = resolver
        self.prefetch_ahead = prefetch_ahead

    # ------------------------------------------------------------------------------------------ tasks
    def tasks(self, p: Principal, status: str | None = None, annotator_id: str | None = None) -> list[dict]:
        """The caller's tasks (admins may ask for anyone's), each with its image's size and file name."""
        target = annotator_id or p.annotator_id
        if target != p.annotator_id:
            p.require("admin")
        try:
            rows = self.store.tasks_for(target, status=status)
        except DataError as exc:
            raise BadRequest(str(exc)) from None
        out = []
        for t in rows:
            img = self.store.get_image(t["image_id"]) or {}
            out.append(_task_json(t) | {"width": img.get("width"), "height": img.get("height")})
        return out

    def progress(self, p: Principal) -> dict:
        rows = self.store.tasks_for(p.annotator_id)
        counts = {s: 0 for s in ("pending", "in_progress", "done", "skipped")}
        for t in rows:
            counts[t["status"]] += 1
        return counts | {"total": len(rows)}

    def task(self, p: Principal, task_id: int) -> dict:
        """A task the caller may work on: its own, or any for an admin. Another's task is "not found", as a
        missing one is, so ids cannot be probed."""
        task = self.store.get_task(task_id)
        if task is None or task["annotator_id"] != p.annotator_id and not p.at_least("admin"):
            raise NotFound(f"task {task_id} not found")
        return task

    def next_task(self, p: Principal) -> dict | None:
        for status in ("in_progress", "pending"):
            rows = [t for t in self.store.tasks_for(p.annotator_id, status=status)]
            if rows:
                return _task_json(rows[0])
        return None

    def skip(self, p: Principal, task_id: int, reason: str | None = None) -> dict:
        task = self.task(p, task_id)
        self.store.skip_task(task["task_id"], p.annotator_id, reason)
        return {"task_id": task["task_id"], "status": "skipped", "next_task": self.next_task(p)}

    def finish(self, p: Principal, task_id: int) -> dict:
        task = self.task(p, task_id)
        self.store.complete_task(task["task_id"], p.annotator_id)
        return {"task_id": task["task_id"], "status": "done", "next_task": self.next_task(p)}

    # ----------------------------------------------------------------------------------------- images
    def check_image(self, p: Principal, image_id: int) -> dict:
        """Annotators see only images of their own tasks (another image is "not found", as a missing one is);
        reviewers and admins see every stored image."""
        if not p.at_least("reviewer"):
            if not self.store.has_task_on_image(p.annotator_id, image_id):
                raise NotFound(f"image {image_id} not found")
            try:
                return self.resolver.record(image_id)
            except NotFound:
                raise NotFound(f"image {image_id} not found") from None
        return self.resolver.record(image_id)

    def image_file(self, p: Principal, image_id: int) -> Path:
        self.check_image(p, image_id)
        return self.resolver.path(image_id)

    def image_masks(self, p: Principal, image_id: int) -> list[dict]:
        """Masks on an image: an annotator's own accepted ones; for reviewers every accepted or pending one."""
        self.check_image(p, image_id)
        if p.at_least("reviewer"):
            df = self.store.masks(image_id=image_id, status=["accepted", "pending_review"])
        else:
            df = self.store.masks(image_id=image_id, status="accepted", annotator_id=p.annotator_id)
        return [_mask_json(r) for r in df.to_dict("records")]

    # --------------------------------------------------------------------------------------- sessions
    def open(
        self, p: Principal, task_id: int | None = None, image_id: int | None = None
    ) -> tuple[AnnotationSession, dict | None]:
        """Open a click session on a task's image (or, for reviewers and admins, any image)."""
        task = None
        if task_id is not None:
            task = self.task(p, task_id)
            if image_id is not None and int(image_id) != task["image_id"]:
                raise BadRequest(f"task {task_id} is on image {task['image_id']}, not {image_id}")
            image_id = task["image_id"]
        elif image_id is not None:
            p.require("reviewer")
            self.check_image(p, image_id)
        else:
            raise BadRequest("open needs a task_id or an image_id")
        try:
            session = self.segmentation.open_session(
                int(image_id), task_id=None if task is None else task["task_id"], annotator_id=p.annotator_id
            )
        except DataError as exc:
            raise NotFound(str(exc)) from None
        if task is not None and task["status"] == "pending":
            self.store.set_task_status(task["task_id"], "in_progress")
            task["status"] = "in_progress"
        self._prefetch_queue(p, exclude=int(image_id))
        return session, task

    def _prefetch_queue(self, p: Principal, exclude: int) -> None:
        if self.prefetch_ahead <= 0:
            return
        upcoming = [t["image_id"] for t in self.store.tasks_for(p.annotator_id, status="pending")]
        ids = [i for i in dict.fromkeys(upcoming) if i != exclude][: self.prefetch_ahead]
        if ids:
            self.segmentation.prefetch(ids)

    def accept(
        self,
        p: Principal,
        session: AnnotationSession | None,
        task: dict | None,
        request_id: str,
        manual_fix: bool = False,
    ) -> dict:
        """Commit the session's selected mask (idempotent per caller and request id) and start the next object.

        A request id already stored answers with its mask even without an open session (a client retrying
        after a lost acknowledgement or a reconnect)."""
        key = f"{p.annotator_id}:{request_id}"
        existing = self.store.mask_for_request(key)
        if existing is not None:
            return {"mask_id": existing, "request_id": request_id, "duplicate": True}
        if session is None:
            raise BadRequest("no image is open: send an 'open' message first")
        if task is None:
            raise BadRequest("accept needs a session opened on a task")
        task = self.task(p, task["task_id"])  # ownership re-checked at write time
        if task["kind"] not in ANNOTATION_KINDS:
            raise BadRequest(f"task {task['task_id']} is a {task['kind']} task; use review instead")
        mask = session.current_mask()
        if session.result is None or not mask.any():
            raise BadRequest("nothing to accept: the selected mask is empty")
        mask_id = self.store.commit_mask(
            task_id=task["task_id"],
            image_id=session.image_id,
            annotator_id=p.annotator_id,
            stage=task["stage"],
            source="human",
            rle=rle_utils.encode(mask),
            predicted_iou=session.result.score,
            clicks=session.clicks,
            seconds=session.elapsed_seconds(),
            manual_fix=manual_fix,
            request_id=key,
            prompt=session.prompt(),
        )
        area = int(mask.sum())
        session.reset()
        return {"mask_id": mask_id, "request_id": request_id, "duplicate": False, "area": area}

    # ----------------------------------------------------------------------------- masks and history
    def mask(self, p: Principal, mask_id: int) -> dict:
        """A mask the caller may see: reviewers and admins any, annotators their own or their tasks'."""
        mask = self.store.get_mask(mask_id)
        if mask is None:
            raise NotFound(f"mask {mask_id} not found")
        if not p.at_least("reviewer") and mask["annotator_id"] != p.annotator_id:
            task = self.store.get_task(mask["task_id"]) if mask["task_id"] is not None else None
            if task is None or task["annotator_id"] != p.annotator_id:
                raise NotFound(f"mask {mask_id} not found")  # as a missing one: ids cannot be probed
        return mask

    def history(self, p: Principal, mask_id: int) -> dict:
        self.mask(p, mask_id)
        return history.history_view(self.store, mask_id)

    def revert(self, p: Principal, mask_id: int) -> dict:
        self.mask(p, mask_id)
        history.check_revert(self.store, p, mask_id)
        return self.store.revert(mask_id, p.annotator_id)

    def comment(self, p: Principal, text: str, mask_id: int | None = None, task_id: int | None = None) -> int:
        if mask_id is not None:
            self.mask(p, mask_id)
        if task_id is not None:
            self.task(p, task_id)
        if mask_id is None and task_id is None:
            raise BadRequest("a comment needs a mask_id or an open task")
        return self.store.comment(p.annotator_id, text, mask_id=mask_id, task_id=task_id)

    # ----------------------------------------------------------------------------------------- review
    def review_queue(self, p: Principal, limit: int = 100) -> list[dict]:
        """Masks waiting for review (status pending_review, and masks of review tasks assigned to the caller)."""
        p.require("reviewer")
        df = self.store.masks(status="pending_review")
        items = [_mask_json(r) | {"review_task_id": None} for r in df.to_dict("records")]
        seen = {i["mask_id"] for i in items}
        for t in self.store.tasks_for(p.annotator_id, status=["pending", "in_progress"]):
            if t["kind"] != "review":
                continue
            if t["mask_id"] is not None:
                m = self.store.get_mask(t["mask_id"])
                rows = [m] if m is not None and m["status"] in ("accepted", "pending_review") else []
            else:
                rows = self.store.masks(
                    image_id=t["image_id"], status=["accepted", "pending_review"]
                ).to_dict("records")
                rows = [r for r in rows if r["stage"] == t["stage"]]
            for r in rows:
                if r["mask_id"] in seen:
                    continue
                seen.add(r["mask_id"])
                items.append(_mask_json(r) | {"review_task_id": t["task_id"]})
        return items[:limit]

    def review(
        self,
        p: Principal,
        mask_id: int,
        verdict: str,
        comment: str | None = None,
        fixed_rle: dict | None = None,
        task_id: int | None = None,
        session: AnnotationSession | None = None,
        manual_fix: bool = False,
    ) -> dict:
        """A reviewer's verdict; ``fix`` takes ``fixed_rle`` (a mask drawn by hand: a manual fix) or the open
        session's selected mask (made with the model's clicks: a manual fix only when ``manual_fix`` says the
        reviewer also edited it by hand, as :meth:`accept` takes it)."""
        p.require("reviewer")
        mask = self.mask(p, mask_id)
        if task_id is not None:
            task = self.task(p, task_id)
            if task["kind"] != "review":
                raise BadRequest(f"task {task_id} is not a review task")
        clicks, seconds, manual, prompt = 0, 0.0, True, None
        if verdict == "fix" and fixed_rle is None:
            if session is None or session.result is None or not session.current_mask().any():
                raise BadRequest("verdict 'fix' needs a corrected mask: draw it first")
            if session.image_id != mask["image_id"]:
                raise BadRequest(
                    f"the open image is {session.image_id}, mask {mask_id} is on {mask['image_id']}"
                )
            fixed_rle = rle_utils.encode(session.current_mask())
            clicks, seconds, manual = session.clicks, session.elapsed_seconds(), manual_fix
            prompt = session.prompt()
        try:
            out = self.store.review(
                mask_id,
                p.annotator_id,
                verdict,
                comment,
                fixed_rle,
                task_id=task_id,
                clicks=clicks,
                seconds=seconds,
                manual_fix=manual,
                prompt=prompt,
            )
        except (ValueError, KeyError) as exc:
            raise BadRequest(str(exc)) from None
        if session is not None and verdict == "fix":
            session.reset()
        return out

    def start_from(self, p: Principal, session: AnnotationSession | None, mask_id: int) -> MaskResult:
        """Start the open session's object from the prompt stored with ``mask_id`` (a proposal's grid point):
        the model's masks there, with no click counted, for a reviewer to correct before a ``fix``."""
        p.require("reviewer")
        mask = self.mask(p, mask_id)
        if session is None:
            raise BadRequest(f"open image {mask['image_id']} first")
        if session.image_id != mask["image_id"]:
            raise BadRequest(f"the open image is {session.image_id}, mask {mask_id} is on {mask['image_id']}")
        if not mask.get("prompt"):
            raise BadRequest(f"mask {mask_id} has no stored prompt: click on the object to fix it")
        return session.load_prompt(mask["prompt"])

    # ----------------------------------------------------------------------------------------- export
    def export_coco(self, p: Principal, stage: int | None = None, status: str | None = "accepted") -> dict:
        p.require("admin")
        return export.coco_dataset(self.store, stage=stage, status=status)

    def export_sa1b(
        self,
        p: Principal,
        stage: int | None = None,
        status: str | None = "accepted",
        image_id: int | None = None,
    ) -> list[dict]:
        p.require("admin")
        return export.sa1b_records(
            self.store, stage=stage, status=status, image_ids=None if image_id is None else [image_id]
        )


def _task_json(t: dict) -> dict:
    return {
        "task_id": int(t["task_id"]),
        "image_id": int(t["image_id"]),
        "stage": int(t["stage"]),
        "kind": t["kind"],
        "status": t["status"],
        "priority": float(t["priority"]),
        "batch": t["batch"],
        "mask_id": None if t["mask_id"] is None else int(t["mask_id"]),
    }


def _opt(value: object, cast: type = float) -> object:
    return None if value is None or pd.isna(value) else cast(value)


def _mask_json(r: dict) -> dict:
    return {
        "mask_id": int(r["mask_id"]),
        "image_id": int(r["image_id"]),
        "task_id": _opt(r.get("task_id"), int),
        "status": r["status"],
        "source": r["source"],
        "annotator_id": r["annotator_id"] if isinstance(r["annotator_id"], str) else None,
        "stage": int(r["stage"]),
        "version": int(r["version"]),
        "area": int(r["area"]),
        "predicted_iou": _opt(r.get("predicted_iou")),
        "segmentation": r.get("rle"),
        "has_prompt": isinstance(r.get("prompt"), str | dict) and bool(r["prompt"]),  # start_from can use it
    }
