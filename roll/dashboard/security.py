"""The dashboard's guards: the access token, the bind address, Host/Origin checks, run ids and
file paths inside a run folder.

Ray's own dashboard has shipped unauthenticated code execution and path traversal; these checks are
small on purpose so each can be read, and each has a test (tests/roll/dashboard/test_security.py).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from roll.errors import RollError

TOKEN_FILE = ".roll-dashboard-token"
DEFAULT_HOST = "127.0.0.1"
# Not used by Ray (8265), TensorBoard (6006), MLflow (5000), Gradio (7860), Jupyter (8888) or 8080.
DEFAULT_PORT = 8686
MAX_BODY_BYTES = 1 << 20
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


class DashboardError(RollError):
    """The dashboard cannot start as asked (unsafe bind address, unreadable token file, ...)."""


# ----------------------------------------------------------------------------- token


def ensure_token(workspace: Path) -> tuple[str, bool]:
    """The workspace's dashboard token, generated on first use; returns ``(token, created)``.

    The token lives in ``<workspace>/.roll-dashboard-token``, created with mode 0600 in one
    ``open(O_CREAT | O_EXCL)`` so it is never readable by others, not even for a moment. A token
    file that others can read or that is not a regular file is refused rather than used.
    """
    path = workspace / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read_token(path), False
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token, True


def _read_token(path: Path) -> str:
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise DashboardError(f"{path} is not a regular file; delete it so a new token is generated")
    if info.st_mode & 0o077:
        raise DashboardError(
            f"{path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}); run "
            f"'chmod 600 {path}', or delete it so a new token is generated"
        )
    token = path.read_text().strip()
    if len(token) < 32:
        raise DashboardError(f"{path} does not hold a valid token; delete it so a new one is generated")
    return token


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization: Bearer <token>`` header carries ``token`` (constant time)."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


# ----------------------------------------------------------------------------- bind / Host / Origin


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or 'localhost') only listens on this machine."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen on a non-loopback address without a token."""
    if token is None and not is_loopback(host):
        raise DashboardError(
            f"refusing to listen on {host!r} without a token: anyone who can reach it could stop "
            "runs. Bind 127.0.0.1 (the default) and use an SSH tunnel, or start with a token"
        )


def _host_with_port(host: str, port: int) -> str:
    name = host.strip("[]")
    if ":" in name:  # IPv6 literals are bracketed in Host headers and URLs
        name = f"[{name}]"
    return f"{name}:{port}".lower()


def allowed_hosts(host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host header values accepted: the loopback names and the bind host, each with the port.

    Anything else is refused, which defeats DNS rebinding (a page on evil.example whose name now
    resolves to 127.0.0.1 still sends ``Host: evil.example:PORT``). A wildcard bind (0.0.0.0, ::)
    also accepts this machine's host names; ``extra`` adds names a user reaches it by.
    """
    names = set(LOOPBACK_NAMES) | set(extra)
    if host not in ("0.0.0.0", "::", ""):
        names.add(host)
    else:
        import socket

        names |= {socket.gethostname(), socket.getfqdn()}
    return frozenset(_host_with_port(name, port) for name in names)


def origin_allowed(origin: str | None, hosts: frozenset[str]) -> bool:
    """Whether a request's Origin is this dashboard (or absent: not sent by a browser page).

    Browsers send Origin on every cross-origin POST; ``null`` (sandboxed frames, file:// pages)
    is refused along with any other site.
    """
    if origin is None:
        return True
    scheme, sep, rest = origin.partition("://")
    return bool(sep) and scheme == "http" and rest.lower() in hosts


# ----------------------------------------------------------------------------- run ids and paths


def valid_run_id(run_id: str) -> bool:
    """Run ids are letters, digits, '.', '_' and '-' (at most 128), starting with a letter or digit."""
    return RUN_ID_RE.fullmatch(run_id) is not None


def resolve_inside(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names inside ``root``, or None if the name tries to leave it.

    Refused: absolute paths, '..' parts, backslashes, NUL bytes, any '%' left after the server's
    one URL-decoding (so double-encoded ``%252e%252e%252f`` never reaches the file system as
    '../'), and names whose resolved target (symlinks followed) lies outside ``root``.
    """
    if not relative or len(relative) > 1024:
        return None
    if any(bad in relative for bad in ("\x00", "\\", "%")) or relative.startswith("/"):
        return None
    parts = relative.split("/")
    if any(part in ("..", ".") for part in parts) or Path(relative).is_absolute():
        return None
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        return None
    return target
