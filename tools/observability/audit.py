"""The audit trail: one decision record per turn, one row per model call, user feedback.

Written once per turn by the graph's ``synthesize`` step from what the turn put in its state
(triage decisions, tier choices, escalations, the ledger of model calls), so it describes what
actually ran. The turn id is derived from the thread and the turn's position in it, and the
write is idempotent: a turn resumed after a crash records itself once, never twice.

Shadow calls (a challenger answering a copy of a subtask in the background) finish after the
turn's record is written, so they are added to ``audit_calls`` on their own, pointing at the
champion call they shadowed (``shadow_of``).

SQLite under the data directory by default; PostgreSQL when the checkpointer is configured with a
``postgresql://`` URL (one database setting for the conversation and its audit trail). Text the
user typed is stored redacted (e-mail, phone, card numbers, IBANs), as everywhere we log.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from tools.observability.records import ledger_cost
from tools.observability.stats import percentile
from tools.state_db import open_state_engine, state_url

log = logging.getLogger("switchboard.audit")

metadata = MetaData()
turns_table = Table(
    "audit_turns", metadata,
    Column("turn_id", String(200), primary_key=True),
    Column("thread_id", String(200), index=True, nullable=False),
    Column("ts", Float, index=True, nullable=False),
    Column("turn_index", Integer, nullable=False),
    Column("policy", String(40)),
    Column("question", Text),
    Column("subtasks", Text),  # JSON: route, scores, tier, model, ok, error, escalations, validation
    Column("tokens_in", Integer), Column("tokens_out", Integer), Column("cost_usd", Float),
    Column("latency_ms", Integer), Column("llm_calls", Integer), Column("cache_hits", Integer),
    Column("escalations", Integer), Column("fallbacks", Integer), Column("errors", Integer),
    Column("answer_id", String(64), index=True),
)
calls_table = Table(
    "audit_calls", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_id", String(64), index=True),
    Column("turn_id", String(200), index=True),
    Column("thread_id", String(200), index=True),
    Column("ts", Float, index=True, nullable=False),
    Column("subtask_id", String(40)), Column("agent", String(40), index=True),
    Column("role", String(20), nullable=False),  # serve | shadow | validate | vote
    Column("model", String(120), index=True), Column("model_version", String(200)),
    Column("tokens_in", Integer), Column("tokens_out", Integer), Column("cost_usd", Float),
    Column("latency_ms", Integer), Column("cached", Integer), Column("escalated", Integer),
    Column("fallback", Integer), Column("error", Text), Column("note", Text),
    Column("shadow_of", String(64), index=True), Column("answer", Text),
)
feedback_table = Table(
    "audit_feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("answer_id", String(64), index=True, nullable=False),
    Column("ts", Float, nullable=False),
    Column("score", Integer, nullable=False),  # +1 thumbs up, -1 thumbs down
    Column("comment", Text),
)

# how often a cut-off turn was retried (switchboard.api.RecoveryGuard): a retry that crashes the
# process again must not be tried forever
recoveries_table = Table(
    "turn_recoveries", metadata,
    Column("thread_id", String(200), primary_key=True),
    Column("checkpoint_id", String(100), primary_key=True),
    Column("attempts", Integer, nullable=False),
    Column("ts", Float, nullable=False),
)

# who owns a conversation (switchboard/access.py): written once, when a principal first uses a
# thread id; the primary key makes claiming atomic (a second claim is an IntegrityError)
owners_table = Table(
    "thread_owners", metadata,
    Column("thread_id", String(200), primary_key=True),
    Column("principal", String(200), nullable=False, index=True),
    Column("door", String(20), nullable=False),  # cli | http | ui
    Column("ts", Float, nullable=False),
)

# every human-review decision, with who made it (separation of duties: tools/review.py)
reviews_table = Table(
    "review_decisions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, index=True, nullable=False),
    Column("thread_id", String(200), index=True, nullable=False),
    Column("interrupt_id", String(64), nullable=False),
    Column("kind", String(40)),
    Column("action", String(20), nullable=False),  # approve | edit | reject
    Column("reviewer", String(200), index=True, nullable=False),
    Column("owner", String(200)),
    Column("door", String(20)),
    Column("sql", Text),  # the query approved or run instead (an edit)
)


def _redact(text: str) -> str:
    from tools.observability.redaction import redact

    return redact(text)


def audit_url(checkpoint_url: str, data_dir: Path) -> str:
    """The same database as the checkpointer: PostgreSQL when ``checkpoint_url`` names one,
    else SQLite in ``data_dir``."""
    return state_url(checkpoint_url, data_dir, "audit.sqlite")


def turn_id_for(thread_id: str, turn_index: int) -> str:
    return f"{thread_id}:{turn_index}"


def answer_id_for(thread_id: str, turn_index: int) -> str:
    """Stable across a resumed turn: the same thread and turn always give the same answer id."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"switchboard:{thread_id}:{turn_index}").hex


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")


