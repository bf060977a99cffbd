"""User-facing errors.

Every mistake a user can make (bad YAML, an impossible device plan, a missing model, a bad dataset
row) raises a ``RollError`` subclass whose message says what is wrong and how to fix it. The CLI
prints the message alone and exits non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class RollError(Exception):
    """Base class: an error whose message is meant for the user, not a traceback."""

    exit_code = 2


class ConfigError(RollError):
    """The job YAML or a command-line override is invalid."""


class DevicePlanError(RollError):
    """The requested device mapping cannot be placed on this cluster."""


class ModelSourceError(RollError):
    """A model or tokenizer cannot be found or loaded."""


class DataError(RollError):
    """A dataset or one of its rows is invalid."""


class CheckpointError(RollError):
    """A checkpoint is missing, incomplete or does not match the job."""


class WorkerError(RollError):
    """A worker died or a worker call failed."""

    exit_code = 3


class StateError(RollError):
    """A component was used in a state that does not allow it (e.g. training while offloaded)."""
