"""Read-only access to the run stores of a workspace.

A workspace is a folder whose run folders each hold a ``roll.sqlite`` (roll.jobs.local writes
``<output_dir>/roll.sqlite``), found up to three folders deep. Every query opens its own
``mode=ro`` SQLite connection and closes it at once: in WAL mode a reader never blocks the
training driver that writes, and a read-only connection cannot write by mistake.

A run whose row says ``running`` but whose driver process on this host is gone is shown as
``interrupted`` (what ``RunStore.mark_stale_runs`` would record) without writing to the store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roll.jobs.runstore import pid_is_alive

from .security import valid_run_id

STORE_FILE = "roll.sqlite"
MAX_DEPTH = 3
# Folders that hold run artifacts, never run stores; skipping them keeps discovery fast.
_SKIP_DIRS = frozenset({"checkpoints", "tensorboard", "model", "node_modules", "__pycache__"})
# an unknown run id rescans at most this often (requests for made-up ids cannot keep walking the disk)
_MIN_RESCAN_S = 0.5
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunLocation:
    run_id: str
    db_path: Path
    run_dir: Path


@contextmanager
def read_only(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a run store, closed on exit."""
    uri = f"file:{urllib.parse.quote(str(db_path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=2.0)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


def finite(value: float | None) -> float | None:
    """JSON-safe number: NaN and ±inf become None."""
    return None if value is None or not math.isfinite(value) else float(value)


