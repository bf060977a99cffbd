"""Security of the dashboard: bind address, token, Host/Origin, CORS, body size, YAML, paths, ids.

Each guard the issue lists has a test here; the raw-HTTP tests talk to a live uvicorn so that
'../' reaches the server exactly as sent (HTTP clients normalise it away).
"""

from __future__ import annotations

import ast
import http.client
import inspect
import os
import stat
from pathlib import Path

import pytest
from dashboard_support import AUTH, BASE, PORT, RUN_A, TOKEN

import roll.dashboard
import roll.dashboard.security as security
from roll.dashboard import DEFAULT_HOST, DEFAULT_PORT, DashboardError, create_app, serve
from roll.dashboard.app import api, require_token
from roll.dashboard.pages import pages
from roll.dashboard.security import (
    TOKEN_FILE,
    allowed_hosts,
    check_bind,
    ensure_token,
    resolve_inside,
    token_matches,
    valid_run_id,
)
from roll.dashboard.server import prepare
from roll.jobs.runstore import RunStore

STATE_CHANGING = [("/api/jobs/validate", "pipeline: rlvr\n"), (f"/api/runs/{RUN_A}/stop", "")]


# ----------------------------------------------------------------------------- bind address


def test_binds_loopback_by_default_on_an_unused_port():
    assert DEFAULT_HOST == "127.0.0.1"
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert DEFAULT_PORT == 8686
    assert DEFAULT_PORT not in (8265, 6006, 5000, 7860, 8080, 8888)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.7", "10.0.0.2", "dashboard.example.com"])
def test_refuses_a_non_loopback_host_without_a_token(tmp_path, host):
    with pytest.raises(DashboardError, match="without a token"):
        check_bind(host, None)
    with pytest.raises(DashboardError, match="without a token"):
        prepare(tmp_path, host, use_token=False)
    check_bind(host, TOKEN)  # with a token it may


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_may_run_without_a_token(tmp_path, host, capsys):
    check_bind(host, None)
    assert prepare(tmp_path, host, use_token=False) is None
    assert "read-only" in capsys.readouterr().out


def test_app_without_token_refuses_state_changes(workspace):
    from fastapi.testclient import TestClient

    with TestClient(create_app(workspace.root, None, port=PORT), base_url=BASE) as client:
        for path, body in STATE_CHANGING:
            response = client.post(path, content=body, headers=AUTH)
            assert response.status_code == 403 and "read-only" in response.json()["detail"]


# ----------------------------------------------------------------------------- token


def test_token_generated_once_stored_0600_and_printed_once(tmp_path, capsys):
    first = prepare(tmp_path, "127.0.0.1", 8686)
    out = capsys.readouterr().out
    path = tmp_path / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first and len(first) >= 40
    assert out.count(first) == 2 and f"http://127.0.0.1:8686/#token={first}" in out
    again = prepare(tmp_path, "127.0.0.1", 8686)
    out = capsys.readouterr().out
    assert again == first and first not in out and TOKEN_FILE in out


def test_token_file_readable_by_others_is_refused(tmp_path):
    ensure_token(tmp_path)
    os.chmod(tmp_path / TOKEN_FILE, 0o644)
    with pytest.raises(DashboardError, match="chmod 600"):
        ensure_token(tmp_path)


def test_token_file_symlink_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("x" * 50)
    os.chmod(target, 0o600)
    (tmp_path / TOKEN_FILE).symlink_to(target)
    with pytest.raises(DashboardError, match="not a regular file"):
        ensure_token(tmp_path)


def test_missing_workspace_is_a_clear_error(tmp_path):
    with pytest.raises(DashboardError, match="--workspace"):
        prepare(tmp_path / "nope")


def test_token_compared_in_constant_time(monkeypatch):
    calls = []
    real = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert token_matches(f"Bearer {TOKEN}", TOKEN)
    assert not token_matches("Bearer wrong", TOKEN)
    assert len(calls) == 2
    assert not token_matches(None, TOKEN) and not token_matches(f"Basic {TOKEN}", TOKEN)


