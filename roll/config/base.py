"""Base class for every config section: typed, defaulted, described, unknown keys rejected."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigBase(BaseModel):
    """Every config section derives from this: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())
