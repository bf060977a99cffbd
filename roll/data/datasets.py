"""Prompt datasets chosen by registered name, and the seeded, resumable sampler over them.

Every row is a dict with at least ``id`` (unique str), ``prompt`` (str) and ``answer`` (str);
``tag`` routes it to a reward domain (default "default"). Extra keys pass through to rewards.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field, model_validator

from roll.config.base import ConfigBase
from roll.errors import DataError

REQUIRED_KEYS = ("id", "prompt", "answer")


class ArithmeticConfig(ConfigBase):
    """All problems ``a <op> b`` with 0 <= a, b <= max_operand whose answer is >= 0."""

    max_operand: int = Field(4, ge=1, le=99, description="Largest operand (inclusive).")
    ops: list[Literal["+", "-", "*"]] = Field(["+"], description="Operators to use.")
    template: str = Field("{a} {op} {b} =", description="Prompt text; placeholders {a}, {op}, {b}.")


class DataConfig(ConfigBase):
    """Where prompts come from and how they are ordered."""

    name: Literal["arithmetic", "jsonl"] = Field(
        "arithmetic", description="'arithmetic' generates problems; 'jsonl' reads rows from path."
    )
    path: str | None = Field(None, description="JSONL file for name: jsonl (one object per line).")
    arithmetic: ArithmeticConfig = Field(default_factory=ArithmeticConfig)
    chat_template: bool | None = Field(
        None,
        description="Wrap each prompt in the tokenizer's chat template; null = when it has one.",
    )
    shuffle: bool = Field(True, description="Reshuffle the rows every epoch (seeded).")

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.name == "jsonl" and not self.path:
            raise ValueError("data.path is required when data.name is 'jsonl'; set it to a .jsonl file")
        return self


def arithmetic_rows(cfg: ArithmeticConfig) -> list[dict[str, Any]]:
    ops: dict[str, Callable[[int, int], int]] = {
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
    }
    rows = []
    for op, a, b in itertools.product(cfg.ops, range(cfg.max_operand + 1), range(cfg.max_operand + 1)):
        value = ops[op](a, b)
        if value < 0:
            continue
        rows.append(
            {
                "id": f"{a}{op}{b}",
                "prompt": cfg.template.format(a=a, op=op, b=b),
                "answer": str(value),
                "tag": "math",
            }
        )
    return rows


def jsonl_rows(path: str) -> list[dict[str, Any]]:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data.path {path!r} does not exist; point it at a JSONL file of prompts")
    rows, seen = [], set()
    for line_no, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg}); fix or remove that line") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line_no}: each line must be a JSON object with keys {REQUIRED_KEYS}")
        row.setdefault("id", f"row{line_no}")
        missing = [k for k in REQUIRED_KEYS if k not in row]
        if missing:
            raise DataError(f"{path}:{line_no}: row lacks {missing}; every row needs {list(REQUIRED_KEYS)}")
        row["id"], row["prompt"], row["answer"] = str(row["id"]), str(row["prompt"]), str(row["answer"])
        if row["id"] in seen:
            raise DataError(f"{path}:{line_no}: duplicate id {row['id']!r}; ids must be unique")
        seen.add(row["id"])
        row.setdefault("tag", "default")
        rows.append(row)
    if not rows:
        raise DataError(f"data.path {path!r} has no rows")
    return rows


def load_rows(cfg: DataConfig) -> list[dict[str, Any]]:
    if cfg.name == "arithmetic":
        return arithmetic_rows(cfg.arithmetic)
    return jsonl_rows(cfg.path or "")


class PromptSampler:
    """Yields rows in a seeded order, epoch after epoch; its position is checkpointed."""

    def __init__(self, rows: list[dict[str, Any]], seed: int, shuffle: bool = True) -> None:
        self.rows = rows
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.index = 0
        self._order = self._order_for(0)

    def _order_for(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def next(self, n: int) -> list[dict[str, Any]]:
        out = []
        while len(out) < n:
            if self.index >= len(self._order):
                self.epoch += 1
                self.index = 0
                self._order = self._order_for(self.epoch)
            out.append(self.rows[int(self._order[self.index])])
            self.index += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._order_for(self.epoch)
