"""math_verify: answer extraction, normalisation, numeric/symbolic equality, hostile input."""

from __future__ import annotations

import time

import pytest

from roll.errors import DataError
from roll.rewards import get_entry, get_reward
from roll.rewards.math_answer import extract_answer, normalise_answer
from roll.rewards.math_verify import UnsafeAnswer, parse_math, verify

EXTRACTED = [
    ("so we get \\boxed{\\frac{1}{2}} in the end", "\\frac{1}{2}"),
    ("\\boxed{a} then \\boxed{\\sqrt{x^{2}}}", "\\sqrt{x^{2}}"),  # last box, nested braces
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("The answer is 42. Let me know if it helps", "42"),
    ("Final answer: $3.5$.", "$3.5$"),
    ("answer = -7", "-7"),
    ("so the ratio is $\\dfrac{3}{4}$.", "\\dfrac{3}{4}"),  # closing math span
    ("Let $x$ be 3. Then 2x is 6.", "6"),  # last number, not the early $x$
    ("It costs 1,234.50 dollars", "1,234.50"),
    ("We keep 3/4 of it", "3/4"),
    ("a 25 % rise", "25 %"),
    ("no numbers here", None),
]


@pytest.mark.parametrize("text, expected", EXTRACTED)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_no_last_number_fallback_when_disabled() -> None:
    assert extract_answer("I think 5", fallback_last_number=False) is None


NORMALISED = [
    ("$\\frac{1}{2}$", "((1)/(2))", False),
    ("\\dfrac12", "((1)/(2))", False),
    ("1{,}000", "1000", False),
    ("1,234,567", "1234567", False),
    ("x = 5", "5", False),
    ("12 \\text{ apples}", "12", False),
    ("5 cm", "5", False),
    ("3 pi", "3 pi", False),  # a math word is not a unit
    ("30^\\circ", "30", False),
    ("45\\%", "45", True),
    ("2 \\cdot 3^{2}", "2 * 3**(2)", False),
    ("\\sqrt[3]{27}", "((27)**(1/(3)))", False),
    ("\\left( 2 \\right)", "( 2 )", False),
]


@pytest.mark.parametrize("raw, text, percent", NORMALISED)
def test_normalise_answer(raw: str, text: str, percent: bool) -> None:
    answer = normalise_answer(raw)
    assert (answer.text, answer.percent) == (text, percent)


EQUAL = [
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{0.5}", "1/2"),
    ("#### 1,234", "1234"),
    ("The answer is 72.", "#### 72"),  # GSM8K reference with its solution marker
    ("\\boxed{2\\sqrt{2}}", "sqrt(8)"),
    ("\\boxed{\\sqrt[3]{27}}", "3"),
    ("\\boxed{x^2+2x+1}", "(x+1)^2"),
    ("\\boxed{\\frac{\\pi}{2}}", "pi/2"),
    ("The answer is 50%", "0.5"),
    ("The answer is 50%", "50"),
    ("\\boxed{0.25}", "25\\%"),
    ("\\boxed{12 \\text{ apples}}", "12"),
    ("The answer is $5.00", "5"),
    ("\\boxed{30^\\circ}", "30"),
    ("\\boxed{x = -3}", "-3"),
    ("\\boxed{1, 2}", "1,2"),
    ("\\boxed{(B)}", "B"),
    ("\\boxed{3.0000001}", "3"),  # within rel_tol 1e-6
    ("\\boxed{e^{0}}", "1"),
    ("\\boxed{2^{10}}", "1024"),
    ("\\boxed{2\\frac{1}{2}}", "5/2"),  # a mixed number
    ("\\boxed{-2\\frac{1}{2}}", "-2.5"),
    ("\\boxed{2\\frac{\\pi}{3}}", "2*pi/3"),  # a product, not a mixed number
    ("\\boxed{\\$5.00}", "5"),
    ("\\boxed{\u22125}", "-5"),  # Unicode minus
    ("\\boxed{1.5 \\times 10^{3}}", "1500"),
    ("\\boxed{\\text{(B)}}", "B"),
]

NOT_EQUAL = [
    ("\\boxed{\\frac{1}{3}}", "0.33"),
    ("\\boxed{0.5}", "5"),
    ("The answer is 7", "8"),
    ("\\boxed{x^2+1}", "(x+1)^2"),
    ("\\boxed{2, 1}", "1,2"),  # lists are ordered
    ("\\boxed{1, 2, 3}", "1,2"),
    ("\\boxed{3.001}", "3"),
    ("\\boxed{(C)}", "B"),
    ("\\boxed{0.05}", "5"),  # only a written % matches its fraction
    ("nothing to see", "4"),
    ("\\boxed{-2}", "2"),
    ("\\boxed{2\\frac{1}{2}}", "1"),
]


@pytest.mark.parametrize("response, reference", EQUAL)
def test_equal_answers_score_one(response: str, reference: str) -> None:
    assert get_reward("math_verify")(response, {"answer": reference}) == 1.0


@pytest.mark.parametrize("response, reference", NOT_EQUAL)
def test_unequal_answers_score_zero(response: str, reference: str) -> None:
    assert get_reward("math_verify")(response, {"answer": reference}) == 0.0


def test_tolerances_are_params() -> None:
    math_verify = get_reward("math_verify")
    assert math_verify("\\boxed{0.333}", {"answer": "1/3"}) == 0.0
    assert math_verify("\\boxed{0.333}", {"answer": "1/3"}, rel_tol=1e-2) == 1.0
    assert math_verify("\\boxed{0.000000000001}", {"answer": "0"}) == 1.0  # abs_tol 1e-9
    assert math_verify("\\boxed{0.000000000001}", {"answer": "0"}, abs_tol=0.0) == 0.0
    assert math_verify("\\boxed{2.5e3}", {"answer": "2500"}) == 1.0  # a number's exponent
    assert math_verify("\\boxed{2e}", {"answer": "2*exp(1)"}) == 1.0  # e alone is Euler's number
    assert math_verify("7", {"solution": "7"}, answer_key="solution") == 1.0


HOSTILE = [
    "The answer is 9**9**9**9",
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{10^{10^{10}}}",
    "\\boxed{2^{100000000}}",
    "\\boxed{" + "9" * 500 + "}",
    "The answer is __import__('os').system('touch /tmp/pwned')",
    "The answer is (lambda: 1)()",
    "The answer is x.__class__",
    "The answer is a[0]",
]


@pytest.mark.parametrize("response", HOSTILE)
def test_hostile_answers_are_refused_at_once(response: str) -> None:
    start = time.monotonic()
    verdict = verify(response, "1")
    assert not verdict.equal and verdict.reason.startswith("refused")
    assert time.monotonic() - start < 1.0


def test_parse_refuses_disallowed_tokens_and_accepts_math() -> None:
    with pytest.raises(UnsafeAnswer, match="'_' is not allowed"):
        parse_math("__import__")
    with pytest.raises(UnsafeAnswer, match="'abc' is not a known function"):
        parse_math("abc")
    assert str(parse_math("2**(3**2)").doit()) == "512"  # nested powers of sane size pass


def test_missing_answer_field_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no 'answer' field; set params.answer_key"):
        get_reward("math_verify")("\\boxed{1}", {"question": "?"})


def test_registered_with_a_time_limit() -> None:
    assert get_entry("math_verify").timeout_s == 10.0
