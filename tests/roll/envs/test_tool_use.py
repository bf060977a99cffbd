"""The tool-use task: the safe calculator, the city lookup, answers, format errors, the script."""

from __future__ import annotations

import time

import pytest

from roll.envs import EnvConfig, make_env, run_episode, scripted_agent
from roll.envs.calculator import CalculatorError, calculate, format_number
from roll.envs.cities import CITIES, lookup
from roll.envs.tool_use import ToolUse, ToolUseParams


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("3*4", 12),
        ("184,200 / 61.4", 3000.0),
        ("2^10 - (3 + -1) % 5", 1022),
        ("7 // 2 + 0.5", 3.5),
        ("1e3 × 2 ÷ 4", 500.0),
    ],
)
def test_calculator_computes_arithmetic(expression: str, value: float) -> None:
    assert calculate(expression) == pytest.approx(value)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os')", "Call is not allowed"),
        ("__import__('os').system('touch /tmp/pwned')", "not allowed"),
        ("open('/etc/passwd').read()", "not allowed"),
        ("x + 1", "Name is not allowed"),
        ("(1).__class__", "Attribute is not allowed"),
        ("[1, 2][0]", "not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("'a' * 3", "Constant is not allowed"),
        ("True + 1", "Constant is not allowed"),
        ("9**9**9", "exponents above 100"),
        ("10**99 * 10**99", "exceeds"),
        ("1/0", "division by zero"),
        ("(-8) ** 0.5", "not a real number"),
        ("1; import os", "not an arithmetic expression"),
        ("1" + "+1" * 200, "longer than 200"),
        ("-" * 100 + "1", "nested too deeply"),
    ],
)
def test_calculator_refuses_everything_else(expression: str, reason: str) -> None:
    started = time.monotonic()
    with pytest.raises(CalculatorError, match=reason):
        calculate(expression)
    assert time.monotonic() - started < 1.0


def test_format_number() -> None:
    assert [format_number(v) for v in (12, 3000.0, 1 / 3, -2.5)] == ["12", "3000", "0.3333333333", "-2.5"]


def test_lookup_returns_the_matching_facts() -> None:
    assert lookup("Varnhold population") == "Varnhold has a population of 184,200 people."
    assert lookup("what is the area of hollowfen") == "Hollowfen covers an area of 9.7 square kilometres."
    assert lookup("Kestrel Bay").count("Kestrel Bay") == 5  # the whole article
    assert lookup("Atlantis population").startswith("No document matches")


def tool_env(seed: int = 0, **params) -> tuple[ToolUse, str]:
    env = ToolUse(ToolUseParams(**params), max_turns=10)
    return env, env.reset(seed)


def test_question_and_tools_are_explained() -> None:
    env, observation = tool_env(questions=["density"])
    assert "<tool>lookup:" in observation and "<tool>calculator:" in observation and "<answer>" in observation
    assert observation.splitlines()[-1].startswith("Question: What is the population density of ")


def test_tool_calls_come_back_as_the_next_observation() -> None:
    env, _ = tool_env()
    result = env.step(
        "Let me look. <tool>lookup: Talbrook area</tool>\n<tool>calculator: 311400 / 104.2</tool>"
        "<tool>calculator: __import__('os')</tool>"
    )
    assert (result.reward, result.done, result.info) == (0.0, False, {"tool_calls": 3})
    lines = result.observation.splitlines()
    assert lines[0] == "[lookup: Talbrook area] Talbrook covers an area of 104.2 square kilometres."
    assert lines[1] == "[calculator: 311400 / 104.2] = 2988.483685"
    assert lines[2].startswith("[calculator: __import__('os')] error: Call is not allowed")


def test_only_max_calls_per_turn_run() -> None:
    env, _ = tool_env(max_calls_per_turn=2)
    result = env.step("<tool>calculator: 1+1</tool>" * 5)
    assert result.observation.count("= 2") == 2


@pytest.mark.parametrize("kind", ["density", "population_gap", "combined_area", "founding_gap"])
def test_answers_are_scored_with_a_numeric_tolerance(kind: str) -> None:
    env, _ = tool_env(seed=4, questions=[kind])
    truth = env.question.answer
    assert env.step(f"<answer>{truth:,.1f}</answer>").reward == 1.0  # rounding to 1 decimal is fine
    env.reset(4)
    wrong = env.step(f"The answer is <answer>{truth * 1.1 + 1:.2f}</answer>")
    assert (wrong.reward, wrong.terminated, wrong.info["outcome"]) == (0.0, True, "wrong")


def test_density_answer_for_a_known_city() -> None:
    env = ToolUse(ToolUseParams(questions=["density"]))
    for seed in range(40):
        observation = env.reset(seed)
        if "Varnhold" in observation:
            assert env.question.answer == pytest.approx(184_200 / 61.4)
            return
    pytest.fail("no seed below 40 asks about Varnhold")


def test_format_errors_are_invalid() -> None:
    env, _ = tool_env(invalid_penalty=-0.3, max_invalid=3)
    for reply in (
        "I think it is about three thousand",
        "<tool>search: Varnhold</tool>",
        "<answer>many</answer>",
    ):
        result = env.step(reply)
        assert result.reward == -0.3 and result.info["invalid"] and "Invalid reply" in result.observation
    assert result.terminated and result.info["outcome"] == "invalid_limit"


def test_questions_are_deterministic_per_seed_and_varied() -> None:
    env = make_env(EnvConfig(name="tool_use"))
    assert env.reset(seed=2) == env.reset(seed=2)
    assert len({env.reset(seed=s) for s in range(20)}) > 10
    assert len(CITIES) >= 10


def test_scripted_agent_answers_20_seeds() -> None:
    env = make_env(EnvConfig(name="tool_use", max_turns=6))
    for seed in range(20):
        trajectory = run_episode(env, scripted_agent("tool_use"), seed)
        assert (trajectory.outcome, trajectory.total_return) == ("correct", 1.0), seed
        calculator, answer = (turn.action for turn in trajectory.turns[-2:])
        assert calculator.startswith("<tool>calculator: ") and answer.startswith("<answer>")
