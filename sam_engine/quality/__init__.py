"""DuckDB-backed quality store: images, annotators, tasks, masks, events, reviews, gold scores."""

from .store import (
    SCHEMA_VERSION,
    QualityStore,
    StoreBusyError,
    connect_read_only,
    hash_secret,
    make_token,
    request_turn,
    split_token,
    withdraw_turn_request,
)

__all__ = [
    "SCHEMA_VERSION",
    "QualityStore",
    "StoreBusyError",
    "connect_read_only",
    "hash_secret",
    "make_token",
    "request_turn",
    "split_token",
    "withdraw_turn_request",
]
