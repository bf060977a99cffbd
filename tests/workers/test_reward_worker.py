"""RewardWorker group on a real local Ray: two workers split a batch by data-parallel rank, route each
row to its domain's terms, and isolate raising and hung reward functions (no crash, errors returned)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from roll.controller import Batch, WorkerGroup
from roll.rewards import RewardConfig
from workers.reward import RewardWorker

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "roll" / "rewards"  # hostile_reward_plugin.py
CONFIG = {
    "functions": [{"name": "exact_match"}],
    "domains": {
        "math": [
            {"name": "math_verify"},
            {"name": "format", "weight": 0.5, "params": {"pattern": r".*\\boxed.*"}},
        ],
        "flaky": [{"name": "test_sleeps", "timeout_s": 1.0}, {"name": "test_raises", "weight": 2.0}],
    },
}
# Rank 0 gets rows 0-3, rank 1 rows 4-7: each rank sees several domains, a hang or a raise.
TEXTS = ["\\boxed{\\frac{3}{4}}", "ok", "The answer is 9**9**9**9", "hi", "bad", "#### 1,000", "yo", "x"]
ROWS = [
    {"tag": "math", "answer": "0.75"},  # 1 + 0.5
    {"tag": "flaky", "sleep": 30},  # test_sleeps killed at 1 s -> 0; test_raises 2
    {"tag": "math", "answer": "1"},  # refused at once -> 0
    {"answer": "hi"},  # default domain: exact match 1
    {"tag": "flaky", "sleep": 0},  # test_sleeps 1; test_raises raises -> 0
    {"tag": "math", "answer": "1000"},  # 1, unboxed
    {"tag": "essay", "answer": "yo"},  # unknown domain -> default: 1
    {"tag": "math"},  # no answer field: error, 0
]


@pytest.fixture(scope="module")
def rewards() -> Iterator[WorkerGroup]:
    paths = [str(Path(__file__).resolve().parents[2]), str(PLUGIN_DIR)]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join(paths))
        env.syspath_prepend(str(PLUGIN_DIR))
        import hostile_reward_plugin  # noqa: F401  (the driver validates the config: names must be known)

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    group = WorkerGroup(
        RewardWorker,
        role="reward",
        actor_options=[{"num_cpus": 0.25}] * 2,
        init_kwargs={"reward": RewardConfig.model_validate(CONFIG), "imports": ["hostile_reward_plugin"]},
    )
    yield group
    group.kill()
    ray.shutdown()


def test_two_workers_route_and_isolate_failures(rewards: WorkerGroup) -> None:
    batch = Batch.from_dict(non_tensors={"response_text": TEXTS, "row": ROWS})
    start = time.monotonic()
    out = rewards.compute_rewards(batch)
    assert time.monotonic() - start < 15.0  # the 30 s sleep was abandoned
    t = out.tensors
    assert t["rewards"].tolist() == [1.5, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert t["reward/math_verify"].tolist() == [1.0, 0, 0, 0, 0, 1.0, 0, 0]
    assert t["reward/format"].tolist() == [1.0, 0, 0, 0, 0, 0, 0, 0]
    assert t["reward/test_sleeps"].tolist() == [0, 0, 0, 0, 1.0, 0, 0, 0]
    assert t["reward/test_raises"].tolist() == [0, 1.0, 0, 0, 0, 0, 0, 0]
    assert t["reward/exact_match"].tolist() == [0, 0, 0, 1.0, 0, 0, 1.0, 0]
    errors = out.non_tensors["reward_error"]
    assert errors[1] == "test_sleeps: RewardTimeout: timed out after 1 s (reward process killed); "
    assert errors[4] == "test_raises: ValueError: cannot score a bad sample; "
    assert errors[7].startswith("math_verify: DataError: math_verify: the row has no 'answer' field")
    assert [errors[i] for i in (0, 2, 3, 5, 6)] == [""] * 5


def test_workers_keep_scoring_after_a_kill(rewards: WorkerGroup) -> None:
    batch = Batch.from_dict(
        non_tensors={"response_text": [TEXTS[0], "ok"] * 2, "row": [ROWS[0], ROWS[4]] * 2}
    )
    out = rewards.compute_rewards(batch)
    assert out.tensors["rewards"].tolist() == [1.5, 3.0, 1.5, 3.0]
    assert out.non_tensors["reward_error"] == [""] * 4
