"""Load a YAML job into its pipeline's pydantic config, with errors that name the key and line.

``load_job("job.yaml", ["rollout.group_size=8"])``:
1. parse the YAML (a syntax error names the line and column),
2. apply ``a.b=c`` overrides (values parsed as YAML scalars/flow collections),
3. pick the config class from ``pipeline:`` and validate with extra="forbid",
4. turn pydantic's errors into one ``ConfigError`` naming each key path, its line in the file and
   what to change.
"""

from __future__ import annotations

import difflib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from roll.config.registry import get_pipeline, import_plugins
from roll.errors import ConfigError


@dataclass
class LoadedJob:
    """A validated job: the pipeline name, its config object and where it came from."""

    pipeline: str
    config: BaseModel
    path: Path | None
    raw: dict[str, Any]


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    return yaml


def parse_yaml_text(text: str, source: str = "<string>") -> CommentedMap:
    try:
        data = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = exc.problem or exc.context or str(exc)
        raise ConfigError(
            f"{source}: malformed YAML at {where}: {problem}. Check indentation and that every "
            "'key: value' pair has a space after the colon."
        ) from exc
    except Exception as exc:  # ruamel raises a few non-Marked errors (e.g. duplicate keys)
        raise ConfigError(f"{source}: malformed YAML: {exc}") from exc
    if data is None:
        raise ConfigError(f"{source}: the file is empty; a job needs at least 'pipeline: <name>'")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (pipeline:, model:, ...)")
    return data


def _parse_override_value(text: str) -> Any:
    if text == "":
        return ""
    try:
        return _yaml().load(io.StringIO(text))
    except Exception:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> None:
    """Apply ``a.b.c=value`` overrides in place; list items by index: ``roles.actor.devices.0=1``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. rollout.group_size=8"
            )
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r}: the key is empty")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_list_index(node, part, parts[: depth + 1])]
                continue
            if part not in node or node[part] is None:
                node[part] = CommentedMap()
            elif not isinstance(node[part], (dict, list)):
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {item!r}: {prefix} is a value, not a section")
            node = node[part]
        last = parts[-1]
        parsed = _parse_override_value(value)
        if isinstance(node, list):
            node[_list_index(node, last, parts)] = parsed
        else:
            node[last] = parsed


def _list_index(node: list, part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(
            f"override: {'.'.join(path)} indexes a list of {len(node)} items; use an index below {len(node)}"
        )
    return int(part)


def _line_of(data: Any, loc: tuple) -> int | None:
    """1-based line of the deepest key of ``loc`` present in the parsed YAML, if known."""
    node, line = data, None
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    return line


def _fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Names of the fields accepted at ``loc`` (for 'did you mean' hints)."""
    cls: Any = model_cls
    for part in loc:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        cls = nested[0]
    return list(getattr(cls, "model_fields", {}))


def format_validation_error(exc: ValidationError, data: Any, model_cls: type[BaseModel], source: str) -> str:
    lines = [f"{source}: invalid job config ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic puts union-member names into loc (e.g. 'list[int]'); keep real keys only.
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p[:1].isupper())))
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(data, loc)
        where = f" (line {line})" if line else ""
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = _fields_at(model_cls, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(
                f"  - {key}{where}: unknown key. {hint}Allowed keys here: {', '.join(allowed)}; "
                "remove or rename it."
            )
        elif kind == "missing":
            lines.append(f"  - {key}{where}: required key is missing; add it.")
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, dict) else "a mapping"
            if len(shown) > 60:
                shown = shown[:57] + "..."
            lines.append(f"  - {key}{where}: {err['msg']} (got {shown}); change the value.")
    return "\n".join(lines)


def load_job_data(data: dict, *, source: str = "<job>", path: Path | None = None) -> LoadedJob:
    """Validate already-parsed job data (a mapping from YAML) into its pipeline config."""
    pipeline = data.get("pipeline")
    if not pipeline:
        raise ConfigError(f"{source}: missing 'pipeline:' key; add e.g. 'pipeline: rlvr' at the top")
    import_plugins(list(data.get("imports") or []))
    entry = get_pipeline(str(pipeline))
    try:
        config = entry.config_cls.model_validate(_plain(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, data, entry.config_cls, source)) from exc
    except ConfigError:
        raise
    except ValueError as exc:  # cross-field checks raising outside pydantic's wrapper
        raise ConfigError(f"{source}: {exc}") from exc
    return LoadedJob(str(pipeline), config, path, _plain(data))


def load_job(path: str | Path, overrides: list[str] | None = None) -> LoadedJob:
    """Read, override and validate a YAML job file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"job file {str(path)!r} does not exist; pass the path to a YAML job")
    data = parse_yaml_text(path.read_text(), source=str(path))
    apply_overrides(data, overrides or [])
    return load_job_data(data, source=str(path), path=path)


def _plain(node: Any) -> Any:
    """ruamel round-trip containers → plain dict/list."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def dump_yaml(data: Any) -> str:
    yaml = YAML()
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()