def test_every_state_changing_route_needs_the_token(client, workspace):
    routes = [r for router in (api, pages) for r in router.routes]
    posts = sorted(r.path for r in routes if "POST" in r.methods)
    assert posts == ["/api/jobs/validate", "/api/runs/{run_id}/stop"]
    others = {m for r in routes for m in r.methods} - {"GET", "POST"}
    assert not others  # no PUT / DELETE / PATCH routes around the token check
    assert all(
        require_token in [d.call for d in r.dependant.dependencies] for r in routes if "POST" in r.methods
    )
    for path, body in STATE_CHANGING:
        missing = client.post(path, content=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        for header in (f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}"):
            assert client.post(path, content=body, headers={"Authorization": header}).status_code in (
                401,
                403,
            )
        assert client.post(path, content=body, headers=AUTH).status_code not in (401, 403)
    with RunStore(workspace.db_a) as store:  # only the one authorised stop was recorded
        assert [e["kind"] for e in store.get_events(RUN_A)].count("stop_requested") == 1


@pytest.mark.parametrize("path", [p for p, _ in STATE_CHANGING])
def test_state_changing_routes_reject_get(client, workspace, path):
    response = client.get(path, headers=AUTH)
    assert response.status_code == 405
    with RunStore(workspace.db_a) as store:
        assert "stop_requested" not in [e["kind"] for e in store.get_events(RUN_A)]


# ----------------------------------------------------------------------------- Host / Origin / CORS


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        f"evil.example:{PORT}",
        "127.0.0.1",
        f"127.0.0.1:{PORT + 1}",
        f"127.0.0.1.nip.io:{PORT}",
        "",
    ],
)
def test_foreign_host_headers_are_refused(client, host):
    for path in ("/", "/api/runs", f"/api/runs/{RUN_A}/metrics", "/static/run.js"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 400, (path, host)
    assert client.post(f"/api/runs/{RUN_A}/stop", headers={**AUTH, "Host": host}).status_code == 400


@pytest.mark.parametrize(
    "host", [f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"[::1]:{PORT}", f"LOCALHOST:{PORT}"]
)
def test_loopback_host_headers_are_accepted(client, host):
    assert client.get("/api/runs", headers={"Host": host}).status_code == 200


def test_configured_host_is_accepted():
    hosts = allowed_hosts("10.1.2.3", 9000, extra=("box.lan",))
    assert {"10.1.2.3:9000", "box.lan:9000", "127.0.0.1:9000", "[::1]:9000"} <= hosts
    assert "10.1.2.3:8686" not in hosts


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", f"http://evil.example:{PORT}", f"https://127.0.0.1:{PORT}"]
)
def test_cross_origin_state_changes_are_refused(client, origin):
    response = client.post(f"/api/runs/{RUN_A}/stop", headers={**AUTH, "Origin": origin})
    assert response.status_code == 403 and "cross-origin" in response.json()["detail"]
    same = client.post(f"/api/runs/{RUN_A}/stop", headers={**AUTH, "Origin": f"http://127.0.0.1:{PORT}"})
    assert same.status_code == 202


def test_no_permissive_cors_headers(client):
    evil = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    for response in (
        client.get("/api/runs", headers=evil),
        client.options(f"/api/runs/{RUN_A}/stop", headers=evil),
        client.post(f"/api/runs/{RUN_A}/stop", headers={**AUTH, **evil}),
    ):
        assert not any(k.lower().startswith("access-control-") for k in response.headers)


def test_security_headers_and_no_cdn_docs(client):
    response = client.get("/")
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 404


# ----------------------------------------------------------------------------- bodies and YAML


def test_oversized_bodies_are_refused(client):
    big = "a: 1\n" * (1 << 18)  # 1.25 MiB
    assert len(big) > 1 << 20
    assert client.post("/api/jobs/validate", content=big, headers=AUTH).status_code == 413
    assert client.post("/api/jobs/validate", content=big).status_code == 413  # before anything else

    def chunks():  # no Content-Length: the server counts what arrives
        for _ in range(20):
            yield b"x" * (64 << 10)

    assert client.post("/api/jobs/validate", content=chunks(), headers=AUTH).status_code == 413


def test_yaml_is_safe_loaded(client, tmp_path):
    marker = tmp_path / "pwned"
    for text in (
        f'pipeline: rlvr\nx: !!python/object/apply:os.system ["touch {marker}"]\n',
        f"!!python/object/new:os.system [touch {marker}]\n",
        "pipeline: !!python/name:os.system\n",
    ):
        response = client.post("/api/jobs/validate", content=text, headers=AUTH)
        assert response.status_code == 200 and response.json()["ok"] is False
    assert not marker.exists()


def test_a_submitted_job_cannot_import_modules(client, monkeypatch):
    import importlib

    imported = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real(name, *a))
    response = client.post(
        "/api/jobs/validate", content="pipeline: rlvr\nimports: [antigravity]\n", headers=AUTH
    )
    assert response.status_code == 200 and response.json()["ok"] is False
    assert "imports: the dashboard does not import modules" in response.json()["error"]
    assert "antigravity" not in imported


def test_non_utf8_bodies_are_refused(client):
    assert client.post("/api/jobs/validate", content=b"\xff\xfe\x00", headers=AUTH).status_code == 400


