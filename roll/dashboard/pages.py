"""Server-rendered pages: runs list, run page (charts, rollouts, config, events, files), validate.

Every value from a run store (run names, prompts, model outputs, config) is escaped here or set as
``textContent`` by the scripts: a model's output must never become markup. Pages carry their data
to the scripts in ``<script type="application/json">``, which the browser does not execute, so the
Content-Security-Policy can forbid inline script.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from roll.config.loader import dump_yaml
from roll.jobs.runstore import RUN_STATUSES

from .security import valid_run_id
from .workspace import Workspace

UPLOT = "vendor/uplot-1.6.32"
MAX_COMPARED = 8

# The run page's charts. ``keys`` are drawn on the left axis, ``right`` on a second axis,
# ``prefix`` adds every key that starts with it (reward per reward function) minus ``exclude``.
CHARTS: list[dict[str, Any]] = [
    {
        "id": "reward",
        "title": "Reward (mean and per reward function)",
        "keys": ["reward/mean"],
        "prefix": "reward/",
        "exclude": ["reward/std", "reward/error_count"],
    },
    {
        "id": "zero_std",
        "title": "Groups with zero reward variance (share)",
        "keys": ["groups/zero_std_share"],
    },
    {"id": "kl", "title": "KL to the reference (actor/kl)", "keys": ["actor/kl"]},
    {"id": "entropy", "title": "Entropy (actor/entropy)", "keys": ["actor/entropy"]},
    {"id": "clip", "title": "Clip ratio (actor/clip_frac)", "keys": ["actor/clip_frac"]},
    {
        "id": "length",
        "title": "Response length (tokens) and truncated share (right axis)",
        "keys": ["response/length_mean", "response/length_max"],
        "right": ["response/truncated_share"],
    },
    {"id": "tps", "title": "Throughput (perf/tokens_per_s)", "keys": ["perf/tokens_per_s"]},
    {
        "id": "time",
        "title": "Time per stage (s, stacked)",
        "keys": ["time/generate", "time/reward", "time/reference", "time/train", "time/sync"],
        "stacked": True,
    },
]


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page_data(data: dict[str, Any]) -> str:
    # '<' escaped so no text inside can close the <script> element
    text = json.dumps(data).replace("<", "\\u003c")
    return f'<script type="application/json" id="page-data">{text}</script>'


def _layout(
    title: str, body: str, page: str, data: dict[str, Any] | None = None, status: int = 200
) -> HTMLResponse:
    charts = page == "run"
    head = [
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)} · roll</title>",
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">',
        f'<link rel="stylesheet" href="/static/{UPLOT}/uPlot.min.css">' if charts else "",
        '<link rel="stylesheet" href="/static/dashboard.css">',
        f'<script src="/static/{UPLOT}/uPlot.iife.min.js" defer></script>' if charts else "",
        '<script src="/static/common.js" defer></script>',
        f'<script src="/static/{page}.js" defer></script>' if page != "common" else "",
    ]
    nav = (
        '<header class="top"><a class="brand" href="/">roll</a><a href="/">Runs</a>'
        '<a href="/validate">Validate a job</a><span class="spacer"></span>'
        '<form id="token-form" class="token-form"><label>token <input type="password" id="token-input" '
        'autocomplete="off" placeholder="paste the printed token"></label>'
        '<button type="submit">save</button><span id="token-state"></span></form></header>'
    )
    doc = (
        f"<!doctype html><html lang='en'><head>{''.join(head)}</head>"
        f"<body data-page='{page}'>{nav}<main>{body}</main>{_page_data(data or {})}</body></html>"
    )
    return HTMLResponse(doc, status_code=status)


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _not_found(message: str) -> HTMLResponse:
    return _layout("not found", f"<h1>Not found</h1><p>{_e(message)}</p>", "common", status=404)


def runs_table_rows(runs: list[dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        rid, linkable = run["id"], valid_run_id(run["id"])
        name = f'<a href="/runs/{quote(rid)}">{_e(rid)}</a>' if linkable else _e(rid)
        box = f'<input type="checkbox" name="run" value="{_e(rid)}">' if linkable else ""
        summary = run["summary"]
        rows.append(
            f'<tr data-run="{_e(rid)}"><td>{box}</td><td>{name}</td><td>{_e(run["name"])}</td>'
            f'<td><span class="status status-{_e(run["status"])}">{_e(run["status"])}</span></td>'
            f"<td>{_e(run['pipeline'])}</td><td>{_when(run['started_at'] or run['created_at'])}</td>"
            f'<td class="num">{_e(run["last_step"])}</td><td class="num">{_num(run["latest_reward"])}</td>'
            f'<td class="num">{_num(summary["last"])}</td><td class="num">{_num(summary["min"])}</td>'
            f'<td class="num">{_num(summary["max"])}</td><td>{_e(run["run_dir"])}</td></tr>'
        )
    return "".join(rows) or '<tr><td colspan="12" class="empty">no runs match</td></tr>'


def _runs_page(ws: Workspace, status: str | None, metric: str) -> HTMLResponse:
    runs = ws.list_runs(status, metric)
    options = "".join(
        f'<option value="{s}"{" selected" if s == status else ""}>{s}</option>' for s in RUN_STATUSES
    )
    body = f"""
