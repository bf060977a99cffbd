"""The dashboard's FastAPI app: a JSON API over a workspace's run stores, and the web pages.

``create_app(workspace, token)`` builds it; ``roll dashboard`` serves it (roll.dashboard.server).
Reads are open to whoever reaches the (by default loopback-only) address; every state-changing
route is a POST that needs ``Authorization: Bearer <token>`` and a same-origin (or no) Origin.

API (all under /api):
    GET  /runs?status=&metric=                  runs, newest first, with last/min/max of ``metric``
    GET  /runs/{id}?events_after=               run row, stored config, events, metric keys
    GET  /runs/{id}/metrics?keys=&start=&end=&max_points=&smoothing=
    GET  /runs/{id}/steps                       steps that have rollouts
    GET  /runs/{id}/rollouts?step=&sort=&order=&q=
    GET  /runs/{id}/files                       files of the run folder
    GET  /runs/{id}/files/{path}?tail=          one file (text/plain or a download)
    POST /jobs/validate                         YAML body -> the errors ``roll validate`` prints
    POST /runs/{id}/stop                        stops the run as ``roll jobs stop`` does (202)
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from roll.errors import RollError, StateError
from roll.jobs.cluster import ClusterError
from roll.jobs.runstore import FINISHED_STATUSES, RUN_STATUSES

from .guard import GuardMiddleware
from .jobs import validate_job_text
from .pages import pages, workspace_of
from .rollouts import group_rollouts
from .security import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    MAX_BODY_BYTES,
    allowed_hosts,
    origin_allowed,
    resolve_inside,
    token_matches,
    valid_run_id,
)
from .series import build_series
from .workspace import RunLocation, Workspace

STATIC_DIR = Path(__file__).parent / "static"
MAX_KEYS = 64
MAX_FILES_LISTED = 500
TEXT_SUFFIXES = frozenset({".yaml", ".yml", ".json", ".jsonl", ".log", ".txt", ".md", ".csv", ".out", ".err"})


def create_app(
    workspace: Path,
    token: str | None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    extra_hosts: tuple[str, ...] = (),
    max_body: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The dashboard app over the run stores under ``workspace``.

    Args:
        workspace: folder whose run folders hold ``roll.sqlite`` (up to three levels deep).
        token: the token state-changing routes require; None disables those routes (403).
        host, port: where the app is served; with the loopback names they form the accepted
            ``Host`` headers (anything else is refused: DNS rebinding).
        extra_hosts: more host names the dashboard is reached by (no port).
        max_body: the largest request body accepted, in bytes.
    """
    # no /docs: Swagger UI loads its scripts from a CDN, and the dashboard works offline
    app = FastAPI(title="roll dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.workspace = Workspace(Path(workspace))
    app.state.token = token
    app.state.hosts = allowed_hosts(host, port, extra_hosts)
    app.add_middleware(GuardMiddleware, hosts=app.state.hosts, max_body=max_body)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, follow_symlink=False), name="static")
    app.include_router(api)
    app.include_router(pages)
    return app


# ----------------------------------------------------------------------------- dependencies


