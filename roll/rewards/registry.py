"""Reward functions by registered name, and the ``reward:`` config section that names them.

A reward function scores one completion: ``fn(response: str, row: dict, **params) -> float``.
Register your own with ``@register_reward("my_reward")`` in a module listed under ``imports:`` in
the job YAML, then name it in ``reward.functions`` (or in a domain under ``reward.domains``).

A reward that holds state (a judge model) registers a class instead: it is built once per reward
worker as ``cls(**params)`` and scores a whole sub-batch with ``score_batch(responses, rows)``,
returning one float or one exception per row (see roll/rewards/judge.py).

``timeout_s`` on a registration is the default per-sample wall-clock limit of that function; a term
with a limit runs in a child process that is killed when the limit passes (roll/rewards/isolation.py
says why a thread or an alarm would not do).

Example YAML::

    reward:
      domain_key: tag               # row["tag"] picks the terms (datasets set it)
      functions:                    # the default domain: rows tagged "default", untagged, unlisted
        - {name: exact_match}
      domains:
        math: [{name: math_verify, params: {rel_tol: 1.0e-4}}, {name: format, weight: 0.1}]
        code: [{name: code_tests, params: {timeout_s: 5}}]
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from roll.config.base import ConfigBase
from roll.errors import ConfigError

RewardFn = Callable[..., float]
DEFAULT_DOMAIN = "default"  # the tag datasets give rows that belong to no particular domain


@dataclass(frozen=True)
class RewardEntry:
    """A registered reward: the function (or stateful class) and its registration defaults."""

    name: str
    target: Any
    timeout_s: float | None = None

    @property
    def is_batched(self) -> bool:
        """A class with ``score_batch`` (built once per worker), not a per-sample function."""
        return inspect.isclass(self.target)

    def check_params(self, params: dict[str, Any], where: str) -> None:
        """Raise ConfigError when ``params`` do not fit the function's (or class's) keywords."""
        call = self.target.__init__ if self.is_batched else self.target
        signature = inspect.signature(call)
        fixed = ("self",) if self.is_batched else ("", {})
        try:
            signature.bind(*fixed, **params)
        except TypeError as exc:
            accepted = [
                n
                for n, p in signature.parameters.items()
                if p.kind is p.KEYWORD_ONLY
                or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)
            ]
            raise ConfigError(
                f"{where}: bad params for reward {self.name!r} ({exc}); it accepts: "
                f"{', '.join(accepted) or 'no params'}"
            ) from exc
        hook = getattr(self.target, "check_params", None) if self.is_batched else None
        if hook is not None:  # a class may check values too (cheaply: no model is loaded)
            try:
                hook(**params)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from exc


_REWARDS: dict[str, RewardEntry] = {}


def register_reward(name: str, *, timeout_s: float | None = None) -> Callable[[Any], Any]:
    """Register a reward function (or a class with ``score_batch``) under ``name``.

    Args:
        name: the name YAML jobs use in ``reward.functions`` / ``reward.domains``.
        timeout_s: default per-sample wall-clock limit; ``None`` runs the function in the reward
            worker itself with no limit. A job may override it per term.
    """

    def wrap(target: Any) -> Any:
        if name in _REWARDS and _REWARDS[name].target is not target:
            raise ValueError(f"reward function {name!r} is already registered")
        if inspect.isclass(target) and not callable(getattr(target, "score_batch", None)):
            raise TypeError(f"reward class {name!r} needs a score_batch(responses, rows) method")
        _REWARDS[name] = RewardEntry(name, target, timeout_s)
        return target

    return wrap


def _load_builtins() -> None:
    from roll.rewards import code, judge, math_verify, rules  # noqa: F401  (registers the built-ins)


def get_entry(name: str) -> RewardEntry:
    """The registration of ``name``; ConfigError listing the known names when there is none."""
    _load_builtins()
    if name not in _REWARDS:
        raise ConfigError(
            f"unknown reward function {name!r}; known: {', '.join(sorted(_REWARDS))}. "
            "Register your own with @register_reward and list its module under imports:"
        )
    return _REWARDS[name]


def get_reward(name: str) -> RewardFn:
    """The registered function (or class) named ``name``."""
    return get_entry(name).target


def reward_names() -> list[str]:
    _load_builtins()
    return sorted(_REWARDS)


class RewardFnConfig(ConfigBase):
    """One reward term: a registered function, its weight, its keyword parameters and time limit."""

    name: str = Field(description="Registered reward function name, e.g. exact_match or math_verify.")
    weight: float = Field(1.0, description="The total reward is the weighted sum of the terms.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for it.")
    timeout_s: float | Literal["default"] | None = Field(
        "default",
        description="Per-sample wall-clock limit in seconds. A term with a limit runs in a child "
        "process that is killed when it passes (the sample scores 0, the error is recorded). "
        "'default': the function's registered limit (math_verify: 10 s); null: no limit, run "
        "inside the reward worker.",
    )

    @model_validator(mode="after")
    def _check_timeout(self) -> RewardFnConfig:
        if isinstance(self.timeout_s, float) and self.timeout_s <= 0:
            raise ValueError(
                f"reward term {self.name!r}: timeout_s must be > 0 or null, got {self.timeout_s}"
            )
        return self

    def effective_timeout(self, entry: RewardEntry) -> float | None:
        """The limit this term runs under: its own, or the registration's for 'default'."""
        return entry.timeout_s if self.timeout_s == "default" else self.timeout_s


