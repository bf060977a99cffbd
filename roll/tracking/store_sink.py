"""A sink that writes metrics and events to the run store (what the dashboard and ``roll jobs``
read)."""

from __future__ import annotations

from typing import Any

from roll.jobs.runstore import RunStore


class RunStoreSink:
    """Log one run's metrics and events to a :class:`~roll.jobs.runstore.RunStore`.

    The store belongs to the caller: ``close()`` leaves it open, since the driver still sets the
    run's final status through it after tracking ends.

    Args:
        store: an open run store, used from the thread that created it.
        run_id: the run (already created with ``store.create_run``).
    """

    def __init__(self, store: RunStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Upsert one step's metrics (NaN is stored as NULL)."""
        self.store.log_metrics(self.run_id, step, metrics)

    def event(
        self, kind: str, message: str, step: int | None = None, data: dict[str, Any] | None = None
    ) -> None:
        """Append an event to the run's event log."""
        self.store.log_event(self.run_id, kind, message, step=step, data=data)

    def close(self) -> None:
        """Nothing to release: the caller owns and closes the store."""
