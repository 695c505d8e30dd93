"""DuckDB-backed quality store: images, annotators, tasks, masks, events, reviews, gold scores.

``store`` (the tables' reads and writes), ``lease`` (how one process holds the file and others get turns),
``migrations`` (the schema), ``tables`` (its definition), ``tokens`` (annotators' bearer tokens).
"""

from .lease import StoreBusyError, request_turn, withdraw_turn_request
from .migrations import SCHEMA_VERSION
from .store import QualityStore, connect_read_only
from .tokens import hash_secret, make_token, split_token

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
