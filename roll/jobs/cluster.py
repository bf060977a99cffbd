"""``roll cluster up | status | down``: a local Ray cluster, or one from the Ray cluster launcher.

``up`` starts a Ray head on this machine (``ray start --head``) and, for tests and demos, extra
local worker nodes (more ``ray start --address`` raylets, each with its own CPUs and fake GPUs);
with a launcher YAML it runs ``ray up``. What it started is written to a state file, so ``down``
stops exactly that: each ``ray start`` runs in its own process group, and ``down`` signals those
groups, never "every Ray process of this user" (``ray stop`` would also end other people's Ray
instances on a shared machine).

Every port is chosen free at start (the defaults 6379/8265 when free), because a second Ray on a
host collides on fixed ports such as the dashboard agent's 52365.

Ray 2.60 turns token authentication on for a new cluster: ``up`` makes sure a token exists
(``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and starts every node with
``RAY_AUTH_MODE=token`` unless the caller set the mode; :func:`ray_auth_headers` gives the HTTP
header the Jobs API then needs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from roll.errors import RollError


class ClusterError(RollError):
    """A cluster could not be started, reached or stopped."""


STATE_DIR_ENV = "ROLL_STATE_DIR"
DEFAULT_GCS_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
# the object store is shared memory; a small one keeps extra local nodes from filling /dev/shm
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


@dataclass
class ClusterState:
    """What ``roll cluster up`` started, as written to the state file.

    Attributes:
        kind: "local" (``ray start`` on this machine) or "launcher" (``ray up CONFIG``).
        address: the GCS address workers and ``ray.init`` join (host:port); local only.
        dashboard_url: the Ray dashboard / Jobs API URL; local only.
        temp_dir: Ray's temp folder of this cluster (removed by ``down``); local only.
        process_groups: one process group per ``ray start``, head first; local only.
        launcher_config: the cluster launcher YAML; launcher only.
    """

    kind: str
    address: str = ""
    dashboard_url: str = ""
    temp_dir: str = ""
    process_groups: list[int] = field(default_factory=list)
    launcher_config: str = ""
    started_at: float = field(default_factory=time.time)


def state_file() -> Path:
    """Where ``up`` records what it started: ``$ROLL_STATE_DIR/cluster.json`` (default ~/.roll)."""
    return Path(os.environ.get(STATE_DIR_ENV, "~/.roll")).expanduser() / "cluster.json"


def read_state() -> ClusterState | None:
    """The recorded cluster, or None when ``roll cluster up`` started none."""
    path = state_file()
    if not path.is_file():
        return None
    try:
        return ClusterState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"{path} is not a roll cluster state file ({exc}); delete it") from exc


def _write_state(state: ClusterState) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(state), indent=2))


# ----------------------------------------------------------------------------- authentication


def _token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()


def ray_auth_token() -> str | None:
    """The token Ray's token authentication uses, where Ray looks for it; None if there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = _token_path()
    return path.read_text().strip() or None if path.is_file() else None


def ray_auth_headers() -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}`` for Ray's REST API, or {} when auth is disabled.

    Sent whenever a token exists: a cluster without authentication ignores the header, while one
    with it answers 401 without (Ray's own client sends it only when this process's
    RAY_AUTH_MODE says token).
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = ray_auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _node_env() -> dict[str, str]:
    """Environment of every ``ray start``: auth mode pinned, this interpreter's bin on PATH."""
    env = dict(os.environ)
    if "RAY_AUTH_MODE" not in env:
        if ray_auth_token() is None:
            path = _token_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(16))
            path.chmod(0o600)
        env["RAY_AUTH_MODE"] = "token"
    # the Jobs API runs entrypoints (`roll run ...`) with the head's PATH: put this venv's bin first
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


