"""A test environment that raises (or misbehaves) where its params say: ``test_faulty``."""

from __future__ import annotations

from pydantic import Field

from roll.config.base import ConfigBase
from roll.envs import StepResult, register_env


class FaultyParams(ConfigBase):
    """Parameters of the test env ``test_faulty``."""

    fail_in: str = Field("step", description="Where to raise: init, reset, step, close or return.")
    fail_at: int = Field(1, description="The step (0-based) that fails.")


@register_env("test_faulty", params=FaultyParams)
class FaultyEnv:
    """Counts turns; raises (or returns garbage) where its params say."""

    def __init__(self, params: FaultyParams, *, max_turns: int) -> None:
        if params.fail_in == "init":
            raise RuntimeError("cannot build")
        self.params, self.max_turns, self.turn, self.closed = params, max_turns, 0, False

    def reset(self, seed: int) -> str:
        if self.params.fail_in == "reset":
            raise RuntimeError("cannot reset")
        self.turn = 0
        return f"seed {seed}"

    def step(self, action_text: str):
        if self.turn == self.params.fail_at and self.params.fail_in == "step":
            raise ZeroDivisionError("env bug")
        if self.turn == self.params.fail_at and self.params.fail_in == "return":
            return ("not", "a", "StepResult")
        self.turn += 1
        return StepResult(f"turn {self.turn}", reward=0.5)

    def close(self) -> None:
        self.closed = True
        if self.params.fail_in == "close":
            raise OSError("close failed")
