"""Annotation: the session API (``session``) and the web tool people annotate in (``server``, ``service``,
``auth``, ``protocol``, ``history``, ``export``, ``static/``, the ``python -m sam_engine.annotation`` CLI). The
workforce (task queue, gold, consensus, stats, the simulated annotators) is :mod:`sam_engine.workforce`.

Only the session API is imported here; the web modules (FastAPI) load when imported explicitly.
"""

from .session import AnnotationSession, MaskResult, PromptError, SegmentationService

__all__ = ["AnnotationSession", "MaskResult", "PromptError", "SegmentationService"]
