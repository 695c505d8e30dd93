"""Annotation: the session API (``session``), the web tool (``server``, ``service``, ``auth``, ``protocol``,
``history``, ``export``, ``static/``) and the simulated workforce and quality control (``simulated``,
``consensus``, ``queue``, ``gold``, ``stats``).

Only the session API is imported here; the web modules (FastAPI) load when imported explicitly.
"""

from .session import AnnotationSession, MaskResult, PromptError, SegmentationService

__all__ = ["AnnotationSession", "MaskResult", "PromptError", "SegmentationService"]
