"""The persistent record of model calls, the running spend that budgets are checked against, and
the response cache: SQLite in the data dir by default, PostgreSQL when the checkpointer is (one
database setting for everything a replica shares, ``switchboard/persistence.py``).

Budgets hold across processes and replicas: before a call that costs money, :meth:`Ledger.reserve`
adds the call's estimate to the conversation's and the day's running spend in one transaction,
with a conditional ``UPDATE ... WHERE spent + estimate <= limit`` (atomic in SQLite and, under
PostgreSQL's row locks, in PostgreSQL), so N replicas racing for the last dollars of a daily
budget cannot all pass the check. :meth:`Ledger.record` then replaces the estimate with what the
call cost, in the same transaction as its ledger row; a failed call's reservation is released.
The estimate counts the whole ``max_tokens`` as output, so a call costs at most its reservation
(plus the error of estimating input tokens as characters / 4). A process killed between the two
leaves its reservation counted: the budget errs on the side of spending less.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from tools.models.values import LedgerEntry
from tools.state_db import open_state_engine, state_url

log = logging.getLogger("switchboard.ledger")

metadata = MetaData()
calls_table = Table(
    "ledger_calls", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_id", String(64), nullable=False, unique=True),  # a call is recorded once, whoever records it
    Column("ts", Float, nullable=False), Column("day", String(10), nullable=False, index=True),
    Column("thread_id", String(200), index=True), Column("subtask_id", String(40)), Column("agent", String(40)),
    Column("role", String(20)), Column("model", String(120)), Column("model_version", String(200)),
    Column("tokens_in", Integer), Column("tokens_out", Integer), Column("cost_usd", Float),
    Column("latency_ms", Integer), Column("cached", Integer), Column("note", Text),
)
spend_table = Table(  # running totals: ("conversation", thread id) and ("daily", UTC day)
    "ledger_spend", metadata,
    Column("scope", String(20), primary_key=True), Column("key", String(200), primary_key=True),
    Column("spent", Float, nullable=False), Column("ts", Float, nullable=False),
)
cache_table = Table(
    "response_cache", metadata,
    Column("key", String(64), primary_key=True), Column("ts", Float, nullable=False), Column("model", String(120)),
    Column("content", Text), Column("tokens_in", Integer), Column("tokens_out", Integer),
)
Index("response_cache_ts", cache_table.c.ts)

PURGE_EVERY = 500  # cache writes between two deletions of expired answers


def day_of(ts: float) -> str:
    """The UTC day of a timestamp: daily budgets reset at midnight UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def ledger_url(checkpoint_url: str, data_dir: Path) -> str:
    """PostgreSQL when the checkpointer is (the same database); else ``ledger.sqlite`` in the data dir."""
    return state_url(checkpoint_url, data_dir, "ledger.sqlite")


@dataclass(frozen=True)
class Limit:
    scope: str  # "conversation" | "daily"
    key: str  # the thread id | the UTC day
    usd: float


@dataclass
class Reservation:
    """An estimate added to running spends before a call; settled by :meth:`Ledger.record`."""

    usd: float
    scopes: tuple[tuple[str, str], ...]
    spent_after: dict[str, float] = field(default_factory=dict)  # scope -> running spend with this estimate


@dataclass(frozen=True)
class Refusal:
    """A reservation that would take a scope past its limit."""

    scope: str
    spent: float
    limit: float


