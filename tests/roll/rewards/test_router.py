"""Reward routing by row domain, config errors, and isolation of raising / hung reward functions."""

from __future__ import annotations

import time
from collections.abc import Iterator

import hostile_reward_plugin  # noqa: F401  (registers the test_* rewards here; the child imports it by name)
import pytest
from pydantic import ValidationError

from roll.config.loader import load_job_data
from roll.errors import ConfigError
from roll.rewards import RewardConfig
from roll.rewards.router import RewardRouter

PLUGIN = ["hostile_reward_plugin"]


def config(**data) -> RewardConfig:
    return RewardConfig.model_validate(data)


MIXED = config(
    functions=[{"name": "exact_match"}],
    domains={
        "math": [
            {"name": "math_verify"},
            {"name": "format", "weight": 0.5, "params": {"pattern": r".*\\boxed.*"}},
        ],
        "hostile": [
            {"name": "test_sleeps", "timeout_s": 0.5},
            {"name": "test_raises", "weight": 2.0},
            {"name": "exact_match", "weight": 0.25},
        ],
    },
)
TEXTS = ["\\boxed{1/2}", "The answer is 3", "hi", "bad", "ok", "hello", "x"]
ROWS = [
    {"tag": "math", "answer": "0.5"},  # math_verify 1 + 0.5 * format 1
    {"tag": "math", "answer": "4"},  # wrong, unboxed: 0
    {"answer": "hi"},  # no tag: default domain, exact match
    {"tag": "hostile", "answer": "bad", "sleep": 0},  # raises: 1 + 0 + 0.25
    {"tag": "hostile", "answer": "ok", "sleep": 5},  # hangs: 0 + 2 + 0.25
    {"tag": "poetry", "answer": "hello"},  # unknown tag: default domain
    {"tag": "math"},  # math row without an answer: math_verify errors, format 0
]


@pytest.fixture(scope="module")
def router() -> Iterator[RewardRouter]:
    built = RewardRouter(MIXED, PLUGIN)
    yield built
    built.close()


def test_rows_are_routed_to_their_domain_terms(router: RewardRouter) -> None:
    start = time.monotonic()
    out = router.score(TEXTS, ROWS)
    elapsed = time.monotonic() - start
    assert out.totals == [1.5, 0.0, 1.0, 1.25, 2.25, 1.0, 0.0]
    assert out.per_term["math_verify"] == [1.0, 0, 0, 0, 0, 0, 0]
    assert out.per_term["format"] == [1.0, 0, 0, 0, 0, 0, 0]
    assert out.per_term["exact_match"] == [0, 0, 1.0, 1.0, 1.0, 1.0, 0]
    assert out.per_term["test_sleeps"] == [0, 0, 0, 1.0, 0, 0, 0]
    assert out.per_term["test_raises"] == [0, 0, 0, 0, 1.0, 0, 0]
    assert out.domains == ["math", "math", "default", "hostile", "hostile", "default", "math"]
    assert out.errors[:3] == ["", "", ""] and out.errors[5] == ""
    assert out.errors[3] == "test_raises: ValueError: cannot score a bad sample; "
    assert out.errors[4] == "test_sleeps: RewardTimeout: timed out after 0.5 s (reward process killed); "
    assert out.errors[6].startswith("math_verify: DataError: math_verify: the row has no 'answer' field")
    assert elapsed < 4.0  # the 5 s sleep was abandoned at 0.5 s (plus one child restart)


def test_any_split_scores_the_same(router: RewardRouter) -> None:
    whole = router.score(TEXTS[:4] + TEXTS[5:], ROWS[:4] + ROWS[5:])
    parts = [router.score(TEXTS[a:b], ROWS[a:b]) for a, b in ((0, 1), (1, 4), (5, 7))]
    assert whole.totals == [t for p in parts for t in p.totals]
    assert whole.errors == [e for p in parts for e in p.errors]


def test_a_hung_c_call_is_killed_and_the_next_sample_scores() -> None:
    cfg = config(
        functions=[{"name": "test_big_power", "timeout_s": 0.5}, {"name": "test_exits", "timeout_s": 5}]
    )
    router = RewardRouter(cfg, PLUGIN)
    try:
        start = time.monotonic()
        out = router.score(["a", "exit", "b"], [{"base": 9}, {"base": 1}, {"base": 2}])
        assert time.monotonic() - start < 6.0
        assert out.per_term["test_big_power"] == [0.0, 1.0, 1.0]
        assert out.per_term["test_exits"] == [0.5, 0.0, 0.5]
        assert "test_big_power: RewardTimeout: timed out after 0.5 s" in out.errors[0]
        assert "test_exits: reward process died (exit -9" not in out.errors[1]
        assert out.errors[1].startswith("test_exits: reward process died (exit 3)")
        assert out.errors[2] == ""
        assert router.process is not None and router.process.restarts == 3  # start, after kill, after exit
    finally:
        router.close()


def test_non_numbers_are_errors() -> None:
    out = RewardRouter(config(functions=[{"name": "test_nan"}]), PLUGIN).score(["x"], [{}])
    assert out.totals == [0.0] and out.errors == ["test_nan: ValueError: returned nan; "]


def test_unknown_domain_can_be_an_error() -> None:
    cfg = config(domains={"math": [{"name": "math_verify", "timeout_s": None}]}, unknown_domain="error")
    rows = [
        {"tag": "poetry", "answer": "7"},
        {"tag": "math", "answer": "7"},
        {"tag": "default", "answer": "7"},
    ]
    out = RewardRouter(cfg, []).score(["7", "7", "7"], rows)
    assert out.totals == [0.0, 1.0, 1.0]  # "default" is the default domain (exact_match), never unknown
    assert out.errors == ["reward: unknown domain 'poetry' in row['tag']; known: math; ", "", ""]
    assert out.domains == ["default", "math", "default"]


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"domains": {"math": [{"name": "maths_verify"}]}},
            r"reward.domains.math\[0\]: unknown reward function 'maths_verify'; known: .*math_verify",
        ),
        (
            {"functions": [{"name": "math_verify", "params": {"tol": 0.1}}]},
            r"reward.functions\[0\]: bad params for reward 'math_verify' .*'tol'.*accepts: answer_key",
        ),
        ({"domains": {"code": []}}, r"reward.domains.code is empty"),
        ({"domains": {"default": [{"name": "format"}]}}, r"the domain 'default' is reward.functions"),
        ({"functions": [{"name": "exact_match"}, {"name": "exact_match"}]}, r"'exact_match' is listed twice"),
        (
            {"functions": [{"name": "llm_judge", "params": {"model": {}}, "timeout_s": 3}]},
            r"holds a model in the reward worker and cannot run under timeout_s",
        ),
        ({"functions": [{"name": "exact_match", "timeout_s": 0}]}, r"timeout_s must be > 0 or null"),
        (
            {"functions": [{"name": "llm_judge", "params": {"model": {"source": "tiny"}, "template": "hi"}}]},
            r"reward.functions\[0\]: llm_judge: params.template must contain \{response\}",
        ),
    ],
)
def test_bad_reward_config_says_what_to_change(data: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RewardConfig.model_validate(data)


def test_job_yaml_errors_name_the_key() -> None:
    job = {
        "pipeline": "rlvr",
        "reward": {"domains": {"math": [{"name": "math_verify", "params": {"answer": 1}}]}},
    }
    with pytest.raises(ConfigError, match=r"reward.*bad params for reward 'math_verify'"):
        load_job_data(job)
