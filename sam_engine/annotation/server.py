"""FastAPI app of the annotation tool: the page, a WebSocket click loop and a small authenticated HTTP API.

``create_app(store, service, dataset_dirs)`` builds it in-process (tests, benchmarks); ``run(...)`` serves it
with uvicorn on 127.0.0.1 by default. Every endpoint except ``/``, ``/static/*`` and ``/healthz`` needs a
bearer token; see ``auth.py`` for roles and ``protocol.py`` for the WebSocket messages.

HTTP: ``GET /api/me``, ``GET /api/tasks`` (mine; admins ``?annotator_id=``), ``GET /api/tasks/{id}``,
``POST /api/tasks/{id}/skip``, ``POST /api/tasks/{id}/done``, ``GET /api/images/{id}`` (file from a dataset
folder), ``GET /api/images/{id}/masks``, ``GET /api/masks/{id}``, ``GET /api/masks/{id}/history``,
``POST /api/masks/{id}/revert``, ``POST /api/masks/{id}/comment``, ``GET /api/review/queue``,
``POST /api/review/{mask_id}``, ``GET /api/export/coco``, ``GET /api/export/sa1b``, ``POST /api/annotators``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from anyio import from_thread
from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from sam_engine.data import rle as rle_utils
from sam_engine.data.errors import DataError
from sam_engine.quality.lease import StoreBusyError
from sam_engine.quality.store import QualityStore

from .auth import Principal, authenticate, bearer_token
from .protocol import (
    MAX_MESSAGE_BYTES,
    AuthMsg,
    BadRequest,
    ProtocolError,
    RateLimiter,
    ServiceError,
    Unauthorized,
    error_message,
    parse_message,
    seq_of,
)
from .service import AnnotationService, ImageResolver, _mask_json
from .session import AnnotationSession, MaskResult, PromptError, SegmentationService

log = logging.getLogger("sam_engine.annotation")
STATIC_DIR = Path(__file__).parent / "static"
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; script-src 'self'; "
    "style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", _CSP.encode()),
    (b"cache-control", b"no-store"),
]


class _Guard:
    """ASGI middleware: refuse HTTP bodies over ``max_body`` (413) and add security headers."""

    def __init__(self, app: Any, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _send_json(
                send, 413, {"detail": f"request body over {self.max_body} bytes", "code": "too_large"}
            )
            return
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BadRequest(f"request body over {self.max_body} bytes")
            return message

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in _SECURITY_HEADERS if k not in names]
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        await self.app(scope, limited_receive, send_with_headers)


async def _send_json(send: Any, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + _SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": data})


# ------------------------------------------------------------------------------------ request bodies
def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON: numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def strict_json_loads(body: bytes) -> Any:
    """A request body as JSON, refusing what the standard does not allow (``NaN``, ``Infinity``, numbers that
    overflow to infinity) and what Python cannot parse (huge integers, deep nesting) with
    :class:`json.JSONDecodeError`, which FastAPI answers with a 4xx."""
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    except ValueError as exc:
        raise json.JSONDecodeError(str(exc)[:200], text, 0) from None


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json_loads(await self.body())
        return self._json


class _StrictJsonRoute(APIRoute):
    """Routes whose JSON bodies are parsed by :func:`strict_json_loads`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict_handler


