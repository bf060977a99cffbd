"""Agentic pipeline (multi-turn trajectory GRPO); registers itself as ``pipeline: agentic``."""

from pipelines.agentic import pipeline  # noqa: F401  (registration)
from pipelines.agentic.config import AgenticConfig

__all__ = ["AgenticConfig"]
