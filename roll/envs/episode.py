"""``Episode``: one trajectory of one environment, with the rules every environment shares.

- the turn limit: the step that reaches ``env.max_turns`` actions is truncated
  (``info["outcome"] = "turn_limit"``) unless it terminated;
- exception isolation: an environment that raises (in its constructor, ``reset`` or ``step``) or
  returns something other than a ``StepResult`` ends the trajectory with reward 0,
  ``truncated=True``, ``info["outcome"] = "error"`` and ``info["error"]`` naming the exception;
- results by turn: stepping turn ``t`` again returns the stored result instead of stepping twice,
  so a retried call is idempotent.

The environment worker's pool keeps one ``Episode`` per trajectory id; ``run_episode`` uses one too,
so both follow exactly the same rules.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

from roll.envs.base import StepResult, TextEnv


def error_result(exc: BaseException, where: str) -> StepResult:
    """The result that ends a trajectory whose environment failed."""
    return StepResult(
        observation="",
        reward=0.0,
        terminated=False,
        truncated=True,
        info={"outcome": "error", "error": f"{type(exc).__name__} in {where}: {exc}"},
    )


def _checked(result: object) -> StepResult:
    """A plain-typed copy of an env's step result (numpy floats, tuples ... become builtins)."""
    if not isinstance(result, StepResult):
        raise TypeError(f"step() returned {type(result).__name__}, not a StepResult")
    return StepResult(
        observation=str(result.observation),
        reward=float(result.reward),
        terminated=bool(result.terminated),
        truncated=bool(result.truncated),
        info=dict(result.info),
    )


class Episode:
    """One trajectory: reset on construction, then ``step(turn, action_text)`` once per turn.

    Args:
        env_factory: builds the environment (called once, inside the error isolation).
        seed: the reset seed.
        close_when_done: close the environment when the episode ends (set ``False`` when the
            caller owns the env and reuses it).

    Attributes:
        first: the reset result (the first observation, reward 0; ``done`` if reset failed).
        results: the result of each turn so far; ``results[t]`` answers turn ``t``.
    """

    def __init__(
        self, env_factory: Callable[[], TextEnv], seed: int, *, close_when_done: bool = True
    ) -> None:
        self.seed = seed
        self.results: list[StepResult] = []
        self.max_turns = 0
        self._close_when_done = close_when_done
        self._lock = threading.Lock()
        self._env: TextEnv | None = None
        try:
            self._env = env_factory()
            self.max_turns = int(self._env.max_turns)
            self.first = StepResult(observation=str(self._env.reset(seed)))
        except Exception as exc:  # noqa: BLE001 — a broken env ends its trajectory, not the worker
            self.first = error_result(exc, "reset")
            self._release_env()

    @property
    def turns(self) -> int:
        """Actions taken so far."""
        return len(self.results)

    @property
    def last(self) -> StepResult:
        """The latest result (the reset result before the first step)."""
        return self.results[-1] if self.results else self.first

    @property
    def done(self) -> bool:
        return self.last.done

    @property
    def total_return(self) -> float:
        """The sum of the step rewards."""
        return float(sum(result.reward for result in self.results))

    @property
    def end_reason(self) -> str:
        """``"running"``, ``"terminated"``, ``"truncated"`` or ``"error"``."""
        last = self.last
        if "error" in last.info:
            return "error"
        if last.terminated:
            return "terminated"
        return "truncated" if last.truncated else "running"

    def step(self, turn: int, action_text: str) -> tuple[StepResult, bool]:
        """Play turn ``turn`` (0-based) with ``action_text``.

        Returns:
            ``(result, replayed)``: ``replayed`` is True when turn ``turn`` had already been played
            and its stored result is returned (the environment is not stepped again).

        Raises:
            ValueError: ``turn`` skips ahead of the next turn, or the episode is already over.
        """
        with self._lock:
            if self.check_turn(turn):
                return self.results[turn], True
            assert self._env is not None
            try:
                result = _checked(self._env.step(action_text))
            except Exception as exc:  # noqa: BLE001 — see the module docstring
                result = error_result(exc, f"step {turn}")
            if not result.done and len(self.results) + 1 >= self.max_turns:
                result = replace(result, truncated=True, info={**result.info, "outcome": "turn_limit"})
            self.results.append(result)
            if result.done:
                self._release_env()
            return result, False

    def check_turn(self, turn: int) -> bool:
        """True when ``turn`` was already played (a replay), False when it is the next turn.

        Raises:
            ValueError: ``turn`` skips ahead of the next turn, or the episode is already over.
        """
        if 0 <= turn < len(self.results):
            return True
        if turn != len(self.results):
            raise ValueError(
                f"turn {turn} is out of order: the trajectory has played {len(self.results)} "
                f"turns, so the next turn is {len(self.results)}"
            )
        if self.done:
            raise ValueError(
                f"the trajectory ended after {len(self.results)} turns "
                f"({self.last.info.get('outcome', self.end_reason)}); stop stepping it"
            )
        return False

    def close(self) -> None:
        """Close the environment now (if this episode owns it)."""
        with self._lock:
            self._release_env()

    def _release_env(self) -> None:
        env, self._env = self._env, None
        if env is not None and self._close_when_done:
            try:
                env.close()
            except Exception:  # noqa: BLE001 — closing a finished env must not fail the step
                pass
