"""The Space's job store: one SQLite table, so the queue, "come back later with the job id", webhooks and
restarts all work the same way.

A job is inserted (and committed) before anyone is told it exists; the single worker takes queued jobs
oldest first and runs one audit at a time. A job that was ``running`` when the process stopped is put
back in the queue on start (the results store makes the rerun cheap: finished cells are reused).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

STATES = ("queued", "running", "done", "error", "skipped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,               -- ui | webhook
    inputs TEXT NOT NULL,             -- JSON
    state TEXT NOT NULL,              -- queued | running | done | error | skipped
    progress TEXT NOT NULL DEFAULT '{}',
    cells TEXT NOT NULL DEFAULT '[]', -- finished cells, in order (without per-item records)
    report TEXT,                      -- the report's JSON (without per-item records)
    report_path TEXT,                 -- report.json with everything, for download
    message TEXT,                     -- the error or skip reason, or where the result went
    created REAL NOT NULL,
    started REAL,
    first_cell REAL,
    finished REAL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
"""
# A webhook job's key (``repo@sha``): one audit per commit, however often the Hub redelivers the push. A job
# that ends in error gives its key up, so a later delivery can try again.
_DEDUP = """
CREATE UNIQUE INDEX IF NOT EXISTS jobs_dedup ON jobs(dedup) WHERE dedup IS NOT NULL;
"""


def _insert_queued(c: sqlite3.Connection, job_id: str, kind: str, inputs: dict, now: float, dedup: str | None) -> None:
    """Insert one queued job at the end of the queue (inside the caller's transaction)."""
    seq = c.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
    c.execute("INSERT INTO jobs (id, seq, kind, inputs, state, created, updated, dedup) VALUES (?,?,?,?,?,?,?,?)",
              (job_id, seq, kind, json.dumps(inputs), "queued", now, now, dedup))


