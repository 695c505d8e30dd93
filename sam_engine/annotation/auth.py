"""Bearer-token authentication and roles for the annotation server.

Tokens are ``<annotator_id>.<secret>`` with a ``secrets.token_urlsafe(32)`` secret; the store keeps only the
secret's sha256 and the check uses ``hmac.compare_digest``. Roles: ``annotator`` (own tasks only),
``reviewer`` (annotator rights on own tasks + review, history and revert of any mask, any image),
``admin`` (everything, including export and creating annotators).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sam_engine.quality.store import QualityStore
from sam_engine.quality.tokens import hash_secret, split_token

from .protocol import Forbidden, Unauthorized

ROLE_RANK = {"annotator": 0, "reviewer": 1, "admin": 2}
_DUMMY_HASH = hash_secret("not-a-real-secret")


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    annotator_id: str
    name: str
    role: str

    def at_least(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def require(self, role: str) -> None:
        """Raise :class:`Forbidden` unless the caller's role is ``role`` or above."""
        if not self.at_least(role):
            raise Forbidden(f"this needs the {role} role; {self.annotator_id} is {self.role}")

    def as_dict(self) -> dict:
        return {"annotator_id": self.annotator_id, "name": self.name, "role": self.role}


def authenticate(store: QualityStore, token: str | None) -> Principal:
    """The principal a token belongs to; raises :class:`Unauthorized` for a missing, bad or inactive token."""
    parts = split_token(token) if token else None
    row = store.get_annotator(parts[0], with_secret=True) if parts else None
    expected = row["token_hash"] if row else _DUMMY_HASH
    supplied = hash_secret(parts[1]) if parts else hash_secret("")
    ok = hmac.compare_digest(supplied.encode("ascii"), expected.encode("ascii"))
    if not (ok and row and row["active"]):
        raise Unauthorized("missing, invalid or revoked token")
    return Principal(annotator_id=row["annotator_id"], name=row["name"], role=row["role"])


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
