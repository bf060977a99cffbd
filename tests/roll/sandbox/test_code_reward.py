"""The code_tests reward: code extraction, row formats, pass fractions, and the reward worker path.

(Kept next to the sandbox tests; it mirrors roll/rewards/code.py.)
"""

from __future__ import annotations

import time

import pytest

from roll.controller import Batch
from roll.errors import DataError
from roll.rewards import RewardConfig, get_reward
from roll.rewards.code import code_tests, extract_code
from roll.sandbox import available_isolation
from workers.reward import RewardWorker

ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
ROW = {"tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7", "output": "12"}]}
needs_uid = pytest.mark.skipif(available_isolation() == "rlimits", reason="runs programs; needs root")
LEVEL = {"min_isolation": available_isolation()}


def test_extract_code() -> None:
    assert extract_code(f"Here:\n```python\n{ADD}```\nDone.") == ADD
    two = "```python\nprint(1)\n```\ntext\n```py\nprint(2)\n```\n```text\n3\n```"
    assert extract_code(two) == "print(2)\n"  # the last python block, not the sample output
    assert extract_code("```\nprint(4)\n```") == "print(4)\n"
    assert extract_code("Sure.\n```python\nprint(5)\n") == "print(5)\n"  # cut at max length
    assert extract_code("  print(6)  ") == "print(6)"


@needs_uid
def test_pass_fraction_and_all_or_nothing() -> None:
    assert code_tests(f"```python\n{ADD}```", ROW, **LEVEL) == 1.0
    assert code_tests(ADD, ROW, **LEVEL) == 1.0
    partial = "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n"
    assert code_tests(partial, ROW, **LEVEL) == 0.5
    assert code_tests(partial, ROW, all_or_nothing=True, **LEVEL) == 0.0
    assert code_tests("", ROW, **LEVEL) == 0.0
    call_row = {"fn_name": "add", "tests": '[{"input": [1, 2], "output": 3}, {"input": [2, 2], "output": 5}]'}
    assert code_tests("def add(a, b):\n    return a + b\n", call_row, **LEVEL) == 0.5


@needs_uid
def test_hostile_completion_scores_zero_within_the_timeout() -> None:
    start = time.monotonic()
    assert code_tests("```python\nwhile True: pass\n```", ROW, timeout_s=1.0, **LEVEL) == 0.0
    assert time.monotonic() - start < 3.0


def test_bad_rows_and_params_say_what_to_fix() -> None:
    with pytest.raises(DataError, match="non-empty list"):
        code_tests(ADD, {"tests": []})
    with pytest.raises(DataError, match='"output"'):
        code_tests(ADD, {"tests": [{"input": "1 2"}]})
    with pytest.raises(ValueError, match="min_isolation"):
        code_tests(ADD, ROW, min_isolation="docker")


@needs_uid
def test_reward_worker_scores_through_the_sandbox() -> None:
    cfg = RewardConfig.model_validate(
        {"functions": [{"name": "code_tests", "params": {"timeout_s": 2.0, **LEVEL}}]}
    )
    worker = RewardWorker(0, 1, "reward", reward=cfg, imports=["roll.rewards.code"])
    assert get_reward("code_tests") is code_tests
    batch = Batch.from_dict(
        non_tensors={"response_text": [ADD, "import sys\nsys.exit(0)\n"], "row": [ROW, ROW]}
    )
    out = worker.compute_rewards(batch)
    assert out.tensors["rewards"].tolist() == [1.0, 0.0]
    assert out.non_tensors["reward_error"] == ["", ""]
