"""Import user modules named in a job's ``imports:`` so their registrations run."""

from __future__ import annotations

import importlib

from roll.errors import ConfigError


def import_modules(modules: list[str]) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"imports: cannot import module {module!r} ({exc}); make sure it is installed or on "
                "PYTHONPATH, or remove it from imports"
            ) from exc
