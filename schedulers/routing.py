"""Which rollout worker runs a chunk, and how healthy each worker is.

A chunk holds whole prompt groups, so all samples of a prompt land on one worker (they share the
prompt's KV prefix there). Chunks go to the healthy worker with the fewest outstanding samples;
ties go to the lowest rank, so a run with one worker, or equal loads, routes deterministically.

Worker health: ``healthy`` → ``suspect`` (a chunk at the head of its queue ran past the sample
timeout: it may be hung, e.g. SIGSTOPped; it gets no new work until something it ran comes back)
or ``recovering`` (its process died; Ray is restarting it and it needs the current weights before
it runs anything) → ``healthy``; ``dead`` once Ray gave up restarting it.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field


class Health(enum.Enum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    RECOVERING = "recovering"
    DEAD = "dead"


@dataclass
class WorkerSlot:
    """One rollout worker as the scheduler sees it: health and its FIFO of submitted chunks."""

    rank: int
    health: Health = Health.HEALTHY
    queue: deque = field(default_factory=deque)  # chunk ids in submission order (Ray runs them so)
    head_since: float | None = None  # when the head chunk started, as far as the driver can tell
    outstanding_rows: int = 0
    version_sent: int = -1  # policy version of the last update_weights submitted to it
    restarts: int = 0


class Router:
    """Routes chunks to workers and tracks each worker's queue head for timeouts."""

    def __init__(self, n_workers: int) -> None:
        self.slots = [WorkerSlot(rank) for rank in range(n_workers)]

    def healthy(self) -> list[WorkerSlot]:
        return [s for s in self.slots if s.health is Health.HEALTHY]

    def pick(self) -> WorkerSlot | None:
        """The healthy worker with the least outstanding work (lowest rank on ties), or None."""
        candidates = self.healthy()
        return min(candidates, key=lambda s: (s.outstanding_rows, s.rank)) if candidates else None

    def assign(self, slot: WorkerSlot, chunk_id: int, rows: int) -> None:
        if not slot.queue:
            slot.head_since = time.monotonic()
        slot.queue.append(chunk_id)
        slot.outstanding_rows += rows

    def release(self, slot: WorkerSlot, chunk_id: int, rows: int) -> bool:
        """Remove a chunk from the worker's queue; returns True when it was the head (the next
        chunk starts now)."""
        if chunk_id not in slot.queue:
            return False
        was_head = slot.queue[0] == chunk_id
        slot.queue.remove(chunk_id)
        slot.outstanding_rows -= rows
        if was_head:
            slot.head_since = time.monotonic() if slot.queue else None
        return was_head

    def overdue(self, timeout_s: float | None) -> list[WorkerSlot]:
        """Healthy workers whose head chunk has run longer than ``timeout_s``."""
        if timeout_s is None:
            return []
        now = time.monotonic()
        return [
            s
            for s in self.healthy()
            if s.queue and s.head_since is not None and now - s.head_since > timeout_s
        ]

    def next_deadline(self, timeout_s: float | None) -> float | None:
        """Seconds until the earliest head chunk times out (None without a timeout or work)."""
        if timeout_s is None:
            return None
        heads = [s.head_since for s in self.healthy() if s.queue and s.head_since is not None]
        return max(0.0, min(heads) + timeout_s - time.monotonic()) if heads else None

    def drain(self, slot: WorkerSlot) -> list[int]:
        """Take every chunk off a worker (it timed out or died); returns their ids in order."""
        chunk_ids = list(slot.queue)
        slot.queue.clear()
        slot.outstanding_rows, slot.head_since = 0, None
        return chunk_ids

    def load(self) -> dict[int, int]:
        return {s.rank: s.outstanding_rows for s in self.slots}
