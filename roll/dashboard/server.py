"""``roll dashboard``: check the bind address, load or create the token, serve with uvicorn."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from .security import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    TOKEN_FILE,
    DashboardError,
    check_bind,
    ensure_token,
    is_loopback,
)


def dashboard_url(host: str, port: int) -> str:
    name = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    return f"http://{name}:{port}/"


def prepare(
    workspace: Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    use_token: bool = True,
    out: TextIO | None = None,
) -> str | None:
    """Check what ``serve`` would do, create the token if needed and say how to open the page.

    The token is printed once, when it is generated; later starts name the file that holds it.
    Returns the token (None when ``use_token`` is False, which only a loopback bind allows).
    """
    out = out or sys.stdout
    if not workspace.is_dir():
        raise DashboardError(
            f"workspace {str(workspace)!r} is not a folder; pass --workspace DIR, the folder that holds "
            "your run folders (each with a roll.sqlite)"
        )
    check_bind(host, "token" if use_token else None)
    if not use_token:
        print("no token: the dashboard is read-only (stop and validate are refused)", file=out)
        return None
    token, created = ensure_token(workspace)
    if created:
        print(
            f"dashboard token (shown once; stored in {workspace / TOKEN_FILE}, mode 0600):",
            file=out,
        )
        print(f"  {token}", file=out)
        print("open the dashboard with it (the #fragment stays in your browser):", file=out)
        print(f"  {dashboard_url(host, port)}#token={token}", file=out)
    else:
        print(f"dashboard token: in {workspace / TOKEN_FILE}", file=out)
    if not is_loopback(host):
        print(
            f"warning: listening on {host}: run data is readable by anyone who reaches it, and the token "
            "travels unencrypted over plain HTTP; prefer 127.0.0.1 with an SSH tunnel",
            file=out,
        )
    return token


def serve(
    workspace: Path | str = "runs",
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    use_token: bool = True,
) -> None:
    """Serve the dashboard of ``workspace`` on ``host:port`` until interrupted."""
    import uvicorn

    from .app import create_app

    workspace = Path(workspace)
    url = dashboard_url(host, port)
    token = prepare(workspace, host, port, use_token=use_token)
    app = create_app(workspace, token, host=host, port=port)
    print(f"roll dashboard on {url} (workspace {workspace.resolve()})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False, proxy_headers=False)
