"""Find the final answer in a math completion and normalise it to plain text (no sympy here).

Extraction, most explicit first (the last occurrence of the first kind found wins):

1. ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces, nested ones included);
2. a GSM8K marker line ``#### 42``;
3. a phrase: "The (final) answer is ...", "Answer: ...", "answer = ..." (up to the end of the line
   or sentence);
4. a math span ``$...$`` or ``\\(...\\)`` that closes the text;
5. optionally, the last number in the text (``-1,234.5``, ``3/4``, ``25%``).

Normalisation turns an answer into text that :mod:`roll.rewards.math_verify` can parse: math-mode
delimiters, ``\\left``/``\\right``, spacing commands, ``\\text{units}``, degree signs, trailing
units ("12 apples", "5 cm") and thousands separators go; a mixed number ``2\\frac{1}{2}`` becomes
``2 + 1/2``; a trailing ``%`` becomes a flag; a leading
``x =`` goes; LaTeX fractions, roots, products and powers become ``(a)/(b)``, ``sqrt(x)``, ``*`` and
``**``. A LaTeX command it does not know is kept, and the parser then refuses the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ANSWER_CHARS = 400  # longer "answers" are not math answers; they also bound parse time

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_HASHES = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)
_PHRASE = re.compile(r"(?:final\s+answer|the\s+answer|answer)\s*(?:is\s*[:=]?|[:=])\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?(?:\s*%)?"
    r"|(?<![\w.])-?\.\d+(?:\s*%)?"
)
_CLOSING_MATH = re.compile(r"(?:\$([^$]+)\$|\\\((.+?)\\\))[\s.!]*$", re.DOTALL)
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d])")
_UNIT_TAIL = re.compile(r"^([-+]?\d[\d.]*(?:/\d+)?)\s+([A-Za-z][A-Za-z .^\d/]*)$")
_MATH_WORDS = {"pi", "sqrt", "e", "i", "log", "ln", "sin", "cos", "tan", "exp", "oo", "infinity"}
_DROP = (
    r"\left",
    r"\right",
    r"\!",
    r"\,",
    r"\;",
    r"\:",
    r"\quad",
    r"\qquad",
    r"\displaystyle",
    r"\big",
    r"\Big",
    "~",
)
_SIMPLE = {
    r"\cdot": "*",
    r"\times": "*",
    r"\div": "/",
    r"\pi": "pi",
    r"\infty": "oo",
    r"\ln": "log",
    r"\log": "log",
    r"\exp": "exp",
    r"\sin": "sin",
    r"\cos": "cos",
    r"\tan": "tan",
    r"\dfrac": r"\frac",
    r"\tfrac": r"\frac",
    r"\le": "<=",
    r"\ge": ">=",
}
_MIXED_NUMBER = re.compile(r"(?<![\d.])(\d+)\s*\\[dt]?frac\s*\{(\d+)\}\s*\{(\d+)\}")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")


@dataclass(frozen=True)
class Answer:
    """A normalised answer: ``text`` for the parser, and whether it was written as a percentage."""

    text: str
    percent: bool = False


def read_group(text: str, start: int) -> tuple[str, int]:
    """The ``{...}`` group (balanced) or the single character at ``start``; returns (body, end).

    Raises:
        ValueError: unbalanced braces or nothing at ``start``.
    """
    while start < len(text) and text[start] == " ":
        start += 1
    if start >= len(text):
        raise ValueError("expected a group, found the end of the text")
    if text[start] != "{":
        return text[start], start + 1
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1 : i], i + 1
    raise ValueError("unbalanced braces")


def last_boxed(text: str) -> str | None:
    """The body of the last ``\\boxed{...}`` (or ``\\boxed 5``), or None."""
    found = list(_BOXED.finditer(text))
    for match in reversed(found):
        try:
            body, _ = read_group(text, match.end())
        except ValueError:
            continue
        return body
    return None


def extract_answer(text: str, *, fallback_last_number: bool = True) -> str | None:
    """The final answer written in ``text`` (see the module doc for the order), or None."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1]
    phrases = _PHRASE.findall(text)
    if phrases:
        return _sentence(phrases[-1])
    closing = _CLOSING_MATH.search(text)
    if closing:
        return closing.group(1) or closing.group(2)
    if fallback_last_number:
        numbers = _NUMBER.findall(text)
        if numbers:
            return numbers[-1]
    return None


def _sentence(text: str) -> str:
    """Cut a phrase answer at the end of its sentence: a period followed by a space or the end."""
    text = text.strip()
    cut = re.search(r"\.(\s|$)(?![^$]*\$)", text)  # not inside $...$
    return text[: cut.start()] if cut else text


def normalise_answer(raw: str) -> Answer:
    """Plain, parser-ready text of an answer (see the module doc); percent flag set for ``%``."""
    text = raw.strip()[: MAX_ANSWER_CHARS * 2]
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed
    text = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", text.strip()).replace("\\$", "").replace("$", "")
    text = text.replace("\u2212", "-")  # Unicode minus sign
    text = _MIXED_NUMBER.sub(r"(\1 + \\frac{\2}{\3})", text)  # 2\frac{1}{2} is 2.5, not 1
    for token in _DROP:
        text = text.replace(token, " ")
    text = text.replace("{,}", "")  # LaTeX thousands separator 1{,}000
    text = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", text)
    text = _TEXT_CMD.sub(lambda m: f" {m.group(1)} ", text)
    text = " ".join(text.split()).rstrip(".").strip()
    percent = bool(re.search(r"\\?%$", text))
    text = re.sub(r"\s*\\?%$", "", text)
    text = re.sub(r"^[A-Za-z]\w*\s*(?:=|\\approx)\s*", "", text)  # "x = 5" -> "5"
    text = _strip_units(text)
    text = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), text)
    return Answer(latex_to_plain(text).strip(), percent)


def _strip_units(text: str) -> str:
    """ "12 apples" -> "12"; "3 pi" stays (a math word, not a unit)."""
    match = _UNIT_TAIL.match(text.replace(",", "") if re.match(r"^\d{1,3}(,\d{3})+\s", text) else text)
    if match and match.group(2).split()[0].lower() not in _MATH_WORDS:
        return match.group(1)
    return text


def latex_to_plain(text: str) -> str:
    """LaTeX math → plain infix (``\\frac{a}{b}`` → ``((a)/(b))``, ``x^{2}`` → ``x**(2)``)."""
    for latex, plain in _SIMPLE.items():
        text = re.sub(
            re.escape(latex) + r"(?![A-Za-z])", lambda _m, p=plain: f" {p} " if p.isalpha() else p, text
        )
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith(r"\frac", i):
            num, i = read_group(text, i + len(r"\frac"))
            den, i = read_group(text, i)
            out.append(f"(({latex_to_plain(num)})/({latex_to_plain(den)}))")
        elif text.startswith(r"\sqrt", i):
            i += len(r"\sqrt")
            index = None
            if i < len(text) and text[i] == "[":
                close = text.index("]", i)
                index, i = text[i + 1 : close], close + 1
            body, i = read_group(text, i)
            body = latex_to_plain(body)
            out.append(f"(({body})**(1/({latex_to_plain(index)})))" if index else f"sqrt({body})")
        elif text[i] == "^":
            out.append("**")
            i += 1
        else:
            out.append({"{": "(", "}": ")"}.get(text[i], text[i]))
            i += 1
    return " ".join("".join(out).split())
