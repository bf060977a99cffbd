"""math_verify: is the completion's final answer equal to the row's answer, numerically or symbolically?

The answer is found and normalised by :mod:`roll.rewards.math_answer`, then parsed with sympy's
parser (``sympy.parsing.sympy_parser.parse_expr``, ``evaluate=False``). That parser runs Python's
``eval`` on the text it builds, so nothing reaches it unless every token is on an allow-list:
numbers, operators, parentheses, single-letter variables and a few function names (no dots outside
numbers, no underscores, no quotes, no brackets). Hostile sizes are refused before sympy evaluates
anything: at most 400 characters, and a bound on the digits any power can produce (``9**9**9**9``
is refused at once instead of hanging). The registration also sets a 10 s per-sample limit, so the
reward worker runs this function in a killable child process (roll/rewards/isolation.py) as a
second line of defence.

Equality: two numbers are equal when ``|a - b| <= abs_tol + rel_tol * |b|``; a percentage answer
("25%") also matches its fraction (0.25) and its bare number (25); expressions with variables are
equal when ``simplify(a - b) == 0``; comma lists ("1, 2") compare element by element, in order;
answers sympy cannot parse compare as case-folded text without spaces ("(B)", "yes").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from roll.errors import DataError
from roll.rewards.math_answer import MAX_ANSWER_CHARS, Answer, extract_answer, normalise_answer
from roll.rewards.registry import register_reward

MAX_DIGITS = 2000.0  # refuse any power whose value may have more decimal digits than this
_TOKEN = re.compile(r"\s+|\d+(?:\.\d*)?|\.\d+|[A-Za-z]+|\*\*|[-+*/()^,]")
_FUNCTIONS = {"sqrt", "log", "exp", "sin", "cos", "tan"}
_CONSTANTS = {"pi", "oo"}


class UnsafeAnswer(ValueError):
    """The text is not a plain math expression, or its value could be astronomically large."""


@dataclass(frozen=True)
class Verdict:
    """Result of comparing a completion's answer with the reference: equal or not, and why."""

    equal: bool
    predicted: str | None
    reason: str


def check_tokens(text: str) -> None:
    """Raise UnsafeAnswer unless ``text`` is made only of allow-listed tokens (see the module doc)."""
    if len(text) > MAX_ANSWER_CHARS:
        raise UnsafeAnswer(f"answer longer than {MAX_ANSWER_CHARS} characters")
    pos = 0
    for match in _TOKEN.finditer(text):
        if match.start() != pos:
            raise UnsafeAnswer(f"character {text[pos]!r} is not allowed in a math answer")
        word = match.group()
        if word.isalpha() and len(word) > 1 and word not in _FUNCTIONS | _CONSTANTS:
            raise UnsafeAnswer(f"{word!r} is not a known function or a one-letter variable")
        pos = match.end()
    if pos != len(text):
        raise UnsafeAnswer(f"character {text[pos]!r} is not allowed in a math answer")


def digits_bound(expr: Any) -> float:
    """Upper bound on log10 |value| of a numeric sympy tree; raise UnsafeAnswer past MAX_DIGITS."""
    import sympy

    if expr.is_Integer or expr.is_Rational:
        return float(max(len(str(abs(expr.p))), len(str(expr.q))))
    if expr.is_Float:
        return max(0.0, math.log10(abs(float(expr)) + 1.0))
    if expr.is_Atom:
        return 1.0
    bounds = [digits_bound(arg) for arg in expr.args]
    if isinstance(expr, sympy.Pow):
        base, exponent = bounds
        if exponent > 6:  # an exponent above a million: no final answer needs it
            raise UnsafeAnswer("exponent too large")
        size = base
        if expr.exp.is_number:
            size = abs(float(expr.exp.evalf(15))) * max(base, 1.0)
    elif isinstance(expr, sympy.Mul):
        size = sum(bounds)
    else:
        size = max(bounds) + 1.0
    if size > MAX_DIGITS:
        raise UnsafeAnswer(f"value may have more than {MAX_DIGITS:g} digits")
    return size


