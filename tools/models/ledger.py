"""The persistent record of model calls (SQLite), which budgets are computed from, and the
response cache."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from tools.models.values import LedgerEntry

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, day TEXT NOT NULL, thread_id TEXT,
    subtask_id TEXT, agent TEXT, model TEXT, model_version TEXT, tokens_in INTEGER,
    tokens_out INTEGER, cost_usd REAL, latency_ms INTEGER, cached INTEGER, note TEXT);
CREATE INDEX IF NOT EXISTS calls_thread ON calls(thread_id);
CREATE INDEX IF NOT EXISTS calls_day ON calls(day);
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY, ts REAL NOT NULL, model TEXT, content TEXT,
    tokens_in INTEGER, tokens_out INTEGER);
"""


class Ledger:
    """The persistent record of model calls (SQLite) and the response cache."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def record(self, entry: LedgerEntry, thread_id: str | None) -> None:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO calls (ts, day, thread_id, subtask_id, agent, model, model_version, tokens_in,"
                " tokens_out, cost_usd, latency_ms, cached, note) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (now, day_of(now), thread_id, entry.subtask_id, entry.agent, entry.model, entry.model_version,
                 entry.tokens_in, entry.tokens_out, entry.cost_usd, entry.latency_ms, int(entry.cached), entry.note),
            )

    def spent(self, *, thread_id: str | None = None, day: str | None = None) -> float:
        where, args = ("thread_id = ?", (thread_id,)) if thread_id else ("day = ?", (day,))
        with self._lock:
            (total,) = self._db.execute(f"SELECT COALESCE(SUM(cost_usd), 0) FROM calls WHERE {where}", args).fetchone()
        return float(total)

    def cached(self, key: str, ttl_s: int) -> tuple[str, int, int] | None:
        with self._lock:
            row: tuple[str, int, int] | None = self._db.execute(
                "SELECT content, tokens_in, tokens_out FROM cache WHERE key = ? AND ts >= ?", (key, time.time() - ttl_s)
            ).fetchone()
        return row

    def store(self, key: str, model: str, content: str, t_in: int, t_out: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO cache VALUES (?,?,?,?,?,?)",
                             (key, time.time(), model, content, t_in, t_out))



def day_of(ts: float) -> str:
    """The UTC day of a timestamp: daily budgets reset at midnight UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
