"""Score a batch of completions: route each row to its domain's reward terms, isolate failures.

``RewardRouter`` is the reward worker's engine, kept free of Ray so it can be tested directly.
For every sample it picks the terms of the row's domain (``row[cfg.domain_key]``; the default
domain, ``reward.functions``, when the tag is missing or unknown), runs each term and sums the
weighted scores. A term runs one of three ways:

- a function with no time limit: called in the worker, per sample;
- a function with a limit (``timeout_s``): called in a killable child process
  (:class:`roll.rewards.isolation.RewardProcess`), per sample;
- a class with ``score_batch`` (the LLM judge): built once, called once per domain sub-batch.

A term that raises, times out, or returns a non-finite or non-number score scores that sample 0,
and ``"<term>: <Type>: <message>; "`` is appended to the sample's error text. Nothing a reward
function does to one sample stops the others.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from roll.rewards.isolation import RewardFailed, RewardProcess
from roll.rewards.registry import DEFAULT_DOMAIN, RewardConfig, RewardEntry, RewardFnConfig, get_entry


@dataclass
class RewardTerm:
    """One configured term, resolved: how it runs and with what."""

    name: str
    weight: float
    params: dict[str, Any]
    entry: RewardEntry
    timeout_s: float | None
    instance: Any = None  # the built object of a batched (class) reward


@dataclass
class RewardScores:
    """Per-sample results: weighted totals, raw score per term name, error text ("" when none)."""

    totals: list[float]
    per_term: dict[str, list[float]]
    errors: list[str]
    domains: list[str] = field(default_factory=list)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RewardFailed):  # already "Type: message" from the child
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class RewardRouter:
    """Routes rows to reward domains and runs their terms (see the module doc).

    Args:
        cfg: the ``reward:`` section.
        imports: the job's ``imports:`` (custom rewards), for the child process of timed terms.
    """

    def __init__(self, cfg: RewardConfig, imports: list[str]) -> None:
        self.cfg = cfg
        self.names = cfg.term_names
        built: dict[str, Any] = {}  # one instance per (name, params): a judge model is loaded once
        self.domains: dict[str | None, list[RewardTerm]] = {}
        for domain, terms in cfg.all_domains().items():
            self.domains[domain] = [self._resolve(term, built) for term in terms]
        timed = any(t.timeout_s is not None for terms in self.domains.values() for t in terms)
        self.process = RewardProcess(imports, cfg.process_memory_mb) if timed else None

    @staticmethod
    def _resolve(term: RewardFnConfig, built: dict[str, Any]) -> RewardTerm:
        entry = get_entry(term.name)
        resolved = RewardTerm(term.name, term.weight, dict(term.params), entry, term.effective_timeout(entry))
        if entry.is_batched:
            key = f"{term.name}:{json.dumps(term.params, sort_keys=True, default=str)}"
            if key not in built:
                built[key] = entry.target(**term.params)
            resolved.instance = built[key]
        return resolved

    def domain_of(self, row: dict[str, Any]) -> tuple[str | None, str]:
        """(domain whose terms score the row, error text); None is the default domain."""
        tag = row.get(self.cfg.domain_key) if isinstance(row, dict) else None
        if tag is None or tag == DEFAULT_DOMAIN:
            return None, ""
        if isinstance(tag, str) and tag in self.domains:
            return tag, ""
        if self.cfg.unknown_domain == "error":
            known = ", ".join(sorted(d for d in self.domains if d is not None))
            return None, f"reward: unknown domain {tag!r} in row[{self.cfg.domain_key!r}]; known: {known}; "
        return None, ""

    def score(self, texts: list[str], rows: list[dict[str, Any]]) -> RewardScores:
        """Score every completion against its row (both lists in the same order)."""
        n = len(texts)
        out = RewardScores([0.0] * n, {name: [0.0] * n for name in self.names}, [""] * n, [""] * n)
        groups: dict[str | None, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            domain, error = self.domain_of(row)
            out.domains[i] = domain or DEFAULT_DOMAIN
            if error:
                out.errors[i] = error
            else:
                groups[domain].append(i)
        for domain, index in groups.items():
            for term in self.domains[domain]:
                results = self._run(term, [texts[i] for i in index], [rows[i] for i in index])
                for i, result in zip(index, results, strict=True):
                    score = self._checked(result)
                    if isinstance(score, BaseException):
                        out.errors[i] += f"{term.name}: {_describe(score)}; "
                        continue
                    out.per_term[term.name][i] = score
                    out.totals[i] += term.weight * score
        return out

    @staticmethod
    def _checked(result: Any) -> float | BaseException:
        if isinstance(result, BaseException):
            return result
        try:
            score = float(result)
        except (TypeError, ValueError):
            return TypeError(f"returned {type(result).__name__}, not a number")
        return score if math.isfinite(score) else ValueError(f"returned {score}")

    def _run(self, term: RewardTerm, texts: list[str], rows: list[dict[str, Any]]) -> list[Any]:
        if term.instance is not None:
            try:
                results = list(term.instance.score_batch(texts, rows))
            except Exception as exc:  # noqa: BLE001 — the whole sub-batch fails, the run goes on
                return [exc] * len(texts)
            if len(results) != len(texts):
                return [
                    RuntimeError(f"score_batch returned {len(results)} scores for {len(texts)} rows")
                ] * len(texts)
            return results
        results: list[Any] = []
        for text, row in zip(texts, rows, strict=True):
            try:
                if term.timeout_s is None:
                    results.append(term.entry.target(text, row, **term.params))
                else:
                    assert self.process is not None
                    results.append(self.process.call(term.name, text, row, term.params, term.timeout_s))
            except Exception as exc:  # noqa: BLE001 — a bad sample must not stop the run
                results.append(exc)
        return results

    def close(self) -> None:
        """Stop the child process of timed terms (if one runs)."""
        if self.process is not None:
            self.process.close()
