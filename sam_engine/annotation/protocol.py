"""The annotation WebSocket protocol: message models, parsing with clear errors, rate limiting, error types.

Client → server (JSON text frames; every message may carry ``seq``, an integer echoed in the answer):

=========  ==================================================================================================
``auth``    ``{token}`` — first message when the token is not in the ``?token=`` query parameter
``open``    ``{task_id}`` (annotators) or ``{image_id}`` (reviewers, admins); optional ``format``: rle | png,
            ``progressive`` (default false): answer each point / box twice, see below
``point``   ``{x, y, positive=true}`` — original-image pixels
``box``     ``{x0, y0, x1, y1}``
``undo``    ``{}``; ``reset`` ``{}``; ``choose`` ``{index}``
``accept``  ``{request_id, manual_fix=false}`` — idempotent per annotator and request id
``skip``    ``{reason?}``; ``done`` ``{}`` — finish the task; ``comment`` ``{text, mask_id?}``
``review``  ``{mask_id, verdict: accept|fix|reject, comment?, task_id?}`` — ``fix`` uses the session's mask
``start_from`` ``{mask_id}`` — start the object from the prompt stored with that mask on the open image (a
            proposal's grid point): its masks, with no click counted, to correct before a ``fix``
``ping``    ``{}``
=========  ==================================================================================================

Server → client: ``ready``, ``opened``, ``masks`` (``masks``: one COCO RLE — or PNG base64 — per candidate at
image size, ``scores``, ``areas``, ``selected``, ``clicks``, ``final``), ``accepted``, ``skipped``, ``done``,
``commented``, ``reviewed``, ``pong`` and ``error`` (``{code, message, seq}``).

Progressive answers: after ``open`` with ``progressive: true``, and when the server refines clicks on a zoomed-in
crop, a ``point`` or ``box`` gets two ``masks`` messages with its ``seq``: first the whole-image answer from the
cached embedding (``final: false``, decoder only, so it comes at once), then the refined one (``final: true``),
which is the session's state. Otherwise there is one ``masks`` answer, ``final: true``.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MAX_MESSAGE_BYTES = 64 * 1024


# ----------------------------------------------------------------------------------------- errors
class ServiceError(Exception):
    """An error the client caused or may see; ``status`` is the HTTP status, ``code`` the WebSocket code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    pass


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class ProtocolError(ServiceError):
    """A message that is not valid JSON, too large, of an unknown type or with bad fields."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------- messages
_Finite = Annotated[float, Field(allow_inf_nan=False)]
_Text = Annotated[str, Field(max_length=2000)]


class _Msg(BaseModel):
    # strict: a coordinate or id given as a string or a boolean is refused, never coerced to a number
    model_config = ConfigDict(extra="forbid", strict=True)
    seq: int | None = None


class AuthMsg(_Msg):
    type: Literal["auth"]
    token: Annotated[str, Field(min_length=1, max_length=512)]


class OpenMsg(_Msg):
    type: Literal["open"]
    task_id: int | None = None
    image_id: int | None = None
    format: Literal["rle", "png"] = "rle"
    progressive: bool = False  # answer clicks twice: the whole-image masks at once, then the zoomed-in ones


class PointMsg(_Msg):
    type: Literal["point"]
    x: _Finite
    y: _Finite
    positive: bool = True


class BoxMsg(_Msg):
    type: Literal["box"]
    x0: _Finite
    y0: _Finite
    x1: _Finite
    y1: _Finite


class UndoMsg(_Msg):
    type: Literal["undo"]


class ResetMsg(_Msg):
    type: Literal["reset"]


class ChooseMsg(_Msg):
    type: Literal["choose"]
    index: Annotated[int, Field(ge=0, le=2)]


class AcceptMsg(_Msg):
    type: Literal["accept"]
    request_id: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:\-]+$")]
    manual_fix: bool = False


class SkipMsg(_Msg):
    type: Literal["skip"]
    reason: _Text | None = None


class DoneMsg(_Msg):
    type: Literal["done"]


class CommentMsg(_Msg):
    type: Literal["comment"]
    text: Annotated[str, Field(min_length=1, max_length=2000)]
    mask_id: int | None = None


class ReviewMsg(_Msg):
    type: Literal["review"]
    mask_id: int
    verdict: Literal["accept", "fix", "reject"]
    comment: _Text | None = None
    task_id: int | None = None
    manual_fix: bool = False  # a fix the reviewer also edited by hand (as AcceptMsg)


class StartFromMsg(_Msg):
    type: Literal["start_from"]
    mask_id: int


class PingMsg(_Msg):
    type: Literal["ping"]


Message = Annotated[
    AuthMsg
    | OpenMsg
    | PointMsg
    | BoxMsg
    | UndoMsg
    | ResetMsg
    | ChooseMsg
    | AcceptMsg
    | SkipMsg
    | DoneMsg
    | CommentMsg
    | ReviewMsg
    | StartFromMsg
    | PingMsg,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Message)
MESSAGE_TYPES = (
    "auth",
    "open",
    "point",
    "box",
    "undo",
    "reset",
    "choose",
    "accept",
    "skip",
    "done",
    "comment",
    "review",
    "start_from",
    "ping",
)


def parse_message(data: str | bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Parse one client frame into its message model; raises :class:`ProtocolError` with a readable message."""
    size = len(data.encode("utf-8") if isinstance(data, str) else data)
    if size > max_bytes:
        raise ProtocolError("too_large", f"message of {size} bytes is over the limit of {max_bytes}")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, and ints over Python's digit limit
        raise ProtocolError("bad_json", f"message is not valid JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise ProtocolError("bad_json", "message is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", "message must be a JSON object")
    kind = obj.get("type")
    if kind not in MESSAGE_TYPES:
        raise ProtocolError(
            "unknown_type", f"unknown message type {kind!r}; expected one of {list(MESSAGE_TYPES)}"
        )
    try:
        return _ADAPTER.validate_python(obj)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'message'}: {err['msg']}" for err in exc.errors()
        )
        raise ProtocolError("bad_message", f"bad {kind!r} message: {problems}") from None


def seq_of(data: str | bytes) -> int | None:
    """Best-effort ``seq`` of a frame that failed to parse (so the error still correlates)."""
    try:
        obj = json.loads(data)
        seq = obj.get("seq") if isinstance(obj, dict) else None
        return seq if isinstance(seq, int) else None
    except Exception:  # noqa: BLE001
        return None


def error_message(code: str, message: str, seq: int | None = None) -> dict:
    return {"type": "error", "code": code, "message": message, "seq": seq}


# ------------------------------------------------------------------------------------ rate limits
class RateLimiter:
    """Token bucket: ``rate`` messages per second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
