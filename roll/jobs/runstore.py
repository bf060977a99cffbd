"""The run store: one SQLite file per workspace holding runs, metrics, events and sample rollouts.

The driver writes it; the dashboard and ``roll jobs`` read it, often from other processes. The file
is opened in WAL mode so readers never block the writer and the writer never blocks readers; a
second writer waits up to ``busy_timeout_s`` for the first one's transaction to end.

Every write that can be repeated after a resume is an upsert: metrics are keyed by
``(run_id, step, key)`` and rollouts by ``(run_id, step, sample_id)``, so re-logging a step never
duplicates rows. On resume the driver calls :meth:`RunStore.truncate_after` with the checkpoint
step so rows logged after the checkpoint (and about to be re-logged) disappear first.

A ``RunStore`` holds one ``sqlite3`` connection and must be used only from the thread that created
it (sqlite3's ``check_same_thread``); open one store per thread or process.

NaN metric values are stored as SQL NULL and read back as ``float("nan")``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from roll.errors import StateError

SCHEMA_VERSION = 1
RUN_STATUSES = ("pending", "running", "completed", "failed", "interrupted", "stopped")
FINISHED_STATUSES = ("completed", "failed", "interrupted", "stopped")
ROLLOUT_COLUMNS = ("group_id", "prompt", "response", "reward", "advantage", "state")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT,
    pipeline TEXT,
    status TEXT NOT NULL,
    config_json TEXT,
    created_at REAL,
    started_at REAL,
    ended_at REAL,
    owner_host TEXT,
    pid INTEGER,
    resumed_count INTEGER NOT NULL DEFAULT 0,
    last_step INTEGER,
    error TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    key TEXT NOT NULL,
    value REAL,
    wall_time REAL,
    PRIMARY KEY (run_id, step, key)
);
CREATE INDEX IF NOT EXISTS metrics_by_key ON metrics (run_id, key, step);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    step INTEGER,
    time REAL,
    kind TEXT,
    message TEXT,
    data_json TEXT
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, id);
CREATE TABLE IF NOT EXISTS rollouts (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    sample_id TEXT NOT NULL,
    group_id INTEGER,
    prompt TEXT,
    response TEXT,
    reward REAL,
    advantage REAL,
    state TEXT,
    data_json TEXT,
    PRIMARY KEY (run_id, step, sample_id)
);
"""


def _nan_to_none(value: Any) -> float | None:
    """``float(value)``, with NaN mapped to None (stored as SQL NULL)."""
    number = float(value)
    return None if math.isnan(number) else number


