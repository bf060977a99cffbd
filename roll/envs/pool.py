"""``EnvPool``: many trajectories played side by side in a thread pool, keyed by trajectory id.

The environment worker holds one pool. Each trajectory is an :class:`~roll.envs.episode.Episode`
(turn limit, exception isolation, results by turn). Calls are idempotent: resetting a known
trajectory id with the same seed and config, or stepping a turn that was already played, returns
the stored result (``status == "replayed"``) instead of playing it again, so a retried call cannot
advance an environment twice. A step for an unknown id (released, or the worker was restarted and
lost its state) answers ``status == "lost"`` with ``done`` set: the caller reruns that trajectory.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from roll.envs.base import EnvConfig, StepResult, make_env
from roll.envs.episode import Episode

Status = Literal["ok", "replayed", "lost"]


@dataclass(frozen=True)
class ResetRequest:
    """Start trajectory ``traj_id`` of task ``task_id``: ``cfg``'s environment reset with ``seed``."""

    traj_id: str
    task_id: Hashable
    seed: int
    cfg: EnvConfig


@dataclass(frozen=True)
class StepRequest:
    """Play turn ``turn`` (0-based: the number of actions already played) of ``traj_id``."""

    traj_id: str
    turn: int
    action_text: str


@dataclass(frozen=True)
class EnvReply:
    """One trajectory's answer to a reset or step.

    Attributes:
        traj_id: the trajectory.
        turns: actions played once this result holds (0 after a reset).
        result: the observation, reward, flags and info of this reset or step.
        status: ``"ok"`` (played now), ``"replayed"`` (played before; the stored result), or
            ``"lost"`` (the pool has no such trajectory; rerun it from a reset).
    """

    traj_id: str
    turns: int
    result: StepResult
    status: Status


@dataclass
class _Slot:
    request: ResetRequest
    episode: Episode


class EnvPool:
    """Trajectories by id, reset and stepped on ``threads`` threads."""

    def __init__(self, threads: int = 8) -> None:
        if threads < 1:
            raise ValueError(f"EnvPool needs at least one thread, got {threads}")
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="env")
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._counts = {"resets": 0, "steps": 0, "replayed": 0, "lost": 0, "errors": 0}

    def reset(self, requests: list[ResetRequest]) -> list[EnvReply]:
        """Start each trajectory (replaying the first observation of ones already started).

        Raises:
            ValueError: an id appears twice in ``requests``, or names a trajectory started with a
                different seed or config (ids must be unique per trajectory).
        """
        _check_unique([r.traj_id for r in requests], "reset")
        with self._lock:
            for request in requests:
                slot = self._slots.get(request.traj_id)
                if slot is not None and (slot.request.seed, slot.request.cfg) != (request.seed, request.cfg):
                    raise ValueError(
                        f"trajectory {request.traj_id!r} was started with seed {slot.request.seed} and "
                        f"env {slot.request.cfg.name!r}; give every trajectory a fresh id"
                    )
        return list(self._executor.map(self._reset_one, requests))

    def step(self, requests: list[StepRequest]) -> list[EnvReply]:
        """Play one turn of each trajectory.

        Raises:
            ValueError: an id appears twice, a turn skips ahead, or a finished trajectory is
                stepped; checked for every request before any is played.
        """
        _check_unique([r.traj_id for r in requests], "step")
        with self._lock:
            held = [(self._slots.get(r.traj_id), r) for r in requests]
        for slot, request in held:
            if slot is not None:
                try:
                    slot.episode.check_turn(request.turn)
                except ValueError as exc:
                    raise ValueError(f"trajectory {request.traj_id!r}: {exc}") from None
        return list(self._executor.map(self._step_one, requests))

    def release(self, traj_ids: list[str]) -> int:
        """Forget trajectories (closing unfinished environments); returns how many were held."""
        with self._lock:
            slots = [self._slots.pop(traj_id) for traj_id in traj_ids if traj_id in self._slots]
        for slot in slots:
            slot.episode.close()
        return len(slots)

    def stats(self) -> dict[str, int]:
        """Counts: held ``live`` and ``finished`` trajectories, and calls since the start."""
        with self._lock:
            finished = sum(slot.episode.done for slot in self._slots.values())
            return {"live": len(self._slots) - finished, "finished": finished, **self._counts}

    def close(self) -> None:
        """Release every trajectory and stop the threads."""
        self.release(list(self._slots))
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ one trajectory
    def _reset_one(self, request: ResetRequest) -> EnvReply:
        with self._lock:
            slot = self._slots.get(request.traj_id)
        if slot is not None:
            self._count("replayed")
            return EnvReply(request.traj_id, 0, slot.episode.first, "replayed")
        episode = Episode(lambda: make_env(request.cfg), request.seed)
        with self._lock:
            slot = self._slots.setdefault(request.traj_id, _Slot(request, episode))
        if slot.episode is not episode:  # a concurrent reset of the same id won the race
            episode.close()
            self._count("replayed")
            return EnvReply(request.traj_id, 0, slot.episode.first, "replayed")
        self._count("resets")
        if "error" in slot.episode.first.info:
            self._count("errors")
        return EnvReply(request.traj_id, 0, slot.episode.first, "ok")

    def _step_one(self, request: StepRequest) -> EnvReply:
        with self._lock:
            slot = self._slots.get(request.traj_id)
        if slot is None:
            self._count("lost")
            lost = StepResult("", 0.0, False, True, {"outcome": "lost"})
            return EnvReply(request.traj_id, request.turn, lost, "lost")
        result, replayed = slot.episode.step(request.turn, request.action_text)
        self._count("replayed" if replayed else "steps")
        if not replayed and "error" in result.info:
            self._count("errors")
        return EnvReply(request.traj_id, request.turn + 1, result, "replayed" if replayed else "ok")

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1


def _check_unique(traj_ids: list[str], call: str) -> None:
    if len(set(traj_ids)) != len(traj_ids):
        repeated = sorted({t for t in traj_ids if traj_ids.count(t) > 1})
        raise ValueError(f"{call}: trajectory ids {repeated} appear more than once in one call")