class RewardConfig(ConfigBase):
    """How completions are scored: reward terms per domain, picked by a tag on each dataset row."""

    functions: list[RewardFnConfig] = Field(
        default_factory=lambda: [RewardFnConfig(name="exact_match")],
        description="Reward terms of the default domain (rows whose tag is missing or not a key of "
        "`domains`), summed with their weights.",
    )
    domains: dict[str, list[RewardFnConfig]] = Field(
        default_factory=dict,
        description="Reward terms per domain, e.g. {math: [{name: math_verify}], code: "
        "[{name: code_tests}]}; a row goes to the domain named by row[domain_key].",
    )
    domain_key: str = Field(
        "tag",
        description="The row field whose value names the row's domain (datasets set 'tag'; a "
        "missing tag or the tag 'default' means the default domain, `functions`).",
    )
    unknown_domain: Literal["default", "error"] = Field(
        "default",
        description="A row tagged with a domain not in `domains`: 'default' scores it with "
        "`functions`; 'error' scores it 0 and records the error.",
    )
    process_memory_mb: int = Field(
        2048, gt=0, description="Address-space limit of the child process that runs time-limited terms."
    )

    @model_validator(mode="after")
    def _check_terms(self) -> RewardConfig:
        for domain, terms in self.all_domains().items():
            where = "reward.functions" if domain is None else f"reward.domains.{domain}"
            if domain == DEFAULT_DOMAIN:
                raise ValueError(
                    f"{where}: the domain '{DEFAULT_DOMAIN}' is reward.functions; move its terms there"
                )
            if domain is not None and not terms:
                raise ValueError(f"{where} is empty; give it at least one reward term or remove it")
            seen: set[str] = set()
            for i, term in enumerate(terms):
                if term.name in seen:
                    raise ValueError(f"{where}: reward {term.name!r} is listed twice; merge the terms")
                seen.add(term.name)
                try:
                    entry = get_entry(term.name)
                except ConfigError as exc:
                    raise ValueError(f"{where}[{i}]: {exc}") from exc
                try:
                    entry.check_params(term.params, f"{where}[{i}]")
                except ConfigError as exc:
                    raise ValueError(str(exc)) from exc
                if entry.is_batched and term.effective_timeout(entry) is not None:
                    raise ValueError(
                        f"{where}[{i}]: reward {term.name!r} holds a model in the reward worker and "
                        "cannot run under timeout_s; remove timeout_s (bound it with its own params)"
                    )
        return self

    def all_domains(self) -> dict[str | None, list[RewardFnConfig]]:
        """Every domain's terms; the default domain (``functions``) under the key ``None``."""
        return {None: self.functions, **self.domains}

    @property
    def term_names(self) -> list[str]:
        """Every term name over all domains, in first-seen order (the ``reward/<name>`` columns)."""
        names: dict[str, None] = {}
        for terms in self.all_domains().values():
            names.update(dict.fromkeys(t.name for t in terms))
        return list(names)