class Ledger:
    """Model calls, running spends and cached answers (SQLAlchemy: SQLite or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        # INSERT ... ON CONFLICT is dialect-specific in SQLAlchemy
        self._insert = sqlite.insert if url.startswith("sqlite") else postgresql.insert
        # built once: values go as parameters, so SQLAlchemy reuses the compiled statement instead of
        # coercing every value into a new one (most of a call's recording time on 2 cores)
        self._insert_call = (self._insert(calls_table).on_conflict_do_nothing(index_elements=["call_id"])
                             .returning(calls_table.c.id))  # (psycopg's rowcount is -1 here)
        spend = self._insert(spend_table)
        self._upsert = spend.on_conflict_do_update(
            index_elements=["scope", "key"], set_={"spent": spend_table.c.spent + spend.excluded.spent, "ts": spend.excluded.ts})
        self.engine = open_state_engine(url, metadata)
        self._stores = 0

    def _upsert_spend(self, conn: Connection, scope: str, key: str, delta: float, now: float) -> None:
        conn.execute(self._upsert, {"scope": scope, "key": key, "spent": delta, "ts": now})

    # --- budgets -------------------------------------------------------------------------------
    def reserve(self, usd: float, limits: list[Limit]) -> Reservation | Refusal:
        """Add ``usd`` to every limit's running spend, or to none if any would pass its limit."""
        now = time.time()
        out = Reservation(usd, tuple((lim.scope, lim.key) for lim in limits))
        with self.engine.connect() as conn, conn.begin() as tx:
            for lim in limits:
                # the first statement writes, so SQLite takes its write lock here: one writer at a time
                self._upsert_spend(conn, lim.scope, lim.key, 0.0, now)  # the row exists from here on
                where = (spend_table.c.scope == lim.scope) & (spend_table.c.key == lim.key)
                row = conn.execute(update(spend_table).where(where & (spend_table.c.spent + usd <= lim.usd))
                                   .values(spent=spend_table.c.spent + usd, ts=now)
                                   .returning(spend_table.c.spent)).first()
                if row is None:
                    spent = conn.execute(select(spend_table.c.spent).where(where)).scalar_one()
                    tx.rollback()  # the scopes reserved before this one are given back too
                    return Refusal(lim.scope, float(spent), lim.usd)
                out.spent_after[lim.scope] = float(row[0])
        return out

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose call failed (nothing was recorded)."""
        if reservation.usd <= 0:
            return
        now = time.time()
        with self.engine.begin() as conn:
            for scope, key in reservation.scopes:
                self._upsert_spend(conn, scope, key, -reservation.usd, now)

    def spent(self, *, thread_id: str | None = None, day: str | None = None) -> float:
        scope, key = ("conversation", thread_id) if thread_id else ("daily", day or day_of(time.time()))
        with self.engine.connect() as conn:
            value = conn.execute(select(spend_table.c.spent).where(
                (spend_table.c.scope == scope) & (spend_table.c.key == key))).scalar()
        return float(value or 0.0)

    # --- the record ----------------------------------------------------------------------------
    def record(self, entry: LedgerEntry, thread_id: str | None, reservation: Reservation | None = None) -> None:
        """One call's row, and its cost in the running spends (its reservation settled), atomically.
        Recording a call id twice (a retried write that had in fact committed) changes nothing."""
        now = time.time()
        day = day_of(now)
        row = {"call_id": entry.call_id, "ts": now, "day": day, "thread_id": thread_id,
               "subtask_id": entry.subtask_id, "agent": entry.agent, "role": entry.role, "model": entry.model,
               "model_version": entry.model_version, "tokens_in": entry.tokens_in, "tokens_out": entry.tokens_out,
               "cost_usd": entry.cost_usd, "latency_ms": entry.latency_ms, "cached": int(entry.cached),
               "note": entry.note}
        with self.engine.begin() as conn:
            inserted = conn.execute(self._insert_call, row).first()
            if inserted is None:  # its first record settled the reservation already
                log.info("ledger: call %s is already recorded", entry.call_id)
                return
            if reservation is not None:  # the estimate becomes the cost
                for scope, key in reservation.scopes:
                    self._upsert_spend(conn, scope, key, entry.cost_usd - reservation.usd, now)
            elif entry.cost_usd > 0:  # no budget checked this call: its cost still counts
                scopes = [("daily", day)] + ([("conversation", thread_id)] if thread_id else [])
                for scope, key in scopes:
                    self._upsert_spend(conn, scope, key, entry.cost_usd, now)

    def calls(self, thread_id: str) -> list[dict[str, Any]]:
        """A conversation's recorded calls, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(calls_table).where(calls_table.c.thread_id == thread_id)
                                .order_by(calls_table.c.id)).mappings().all()
        return [dict(r) for r in rows]

    # --- the response cache --------------------------------------------------------------------
    def cached(self, key: str, ttl_s: int) -> tuple[str, int, int] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(cache_table.c.content, cache_table.c.tokens_in, cache_table.c.tokens_out)
                               .where((cache_table.c.key == key) & (cache_table.c.ts >= time.time() - ttl_s))).first()
        return (str(row[0]), int(row[1] or 0), int(row[2] or 0)) if row else None

    def store(self, key: str, model: str, content: str, t_in: int, t_out: int, ttl_s: int) -> None:
        now = time.time()
        stmt = self._insert(cache_table).values(key=key, ts=now, model=model, content=content,
                                                  tokens_in=t_in, tokens_out=t_out)
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={
                c: stmt.excluded[c] for c in ("ts", "model", "content", "tokens_in", "tokens_out")}))
            self._stores += 1
            if self._stores % PURGE_EVERY == 0:  # expired answers are never served: keep the table bounded
                conn.execute(delete(cache_table).where(cache_table.c.ts < now - ttl_s))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(calls_table)).scalar_one())
