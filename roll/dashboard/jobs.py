"""Validating a pasted job the way ``roll validate`` and ``roll submit`` do, without importing user code.

The checks themselves live in :mod:`roll.jobs.submit` (shared with the CLI); this module only
shapes their verdict for the JSON API.
"""

from __future__ import annotations

from typing import Any

from roll.errors import RollError

SOURCE = "<submitted job>"


def validate_job_text(text: str, source: str = SOURCE) -> dict[str, Any]:
    """Parse (ruamel's safe round-trip loader), validate and plan a YAML job, as the CLI does.

    A submitted job may not use ``imports:``: importing a module it names would run code on the
    dashboard's host, so such a job is refused here (it still validates with ``roll validate``).

    Returns:
        ``{"ok": True, "pipeline", "message", "plan", "plan_text"}`` for a valid job, or
        ``{"ok": False, "error"}`` with the message ``roll validate`` prints after 'error:'.
    """
    from roll.jobs.submit import check_job_text  # imports Ray: only when a job is validated

    try:
        loaded, plan = check_job_text(text, source, allow_imports=False)
    except RollError as exc:
        return {"ok": False, "error": str(exc)}
    return {
        "ok": True,
        "pipeline": loaded.pipeline,
        "message": f"ok: {source} is a valid '{loaded.pipeline}' job",
        "plan": plan.to_dict(),
        "plan_text": plan.render(width=100),
    }
