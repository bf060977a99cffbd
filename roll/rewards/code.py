"""code_tests: run the completion's Python against the row's test cases in roll.sandbox.

Registered on import: list ``roll.rewards.code`` under ``imports:`` in the job YAML and name
``code_tests`` in ``reward.functions``. Rows carry ``tests``: a list (or its JSON text) of
``{"input": <stdin text>, "output": <expected stdout>}``. With ``fn_name`` in the row, tests are call
style instead: ``input`` is the argument list and ``output`` the expected return value.

The program runs in a fresh unprivileged process per test, judged here; see roll/sandbox/__init__.py
for what each isolation level contains. By default the reward refuses to run below ``namespaces``:
without a network namespace the program can reach loopback services, such as the Ray cluster.
"""

from __future__ import annotations

import json
import re
from typing import Any

from roll.errors import DataError
from roll.rewards.registry import register_reward
from roll.sandbox import ISOLATION_LEVELS, Limits, TestCase, available_isolation, run_untrusted

_BLOCK = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_OPEN_PYTHON = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n", re.IGNORECASE)
_PYTHON_TAGS = {"python", "python3", "py"}


def extract_code(response: str) -> str:
    """The last ```python block; else the last untagged ``` block; else the text after an unclosed
    ```python fence (a completion cut at max length); else the whole completion."""
    blocks = _BLOCK.findall(response)
    for wanted in (lambda tag: tag.lower() in _PYTHON_TAGS, lambda tag: tag == ""):
        chosen = [body for tag, body in blocks if wanted(tag)]
        if chosen:
            return chosen[-1]
    opened = list(_OPEN_PYTHON.finditer(response))
    if opened:
        return response[opened[-1].end() :]
    return response.strip()


def row_tests(row: dict[str, Any]) -> list[TestCase]:
    raw = row.get("tests")
    if isinstance(raw, str):
        raw = json.loads(raw)
    if not isinstance(raw, list) or not raw or not all(isinstance(t, dict) for t in raw):
        raise DataError(
            'code_tests: row["tests"] must be a non-empty list of {"input": ..., "output": ...} '
            f"(or its JSON text); got {type(raw).__name__}"
        )
    try:
        return [TestCase(t["input"], t["output"]) for t in raw]
    except KeyError as exc:
        raise DataError(
            f'code_tests: every test in row["tests"] needs "input" and "output"; {exc} is missing'
        ) from exc


@register_reward("code_tests")
def code_tests(
    response: str,
    row: dict[str, Any],
    timeout_s: float = 5.0,
    all_or_nothing: bool = False,
    memory_mb: int = 512,
    min_isolation: str = "namespaces",
) -> float:
    """Fraction of the row's tests the completion's program passes (1 or 0 with all_or_nothing).

    timeout_s is the wall-clock budget for all tests of one completion; memory_mb caps each process
    and all of them together; min_isolation is the weakest isolation accepted (see the module doc).
    """
    if min_isolation not in ISOLATION_LEVELS:
        raise ValueError(f"code_tests: min_isolation={min_isolation!r}; use one of {ISOLATION_LEVELS}")
    tests = row_tests(row)
    level = available_isolation()
    if ISOLATION_LEVELS.index(level) < ISOLATION_LEVELS.index(min_isolation):
        raise RuntimeError(
            f"code_tests: this machine offers only {level!r} isolation, below min_isolation="
            f"{min_isolation!r}; run the reward worker as root with util-linux unshare, or set "
            f"params.min_isolation: {level} to accept it"
        )
    code = extract_code(response)
    if not code.strip():
        return 0.0
    limits = Limits(timeout_s=timeout_s, memory_bytes=memory_mb << 20)
    result = run_untrusted(code, tests, limits, entry_point=row.get("fn_name"))
    if result.error and all(v.status == "not_run" for v in result.verdicts):
        raise RuntimeError(f"code_tests: the sandbox failed, not the program: {result.error}")
    return float(result.passed == result.total) if all_or_nothing else result.score