def parse_math(text: str) -> Any:
    """Parse plain math text (from normalise_answer) into an unevaluated sympy expression.

    Raises:
        UnsafeAnswer: a token is not allowed or the value could be astronomically large.
        ValueError: sympy cannot parse it.
    """
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        rationalize,
        standard_transformations,
    )

    check_tokens(text)
    letters = {c: sympy.Symbol(c) for c in "abcdfghjklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"}
    names = {
        "e": sympy.E,
        "i": sympy.I,
        "pi": sympy.pi,
        "oo": sympy.oo,
        "sqrt": sympy.sqrt,
        "log": sympy.log,
        "exp": sympy.exp,
        "sin": sympy.sin,
        "cos": sympy.cos,
        "tan": sympy.tan,
    }
    transformations = (
        *standard_transformations,
        rationalize,
        implicit_multiplication_application,
        convert_xor,
    )
    try:
        expr = parse_expr(
            text, local_dict={**letters, **names}, transformations=transformations, evaluate=False
        )
    except (SyntaxError, TypeError, ValueError, sympy.SympifyError) as exc:
        raise ValueError(f"cannot parse {text!r}: {type(exc).__name__}") from exc
    if not isinstance(expr, sympy.Basic):
        raise ValueError(f"{text!r} is not a math expression")
    digits_bound(expr)
    return expr


def values_equal(a: Any, b: Any, rel_tol: float, abs_tol: float) -> bool:
    """``a == b`` numerically (within tolerance) when both are numbers, else symbolically."""
    import sympy

    if a == b:
        return True
    if a.is_number and b.is_number:
        diff = abs((a - b).evalf(30))
        scale = abs(b.evalf(30))
        if not (diff.is_finite and scale.is_finite):  # oo - 1, nan, zoo
            return False
        return bool(diff <= abs_tol + rel_tol * scale)
    return bool(sympy.simplify(a - b) == 0)


def _candidates(answer: Answer) -> list[Any]:
    value = parse_math(answer.text)
    return [value, value / 100] if answer.percent else [value]


def _split_list(text: str) -> list[str]:
    """Top-level comma-separated parts (commas inside parentheses stay)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _text_key(text: str) -> str:
    return "".join(text.casefold().split()).strip("().")


def answers_equal(predicted: Answer, reference: Answer, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Whether two normalised answers are equal (see the module doc for the rules).

    Raises:
        UnsafeAnswer: one of them is refused (not plain math, or astronomically large).
    """
    pred_parts, ref_parts = _split_list(predicted.text), _split_list(reference.text)
    if len(ref_parts) > 1 or len(pred_parts) > 1:
        return len(pred_parts) == len(ref_parts) and all(
            answers_equal(Answer(p), Answer(r), rel_tol, abs_tol)
            for p, r in zip(pred_parts, ref_parts, strict=True)
        )
    try:
        pred_values, ref_values = _candidates(predicted), _candidates(reference)
    except UnsafeAnswer:
        raise
    except ValueError:
        return (
            _text_key(predicted.text) == _text_key(reference.text) and predicted.percent == reference.percent
        )
    return any(values_equal(p, r, rel_tol, abs_tol) for p in pred_values for r in ref_values)


def reference_answer(raw: Any) -> Answer:
    """The row's answer, normalised; a GSM8K solution ("... #### 42") or a boxed one is extracted."""
    text = str(raw)
    if "\\boxed" in text or "####" in text:
        text = extract_answer(text, fallback_last_number=False) or text
    return normalise_answer(text)


def verify(
    response: str,
    reference: Any,
    *,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
    fallback_last_number: bool = True,
) -> Verdict:
    """Extract the completion's final answer and compare it with ``reference``."""
    raw = extract_answer(response, fallback_last_number=fallback_last_number)
    if raw is None:
        return Verdict(False, None, "no answer found")
    predicted = normalise_answer(raw)
    try:
        equal = answers_equal(predicted, reference_answer(reference), rel_tol, abs_tol)
    except UnsafeAnswer as exc:
        return Verdict(False, predicted.text, f"refused: {exc}")
    return Verdict(equal, predicted.text, "equal" if equal else "not equal")


@register_reward("math_verify", timeout_s=10.0)
def math_verify(
    response: str,
    row: dict[str, Any],
    answer_key: str = "answer",
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
    fallback_last_number: bool = True,
) -> float:
    """1 if the completion's final answer equals ``row[answer_key]`` (numerically or symbolically).

    fallback_last_number: with no boxed / "####" / "the answer is" answer, take the last number.
    """
    if answer_key not in row:
        raise DataError(f"math_verify: the row has no {answer_key!r} field; set params.answer_key")
    verdict = verify(
        response, row[answer_key], rel_tol=rel_tol, abs_tol=abs_tol, fallback_last_number=fallback_last_number
    )
    return float(verdict.equal)