<h1>Runs <small>in {_e(ws.root)}</small></h1>
<form class="filters" method="get" action="/">
  <label>status <select name="status" id="status-filter">
    <option value="">all</option>{options}</select></label>
  <label>summary metric <input name="metric" value="{_e(metric)}" list="metric-keys" size="28"></label>
  <datalist id="metric-keys">{"".join(f'<option value="{_e(c)}">' for c in _common_keys())}</datalist>
  <button type="submit">apply</button>
</form>
<form method="get" action="/compare" id="compare-form">
<table class="runs" id="runs-table"><thead><tr><th></th><th>run</th><th>name</th><th>status</th>
<th>pipeline</th><th>started</th><th>step</th><th>latest reward</th><th>{_e(metric)} last</th><th>min</th>
<th>max</th><th>folder</th></tr></thead><tbody>{runs_table_rows(runs)}</tbody></table>
<button type="submit" id="compare-button">compare selected runs</button>
</form>"""
    return _layout("runs", body, "runs", {"status": status, "metric": metric})


def _common_keys() -> list[str]:
    keys = [k for chart in CHARTS for k in chart["keys"] + chart.get("right", [])]
    return keys + ["time/step", "loss/policy"]


def _run_page(ws: Workspace, run_id: str, compare: str) -> HTMLResponse:
    detail = ws.run_detail(run_id, event_limit=0)
    if detail is None:
        return _not_found(f"no run {run_id!r} in this workspace")
    run = detail["run"]
    others = [r for r in compare.split(",") if r and r != run_id][:MAX_COMPARED]
    compared = [r for r in others if valid_run_id(r) and ws.locate(r) is not None]
    missing = [r for r in others if r not in compared]
    loc = ws.locate(run_id)
    config_text = _resolved_config(loc.run_dir if loc else None, detail["config_json"])
    note = f'<p class="warn">not found, not compared: {_e(", ".join(missing))}</p>' if missing else ""
    links = [f'<a href="/runs/{quote(r)}">{_e(r)}</a>' for r in compared]
    compare_note = f"<p>compared with: {', '.join(links)}</p>" if links else ""
    body = f"""
<h1 id="run-title">{_e(run_id)}
<span id="run-status" class="status status-{_e(run["status"])}">{_e(run["status"])}</span></h1>
<p class="meta">pipeline <b>{_e(run["pipeline"])}</b> · name <b>{_e(run["name"])}</b> · step
<b id="run-step">{_e(run["last_step"])}</b> · started {_when(run["started_at"] or run["created_at"])}
· folder <code>{_e(run["run_dir"])}</code>
<button id="stop-button" type="button">stop run</button> <span id="stop-state"></span></p>
{note}{compare_note}
<nav class="sections"><a href="#charts">charts</a><a href="#rollouts">rollouts</a><a href="#config">config</a>
<a href="#events">events</a><a href="#files">files</a></nav>
<section id="charts"><h2>Charts</h2>
<div class="controls">
  <label>x axis <select id="x-axis"><option value="step">step</option>
    <option value="wall">wall time (s since start)</option></select></label>
  <label>smoothing <input type="range" id="smoothing" min="0" max="0.99" step="0.01" value="0.6"></label>
  <output id="smoothing-value">0.60</output>
  <span class="hint">faint line: raw values · drag to zoom (full resolution) · double-click to reset</span>
  <span id="live-state" class="live"></span>
