"""The results store: every finished metric of every cell, in SQLite, written the moment it is done.

Key: (model identity, spec, forget-set hash, metric name, metric key) where the metric key holds the
metric's version and settings and the compute setup (device type, dtype). A rerun, or another audit
that shares a model (six unlearned variants of one original), reuses what is there; a crash loses at
most the metric that was running. SQLite commits are atomic, so a killed process leaves no half row.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL,
    spec TEXT NOT NULL,
    forget TEXT NOT NULL,
    metric TEXT NOT NULL,
    metric_key TEXT NOT NULL,
    created REAL NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (model, spec, forget, metric, metric_key)
)
"""


def default_store_path() -> Path:
    """``$HUBAUDIT_STORE``, else ``$HUBAUDIT_CACHE/results.sqlite``, else ``~/.cache/hubaudit/results.sqlite``."""
    if os.environ.get("HUBAUDIT_STORE"):
        return Path(os.environ["HUBAUDIT_STORE"]).expanduser()
    cache = os.environ.get("HUBAUDIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "hubaudit")
    return Path(cache).expanduser() / "results.sqlite"


# The database's own version (PRAGMA user_version): 2 adds the backend libraries' versions to the metric
# key of quantized cells and tokenizer / chat-template files to a local model's identity. Rows written
# under version 0/1 keep their keys, so they are simply not found again and recomputed: no rewrite is
# needed. A newer version than this hubaudit knows is refused (it may key results differently).
STORE_VERSION = 2
MIGRATIONS: dict[int, str] = {0: "", 1: ""}  # from version -> SQL that brings it to the next (none needed yet)


class ResultStore:
    """Finished metric results, keyed as the module docstring says.

    Args:
        path: the SQLite file (created with its folder); ``None`` for the default location,
            ``":memory:"`` for a store that lives as long as the object.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = default_store_path() if path is None else path
        with self._errors("open"):
            if str(self.path) != ":memory:":
                if Path(self.path).is_dir():
                    raise StoreError(f"results store {self.path} is a folder; give a file path to --store (or --no-store)")
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > STORE_VERSION:  # refused before anything is written to it
                self._db.close()
                raise StoreError(f"results store {self.path} was written by a newer hubaudit (store version {version}, "
                                 f"this one knows {STORE_VERSION}); upgrade hubaudit or pass another --store")
            self._db.execute(SCHEMA)
            while version < STORE_VERSION:
                if MIGRATIONS.get(version):
                    self._db.executescript(MIGRATIONS[version])
                version += 1
            self._db.execute(f"PRAGMA user_version = {STORE_VERSION}")
            self._db.commit()

    @contextmanager
    def _errors(self, doing: str):
        """SQLite and file errors as one-line user errors that name the file and the way out."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot {doing} the results store {self.path} ({e}): it is not a hubaudit store or it "
                             "is damaged; move it away, or pass another --store (or --no-store)") from None
        except OSError as e:
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"cannot {doing} the results store {self.path} ({e.strerror or e}); pass another --store "
                             "(or --no-store)") from None

    def get(self, model: str, spec: str, forget: str, metric: str, metric_key: str) -> dict | None:
        with self._errors("read"):
            row = self._db.execute(
                "SELECT record FROM results WHERE model=? AND spec=? AND forget=? AND metric=? AND metric_key=?",
                (model, spec, forget, metric, metric_key),
            ).fetchone()
        if not row:
            return None
        try:
            return json.loads(row[0])
        except ValueError:  # a damaged record: recompute it (and overwrite it) rather than fail
            return None

    def put(self, model: str, spec: str, forget: str, metric: str, metric_key: str, record: dict) -> None:
        with self._errors("write"), self._db:  # one transaction, committed at once
            self._db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model, spec, forget, metric, metric_key, time.time(), json.dumps(record)),
            )

    def records(self, model: str, forget: str | None) -> list[tuple]:
        """Every stored row of one model on one forget set (``None``: on every set, the rounds of a sequential
        audit included), as ``put``'s arguments (a sweep hands them to the worker that computes the model's
        missing cells)."""
        with self._errors("read"):
            query = "SELECT model, spec, forget, metric, metric_key, record FROM results WHERE model=?"
            args = (model,) if forget is None else (model, forget)
            rows = self._db.execute(query + ("" if forget is None else " AND forget=?"), args).fetchall()
        out = []
        for *key, record in rows:
            try:
                out.append((*key, json.loads(record)))
            except ValueError:
                continue
        return out

    def count(self) -> int:
        with self._errors("read"):
            return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        self._db.close()