def test_no_endpoint_fetches_urls_or_runs_shells():
    banned_modules = {"subprocess", "urllib.request", "http.client", "httpx", "requests", "aiohttp", "pty"}
    banned_calls = {"system", "popen", "eval", "exec", "spawnl", "execv", "urlopen", "create_connection"}
    for source in Path(roll.dashboard.__file__).parent.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name for a in node.names} & banned_modules, source
            elif isinstance(node, ast.ImportFrom):
                assert node.module not in banned_modules, source
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                assert name not in banned_calls, (source, name)


# ----------------------------------------------------------------------------- run ids and paths


@pytest.mark.parametrize(
    "run_id", ["..", "a/b", "a b", "-leading-dash", "x" * 129, "a\x00b", "semi;colon", "quote'", "é"]
)
def test_invalid_run_ids(run_id):
    assert not valid_run_id(run_id)


@pytest.mark.parametrize("run_id", ["%2e%2e", "a%20b", "a;b", "a%00b", "x" * 200, "%252e%252e"])
def test_invalid_run_ids_are_refused_by_every_route(client, run_id):
    for path in ("", "/metrics", "/steps", "/rollouts", "/files", "/files/job.yaml"):
        response = client.get(f"/api/runs/{run_id}{path}")
        assert response.status_code in (400, 404), (run_id, path)
    assert client.post(f"/api/runs/{run_id}/stop", headers=AUTH).status_code in (400, 404)


BAD_PATHS = [
    "../roll.sqlite",
    "../../etc/passwd",
    "a/../../b",
    "/etc/passwd",
    "//etc/passwd",
    "tensorboard/../../beta/roll.sqlite",
    "job.yaml\x00.txt",
    "..\\..\\etc\\passwd",
    "%2e%2e/%2e%2e/etc/passwd",  # what a double-encoded name looks like after one decoding
    "%2e%2e%2fetc%2fpasswd",
    "./job.yaml",
]


@pytest.mark.parametrize("relative", BAD_PATHS)
def test_resolve_inside_refuses_traversal(workspace, relative):
    assert resolve_inside(workspace.db_a.parent, relative) is None


def test_resolve_inside_refuses_symlinks_out_and_allows_them_in(workspace, tmp_path):
    run_dir = workspace.db_a.parent
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (run_dir / "leak.txt").symlink_to(secret)
    (run_dir / "leakdir").symlink_to(tmp_path)
    (run_dir / "alias.yaml").symlink_to(run_dir / "job.yaml")
    assert resolve_inside(run_dir, "leak.txt") is None
    assert resolve_inside(run_dir, "leakdir/secret.txt") is None
    assert resolve_inside(run_dir, "alias.yaml") == (run_dir / "job.yaml").resolve()
    assert resolve_inside(run_dir, "tensorboard/events.out.tfevents.1.host") is not None


@pytest.mark.parametrize(
    "encoded",
    [
        "%2e%2e/%2e%2e/etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "%2e%2e%2f%2e%2e%2fbeta%2froll.sqlite",
        "%252e%252e%252f%252e%252e%252fetc%252fpasswd",
        "%25252e%25252e%25252fetc",
        "%2Fetc%2Fpasswd",
        "job.yaml%00.txt",
        "..%5c..%5cetc%5cpasswd",
        "leak.txt",
    ],
)
def test_file_route_refuses_encoded_traversal(client, workspace, tmp_path, encoded):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (workspace.db_a.parent / "leak.txt").symlink_to(secret)
    response = client.get(f"/api/runs/{RUN_A}/files/{encoded}")
    assert response.status_code == 400, (encoded, response.status_code)
    assert "secret" not in response.text and "root:" not in response.text


@pytest.mark.parametrize(
    "raw",
    ["../../../../etc/passwd", "..//..//etc/passwd", "/etc/passwd", "tensorboard/../../../beta/roll.sqlite"],
)
def test_raw_dot_dot_reaches_the_server_and_is_refused(live_server, raw):
    def get(path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=10)
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", f"127.0.0.1:{live_server.port}")
        conn.endheaders()
        response = conn.getresponse()
        result = response.status, response.read().decode(errors="replace")
        conn.close()
        return result

    assert get(f"/api/runs/{RUN_A}/files/job.yaml")[0] == 200  # the raw channel works
    status, body = get(f"/api/runs/{RUN_A}/files/{raw}")
    assert status == 400, (raw, status, body)
    assert "root:" not in body and "invalid file path" in body


def test_model_output_is_escaped_in_pages(workspace, client):
    with RunStore(workspace.db_a) as store:
        store.log_rollouts(
            RUN_A, 300, [{"sample_id": "x", "prompt": "<script>alert(1)</script>", "response": "<b>"}]
        )
        store.create_run(
            "xss-1", "<img src=x onerror=alert(1)>", "rlvr", {"name": "</script><script>alert(2)"}
        )
    page = client.get("/").text
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    run = client.get("/runs/xss-1").text
    assert "</script><script>alert(2)" not in run