def _json_safe(value: Any) -> Any:
    """``value`` with everything JSON cannot hold (NaN, infinities, bytes, objects) as text."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else repr(value)
    return str(value)


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    """400 for a body that is not JSON, 422 for JSON of the wrong shape; always serialisable."""
    errors = exc.errors()
    bad_json = [e for e in errors if e.get("type") == "json_invalid"]
    if bad_json:
        e = bad_json[0]
        reason = (e.get("ctx") or {}).get("error") or e.get("msg", "")
        return JSONResponse({"detail": f"request body is not valid JSON: {reason}", "code": "bad_json"}, 400)
    return JSONResponse({"detail": _json_safe(errors), "code": "bad_request"}, status_code=422)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no coercion of strings or booleans to numbers


class RleBody(_Body):
    size: Annotated[list[int], Field(min_length=2, max_length=2)]
    counts: Annotated[str, Field(max_length=4_000_000)] | Annotated[list[int], Field(max_length=4_000_000)]


class SkipBody(_Body):
    reason: Annotated[str, Field(max_length=2000)] | None = None


class CommentBody(_Body):
    text: Annotated[str, Field(min_length=1, max_length=2000)]


class ReviewBody(_Body):
    verdict: Literal["accept", "fix", "reject"]
    comment: Annotated[str, Field(max_length=2000)] | None = None
    fixed_rle: RleBody | None = None
    task_id: int | None = None


class AnnotatorBody(_Body):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    role: Literal["annotator", "reviewer", "admin"] = "annotator"
    annotator_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    expertise: list[Annotated[str, Field(max_length=128)]] = Field(default_factory=list, max_length=64)


# ------------------------------------------------------------------------------------ WebSocket state
def _png_b64(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class WsConnection:
    """One WebSocket client: its principal, open session and task. ``handle`` runs in a worker thread.

    ``emit(message)`` sends a message before the reply (from that thread): the quick whole-image masks of a
    click when the client opened with ``progressive`` (they carry ``"final": false``; the reply, the refined
    masks, ``"final": true``).
    """

    def __init__(
        self, api: AnnotationService, principal: Principal, emit: Callable[[dict], None] | None = None
    ) -> None:
        self.api = api
        self.p = principal
        self.session: AnnotationSession | None = None
        self.task: dict | None = None
        self.format = "rle"
        self.progressive = False
        self.emit = emit
        self._t0 = 0.0

    def handle(self, m: Any) -> dict:
        self._t0 = t0 = time.perf_counter()
        try:
            out = self._dispatch(m)
            out["server_ms"] = round((time.perf_counter() - t0) * 1000.0, 3)
            return out
        except ServiceError as exc:
            return error_message(exc.code, exc.message, m.seq)
        except PromptError as exc:
            return error_message("bad_prompt", str(exc), m.seq)
        except DataError as exc:
            return error_message("bad_data", str(exc), m.seq)
        except StoreBusyError as exc:
            return error_message("busy", str(exc), m.seq)
        except Exception:
            log.exception("error handling %s message", getattr(m, "type", "?"))
            return error_message("internal", "internal server error", m.seq)

    def _need_session(self) -> AnnotationSession:
        if self.session is None:
            raise BadRequest("no image is open: send an 'open' message first")
        return self.session

    def _on_coarse(self, seq: int | None) -> Callable[[MaskResult], None] | None:
        """The callback that sends a click's quick answer ahead of the reply (None unless progressive)."""
        if not self.progressive or self.emit is None:
            return None
        emit = self.emit

        def send(result: MaskResult) -> None:
            ms = round((time.perf_counter() - self._t0) * 1000.0, 3)
            emit(self._masks(result, seq) | {"final": False, "server_ms": ms})

        return send

    def _masks(self, result: MaskResult | None, seq: int | None) -> dict:
        s = self._need_session()
        out: dict[str, Any] = {
            "type": "masks",
            "seq": seq,
            "image_id": s.image_id,
            "format": self.format,
            "clicks": s.clicks,
            "points": [list(p) for p in s.points],
            "box": list(s.box) if s.box else None,
            "final": True,
        }
        if result is None:
            return out | {"masks": [], "scores": [], "areas": [], "selected": None}
        masks = result.masks
        encoded = rle_utils.encode_batch(masks) if self.format == "rle" else [_png_b64(m) for m in masks]
        return out | {
            "masks": encoded,
            "scores": [round(float(v), 4) for v in result.scores],
            "areas": [int(v) for v in masks.reshape(len(masks), -1).sum(axis=1)],
            "selected": int(result.selected),
        }

    def _dispatch(self, m: Any) -> dict:
        kind = m.type
        if kind == "ping":
            return {"type": "pong", "seq": m.seq}
        if kind == "auth":
            raise BadRequest("already authenticated")
        if kind == "open":
            self.format = m.format
            self.progressive = m.progressive
            self.session, self.task = self.api.open(self.p, task_id=m.task_id, image_id=m.image_id)
            s = self.session
            return {
                "type": "opened",
                "seq": m.seq,
                "image": {
                    "image_id": s.image_id,
                    "width": s.width,
                    "height": s.height,
                    "url": f"/api/images/{s.image_id}",
                },
                "task": None if self.task is None else _task_public(self.task),
                "progress": self.api.progress(self.p),
                "masks": self.api.image_masks(self.p, s.image_id),
            }
        if kind == "point":
            s = self._need_session()
            return self._masks(s.add_point(m.x, m.y, m.positive, on_coarse=self._on_coarse(m.seq)), m.seq)
        if kind == "box":
            s = self._need_session()
            return self._masks(s.set_box(m.x0, m.y0, m.x1, m.y1, on_coarse=self._on_coarse(m.seq)), m.seq)
        if kind == "undo":
            return self._masks(self._need_session().undo(), m.seq)
        if kind == "reset":
            self._need_session().reset()
            return self._masks(None, m.seq)
        if kind == "choose":
            s = self._need_session()
            s.choose(m.index)
            return {"type": "chosen", "seq": m.seq, "selected": m.index}
        if kind == "accept":
            out = self.api.accept(self.p, self.session, self.task, m.request_id, m.manual_fix)
            return {"type": "accepted", "seq": m.seq, **out, "progress": self.api.progress(self.p)}
        if kind == "skip":
            if self.task is None:
                raise BadRequest("no task is open")
            out = self.api.skip(self.p, self.task["task_id"], m.reason)
            self.session, self.task = None, None
            return {"type": "skipped", "seq": m.seq, **out, "progress": self.api.progress(self.p)}
        if kind == "done":
            if self.task is None:
                raise BadRequest("no task is open")
            out = self.api.finish(self.p, self.task["task_id"])
            self.session, self.task = None, None
            return {"type": "done", "seq": m.seq, **out, "progress": self.api.progress(self.p)}
        if kind == "comment":
            task_id = None if self.task is None else self.task["task_id"]
            event_id = self.api.comment(
                self.p, m.text, mask_id=m.mask_id, task_id=task_id if m.mask_id is None else None
            )
            return {"type": "commented", "seq": m.seq, "event_id": event_id}
        if kind == "review":
            out = self.api.review(
                self.p,
                m.mask_id,
                m.verdict,
                m.comment,
                task_id=m.task_id,
                session=self.session,
                manual_fix=m.manual_fix,
            )
            return {"type": "reviewed", "seq": m.seq, **out}
        if kind == "start_from":
            return self._masks(self.api.start_from(self.p, self.session, m.mask_id), m.seq)
        raise BadRequest(f"unhandled message type {kind!r}")