# ----------------------------------------------------------------------------- local cluster


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (the OS picks them)."""
    sockets, ports = [], []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


def _ray_exe() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if not found:
        raise ClusterError("the 'ray' command is not installed here; pip install 'ray[default]'")
    return found


def _node_ports(temp_dir: Path) -> list[str]:
    """Flags giving one node its own free ports (agents, object manager, workers)."""
    agent, grpc, runtime_env, metrics, node_manager, object_manager, low = free_ports(7)
    return [
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        f"--worker-port-list={','.join(map(str, free_ports(16)))}",
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={LOCAL_OBJECT_STORE_BYTES}",
        "--disable-usage-stats",
    ]


def _ray_start(args: list[str], env: dict[str, str], timeout_s: float) -> int:
    """Run one ``ray start`` in a new process group; returns the group id (its pid)."""
    proc = subprocess.Popen(
        [_ray_exe(), "start", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop_groups([proc.pid])
        raise ClusterError(
            f"'ray start' did not finish within {timeout_s:g}s; see `ray start --help`"
        ) from None
    if proc.returncode != 0:
        _stop_groups([proc.pid])
        tail = "\n".join(output.strip().splitlines()[-8:])
        raise ClusterError(f"'ray start {' '.join(args[:2])}' failed (exit {proc.returncode}):\n{tail}")
    return proc.pid


def start_local(
    *,
    workers: int = 0,
    num_cpus: float | None = None,
    num_gpus: int = 0,
    worker_cpus: float = 1,
    worker_gpus: int = 0,
    port: int | None = None,
    dashboard_port: int | None = None,
    timeout_s: float = 180.0,
) -> ClusterState:
    """Start a Ray head on this machine plus ``workers`` local worker nodes; record them.

    Args:
        workers: extra local nodes (separate raylets; for testing multi-node jobs on one host).
        num_cpus, num_gpus: the head's CPUs (default: Ray counts them) and GPUs (may be fake).
        worker_cpus, worker_gpus: each extra node's CPUs and (fake) GPUs.
        port, dashboard_port: GCS and dashboard ports (default 6379 and 8265, or free ones).
    """
    existing = read_state()
    if existing is not None:
        raise ClusterError(
            f"a cluster started by 'roll cluster up' is already recorded in {state_file()} "
            f"({existing.kind} {existing.dashboard_url or existing.launcher_config}); "
            "stop it with 'roll cluster down' first"
        )
    env = _node_env()
    port = port or (DEFAULT_GCS_PORT if _port_free(DEFAULT_GCS_PORT) else free_ports(1)[0])
    if dashboard_port is None:
        dashboard_port = DEFAULT_DASHBOARD_PORT if _port_free(DEFAULT_DASHBOARD_PORT) else free_ports(1)[0]
    # short: Ray puts unix sockets under it, and their paths are limited to ~107 bytes
    temp_dir = Path(tempfile.mkdtemp(prefix="roll-ray-", dir="/tmp"))
    head = [
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_ports(1)[0]}",
        f"--num-gpus={num_gpus}",
        *([f"--num-cpus={num_cpus:g}"] if num_cpus is not None else []),
        *_node_ports(temp_dir),
    ]
    state = ClusterState(
        kind="local",
        address=f"127.0.0.1:{port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        temp_dir=str(temp_dir),
    )
    try:
        state.process_groups.append(_ray_start(head, env, timeout_s))
        for _ in range(workers):
            node = [
                f"--address={state.address}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={worker_cpus:g}",
                f"--num-gpus={worker_gpus}",
                *_node_ports(temp_dir),
            ]
            state.process_groups.append(_ray_start(node, env, timeout_s))
        _write_state(state)
        wait_for_nodes(state.dashboard_url, 1 + workers, timeout_s)
    except BaseException:
        _stop_local(state)
        raise
    return state


def wait_for_nodes(dashboard_url: str, count: int, timeout_s: float) -> list[dict[str, Any]]:
    """Wait until the dashboard answers and reports ``count`` alive nodes.

    The head's job agent may register a few seconds later still; ``roll submit`` retries while
    Ray answers "No available agent".
    """
    deadline = time.monotonic() + timeout_s
    nodes: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            nodes = [n for n in list_nodes(dashboard_url) if n["state"] == "ALIVE"]
            if len(nodes) >= count and _jobs_api_answers(dashboard_url):
                return nodes
        except ClusterError:
            pass  # the dashboard is still starting
        time.sleep(0.5)
    raise ClusterError(
        f"the cluster at {dashboard_url} reports {len(nodes)} of {count} nodes after {timeout_s:g}s; "
        "see the logs under its temp dir (roll cluster status shows it)"
    )


def _jobs_api_answers(dashboard_url: str) -> bool:
    from roll.jobs.rayapi import http_json

    try:
        http_json(dashboard_url, "/api/jobs/", timeout_s=5)
    except ClusterError:
        return False
    return True


def list_nodes(dashboard_url: str) -> list[dict[str, Any]]:
    """Nodes as the state API reports them: node_id, is_head_node, state, resources_total."""
    from roll.jobs.rayapi import http_json

    reply = http_json(dashboard_url, "/api/v0/nodes?limit=1000&detail=true")
    return list(reply["data"]["result"]["result"])


# ----------------------------------------------------------------------------- launcher


def start_launcher(config: Path, timeout_s: float = 3600.0) -> ClusterState:
    """``ray up -y CONFIG`` (the Ray cluster launcher: cloud VMs, head and autoscaled workers)."""
    if not config.is_file():
        raise ClusterError(f"cluster launcher config {str(config)!r} does not exist; see deploy/README.md")
    existing = read_state()
    if existing is not None:
        raise ClusterError(
            f"a cluster started by 'roll cluster up' is already recorded in {state_file()}; "
            "stop it with 'roll cluster down' first"
        )
    run_launcher("up", config, timeout_s)
    state = ClusterState(kind="launcher", launcher_config=str(config.resolve()))
    _write_state(state)
    return state


def run_launcher(verb: str, config: Path, timeout_s: float) -> None:
    """``ray up|down -y CONFIG``, streaming its output; a failure is one ClusterError."""
    command = [_ray_exe(), verb, "-y", str(config)]
    try:
        result = subprocess.run(command, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"'{' '.join(command)}' did not finish within {timeout_s:g}s") from None
    if result.returncode != 0:
        raise ClusterError(
            f"'ray {verb} {config}' failed (exit {result.returncode}); its output above says why "
            "(cloud credentials, the provider's SDK such as boto3, quotas)"
        )


# ----------------------------------------------------------------------------- down


def stop_cluster(timeout_s: float = 3600.0) -> str:
    """Stop what ``roll cluster up`` started and forget it; returns a one-line summary."""
    state = read_state()
    if state is None:
        raise ClusterError(f"no cluster started by 'roll cluster up' is recorded ({state_file()} is missing)")
    if state.kind == "launcher":
        run_launcher("down", Path(state.launcher_config), timeout_s)
        state_file().unlink(missing_ok=True)
        return f"stopped the launcher cluster of {state.launcher_config}"
    _stop_local(state)
    return f"stopped the local cluster at {state.address} ({len(state.process_groups)} node(s))"


def _stop_local(state: ClusterState) -> None:
    _stop_groups(list(reversed(state.process_groups)))
    if state.temp_dir:
        shutil.rmtree(state.temp_dir, ignore_errors=True)
    state_file().unlink(missing_ok=True)


def _group_alive(pgid: int) -> bool:
    """Whether a process group still has a live (non-zombie) member."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel (zombies count as members there)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        # after the command name: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _stop_groups(pgids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM each process group, then SIGKILL what is left after ``grace_s``; wait for the end."""
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pgid in pgids:
            if _group_alive(pgid):
                try:
                    os.killpg(pgid, signum)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait_s
        while any(_group_alive(p) for p in pgids) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not any(_group_alive(p) for p in pgids):
            return


