"""Registry of pipelines: ``pipeline: <name>`` in a YAML job picks the config class and runner.

Built-in pipelines live in the top-level ``pipelines`` package and register themselves on import;
``discover()`` imports every sub-package there once. A user's own pipelines or reward functions are
brought in with ``imports: [my_module]`` in the job YAML (registration by name, never a class path).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

from roll.errors import ConfigError
from roll.imports import import_modules


@dataclass(frozen=True)
class PipelineEntry:
    name: str
    config_cls: type
    runner: Callable[..., Any]
    description: str


_PIPELINES: dict[str, PipelineEntry] = {}
_discovered = False


def register_pipeline(name: str, *, config: type, description: str = "") -> Callable:
    """Class or function decorator: ``@register_pipeline("rlvr", config=RLVRConfig)``.

    The decorated object is called as ``runner(config, context)`` and runs the job.
    """

    def wrap(runner: Callable) -> Callable:
        if name in _PIPELINES and _PIPELINES[name].runner is not runner:
            existing = _PIPELINES[name].runner
            raise ValueError(f"pipeline {name!r} is already registered by {existing!r}")
        doc = description or (runner.__doc__ or "").strip().splitlines()[0:1]
        _PIPELINES[name] = PipelineEntry(name, config, runner, doc if isinstance(doc, str) else "".join(doc))
        return runner

    return wrap


def discover() -> None:
    """Import every built-in pipeline package so it registers itself."""
    global _discovered
    if _discovered:
        return
    import pipelines

    for info in pkgutil.iter_modules(pipelines.__path__):
        if info.ispkg:
            importlib.import_module(f"pipelines.{info.name}")
    _discovered = True


def import_plugins(modules: list[str]) -> None:
    """Import user modules named in ``imports:`` so their registrations run."""
    import_modules(modules)


def get_pipeline(name: str) -> PipelineEntry:
    discover()
    if name not in _PIPELINES:
        known = ", ".join(sorted(_PIPELINES)) or "(none)"
        raise ConfigError(f"pipeline: unknown pipeline {name!r}; known pipelines: {known}")
    return _PIPELINES[name]


def list_pipelines() -> list[PipelineEntry]:
    discover()
    return sorted(_PIPELINES.values(), key=lambda e: e.name)