def parse_since(value: str, now: float | None = None) -> float:
    """``2026-11-24``, ``2026-11-24T18:00``, or relative ``30m``/``2h``/``7d``/``1w`` ago."""
    now = time.time() if now is None else now
    v = value.strip()
    if m := _RELATIVE.match(v):
        n, unit = int(m.group(1)), m.group(2)
        return now - n * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"--since {value!r}: use an ISO date/time (2026-11-24, 2026-11-24T18:00) "
                         "or an age like 30m, 2h, 7d") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


@dataclass
class AuditRecord:
    """One turn's decision record (not graphs.state.TurnRecord, the summary line of a turn)."""

    turn_id: str
    thread_id: str
    ts: float
    turn_index: int
    policy: str
    question: str
    subtasks: list[dict[str, Any]]
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: int
    llm_calls: int
    cache_hits: int
    escalations: int
    fallbacks: int
    errors: int
    answer_id: str
    calls: list[dict[str, Any]]


def build_turn_record(state: dict[str, Any], thread_id: str, turn_index: int, now: float | None = None) -> AuditRecord:
    """The decision record of the turn in ``state`` (the graph state after synthesis)."""
    now = time.time() if now is None else now
    meta = state.get("turn_meta") or {}
    ledger = state.get("ledger") or []
    results = {r["subtask_id"]: r for r in state.get("results") or []}
    subtasks = []
    for s in state.get("subtasks") or []:
        r = results.get(s["id"]) or {}
        ev = r.get("evidence") or {}
        subtasks.append({
            "id": s["id"], "agent": s["agent"], "route": s["route"], "task": _redact(s["task"]),
            "confidence": s["confidence"], "scores": s.get("scores") or {}, "reason": s["reason"],
            "llm_asked": s.get("llm_asked", False), "votes": s.get("votes") or {}, "tier": ev.get("tier"), "model": ev.get("model"),
            "ok": r.get("ok"), "error": _redact(r["error"]) if r.get("error") else None,
            "escalations": ev.get("escalations") or [], "validation": ev.get("validation"),
            "challenger": ev.get("challenger"),
        })
    calls = [_call_row(e) for e in ledger]
    started = meta.get("started_at") or now
    return AuditRecord(
        turn_id=turn_id_for(thread_id, turn_index), thread_id=thread_id, ts=float(started),
        turn_index=turn_index, policy=meta.get("policy", ""), question=_redact(state.get("question", "")),
        subtasks=subtasks,
        tokens_in=sum(c["tokens_in"] for c in calls), tokens_out=sum(c["tokens_out"] for c in calls),
        cost_usd=ledger_cost(calls),
        latency_ms=max(0, round((now - float(started)) * 1000)),
        llm_calls=sum(1 for c in calls if not c["cached"]), cache_hits=sum(c["cached"] for c in calls),
        escalations=sum(len(s["escalations"]) for s in subtasks),
        fallbacks=sum(c["fallback"] for c in calls),
        errors=sum(1 for s in subtasks if s["ok"] is False),
        answer_id=meta.get("answer_id") or answer_id_for(thread_id, turn_index),
        calls=calls,
    )


def _call_row(e: dict[str, Any]) -> dict[str, Any]:
    note = e.get("note") or ""
    return {
        "call_id": e.get("call_id") or "", "subtask_id": e.get("subtask_id", ""), "agent": e.get("agent", ""),
        "role": e.get("role") or "serve", "model": e.get("model", ""), "model_version": e.get("model_version", ""),
        "tokens_in": int(e.get("tokens_in") or 0), "tokens_out": int(e.get("tokens_out") or 0),
        "cost_usd": float(e.get("cost_usd") or 0.0), "latency_ms": int(e.get("latency_ms") or 0),
        "cached": int(bool(e.get("cached"))), "escalated": int(bool(e.get("escalated"))),
        "fallback": int(bool(e.get("fallback"))), "error": None, "note": _redact(note),
    }