def _task_public(task: dict) -> dict:
    return {k: task[k] for k in ("task_id", "image_id", "stage", "kind", "status", "mask_id")}


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_name(host: str) -> str:
    """The name part of a ``Host`` header value (``[::1]:8765`` -> ``::1``, ``Example.org:80`` -> ``example.org``)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _host_ok(ws: WebSocket, allowed: Sequence[str]) -> bool:
    """The ``Host`` header names a loopback address or a configured host (so DNS rebinding cannot reach us)."""
    host = ws.headers.get("host")
    return host is not None and host_name(host) in {*LOOPBACK_HOSTS, *(host_name(h) for h in allowed)}


def _origin_ok(ws: WebSocket, allowed: Sequence[str]) -> bool:
    """Listed, or same-origin: the Origin's scheme is the connection's (http for ws, https for wss) and its
    host is the Host header. Clients without an Origin (not browsers) pass."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    if origin in allowed:
        return True
    scheme, sep, rest = origin.partition("://")
    expected = "https" if ws.url.scheme in ("wss", "https") else "http"
    if not sep or scheme.lower() != expected:
        return False
    return rest.rstrip("/").lower() == ws.headers.get("host", "").lower()


# -------------------------------------------------------------------------------------------- the app
def _principal(request: Request) -> Principal:
    """FastAPI dependency: the caller of an HTTP request (401 without a valid bearer token)."""
    return authenticate(request.app.state.store, bearer_token(request.headers.get("authorization")))


Caller = Annotated[Principal, Depends(_principal)]


