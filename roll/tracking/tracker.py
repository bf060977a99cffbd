"""Fan metrics out to sinks (console, run store, TensorBoard, ...) behind one small protocol.

A sink is anything with ``log(step, metrics)`` and ``close()``; a sink that also has
``event(kind, message, step, data)`` receives events too. Tracking must never stop training: a
sink that raises is reported once with a warning and disabled, and the other sinks carry on.
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from roll.errors import StateError

logger = logging.getLogger(__name__)


@runtime_checkable
class Sink(Protocol):
    """Receives one step's scalar metrics at a time."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` (namespaced keys like ``reward/mean``) for training step ``step``."""

    def close(self) -> None:
        """Flush and release resources; called once at the end of the run."""


@runtime_checkable
class EventSink(Sink, Protocol):
    """A sink that also records events (stage start, checkpoint saved, warnings)."""

    def event(
        self, kind: str, message: str, step: int | None = None, data: dict[str, Any] | None = None
    ) -> None:
        """Record one event."""


def to_number(value: Any) -> int | float:
    """A metric value as a plain ``int`` or ``float``.

    Integers (Python or numpy) stay integers so the console prints counts as counts; bools become
    0/1; anything else goes through ``float()`` (numpy floats, one-element torch tensors).
    Raises TypeError/ValueError/RuntimeError for values that are not scalars.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


class Tracker:
    """Send metrics and events to every sink; disable a sink the first time it fails.

    Args:
        sinks: the sinks, in the order they are called.
    """

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks: list[Sink] = list(sinks)
        self._disabled: set[int] = set()
        self._bad_keys: set[str] = set()
        self._closed = False

    @property
    def active_sinks(self) -> list[Sink]:
        """The sinks that have not failed."""
        return [sink for sink in self.sinks if id(sink) not in self._disabled]

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Send one step's metrics to every active sink.

        Values are converted to plain numbers first; a value that is not a scalar is dropped with
        a one-time warning naming its key.
        """
        self._check_open()
        clean = self._clean(metrics)
        for sink in self.active_sinks:
            self._call(sink, "log", step, clean)

    def event(
        self,
        kind: str,
        message: str,
        step: int | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Send an event to every active sink that records events."""
        self._check_open()
        payload = None if data is None else dict(data)
        for sink in self.active_sinks:
            if isinstance(sink, EventSink):
                self._call(sink, "event", kind, message, step, payload)

    def close(self) -> None:
        """Close every sink (idempotent); a sink that fails to close is reported and skipped."""
        if self._closed:
            return
        self._closed = True
        for sink in self.active_sinks:
            self._call(sink, "close")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, sink: Sink, method: str, *args: Any) -> None:
        try:
            getattr(sink, method)(*args)
        except Exception as exc:  # noqa: BLE001 - a broken sink must not stop training
            self._disabled.add(id(sink))
            logger.debug("metric sink %s failed", type(sink).__name__, exc_info=True)
            warnings.warn(
                f"metric sink {type(sink).__name__} failed in {method}() with {exc!r}; it is "
                "disabled for the rest of this run (the other sinks keep logging)",
                RuntimeWarning,
                stacklevel=3,
            )

    def _clean(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        clean: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                clean[key] = to_number(value)
            except (TypeError, ValueError, RuntimeError):
                if key not in self._bad_keys:
                    self._bad_keys.add(key)
                    warnings.warn(
                        f"metric {key!r} has a non-scalar value of type {type(value).__name__}; "
                        "log a number (e.g. tensor.mean().item()) — dropping it",
                        RuntimeWarning,
                        stacklevel=3,
                    )
        return clean

    def _check_open(self) -> None:
        if self._closed:
            raise StateError("Tracker is closed; create a new Tracker to log more metrics")