def discover_stores(root: Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """``roll.sqlite`` files at most ``max_depth`` folders below ``root`` (symlinks not followed)."""
    found = []
    base_depth = len(root.parts)
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        if STORE_FILE in files and not (here / STORE_FILE).is_symlink():
            found.append(here / STORE_FILE)
        if len(here.parts) - base_depth >= max_depth:
            dirs[:] = []
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
    return sorted(found)


class Workspace:
    """The runs of a workspace folder, read through short-lived read-only connections.

    Args:
        root: the workspace folder.
        rescan_s: how long the list of run stores is reused before the folder is walked again.
    """

    def __init__(self, root: Path, rescan_s: float = 2.0) -> None:
        self.root = root.resolve()
        self._rescan_s = rescan_s
        self._host = socket.gethostname()
        self._lock = threading.Lock()
        self._index: dict[str, RunLocation] = {}
        self._scanned_at = -math.inf

    # ----------------------------------------------------------------------------- discovery

    def _scan(self, max_age_s: float) -> dict[str, RunLocation]:
        with self._lock:
            if time.monotonic() - self._scanned_at <= max_age_s:
                return self._index
            index: dict[str, RunLocation] = {}
            for db_path in discover_stores(self.root):
                try:
                    with read_only(db_path) as conn:
                        ids = [row[0] for row in conn.execute("SELECT id FROM runs")]
                except sqlite3.DatabaseError as exc:  # not a run store, or a store being created
                    _log.warning("skipping %s: %s", db_path, exc)
                    continue
                for run_id in ids:
                    index.setdefault(run_id, RunLocation(run_id, db_path, db_path.parent))
            self._index, self._scanned_at = index, time.monotonic()
            return index

    def locations(self) -> list[RunLocation]:
        return list(self._scan(self._rescan_s).values())

    def locate(self, run_id: str) -> RunLocation | None:
        """Where a run lives; an unknown id triggers a fresh scan (a run that just started)."""
        if not valid_run_id(run_id):
            return None
        found = self._scan(self._rescan_s).get(run_id)
        return found if found is not None else self._scan(_MIN_RESCAN_S).get(run_id)

    # ----------------------------------------------------------------------------- runs

    def display_status(self, row: sqlite3.Row | dict[str, Any]) -> str:
        """The run's status, with a dead local driver's ``running`` shown as ``interrupted``."""
        if row["status"] == "running" and row["owner_host"] == self._host and row["pid"] is not None:
            if not pid_is_alive(row["pid"]):
                return "interrupted"
        return row["status"]

    def list_runs(self, status: str | None = None, metric: str = "reward/mean") -> list[dict[str, Any]]:
        """Runs newest first with their step, latest reward and last/min/max of ``metric``."""
        runs = []
        for loc in self.locations():
            try:
                with read_only(loc.db_path) as conn:
                    row = conn.execute("SELECT * FROM runs WHERE id = ?", (loc.run_id,)).fetchone()
                    if row is None:
                        continue
                    run = self._run_summary(conn, row, loc, metric)
            except sqlite3.DatabaseError as exc:
                _log.warning("cannot read %s: %s", loc.db_path, exc)
                continue
            if status is None or run["status"] == status:
                runs.append(run)
        runs.sort(key=lambda r: r["created_at"] or 0.0, reverse=True)
        return runs

    def _run_summary(
        self, conn: sqlite3.Connection, row: sqlite3.Row, loc: RunLocation, metric: str
    ) -> dict[str, Any]:
        run = {k: row[k] for k in row.keys() if k != "config_json"}
        run["stored_status"], run["status"] = row["status"], self.display_status(row)
        run["run_dir"] = _relative(loc.run_dir, self.root)
        run["latest_reward"] = _last_value(conn, loc.run_id, "reward/mean")
        low, high = conn.execute(
            "SELECT MIN(value), MAX(value) FROM metrics WHERE run_id = ? AND key = ?", (loc.run_id, metric)
        ).fetchone()
        last = _last_value(conn, loc.run_id, metric)
        run["summary"] = {"metric": metric, "last": last, "min": finite(low), "max": finite(high)}
        return run

    def run_detail(self, run_id: str, events_after: int = 0, event_limit: int = 500) -> dict[str, Any] | None:
        """A run's row, stored config, recent events, metric keys and rollout step count."""
        loc = self.locate(run_id)
        if loc is None:
            return None
        with read_only(loc.db_path) as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            run = self._run_summary(conn, row, loc, "reward/mean")
            events = conn.execute(
                "SELECT id, step, time, kind, message, data_json FROM events WHERE run_id = ? AND id > ?"
                " ORDER BY id DESC LIMIT ?",
                (run_id, events_after, event_limit),
            ).fetchall()
            keys = [
                r[0] for r in conn.execute("SELECT DISTINCT key FROM metrics WHERE run_id = ?", (run_id,))
            ]
            stop = conn.execute(
                "SELECT 1 FROM events WHERE run_id = ? AND kind = 'stop_requested' LIMIT 1", (run_id,)
            ).fetchone()
            n_steps = conn.execute(
                "SELECT COUNT(DISTINCT step) FROM rollouts WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
        return {
            "run": run,
            "config_json": row["config_json"],
            "events": [_event(e) for e in reversed(events)],
            "metric_keys": sorted(keys),
            "rollout_steps": n_steps,
            "stop_requested": stop is not None,
        }

    # ----------------------------------------------------------------------------- metrics

    def metric_rows(
        self, loc: RunLocation, keys: Sequence[str], end: int | None
    ) -> dict[str, list[tuple[int, float, float | None]]]:
        """``{key: [(step, value, wall_time), ...]}`` up to step ``end``; NULL values read as NaN."""
        query = "SELECT key, step, value, wall_time FROM metrics WHERE run_id = ?"
        params: list[Any] = [loc.run_id]
        query += f" AND key IN ({', '.join('?' * len(keys))})"
        params.extend(keys)
        if end is not None:
            query += " AND step <= ?"
            params.append(end)
        series: dict[str, list[tuple[int, float, float | None]]] = {key: [] for key in keys}
        with read_only(loc.db_path) as conn:
            for key, step, value, wall in conn.execute(query + " ORDER BY key, step", params):
                series[key].append((step, math.nan if value is None else value, wall))
        return series

    def wall_origin(self, loc: RunLocation) -> float | None:
        """Wall time of the run's first logged step: zero of the charts' wall-time axis."""
        with read_only(loc.db_path) as conn:
            row = conn.execute(
                "SELECT MIN(wall_time) FROM metrics WHERE run_id = ? AND step ="
                " (SELECT MIN(step) FROM metrics WHERE run_id = ?)",
                (loc.run_id, loc.run_id),
            ).fetchone()
        return row[0]

    # ----------------------------------------------------------------------------- rollouts

    def rollout_steps(self, loc: RunLocation) -> list[int]:
        with read_only(loc.db_path) as conn:
            rows = conn.execute(
                "SELECT DISTINCT step FROM rollouts WHERE run_id = ? ORDER BY step", (loc.run_id,)
            )
            return [r[0] for r in rows]

    def rollouts(self, loc: RunLocation, step: int) -> list[dict[str, Any]]:
        with read_only(loc.db_path) as conn:
            rows = conn.execute(
                "SELECT sample_id, group_id, prompt, response, reward, advantage, state, data_json"
                " FROM rollouts WHERE run_id = ? AND step = ? ORDER BY group_id, sample_id",
                (loc.run_id, step),
            ).fetchall()
        return [dict(r) for r in rows]


def _last_value(conn: sqlite3.Connection, run_id: str, key: str) -> float | None:
    row = conn.execute(
        "SELECT value FROM metrics WHERE run_id = ? AND key = ? ORDER BY step DESC LIMIT 1", (run_id, key)
    ).fetchone()
    return None if row is None else finite(row[0])


def _event(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "step": row["step"],
        "time": row["time"],
        "kind": row["kind"],
        "message": row["message"],
        "data": None if row["data_json"] is None else json.loads(row["data_json"]),
    }


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)
