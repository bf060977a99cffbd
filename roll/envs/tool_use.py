"""A tool-use task: answer a question about fictional cities with a calculator and a document lookup.

The first observation states the tools and the question, e.g.::

    Question: What is the population density of Varnhold in people per square kilometre?

Each reply either calls tools, one ``<tool>name: argument</tool>`` per call (the first
``max_calls_per_turn`` calls of a reply run)::

    <tool>lookup: Varnhold population</tool>
    <tool>calculator: 184200 / 61.4</tool>

and gets the results as the next observation::

    [lookup: Varnhold population] Varnhold has a population of 184,200 people.
    [calculator: 184200 / 61.4] = 3000

or ends the episode with ``<answer>3000</answer>``: reward 1 when the first number in it is within
``rel_tol``/``abs_tol`` of the true value, else 0 (``info["outcome"]`` is ``correct`` or ``wrong``).
A reply with neither an answer with a number nor a well-formed call of a known tool is invalid
(reward ``invalid_penalty``, ``info["invalid"]``); after ``max_invalid`` of them the episode ends.
A tool that fails (a calculator refusal, a lookup that finds nothing) is not invalid: its error
text is the result. The calculator never evaluates code (see :mod:`roll.envs.calculator`).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Generator
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from roll.config.base import ConfigBase
from roll.envs.base import StepResult, find_tags, register_env
from roll.envs.calculator import CalculatorError, calculate, format_number
from roll.envs.cities import CITIES, lookup

QuestionKind = Literal["density", "population_gap", "combined_area", "founding_gap"]
TEMPLATES: dict[str, str] = {
    "density": "What is the population density of {a} in people per square kilometre?",
    "population_gap": "How many more people live in {a} than in {b}?",
    "combined_area": "What is the combined area of {a} and {b} in square kilometres?",
    "founding_gap": "How many years passed between the founding of {a} and the founding of {b}?",
}
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


class ToolUseParams(ConfigBase):
    """Parameters of ``tool_use``."""

    questions: list[QuestionKind] = Field(
        default_factory=lambda: list(TEMPLATES),
        min_length=1,
        description="Question kinds drawn from (uniformly, by the seed).",
    )
    rel_tol: float = Field(1e-3, ge=0, description="Relative tolerance of a correct numeric answer.")
    abs_tol: float = Field(0.05, ge=0, description="Absolute tolerance of a correct numeric answer.")
    max_calls_per_turn: int = Field(
        4, ge=1, le=16, description="Tool calls run per reply; extra calls are skipped."
    )
    invalid_penalty: float = Field(
        -0.1, description="Reward for a reply with no answer and no well-formed tool call."
    )
    max_invalid: int | None = Field(
        None, ge=1, description="End the episode after this many invalid replies; null: never."
    )


@dataclass(frozen=True)
class Question:
    kind: str
    text: str
    answer: float


def make_question(kind: str, rng: random.Random) -> Question:
    """A question of ``kind`` about cities drawn with ``rng``, and its exact answer."""
    a, b = rng.sample(CITIES, 2)
    if kind == "density":
        return Question(kind, TEMPLATES[kind].format(a=a.name), a.population / a.area_km2)
    if kind == "population_gap":
        a, b = sorted((a, b), key=lambda city: -city.population)
        return Question(kind, TEMPLATES[kind].format(a=a.name, b=b.name), float(a.population - b.population))
    if kind == "combined_area":
        return Question(kind, TEMPLATES[kind].format(a=a.name, b=b.name), round(a.area_km2 + b.area_km2, 6))
    if kind == "founding_gap":
        a, b = sorted((a, b), key=lambda city: city.founded)
        return Question(kind, TEMPLATES[kind].format(a=a.name, b=b.name), float(b.founded - a.founded))
    raise ValueError(f"unknown question kind {kind!r}; known: {', '.join(TEMPLATES)}")


def first_number(text: str) -> float | None:
    found = _NUMBER.search(text)
    return float(found.group().replace(",", "")) if found else None


def run_tool(call: str) -> str | None:
    """The result line of one ``name: argument`` call; ``None`` when the call is malformed."""
    name, colon, argument = call.partition(":")
    name, argument = name.strip().lower(), argument.strip()
    if not colon or not argument:
        return None
    if name == "calculator":
        try:
            return f"[calculator: {argument}] = {format_number(calculate(argument))}"
        except CalculatorError as exc:
            return f"[calculator: {argument}] error: {exc}"
    if name == "lookup":
        return f"[lookup: {argument}] {lookup(argument)}"
    return None


@register_env("tool_use", params=ToolUseParams)
class ToolUse:
    """The calculator + lookup question task (see the module docstring)."""

    def __init__(self, params: ToolUseParams | None = None, *, max_turns: int = 20) -> None:
        self.params = params or ToolUseParams()
        self.max_turns = max_turns
        self.question = Question("", "", 0.0)
        self.invalid = 0

    def reset(self, seed: int) -> str:
        rng = random.Random(seed)
        self.question = make_question(rng.choice(self.params.questions), rng)
        self.invalid = 0
        return (
            "Answer the question about fictional cities using tools. Call a tool with "
            "<tool>lookup: CITY FACT</tool> to search the city documents (facts: country, river, "
            "founded, population, area, elevation) or <tool>calculator: EXPRESSION</tool> for "
            "arithmetic (numbers, + - * / // % ** and parentheses). Tool results come back as the next "
            "message. When you know the answer, reply <answer>NUMBER</answer>.\n"
            f"Question: {self.question.text}"
        )

    def step(self, action_text: str) -> StepResult:
        p, q = self.params, self.question
        answers = [
            value for value in map(first_number, find_tags(action_text, "answer")) if value is not None
        ]
        if answers:
            correct = math.isclose(answers[-1], q.answer, rel_tol=p.rel_tol, abs_tol=p.abs_tol)
            verdict = "correct" if correct else "wrong"
            info = {"outcome": verdict, "answer": answers[-1], "expected": q.answer}
            text = f"Your answer {format_number(answers[-1])} is {verdict}."
            return StepResult(text, float(correct), True, False, info)
        calls = find_tags(action_text, "tool")[: p.max_calls_per_turn]
        results = [run_tool(call) for call in calls]
        lines = [
            result
            if result is not None
            else f"[{call}] error: not a call of the form 'calculator: ...' or 'lookup: ...'"
            for call, result in zip(calls, results, strict=True)
        ]
        ran = sum(result is not None for result in results)
        if ran:
            return StepResult("\n".join(lines), 0.0, False, False, {"tool_calls": ran})
        self.invalid += 1
        over = p.max_invalid is not None and self.invalid >= p.max_invalid
        info = {"invalid": True, **({"outcome": "invalid_limit"} if over else {})}
        hint = (
            "Invalid reply: call <tool>lookup: ...</tool> or <tool>calculator: ...</tool>, "
            "or give <answer>NUMBER</answer>."
        )
        return StepResult("\n".join([*lines, hint]), p.invalid_penalty, over, False, info)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- scripted agent
_QUESTION_PATTERNS = {
    kind: re.compile(re.escape(text).replace(r"\{a\}", "(?P<a>.+?)").replace(r"\{b\}", "(?P<b>.+?)"))
    for kind, text in TEMPLATES.items()
}
_FACT_PATTERNS = {
    "population": re.compile(r"population of ([\d,]+)"),
    "area": re.compile(r"area of ([\d.]+)"),
    "founded": re.compile(r"founded in (\d+)"),
}
_CALC_RESULT = re.compile(r"\] = (\S+)\s*$", re.MULTILINE)


class ToolUseAgent:
    """Scripted agent: recognises the question, looks up the facts, computes, answers.

    It reads only observation text (like a policy would): facts from lookup results, the value from
    the calculator's result line.
    """

    def __init__(self) -> None:
        self._script: Generator[str, str, None] | None = None

    def reset(self, seed: int) -> None:
        self._script = None

    def act(self, observation: str) -> str:
        try:
            if self._script is None:
                self._script = _script(observation)
                return next(self._script)
            return self._script.send(observation)
        except (StopIteration, LookupError, ValueError):
            return "<answer>0</answer>"


def _script(observation: str) -> Generator[str, str, None]:
    kind, cities = _parse_question(observation)

    def fact(city: str, name: str) -> Generator[str, str, float]:
        result = yield f"<tool>lookup: {city} {name}</tool>"
        return float(_FACT_PATTERNS[name].search(result).group(1).replace(",", ""))  # type: ignore[union-attr]

    if kind == "density":
        population = yield from fact(cities["a"], "population")
        area = yield from fact(cities["a"], "area")
        expression = f"{format_number(population)} / {format_number(area)}"
    else:
        name = {"population_gap": "population", "combined_area": "area", "founding_gap": "founded"}[kind]
        a = yield from fact(cities["a"], name)
        b = yield from fact(cities["b"], name)
        high, low = format_number(max(a, b)), format_number(min(a, b))
        expression = f"{high} + {low}" if kind == "combined_area" else f"{high} - {low}"
    result = yield f"<tool>calculator: {expression}</tool>"
    yield f"<answer>{_CALC_RESULT.search(result).group(1)}</answer>"  # type: ignore[union-attr]


def _parse_question(observation: str) -> tuple[str, dict[str, str]]:
    line = next(row for row in observation.splitlines() if row.startswith("Question: "))
    for kind, pattern in _QUESTION_PATTERNS.items():
        found = pattern.fullmatch(line.removeprefix("Question: "))
        if found:
            return kind, found.groupdict()
    raise ValueError(f"unrecognised question {line!r}")
