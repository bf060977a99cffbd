"""Talking to a Ray cluster's dashboard: which address, the auth header, one clear error.

Ray's REST API (the Jobs API and the state API behind ``roll cluster status``) lives on the
dashboard port (8265 by default). The address comes from ``--address``, else ``RAY_ADDRESS`` when
it is an http URL (what Ray's own ``ray job`` CLI reads), else the cluster ``roll cluster up``
recorded. Every failure to reach it becomes one ``ClusterError`` line naming the address.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any

from ray.exceptions import AuthenticationError

from roll.jobs.cluster import ClusterError, ray_auth_headers, read_state

# what Ray's job SDK raises: RuntimeError for error replies, requests' HTTPError (an OSError) from
# raise_for_status, AuthenticationError for 401/403
_SDK_ERRORS = (RuntimeError, OSError, AuthenticationError)


def resolve_address(address: str | None = None) -> str:
    """The dashboard URL to use (``http://host:8265``); a bare ``host:port`` gets ``http://``."""
    chosen = address or _env_address()
    if not chosen:
        state = read_state()
        if state is not None and state.dashboard_url:
            chosen = state.dashboard_url
    if not chosen:
        raise ClusterError(
            "no Ray cluster address: pass --address http://HEAD:8265, set RAY_ADDRESS to that URL, "
            "or start a local cluster with 'roll cluster up'"
        )
    if "://" not in chosen:
        chosen = f"http://{chosen}"
    if not chosen.startswith(("http://", "https://")):
        raise ClusterError(
            f"address {chosen!r} is not the Ray dashboard's http(s) URL; pass e.g. "
            "--address http://127.0.0.1:8265 (the Jobs API lives on the dashboard port)"
        )
    return chosen.rstrip("/")


def known_address(address: str | None = None) -> str | None:
    """Like :func:`resolve_address`, but None when no cluster is named anywhere."""
    try:
        return resolve_address(address)
    except ClusterError:
        return None


def _env_address() -> str | None:
    value = os.environ.get("RAY_ADDRESS", "")
    # ray://host:10001 and host:6379 are driver addresses, not the dashboard's
    return value if value.startswith(("http://", "https://")) else None


def http_json(dashboard_url: str, path: str, timeout_s: float = 10.0) -> Any:
    """GET ``dashboard_url + path`` with the auth header; the decoded JSON reply."""
    request = urllib.request.Request(dashboard_url + path, headers=ray_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return json.loads(reply.read().decode())
    except urllib.error.HTTPError as exc:
        raise ClusterError(
            _http_problem(dashboard_url, exc.code, exc.read().decode(errors="replace"))
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise unreachable(dashboard_url, exc) from None


def _http_problem(url: str, status: int, body: str) -> str:
    if status == 401:
        return (
            f"the Ray cluster at {url} requires a token (401): put it in ~/.ray/auth_token or "
            "RAY_AUTH_TOKEN (the head's token: 'ray get-auth-token' on the head)"
        )
    if status == 403:
        return f"the Ray cluster at {url} refused this token (403); use the head's ~/.ray/auth_token"
    return f"the Ray cluster at {url} answered {status}: {body.strip()[:300]}"


def unreachable(url: str, exc: BaseException) -> ClusterError:
    reason = getattr(exc, "reason", None) or exc
    return ClusterError(
        f"cannot reach the Ray cluster at {url} ({reason}); is it up? Start one with "
        "'roll cluster up' or pass --address http://HEAD:8265"
    )


def job_client(address: str | None = None):
    """A ``JobSubmissionClient`` for the resolved address, with the auth header."""
    from ray.job_submission import JobSubmissionClient

    # Ray's SDK logs every upload and socket close at INFO; roll prints what matters itself
    logging.getLogger("ray").setLevel(logging.WARNING)
    url = resolve_address(address)
    try:
        return JobSubmissionClient(url, headers=ray_auth_headers())
    except ConnectionError as exc:
        raise unreachable(url, exc) from None
    except _SDK_ERRORS as exc:
        raise ClusterError(_sdk_problem(url, exc)) from None


def _sdk_problem(url: str, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "401" in text or "Authentication required" in text:
        return _http_problem(url, 401, text)
    if "403" in text or "Authentication failed" in text:
        return _http_problem(url, 403, text)
    return f"the Ray cluster at {url}: {text}"


def call(url: str, action: str, fn, *args: Any, **kwargs: Any) -> Any:
    """Run one Jobs API call; a failure becomes one ClusterError line naming ``action``."""
    try:
        return fn(*args, **kwargs)
    except ConnectionError as exc:
        raise unreachable(url, exc) from None
    except _SDK_ERRORS as exc:
        raise ClusterError(f"{action}: {_sdk_problem(url, exc)}") from None
