"""A safe calculator for model-written arithmetic: parsed with ``ast``, never ``eval``-ed.

Only numbers, ``+ - * / // % **`` and parentheses are accepted; names, calls, attributes,
subscripts, strings and every other node are refused. Results, exponents and nesting are bounded so
a hostile expression cannot exhaust memory or time (``9**9**9`` is refused, not computed).
Conveniences for model output: ``^`` means power, ``×``/``÷`` mean ``*``/``/``, and commas between
digit groups (``184,200``) are thousands separators.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable

MAX_CHARS = 200
MAX_DEPTH = 40
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e100

_BINARY: dict[type, Callable] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


class CalculatorError(ValueError):
    """The expression is not plain arithmetic, or its value is out of bounds."""


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression.

    Raises:
        CalculatorError: anything but numbers, the operators above and parentheses; division by
            zero; exponents above 100; values beyond 1e100; non-real results; over 200 characters.
    """
    text = expression.strip()
    if len(text) > MAX_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_CHARS} characters")
    text = _THOUSANDS.sub("", text).replace("^", "**").replace("×", "*").replace("÷", "/")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise CalculatorError(f"not an arithmetic expression: {text!r}") from exc
    return _evaluate(tree.body, 0)


def _evaluate(node: ast.AST, depth: int) -> int | float:
    if depth > MAX_DEPTH:
        raise CalculatorError("the expression is nested too deeply")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand, depth + 1))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _evaluate(node.left, depth + 1)
        right = _evaluate(node.right, depth + 1)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponents above {MAX_EXPONENT} are not allowed")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError as exc:
            raise CalculatorError("division by zero") from exc
        except OverflowError as exc:
            raise CalculatorError("the result is too large") from exc
        if isinstance(value, complex):
            raise CalculatorError("the result is not a real number")
        return _bounded(value)
    raise CalculatorError(
        f"{type(node).__name__} is not allowed: use only numbers, + - * / // % ** and parentheses"
    )


def _bounded(value: int | float) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise CalculatorError(f"the result exceeds {MAX_MAGNITUDE:g}")
    return value


def format_number(value: int | float) -> str:
    """Integers (and integral floats below 1e15) without a decimal point, else 10 significant digits."""
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:.10g}"
