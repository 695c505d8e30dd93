"""Silence Lightning's and torch's advertisements and notes that carry nothing for this engine's logs."""

from __future__ import annotations

import logging
import warnings

# Lightning's INFO lines: "GPU available / TPU available", "💡 Tip: ... litlogger / litmodels",
# "`Trainer.fit` stopped: `max_steps` reached", "`weights_only` was not set"
_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
    "lightning.pytorch.trainer.connectors.checkpoint_connector",
)
_MESSAGES = (
    r".*isinstance\(treespec, LeafSpec\)",  # torch's pytree deprecation, raised inside Lightning
    r".*weights_only",
    r".*smaller than the logging interval",  # tiny fine-tune sets: fewer batches than log_every_n_steps
    r".*litlogger",
)


def quiet_lightning() -> None:
    """Raise Lightning's chatty loggers to WARNING and ignore the known deprecation notes (idempotent)."""
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in _MESSAGES:
        warnings.filterwarnings("ignore", message=pattern)