</div>
<div id="legend-runs"></div>
<div id="chart-grid" class="chart-grid"></div>
</section>
<section id="rollouts"><h2>Rollouts</h2>
<div class="controls">
  <label>step <input type="range" id="step-slider" min="0" max="0" value="0"></label>
  <output id="step-value">–</output>
  <label><input type="checkbox" id="follow-latest" checked> follow latest</label>
  <label>sort <select id="rollout-sort"><option value="group">group</option>
    <option value="reward">reward</option><option value="advantage">advantage</option></select></label>
  <label>order <select id="rollout-order"><option value="desc">high first</option>
    <option value="asc">low first</option></select></label>
  <label>search <input type="search" id="rollout-search" placeholder="text in prompt or response"></label>
  <span id="rollout-count"></span>
</div>
<div id="rollout-groups"></div>
</section>
<section id="config"><h2>Resolved config</h2><pre id="config-text">{_e(config_text)}</pre></section>
<section id="events"><h2>Events</h2><table class="events"><thead><tr><th>time</th><th>step</th><th>kind</th>
<th>message</th></tr></thead><tbody id="events-body"></tbody></table></section>
<section id="files"><h2>Files</h2><ul id="files-list"></ul></section>"""
    data = {"run_id": run_id, "compare": compared, "charts": CHARTS, "status": run["status"]}
    return _layout(run_id, body, "run", data)


def _resolved_config(run_dir: Path | None, config_json: str | None) -> str:
    """The run folder's job.yaml (every default filled in), else the config stored with the run."""
    if run_dir is not None:
        job = run_dir / "job.yaml"
        if job.is_file() and not job.is_symlink():
            return job.read_text(errors="replace")
    if config_json is None:
        return "(no config stored)"
    return dump_yaml(json.loads(config_json))


def workspace_of(request: Request) -> Workspace:
    """The app's workspace (a FastAPI dependency)."""
    return request.app.state.workspace


pages = APIRouter()


@pages.get("/", response_class=HTMLResponse)
def runs_page(
    ws: Workspace = Depends(workspace_of),
    status: str = Query("", max_length=20),
    metric: str = Query("reward/mean", max_length=200),
) -> HTMLResponse:
    return _runs_page(ws, status if status in RUN_STATUSES else None, metric or "reward/mean")


@pages.get("/compare")
def compare(run: list[str] = Query([])) -> RedirectResponse:
    """``/compare?run=a&run=b`` (the runs list's form) -> ``/runs/a?compare=b``."""
    chosen = [r for r in run if valid_run_id(r)]
    if not chosen:
        return RedirectResponse("/", status_code=303)
    rest = ",".join(chosen[1 : MAX_COMPARED + 1])
    target = f"/runs/{quote(chosen[0])}" + (f"?compare={quote(rest)}" if rest else "")
    return RedirectResponse(target, status_code=303)


@pages.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(
    run_id: str, ws: Workspace = Depends(workspace_of), compare: str = Query("", max_length=2000)
) -> HTMLResponse:
    if not valid_run_id(run_id):
        return _not_found("invalid run id")
    return _run_page(ws, run_id, compare)


@pages.get("/validate", response_class=HTMLResponse)
def validate_page() -> HTMLResponse:
    return _layout("validate", VALIDATE_BODY, "validate")


VALIDATE_BODY = """
<h1>Validate a job</h1>
<p>Paste a YAML job or choose a file; it is checked with the same code and messages as
<code>roll validate</code> (a job that uses <code>imports:</code> is refused here). Needs the token.</p>
<p><input type="file" id="job-file" accept=".yaml,.yml,text/yaml"></p>
<textarea id="job-text" rows="22" spellcheck="false" placeholder="pipeline: rlvr"></textarea>
<p><button id="validate-button" type="button">validate</button></p>
<pre id="validate-result" class="result"></pre>"""
