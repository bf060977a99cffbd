"""Validating a pasted job the way ``roll validate`` does, without importing user code."""

from __future__ import annotations

from typing import Any

from roll.config.loader import load_job_data, parse_yaml_text
from roll.errors import ConfigError, RollError

SOURCE = "<submitted job>"


def validate_job_text(text: str, source: str = SOURCE) -> dict[str, Any]:
    """Parse (ruamel's safe round-trip loader), validate and plan a YAML job, as the CLI does.

    A submitted job may not use ``imports:``: importing a module it names would run code on the
    dashboard's host, so such a job is refused here (it still validates with ``roll validate``).

    Returns:
        ``{"ok": True, "pipeline", "message", "plan", "plan_text"}`` for a valid job, or
        ``{"ok": False, "error"}`` with the message ``roll validate`` prints after 'error:'.
    """
    from roll.jobs.local import plan_for  # imports Ray: only when a job is validated

    try:
        data = parse_yaml_text(text, source=source)
        if data.get("imports"):
            raise ConfigError(
                f"{source}: imports: the dashboard does not import modules named by a submitted job; "
                "remove 'imports:' here, or validate it on your machine with 'roll validate JOB.yaml'"
            )
        loaded = load_job_data(data, source=source)
        plan = plan_for(loaded)
    except RollError as exc:
        return {"ok": False, "error": str(exc)}
    return {
        "ok": True,
        "pipeline": loaded.pipeline,
        "message": f"ok: {source} is a valid '{loaded.pipeline}' job",
        "plan": plan.to_dict(),
        "plan_text": plan.render(width=100),
    }
