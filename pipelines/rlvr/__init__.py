"""RLVR pipeline (GRPO on verifiable rewards); registers itself as ``pipeline: rlvr``."""

from pipelines.rlvr import pipeline  # noqa: F401  (registration)
from pipelines.rlvr.config import RLVRConfig

__all__ = ["RLVRConfig"]
