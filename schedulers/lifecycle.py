"""Every sample's life, committed by sample id: queued → generating → rewarding → ready → done,
or aborted / failed with a reason.

The ledger is the scheduler's single source of truth for accounting. Transitions are keyed by
sample id and idempotent: once a sample is terminal, a late or repeated result for it (Ray may run
a retried task twice; a timed-out chunk may still finish) is ignored and counted, never applied.
A transition the lifecycle does not allow between live states is a scheduler bug and raises.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from dataclasses import dataclass, field


class SampleState(enum.Enum):
    QUEUED = "queued"  # waiting for a rollout worker (or behind another chunk on it)
    GENERATING = "generating"  # at the head of a rollout worker's queue
    REWARDING = "rewarding"  # generated; reward worker scoring it
    READY = "ready"  # scored; waiting to be put in a training batch (async carries these over)
    DONE = "done"  # in a training batch
    ABORTED = "aborted"  # dropped on purpose: zero-variance group, batch full, stale, surplus
    FAILED = "failed"  # could not be produced: worker lost past its restarts, too many attempts

    @property
    def terminal(self) -> bool:
        return self._name_ in _TERMINAL_NAMES  # by name: an Enum's own __hash__ is Python code


TERMINAL = frozenset({SampleState.DONE, SampleState.ABORTED, SampleState.FAILED})
_TERMINAL_NAMES = frozenset(s.name for s in TERMINAL)
LIVE = [SampleState.QUEUED, SampleState.GENERATING, SampleState.REWARDING, SampleState.READY]

# live state -> live states it may move to (terminal states are reachable from every live state,
# except DONE, which only READY reaches); QUEUED again = a retry after a lost worker or a timeout
_NEXT = {
    SampleState.QUEUED: {SampleState.QUEUED, SampleState.GENERATING},
    SampleState.GENERATING: {SampleState.QUEUED, SampleState.REWARDING},
    SampleState.REWARDING: {SampleState.QUEUED, SampleState.READY},
    SampleState.READY: {SampleState.DONE},
}


class LifecycleError(RuntimeError):
    """A transition the lifecycle forbids (a scheduler bug, not a worker fault)."""


@dataclass
class SampleRecord:
    sample_id: str
    state: SampleState = SampleState.QUEUED
    reason: str = ""
    attempts: int = 1
    since: float = field(default_factory=time.monotonic)
    seconds: Counter = field(default_factory=Counter)  # time spent per live state


class SampleLedger:
    """Sample id → state, with per-state counts, reasons and the time spent in each stage."""

    def __init__(self) -> None:
        self.records: dict[str, SampleRecord] = {}
        self.duplicates_ignored = 0
        self.created = 0
        self.terminal_counts: Counter = Counter()  # state -> samples that ended there (all time)
        self.reasons: Counter = Counter()  # "aborted:stale" -> samples (all time)

    def add(self, sample_ids: list[str]) -> None:
        for sid in sample_ids:
            if sid in self.records:
                raise LifecycleError(f"sample id {sid!r} was created twice; ids must be unique")
            self.records[sid] = SampleRecord(sid)
            self.created += 1

    def move(self, sample_ids: list[str], state: SampleState, reason: str = "") -> int:
        """Move each sample to ``state``; returns how many moved (terminal ones are skipped)."""
        moved, now = 0, time.monotonic()
        for sid in sample_ids:
            rec = self.records[sid]
            if rec.state.terminal:
                self.duplicates_ignored += 1
                continue
            if not state.terminal and state not in _NEXT[rec.state]:
                raise LifecycleError(f"sample {sid}: {rec.state.value} -> {state.value} is not allowed")
            if state is SampleState.DONE and rec.state is not SampleState.READY:
                raise LifecycleError(f"sample {sid}: only a ready sample can be done ({rec.state.value})")
            rec.seconds[rec.state._value_] += now - rec.since
            if state is SampleState.QUEUED and rec.state is not SampleState.QUEUED:
                rec.attempts += 1
            rec.state, rec.since = state, now
            if state.terminal:
                rec.reason = reason
                self.terminal_counts[state] += 1
                self.reasons[f"{state.value}:{reason}"] += 1
            moved += 1
        return moved

    def state(self, sample_id: str) -> SampleState:
        return self.records[sample_id].state

    def stage_seconds(self, sample_ids: list[str]) -> dict[str, float]:
        """Mean seconds these samples spent queued, generating, rewarding and ready."""
        if not sample_ids:
            return {}
        total: Counter = Counter()
        for sid in sample_ids:
            total.update(self.records[sid].seconds)
        return {s.value: total[s.value] / len(sample_ids) for s in LIVE}

    def counts(self) -> dict[SampleState, int]:
        """Samples per state: live ones as held now, terminal ones over the ledger's life."""
        live = Counter(rec.state for rec in self.records.values() if not rec.state.terminal)
        return {
            state: self.terminal_counts[state] if state.terminal else live[state] for state in SampleState
        }

    def check(self) -> None:
        """Counts add up: every sample ever created is live or in exactly one terminal state."""
        counts = self.counts()
        if sum(counts.values()) != self.created:
            raise LifecycleError(f"state counts {counts} do not add up to {self.created} created samples")
        held = Counter(rec.state for rec in self.records.values() if rec.state.terminal)
        for state, n in held.items():
            if n > self.terminal_counts[state]:
                raise LifecycleError(f"{n} samples are {state.value}, more than recorded transitions")

    def forget_terminal(self) -> None:
        """Drop finished records (their counts stay); bounds memory over long runs."""
        self.records = {sid: r for sid, r in self.records.items() if not r.state.terminal}