def require_token(request: Request) -> None:
    """Guard of every state-changing route: same origin (or none), then the bearer token."""
    if not origin_allowed(request.headers.get("origin"), request.app.state.hosts):
        raise HTTPException(403, "cross-origin request refused")
    token = request.app.state.token
    if token is None:
        raise HTTPException(403, "this dashboard was started without a token; it is read-only")
    header = request.headers.get("authorization")
    if not header:
        raise HTTPException(
            401, "missing token: send 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )
    if not token_matches(header, token):
        raise HTTPException(403, "wrong token")


def run_location(run_id: str, ws: Workspace = Depends(workspace_of)) -> RunLocation:
    if not valid_run_id(run_id):
        raise HTTPException(400, "invalid run id: letters, digits, '.', '_' and '-' only")
    loc = ws.locate(run_id)
    if loc is None:
        raise HTTPException(404, f"no run {run_id!r} in this workspace")
    return loc


# ----------------------------------------------------------------------------- reads

api = APIRouter(prefix="/api")


@api.get("/runs")
def list_runs(
    ws: Workspace = Depends(workspace_of),
    status: str | None = Query(None, description="only runs with this status"),
    metric: str = Query("reward/mean", max_length=200, description="metric of the summary columns"),
) -> dict[str, Any]:
    if status is not None and status not in RUN_STATUSES:
        raise HTTPException(400, f"unknown status {status!r}; use one of {', '.join(RUN_STATUSES)}")
    return {"runs": ws.list_runs(status, metric), "statuses": list(RUN_STATUSES)}


@api.get("/runs/{run_id}")
def run_detail(
    loc: RunLocation = Depends(run_location),
    ws: Workspace = Depends(workspace_of),
    events_after: int = Query(0, ge=0),
) -> dict[str, Any]:
    detail = ws.run_detail(loc.run_id, events_after=events_after)
    if detail is None:
        raise HTTPException(404, f"no run {loc.run_id!r} in this workspace")
    stored = detail.pop("config_json")
    detail["config"] = None if stored is None else json.loads(stored)
    return detail


@api.get("/runs/{run_id}/metrics")
def metrics(
    loc: RunLocation = Depends(run_location),
    ws: Workspace = Depends(workspace_of),
    keys: str | None = Query(None, max_length=8000, description="comma-separated metric keys"),
    start: int | None = Query(None, ge=0),
    end: int | None = Query(None, ge=0),
    max_points: int = Query(1000, ge=16, le=20000),
    smoothing: float = Query(0.0, ge=0.0, lt=1.0),
) -> dict[str, Any]:
    wanted = [k for k in (keys or "").split(",") if k] or _all_keys(ws, loc)
    if len(wanted) > MAX_KEYS or any(len(k) > 200 for k in wanted):
        raise HTTPException(400, f"ask for at most {MAX_KEYS} keys of at most 200 characters")
    if start is not None and end is not None and end < start:
        raise HTTPException(400, "end must not be below start")
    rows = ws.metric_rows(loc, wanted, end)
    data = build_series(rows, start=start, end=end, max_points=max_points, smoothing=smoothing)
    return {"run_id": loc.run_id, "start": start, "end": end, "wall_origin": ws.wall_origin(loc), **data}


@api.get("/runs/{run_id}/steps")
def steps(loc: RunLocation = Depends(run_location), ws: Workspace = Depends(workspace_of)) -> dict[str, Any]:
    return {"run_id": loc.run_id, "steps": ws.rollout_steps(loc)}


@api.get("/runs/{run_id}/rollouts")
def rollouts(
    loc: RunLocation = Depends(run_location),
    ws: Workspace = Depends(workspace_of),
    step: int | None = Query(None, ge=0, description="default: the latest step with rollouts"),
    sort: Literal["group", "reward", "advantage"] = "group",
    order: Literal["desc", "asc"] = "desc",
    q: str = Query("", max_length=200, description="case-insensitive text search"),
) -> dict[str, Any]:
    available = ws.rollout_steps(loc)
    if step is None:
        step = available[-1] if available else 0
    grouped = group_rollouts(ws.rollouts(loc, step), sort, order, q)
    return {"run_id": loc.run_id, "step": step, "steps": available, **grouped}


@api.get("/runs/{run_id}/files")
def files(loc: RunLocation = Depends(run_location)) -> dict[str, Any]:
    return {"run_id": loc.run_id, "files": _list_files(loc.run_dir)}


@api.get("/runs/{run_id}/files/{path:path}")
def file(
    path: str, loc: RunLocation = Depends(run_location), tail: int | None = Query(None, ge=1, le=1 << 20)
) -> Response:
    target = resolve_inside(loc.run_dir, path)
    if target is None:
        raise HTTPException(400, "invalid file path: a path inside the run folder, without '..'")
    if not target.is_file():
        raise HTTPException(404, "no such file in the run folder")
    if tail is not None:
        with target.open("rb") as handle:
            handle.seek(max(0, target.stat().st_size - tail))
            return PlainTextResponse(handle.read().decode("utf-8", errors="replace"))
    if target.suffix in TEXT_SUFFIXES:
        # always text/plain: an .html file in a run folder must never run as a page here
        return FileResponse(target, media_type="text/plain; charset=utf-8")
    return FileResponse(target, media_type="application/octet-stream", filename=target.name)


# ----------------------------------------------------------------------------- actions (token)


@api.post("/jobs/validate", dependencies=[Depends(require_token)])
async def validate(request: Request) -> dict[str, Any]:
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "the job must be UTF-8 YAML text") from None
    # 200 either way: the request worked and the verdict is in the body; an invalid job is an
    # answer (as with `roll validate`), not a failure of the dashboard
    return await run_in_threadpool(validate_job_text, text)


@api.post("/runs/{run_id}/stop", status_code=202, dependencies=[Depends(require_token)])
def stop(
    request: Request, loc: RunLocation = Depends(run_location), ws: Workspace = Depends(workspace_of)
) -> dict[str, Any]:
    """Stop a run through the same function as ``roll jobs stop`` (roll.jobs.manage.request_stop):
    a ``stop_requested`` event, then Ray's stop_job for a submitted run, or SIGTERM to a driver
    on this host that announced itself."""
    from roll.jobs.manage import request_stop

    detail = ws.run_detail(loc.run_id, event_limit=0)
    status = detail["run"]["status"] if detail else None
    if status in FINISHED_STATUSES:
        raise HTTPException(409, f"run {loc.run_id!r} has already finished ({status})")
    client = request.client.host if request.client else None
    try:
        note = request_stop(loc.db_path, loc.run_id, source="dashboard", client=client)
    except StateError as exc:
        raise HTTPException(409, str(exc)) from exc
    except ClusterError as exc:  # recorded, but its Ray cluster did not answer
        raise HTTPException(502, str(exc)) from exc
    except (sqlite3.OperationalError, RollError) as exc:
        raise HTTPException(503, f"the run store is busy or unavailable ({exc}); try again") from exc
    return {"run_id": loc.run_id, "stop_requested": True, "note": note}


def _all_keys(ws: Workspace, loc: RunLocation) -> list[str]:
    detail = ws.run_detail(loc.run_id, event_limit=0)
    return [] if detail is None else detail["metric_keys"][:MAX_KEYS]


def _list_files(run_dir: Path, max_depth: int = 3) -> list[dict[str, Any]]:
    """Regular files of a run folder, three levels deep (symlinks and hidden files skipped; at most 500)."""
    found = []
    base = len(run_dir.parts)
    for folder, dirs, names in os.walk(run_dir, followlinks=False):
        here = Path(folder)
        depth = len(here.parts) - base
        dirs[:] = [] if depth >= max_depth else sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = here / name
            if path.is_symlink() or name.startswith("."):
                continue
            found.append({"path": path.relative_to(run_dir).as_posix(), "bytes": path.stat().st_size})
            if len(found) >= MAX_FILES_LISTED:
                return found
    return sorted(found, key=lambda f: f["path"])