class AuditTrail:
    """Writes and queries the audit tables (SQLAlchemy: SQLite or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = open_state_engine(url, metadata)
        self._lock = threading.Lock()

    # --- writing -----------------------------------------------------------------------------
    def record_turn(self, record: AuditRecord) -> bool:
        """Store a turn and its calls in one transaction; False if it was already recorded."""
        row = {k: v for k, v in record.__dict__.items() if k != "calls"}
        row["subtasks"] = json.dumps(record.subtasks, ensure_ascii=False, default=str)
        try:
            with self._lock, self.engine.begin() as conn:
                conn.execute(insert(turns_table), row)  # values as parameters: one compiled statement
                if record.calls:
                    conn.execute(insert(calls_table), [
                        {**c, "turn_id": record.turn_id, "thread_id": record.thread_id, "ts": record.ts}
                        for c in record.calls
                    ])
        except IntegrityError:
            log.info("audit: turn %s is already recorded (resumed turn); not writing it twice", record.turn_id)
            return False
        return True

    def record_call(self, call: dict[str, Any], *, thread_id: str | None, role: str,
                    shadow_of: str | None = None, answer: str | None = None) -> None:
        """A call outside a turn record (a shadow answer, finished after its turn)."""
        row = {**_call_row(call), "role": role, "thread_id": thread_id, "ts": time.time(),
               "shadow_of": shadow_of, "answer": _redact(answer) if answer else None}
        if call.get("error"):
            row["error"] = _redact(str(call["error"]))
        with self._lock, self.engine.begin() as conn:
            conn.execute(insert(calls_table).values(**row))

    def count_recovery_attempt(self, thread_id: str, checkpoint_id: str) -> int:
        """Count one more attempt to finish the cut-off turn at this checkpoint; return the count."""
        key = (recoveries_table.c.thread_id == thread_id) & (recoveries_table.c.checkpoint_id == checkpoint_id)
        with self._lock, self.engine.begin() as conn:
            row = conn.execute(select(recoveries_table.c.attempts).where(key).with_for_update()).first()
            attempts = (row[0] if row else 0) + 1
            if row:
                conn.execute(update(recoveries_table).where(key).values(attempts=attempts, ts=time.time()))
            else:
                conn.execute(insert(recoveries_table).values(thread_id=thread_id, checkpoint_id=checkpoint_id,
                                                             attempts=attempts, ts=time.time()))
        return attempts

    def claim_thread(self, thread_id: str, principal: str, door: str) -> str:
        """Make ``principal`` the owner of an unowned thread; return the owner (theirs or the earlier
        claimant's). Atomic: of two concurrent claims one inserts, the other finds its row."""
        try:
            with self._lock, self.engine.begin() as conn:
                conn.execute(insert(owners_table).values(thread_id=thread_id, principal=principal, door=door,
                                                         ts=time.time()))
            return principal
        except IntegrityError:
            owner = self.thread_owner(thread_id)
            assert owner is not None
            return owner

    def thread_owner(self, thread_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(owners_table.c.principal)
                                .where(owners_table.c.thread_id == thread_id)).scalar_one_or_none()

    def owned_threads(self, *, exclude: str | None = None, limit: int = 1000) -> list[tuple[str, str]]:
        """``[(thread id, owner)]``, newest first (reviewers' list of pending reviews)."""
        q = select(owners_table.c.thread_id, owners_table.c.principal).order_by(owners_table.c.ts.desc()).limit(limit)
        if exclude is not None:
            q = q.where(owners_table.c.principal != exclude)
        with self.engine.connect() as conn:
            return [(r.thread_id, r.principal) for r in conn.execute(q)]

    def record_review_decision(self, *, thread_id: str, interrupt_id: str, action: str, reviewer: str,
                               owner: str | None, door: str, kind: str | None = None, sql: str | None = None) -> None:
        with self._lock, self.engine.begin() as conn:
            conn.execute(insert(reviews_table).values(
                ts=time.time(), thread_id=thread_id, interrupt_id=interrupt_id, kind=kind, action=action,
                reviewer=reviewer, owner=owner, door=door, sql=sql))

    def review_decisions(self, thread_id: str | None = None) -> list[dict[str, Any]]:
        q = select(reviews_table).order_by(reviews_table.c.id)
        if thread_id is not None:
            q = q.where(reviews_table.c.thread_id == thread_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def record_feedback(self, answer_id: str, score: int, comment: str | None = None) -> None:
        if score not in (-1, 1):
            raise ValueError("feedback score must be +1 (thumbs up) or -1 (thumbs down)")
        with self._lock, self.engine.begin() as conn:
            conn.execute(insert(feedback_table).values(
                answer_id=answer_id, ts=time.time(), score=score, comment=_redact(comment) if comment else None))

    # --- reading -----------------------------------------------------------------------------
    def turns(self, *, thread: str | None = None, since: float | None = None, agent: str | None = None,
              model: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        q = select(turns_table).order_by(turns_table.c.ts, turns_table.c.turn_index)
        if thread:
            q = q.where(turns_table.c.thread_id == thread)
        if since is not None:
            q = q.where(turns_table.c.ts >= since)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
            ids = [r["turn_id"] for r in rows]
            calls: dict[str, list[dict[str, Any]]] = {}
            for chunk in _chunks(ids, 500):
                for c in conn.execute(select(calls_table).where(calls_table.c.turn_id.in_(chunk))
                                      .order_by(calls_table.c.id)):
                    calls.setdefault(c.turn_id, []).append(
                        {k: v for k, v in c._mapping.items() if k not in ("id", "turn_id", "thread_id")})
        out = []
        for r in rows:
            r["subtasks"] = json.loads(r["subtasks"] or "[]")
            r["calls"] = calls.get(r["turn_id"], [])
            r["time"] = datetime.fromtimestamp(r["ts"], UTC).isoformat(timespec="seconds")
            if agent and not any(s["agent"] == agent for s in r["subtasks"]):
                continue
            if model and not any(c["model"] == model for c in r["calls"]) \
                    and not any(s.get("model") == model for s in r["subtasks"]):
                continue
            out.append(r)
        return out[-limit:] if limit else out

    def calls(self, *, since: float | None = None, roles: Sequence[str] | None = None) -> list[dict[str, Any]]:
        q = select(calls_table).order_by(calls_table.c.id)
        if since is not None:
            q = q.where(calls_table.c.ts >= since)
        if roles:
            q = q.where(calls_table.c.role.in_(list(roles)))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def feedback(self) -> dict[str, list[int]]:
        with self.engine.connect() as conn:
            out: dict[str, list[int]] = {}
            for r in conn.execute(select(feedback_table.c.answer_id, feedback_table.c.score)):
                out.setdefault(r.answer_id, []).append(r.score)
            return out

    def summary(self, since: float | None = None) -> dict[str, list[dict[str, Any]]]:
        """Per model and per agent: calls, cost, p50/p95 latency, escalation rate (served calls)."""
        calls = [c for c in self.calls(since=since) if c["role"] in ("serve", "validate", "vote")]
        return {"model": _group(calls, "model"), "agent": _group(calls, "agent")}


def _chunks(items: list[str], n: int) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _group(calls: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in calls:
        groups.setdefault(c[key] or "-", []).append(c)
    rows = []
    for name, cs in sorted(groups.items()):
        live = [c["latency_ms"] for c in cs if not c["cached"]]
        rows.append({
            key: name, "calls": len(cs), "cached": sum(c["cached"] for c in cs),
            "tokens_in": sum(c["tokens_in"] or 0 for c in cs), "tokens_out": sum(c["tokens_out"] or 0 for c in cs),
            "cost_usd": round(sum(c["cost_usd"] or 0.0 for c in cs), 6),
            "p50_ms": percentile(live, 50) if live else 0.0, "p95_ms": percentile(live, 95) if live else 0.0,
            "mean_ms": round(statistics.fmean(live), 1) if live else 0.0,
            "escalation_rate": round(sum(c["escalated"] for c in cs) / len(cs), 4),
            "fallback_rate": round(sum(c["fallback"] for c in cs) / len(cs), 4),
        })
    return rows