class JobStore:
    """Thread-safe access to the jobs table (one connection per call; WAL, so readers never wait)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        c = self._conn()
        try:
            c.execute("PRAGMA journal_mode=WAL")
            c.executescript(_SCHEMA)
            cols = {r["name"] for r in c.execute("PRAGMA table_info(jobs)")}
            if "dedup" not in cols:  # a database from before the key: add it, keyed for the live webhook jobs
                c.execute("ALTER TABLE jobs ADD COLUMN dedup TEXT")
                seen = set()
                for r in c.execute("SELECT id, inputs FROM jobs WHERE kind='webhook' AND state IN "
                                   "('queued','running','done') ORDER BY seq").fetchall():
                    key = json.loads(r["inputs"]).get("model")
                    if key and key not in seen:
                        seen.add(key)
                        c.execute("UPDATE jobs SET dedup=? WHERE id=?", (key, r["id"]))
            c.executescript(_DEDUP)
        finally:
            c.close()

    def _conn(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        c.row_factory = sqlite3.Row
        c.execute("PRAGMA synchronous=FULL")  # a job acknowledged to a webhook survives a crash
        return c

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            c = self._conn()
            try:
                c.execute(sql, args)
            finally:
                c.close()

    # -- creating and reading ---------------------------------------------------------------------
    def add(self, inputs: dict, kind: str = "ui") -> str:
        """Insert a queued job and return its id; committed when this returns."""
        return self.add_unique(inputs, kind, None)[0]

    def add_limited(self, inputs: dict, kind: str, visitor: str | None, limit: int) -> tuple[str | None, int]:
        """Insert a queued job unless ``visitor`` already has ``limit`` queued or running: ``(id, count before)``,
        or ``(None, count)`` when full. Count and insert in one transaction, so simultaneous submits cannot all
        get in."""
        if visitor is None:
            return self.add(inputs, kind), 0
        job_id = secrets.token_hex(6)
        now = time.time()
        with self._lock:
            c = self._conn()
            try:
                c.execute("BEGIN IMMEDIATE")
                mine = c.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued','running') AND "
                                 "json_extract(inputs, '$.visitor') = ?", (visitor,)).fetchone()[0]
                if mine >= limit:
                    c.execute("COMMIT")
                    return None, mine
                _insert_queued(c, job_id, kind, inputs, now, None)
                c.execute("COMMIT")
            finally:
                c.close()
        return job_id, mine

    def add_unique(self, inputs: dict, kind: str, key: str | None) -> tuple[str, bool]:
        """Insert a queued job unless a job with ``key`` exists (queued, running or done): ``(id, True)`` for
        a new job, ``(the existing job's id, False)`` otherwise. One transaction: two deliveries of the same
        push cannot both get in."""
        job_id = secrets.token_hex(6)
        now = time.time()
        with self._lock:
            c = self._conn()
            try:
                c.execute("BEGIN IMMEDIATE")
                if key is not None:
                    row = c.execute("SELECT id FROM jobs WHERE dedup=?", (key,)).fetchone()
                    if row is not None:
                        c.execute("COMMIT")
                        return row["id"], False
                _insert_queued(c, job_id, kind, inputs, now, key)
                c.execute("COMMIT")
            finally:
                c.close()
        return job_id, True

    def get(self, job_id: str) -> dict | None:
        c = self._conn()
        try:
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            job = _decode(row)
            if job["state"] == "queued":
                ahead = c.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued','running') AND seq < ?",
                                  (row["seq"],)).fetchone()[0]
                job["position"] = ahead + 1
            return job
        finally:
            c.close()

    def list(self, states: tuple[str, ...] = STATES, limit: int = 100) -> list[dict]:
        c = self._conn()
        try:
            q = f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(states))}) ORDER BY seq LIMIT ?"
            return [_decode(r) for r in c.execute(q, (*states, limit))]
        finally:
            c.close()

    def count_active(self, visitor: str) -> int:
        """Queued or running jobs that ``visitor`` (the hashed key the page stores in the inputs) queued."""
        c = self._conn()
        try:
            return c.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued','running') AND "
                             "json_extract(inputs, '$.visitor') = ?", (visitor,)).fetchone()[0]
        finally:
            c.close()

    def queue_length(self) -> int:
        c = self._conn()
        try:
            return c.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued','running')").fetchone()[0]
        finally:
            c.close()

    # -- the worker's side ------------------------------------------------------------------------
    def requeue_interrupted(self) -> int:
        """Jobs left ``running`` by a stopped process go back to the queue (same place)."""
        with self._lock:
            c = self._conn()
            try:
                n = c.execute("UPDATE jobs SET state='queued', progress='{}', cells='[]', started=NULL, "
                              "first_cell=NULL, updated=? WHERE state='running'", (time.time(),)).rowcount
            finally:
                c.close()
        return n

    def claim_next(self) -> dict | None:
        """The oldest queued job, marked running (atomically), or None."""
        with self._lock:
            c = self._conn()
            try:
                c.execute("BEGIN IMMEDIATE")
                row = c.execute("SELECT * FROM jobs WHERE state='queued' ORDER BY seq LIMIT 1").fetchone()
                if row is None:
                    c.execute("COMMIT")
                    return None
                now = time.time()
                c.execute("UPDATE jobs SET state='running', started=?, updated=? WHERE id=?", (now, now, row["id"]))
                c.execute("COMMIT")
            finally:
                c.close()
        job = self.get(row["id"])
        return job

    def set_progress(self, job_id: str, progress: dict) -> None:
        self._write("UPDATE jobs SET progress=?, updated=? WHERE id=?", (json.dumps(progress), time.time(), job_id))

    def add_cell(self, job_id: str, cell: dict) -> None:
        with self._lock:
            c = self._conn()
            try:
                c.execute("BEGIN IMMEDIATE")
                row = c.execute("SELECT cells, first_cell FROM jobs WHERE id=?", (job_id,)).fetchone()
                cells = json.loads(row["cells"]) + [cell]
                now = time.time()
                c.execute("UPDATE jobs SET cells=?, first_cell=COALESCE(first_cell, ?), updated=? WHERE id=?",
                          (json.dumps(cells), now, now, job_id))
                c.execute("COMMIT")
            finally:
                c.close()

    def finish(self, job_id: str, state: str, *, report: dict | None = None, report_path: str | None = None,
               message: str | None = None) -> None:
        assert state in STATES
        now = time.time()
        # one statement: the state, the result and where it went are written together; an error gives the
        # webhook key up (a redelivery may try again)
        self._write("UPDATE jobs SET state=?, report=?, report_path=?, message=?, finished=?, updated=?, "
                    "dedup=CASE WHEN ?='error' THEN NULL ELSE dedup END WHERE id=?",
                    (state, None if report is None else json.dumps(report), report_path, message, now, now, state,
                     job_id))


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    job = dict(row)
    job["inputs"] = json.loads(job["inputs"])
    job["progress"] = json.loads(job["progress"] or "{}")
    job["cells"] = json.loads(job["cells"] or "[]")
    job["report"] = json.loads(job["report"]) if job["report"] else None
    return job