# ----------------------------------------------------------------------------- status


def cluster_status(address: str | None = None) -> str:
    """The text ``roll cluster status`` prints: nodes with CPUs/GPUs/memory, then running jobs."""
    from roll.jobs.rayapi import call, job_client, resolve_address

    url = resolve_address(address)
    nodes = list_nodes(url)
    jobs = call(url, "listing jobs", job_client(url).list_jobs)
    alive = [n for n in nodes if n["state"] == "ALIVE"]
    total = {k: sum(n["resources_total"].get(k, 0.0) for n in alive) for k in ("CPU", "GPU", "memory")}
    lines = [
        f"cluster {url}: {len(alive)} node(s) alive, {total['CPU']:g} CPUs, {total['GPU']:g} GPUs, "
        f"{total['memory'] / 2**30:.1f} GiB memory",
        f"{'NODE':14} {'ROLE':6} {'STATE':6} {'CPU':>5} {'GPU':>4} {'MEMORY':>10}",
    ]
    for node in sorted(nodes, key=lambda n: (not n["is_head_node"], n["node_id"])):
        res = node["resources_total"]
        lines.append(
            f"{node['node_id'][:12]:14} {'head' if node['is_head_node'] else 'worker':6} "
            f"{node['state'][:6]:6} {res.get('CPU', 0):>5g} {res.get('GPU', 0):>4g} "
            f"{res.get('memory', 0) / 2**30:>6.1f} GiB"
        )
    running = [j for j in jobs if str(getattr(j.status, "value", j.status)) in ("PENDING", "RUNNING")]
    lines.append(f"running jobs: {len(running)}")
    for job in running:
        lines.append(f"  {job.submission_id}  {getattr(job.status, 'value', job.status)}  {job.entrypoint}")
    state = read_state()
    if state is not None and state.kind == "local" and state.dashboard_url == url:
        lines.append(f"started by 'roll cluster up' (state {state_file()}, Ray logs under {state.temp_dir})")
    return "\n".join(lines)
