"""Annotators' bearer tokens: ``<annotator_id>.<secret>``; the store keeps only the secret's sha256."""

from __future__ import annotations

import hashlib
import secrets


def hash_secret(secret: str) -> str:
    """sha256 hex digest of a token's secret part (what the annotators table stores)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def make_token(annotator_id: str) -> tuple[str, str]:
    """A fresh random bearer token ``<annotator_id>.<secret>`` and the hash to store."""
    secret = secrets.token_urlsafe(32)
    return f"{annotator_id}.{secret}", hash_secret(secret)


def split_token(token: str) -> tuple[str, str] | None:
    """``(annotator_id, secret)`` of a well-formed token, else None."""
    if not isinstance(token, str) or "." not in token or len(token) > 512:
        return None
    annotator_id, secret = token.rsplit(".", 1)
    if not annotator_id or not secret:
        return None
    return annotator_id, secret