def create_app(
    store: QualityStore,
    service: SegmentationService,
    dataset_dirs: Mapping[str, str | Path] | Sequence[str | Path],
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_body_bytes: int = 8 * 1024 * 1024,
    rate_limit: tuple[float, int] = (50.0, 100),
    auth_timeout_s: float = 10.0,
    cors_origins: Sequence[str] = (),
    ws_origins: Sequence[str] = (),
    ws_hosts: Sequence[str] = (),
    prefetch_ahead: int = 3,
    image_cache_dir: str | Path | None = None,
) -> FastAPI:
    """Build the annotation app on an open store and segmentation service.

    ``rate_limit``: (messages per second, burst) per WebSocket connection. ``cors_origins``: origins allowed to
    call the HTTP API from another site (none by default). ``ws_origins``: extra browser origins allowed to open
    the WebSocket besides the page's own. ``ws_hosts``: host names the WebSocket's ``Host`` header may carry
    besides the loopback names (the served host name when it is not loopback). ``image_cache_dir``: where images of remote dataset folders (fsspec
    URLs) are cached (see :class:`~sam_engine.annotation.service.ImageResolver`).
    """
    resolver = ImageResolver(store, dataset_dirs, cache_dir=image_cache_dir)
    api = AnnotationService(store, service, resolver, prefetch_ahead=prefetch_ahead)
    app = FastAPI(title="sam-engine annotation", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.route_class = _StrictJsonRoute
    app.state.api = api
    app.state.store = store
    app.add_middleware(_Guard, max_body=max_body_bytes)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse(
            {"detail": exc.message, "code": exc.code}, status_code=exc.status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "code": "bad_data"}, status_code=400)

    @app.exception_handler(StoreBusyError)
    async def _busy(request: Request, exc: StoreBusyError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "code": "busy"}, status_code=503)

    # ------------------------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    # ------------------------------------------------------------------------------------ tasks
    @app.get("/api/me")
    def me(p: Caller) -> dict:
        return p.as_dict() | {"progress": api.progress(p)}

    @app.get("/api/tasks")
    def tasks(
        p: Caller,
        status: Annotated[str | None, Query(max_length=32)] = None,
        annotator_id: Annotated[str | None, Query(max_length=128)] = None,
    ) -> dict:
        return {"tasks": api.tasks(p, status=status, annotator_id=annotator_id), "progress": api.progress(p)}

    @app.get("/api/tasks/{task_id}")
    def task(task_id: int, p: Caller) -> dict:
        return _task_public(api.task(p, task_id))

    @app.post("/api/tasks/{task_id}/skip")
    def skip(task_id: int, body: SkipBody, p: Caller) -> dict:
        return api.skip(p, task_id, body.reason)

    @app.post("/api/tasks/{task_id}/done")
    def done(task_id: int, p: Caller) -> dict:
        return api.finish(p, task_id)

    # ------------------------------------------------------------------------------------ images
    @app.get("/api/images/{image_id}")
    def image(image_id: int, p: Caller) -> FileResponse:
        return FileResponse(api.image_file(p, image_id), headers={"Cache-Control": "private, max-age=300"})

    @app.get("/api/images/{image_id}/masks")
    def image_masks(image_id: int, p: Caller) -> dict:
        return {"masks": api.image_masks(p, image_id)}

    # ------------------------------------------------------------------------------------ masks
    @app.get("/api/masks/{mask_id}")
    def mask(mask_id: int, p: Caller) -> dict:
        return _mask_json(api.mask(p, mask_id))

    @app.get("/api/masks/{mask_id}/history")
    def mask_history(mask_id: int, p: Caller) -> dict:
        return api.history(p, mask_id)

    @app.post("/api/masks/{mask_id}/revert")
    def revert(mask_id: int, p: Caller) -> dict:
        return api.revert(p, mask_id)

    @app.post("/api/masks/{mask_id}/comment")
    def comment(mask_id: int, body: CommentBody, p: Caller) -> dict:
        return {"event_id": api.comment(p, body.text, mask_id=mask_id)}

    # ------------------------------------------------------------------------------------ review
    @app.get("/api/review/queue")
    def review_queue(p: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        return {"items": api.review_queue(p, limit=limit)}

    @app.post("/api/review/{mask_id}")
    def review(mask_id: int, body: ReviewBody, p: Caller) -> dict:
        fixed = None if body.fixed_rle is None else body.fixed_rle.model_dump()
        return api.review(p, mask_id, body.verdict, body.comment, fixed_rle=fixed, task_id=body.task_id)

    # ------------------------------------------------------------------------------------ export / admin
    @app.get("/api/export/coco")
    def export_coco(
        p: Caller, stage: int | None = None, status: Annotated[str, Query(max_length=32)] = "accepted"
    ) -> dict:
        return api.export_coco(p, stage=stage, status=None if status == "all" else status)

    @app.get("/api/export/sa1b")
    def export_sa1b(
        p: Caller,
        stage: int | None = None,
        status: Annotated[str, Query(max_length=32)] = "accepted",
        image_id: int | None = None,
    ) -> dict:
        return {
            "records": api.export_sa1b(
                p, stage=stage, status=None if status == "all" else status, image_id=image_id
            )
        }

    @app.post("/api/annotators")
    def add_annotator(body: AnnotatorBody, p: Caller) -> dict:
        p.require("admin")
        annotator_id, token = store.add_annotator(
            body.name, body.role, annotator_id=body.annotator_id, expertise=body.expertise
        )
        return {"annotator_id": annotator_id, "token": token}

    # ------------------------------------------------------------------------------------ WebSocket
    @app.websocket("/ws")
    async def ws_route(ws: WebSocket) -> None:
        if not (_host_ok(ws, ws_hosts) and _origin_ok(ws, ws_origins)):
            await ws.close(code=4403)
            return
        await ws.accept()
        try:
            p = await _ws_authenticate(ws)
            if p is None:
                return

            def emit(message: dict) -> None:  # from the worker thread that handles a message
                from_thread.run(ws.send_text, json.dumps(message, separators=(",", ":")))

            conn = WsConnection(api, p, emit)
            limiter = RateLimiter(*rate_limit)
            await ws.send_text(
                json.dumps({"type": "ready", "user": p.as_dict(), "progress": api.progress(p)})
            )
            while True:
                data = await _receive(ws)
                if data is None:
                    return
                size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
                if size > max_message_bytes:
                    await ws.send_text(
                        json.dumps(
                            error_message(
                                "too_large",
                                f"message of {size} bytes is over the limit of {max_message_bytes}",
                            )
                        )
                    )
                    await ws.close(code=1009)
                    return
                if not limiter.allow():
                    await ws.send_text(
                        json.dumps(
                            error_message(
                                "rate_limited",
                                f"over {rate_limit[0]:g} messages per second; slow down",
                                seq_of(data),
                            )
                        )
                    )
                    continue
                try:
                    message = parse_message(data, max_message_bytes)
                except ProtocolError as exc:
                    await ws.send_text(json.dumps(error_message(exc.code, exc.message, seq_of(data))))
                    continue
                reply = await run_in_threadpool(conn.handle, message)
                await ws.send_text(json.dumps(reply, separators=(",", ":")))
        except WebSocketDisconnect:
            return

    async def _receive(ws: WebSocket) -> str | bytes | None:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        return message.get("text") if message.get("text") is not None else message.get("bytes", b"")

    async def _ws_authenticate(ws: WebSocket) -> Principal | None:
        token = ws.query_params.get("token")
        if token is None:
            try:
                data = await asyncio.wait_for(_receive(ws), timeout=auth_timeout_s)
            except TimeoutError:
                await _ws_reject(ws, "no auth message in time")
                return None
            if data is None:
                return None
            try:
                message = parse_message(data, max_message_bytes)
            except ProtocolError as exc:
                await _ws_reject(ws, f"first message must be auth: {exc.message}")
                return None
            if not isinstance(message, AuthMsg):
                await _ws_reject(ws, 'first message must be {"type": "auth", "token": ...}')
                return None
            token = message.token
        try:
            return await run_in_threadpool(authenticate, store, token)
        except Unauthorized as exc:
            await _ws_reject(ws, exc.message)
            return None

    async def _ws_reject(ws: WebSocket, message: str) -> None:
        await ws.send_text(json.dumps(error_message("unauthorized", message)))
        await ws.close(code=4401)

    return app


def run(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    ws_max_size: int = MAX_MESSAGE_BYTES * 2,
    access_log: bool = False,
    log_level: str = "info",
) -> None:
    """Serve ``app`` with uvicorn (loopback by default; the access log is off and tokens are masked in every
    uvicorn log line, since uvicorn logs WebSocket handshakes with their query string)."""
    import logging

    import uvicorn

    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(TokenMaskFilter())
    uvicorn.run(
        app,
        host=host,
        port=port,
        ws_max_size=ws_max_size,
        access_log=access_log,
        log_level=log_level,
        ws_ping_interval=20.0,
    )


class TokenMaskFilter:
    """A logging filter that replaces ``token=<secret>`` in a record's message and arguments with ``token=***``."""

    _pattern = re.compile(r"(token=)[^&\s\"']+")

    def filter(self, record) -> bool:
        record.msg = self._pattern.sub(r"\1***", str(record.msg))
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(self._pattern.sub(r"\1***", a) if isinstance(a, str) else a for a in args)
        return True