def _dumps(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, sort_keys=True, default=str)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def pid_is_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunStore:
    """Runs, metrics, events and rollouts in one SQLite file (WAL mode).

    Args:
        path: the database file; its folder is created if missing.
        busy_timeout_s: how long a write waits for another writer's transaction before failing.
        checkpoint_every_s: how often (at most) a commit also copies the WAL back into the main
            file. SQLite's own auto-checkpoint gives up while readers hold old snapshots, so a
            long run watched by a dashboard could grow the WAL without bound; a PASSIVE
            checkpoint after a commit copies what no reader still needs and never blocks.
    """

    def __init__(
        self, path: str | Path, busy_timeout_s: float = 30.0, checkpoint_every_s: float = 30.0
    ) -> None:
        self.path = Path(path)
        self._checkpoint_every_s = checkpoint_every_s
        self._checkpointed_at = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        # isolation_level=None: no implicit transactions; writes use explicit BEGIN IMMEDIATE.
        self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._host = socket.gethostname()
        self._ensure_schema()

    # ----------------------------------------------------------------------------- plumbing

    def _ensure_schema(self) -> None:
        version = self._schema_version()
        if version is None:
            with self.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                if self._conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
                    self._conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            version = self._schema_version()
        if version != SCHEMA_VERSION:
            raise StateError(
                f"run store {self.path} has schema version {version}, but this roll reads version "
                f"{SCHEMA_VERSION}; upgrade roll, or point the workspace at a new run store file"
            )

    def _schema_version(self) -> int | None:
        """The stored schema version, or None for a fresh file (read-only: takes no write lock)."""
        exists = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if exists is None:
            return None
        row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return row[0]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several writes into one transaction (nested calls join the outer one).

        Takes the write lock up front (BEGIN IMMEDIATE) so a busy database fails at the start,
        not halfway through. Readers in other connections keep reading the last committed state.
        """
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        if time.monotonic() - self._checkpointed_at >= self._checkpoint_every_s:
            self.checkpoint()

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy committed WAL frames into the database file (PASSIVE: waits for no one).

        Returns SQLite's ``(busy, wal_frames, checkpointed_frames)``.
        """
        self._checkpointed_at = time.monotonic()
        return tuple(self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- runs

    def create_run(
        self,
        run_id: str,
        name: str,
        pipeline: str,
        config: Mapping[str, Any],
        status: str = "running",
    ) -> None:
        """Record a new run, or mark an existing one as resumed by this process.

        A new run gets ``created_at``; a running one also ``started_at``, this host and pid. An
        existing run is set to ``running`` with ``resumed_count`` incremented, this host and pid,
        a new ``started_at``, the new config (a resume may change it) and no end time or error.
        A ``pending`` run (recorded by ``roll submit`` before Ray started its driver) is claimed
        the same way, but it is a first start, not a resume: ``resumed_count`` stays.
        """
        self._check_status(status)
        now = time.time()
        started = now if status == "running" else None
        with self.transaction():
            exists = self._conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if exists is None:
                self._conn.execute(
                    "INSERT INTO runs (id, name, pipeline, status, config_json, created_at,"
                    " started_at, owner_host, pid, resumed_count, last_step)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL)",
                    (
                        run_id,
                        name,
                        pipeline,
                        status,
                        _dumps(dict(config)),
                        now,
                        started,
                        self._host,
                        os.getpid(),
                    ),
                )
            else:
                self._conn.execute(
                    "UPDATE runs SET status = 'running', resumed_count = resumed_count + ?,"
                    " config_json = ?, started_at = ?, ended_at = NULL, error = NULL,"
                    " owner_host = ?, pid = ? WHERE id = ?",
                    (
                        0 if exists["status"] == "pending" else 1,
                        _dumps(dict(config)),
                        now,
                        self._host,
                        os.getpid(),
                        run_id,
                    ),
                )

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        """Change a run's status; finished statuses set ``ended_at``, ``running`` claims the run
        for this process (host, pid, ``started_at`` if unset)."""
        self._check_status(status)
        now = time.time()
        with self.transaction():
            if status == "running":
                cursor = self._conn.execute(
                    "UPDATE runs SET status = ?, error = ?, ended_at = NULL, owner_host = ?,"
                    " pid = ?, started_at = COALESCE(started_at, ?) WHERE id = ?",
                    (status, error, self._host, os.getpid(), now, run_id),
                )
            else:
                ended = now if status in FINISHED_STATUSES else None
                cursor = self._conn.execute(
                    "UPDATE runs SET status = ?, error = ?, ended_at = ? WHERE id = ?",
                    (status, error, ended, run_id),
                )
            if cursor.rowcount == 0:
                raise StateError(
                    f"run {run_id!r} is not in the run store {self.path}; create it with "
                    "create_run() before changing its status"
                )

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """One run as a dict (``config`` parsed from JSON), or None if unknown."""
        self.mark_stale_runs()
        row = self._conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else self._run_dict(row)

    def list_runs(self, status: str | None = None) -> list[dict[str, Any]]:
        """All runs, newest first, optionally only those with ``status``."""
        self.mark_stale_runs()
        if status is None:
            rows = self._conn.execute("SELECT * FROM runs ORDER BY created_at DESC").fetchall()
        else:
            self._check_status(status)
            rows = self._conn.execute(
                "SELECT * FROM runs WHERE status = ? ORDER BY created_at DESC", (status,)
            ).fetchall()
        return [self._run_dict(row) for row in rows]

    def mark_stale_runs(self) -> list[str]:
        """Mark ``running`` runs owned by a dead process on this host as ``interrupted``.

        Runs owned by other hosts are left alone (their pids mean nothing here). Best effort: if
        another connection holds the write lock, the marking waits for the next call rather than
        blocking a reader. Returns the ids marked.
        """
        candidates = self._conn.execute(
            "SELECT id, pid FROM runs WHERE status = 'running' AND owner_host = ?", (self._host,)
        ).fetchall()
        stale = [
            (row["id"], row["pid"])
            for row in candidates
            if row["pid"] is not None and not pid_is_alive(row["pid"])
        ]
        if not stale:
            return []
        now = time.time()
        self._conn.execute("PRAGMA busy_timeout = 200")
        try:
            with self.transaction():
                marked = []
                for run_id, pid in stale:
                    error = (
                        f"driver process {pid} on {self._host} exited without finishing the "
                        "run; resume it from its latest checkpoint"
                    )
                    cursor = self._conn.execute(
                        "UPDATE runs SET status = 'interrupted', ended_at = ?, error = ?"
                        " WHERE id = ? AND status = 'running' AND pid = ?",
                        (now, error, run_id, pid),
                    )
                    if cursor.rowcount:
                        marked.append(run_id)
                        self._insert_event(run_id, "interrupted", error, None, None, now)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            return []
        finally:
            self._conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        return marked

    # ----------------------------------------------------------------------------- metrics

    def log_metrics(
        self,
        run_id: str,
        step: int,
        metrics: Mapping[str, float],
        wall_time: float | None = None,
    ) -> None:
        """Upsert one step's scalar metrics in one transaction and advance ``last_step``."""
        wall = time.time() if wall_time is None else wall_time
        rows = [(run_id, int(step), key, _nan_to_none(value), wall) for key, value in metrics.items()]
        with self.transaction():
            self._conn.executemany(
                "INSERT INTO metrics (run_id, step, key, value, wall_time) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, step, key) DO UPDATE SET"
                " value = excluded.value, wall_time = excluded.wall_time",
                rows,
            )
            self._advance_last_step(run_id, step)

    def get_metrics(
        self,
        run_id: str,
        keys: Sequence[str] | None = None,
        start_step: int | None = None,
    ) -> dict[str, list[tuple[int, float]]]:
        """Metric series ``{key: [(step, value), ...]}`` sorted by step; NULL reads as NaN."""
        query = "SELECT key, step, value FROM metrics WHERE run_id = ?"
        params: list[Any] = [run_id]
        if keys is not None:
            query += f" AND key IN ({', '.join('?' * len(keys))})"
            params.extend(keys)
        if start_step is not None:
            query += " AND step >= ?"
            params.append(start_step)
        series: dict[str, list[tuple[int, float]]] = {}
        for key, step, value in self._conn.execute(query + " ORDER BY key, step", params):
            series.setdefault(key, []).append((step, math.nan if value is None else value))
        return series

    # ----------------------------------------------------------------------------- events

    def log_event(
        self,
        run_id: str,
        kind: str,
        message: str,
        step: int | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Append an event (stage start, warning, checkpoint saved, ...) to a run's log."""
        with self.transaction():
            self._insert_event(run_id, kind, message, step, data, time.time())

    def get_events(self, run_id: str) -> list[dict[str, Any]]:
        """A run's events in the order they were logged (``data`` parsed from JSON)."""
        rows = self._conn.execute("SELECT * FROM events WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
        events = []
        for row in rows:
            event = dict(row)
            event["data"] = _loads(event.pop("data_json"))
            events.append(event)
        return events

    # ----------------------------------------------------------------------------- rollouts

    def log_rollouts(self, run_id: str, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """Upsert sample rollouts of one step.

        Each row needs ``sample_id``; ``group_id``, ``prompt``, ``response``, ``reward``,
        ``advantage`` and ``state`` fill their columns, every other key goes to ``data``.
        """
        records = []
        for index, row in enumerate(rows):
            if "sample_id" not in row:
                raise ValueError(f"rollout row {index} of step {step} has no 'sample_id'")
            extra = {k: v for k, v in row.items() if k != "sample_id" and k not in ROLLOUT_COLUMNS}
            reward, advantage = row.get("reward"), row.get("advantage")
            records.append(
                (
                    run_id,
                    int(step),
                    str(row["sample_id"]),
                    row.get("group_id"),
                    row.get("prompt"),
                    row.get("response"),
                    None if reward is None else _nan_to_none(reward),
                    None if advantage is None else _nan_to_none(advantage),
                    row.get("state"),
                    _dumps(extra) if extra else None,
                )
            )
        with self.transaction():
            self._conn.executemany(
                "INSERT INTO rollouts (run_id, step, sample_id, group_id, prompt, response,"
                " reward, advantage, state, data_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, step, sample_id) DO UPDATE SET"
                " group_id = excluded.group_id, prompt = excluded.prompt,"
                " response = excluded.response, reward = excluded.reward,"
                " advantage = excluded.advantage, state = excluded.state,"
                " data_json = excluded.data_json",
                records,
            )

    def get_rollouts(self, run_id: str, step: int | None = None) -> list[dict[str, Any]]:
        """Rollouts of a run (or one step), ordered by step then sample id."""
        query, params = "SELECT * FROM rollouts WHERE run_id = ?", [run_id]
        if step is not None:
            query += " AND step = ?"
            params.append(step)
        rows = self._conn.execute(query + " ORDER BY step, sample_id", params).fetchall()
        result = []
        for row in rows:
            record = dict(row)
            record["data"] = _loads(record.pop("data_json")) or {}
            result.append(record)
        return result

    # ----------------------------------------------------------------------------- resume

    def truncate_after(self, run_id: str, step: int) -> None:
        """Delete metrics and rollouts logged after ``step`` (the checkpoint a resume starts
        from); events are kept as the run's history."""
        with self.transaction():
            self._conn.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, step))
            self._conn.execute("DELETE FROM rollouts WHERE run_id = ? AND step > ?", (run_id, step))
            self._conn.execute(
                "UPDATE runs SET last_step = ? WHERE id = ? AND last_step > ?",
                (step, run_id, step),
            )

    # ----------------------------------------------------------------------------- helpers

    def _insert_event(
        self,
        run_id: str,
        kind: str,
        message: str,
        step: int | None,
        data: Mapping[str, Any] | None,
        when: float,
    ) -> None:
        self._conn.execute(
            "INSERT INTO events (run_id, step, time, kind, message, data_json) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, step, when, kind, message, _dumps(None if data is None else dict(data))),
        )

    def _advance_last_step(self, run_id: str, step: int) -> None:
        self._conn.execute(
            "UPDATE runs SET last_step = MAX(COALESCE(last_step, ?), ?) WHERE id = ?",
            (step, step, run_id),
        )

    @staticmethod
    def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
        run = dict(row)
        run["config"] = _loads(run.pop("config_json"))
        return run

    @staticmethod
    def _check_status(status: str) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}; use one of {', '.join(RUN_STATUSES)}")
