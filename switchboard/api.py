"""The Python door: embed Switchboard in a bot in a few lines.

    from switchboard.api import Switchboard

    async with Switchboard.open() as sb:
        turn = await sb.ask("How many customers are from Brazil?", thread_id="chat-42")
        print(turn.answer)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from graphs.state import Context
from graphs.support import build_support_graph, turn_input
from switchboard.persistence import open_checkpointer
from switchboard.services import Services
from switchboard.settings import Settings


@dataclass
class SubtaskReport:
    id: str
    agent: str
    task: str
    model: str | None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: int
    ok: bool
    route_reason: str


@dataclass
class TurnResult:
    answer: str
    thread_id: str
    subtasks: list[SubtaskReport]
    triage: dict[str, Any]
    results: list[dict[str, Any]]
    ledger: list[dict[str, Any]]
    latency_ms: int
    summary: str = ""
    entities: dict[str, str] = field(default_factory=dict)

    @property
    def cost_usd(self) -> float:
        return round(sum(e["cost_usd"] for e in self.ledger), 8)

    def as_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "thread_id": self.thread_id,
            "subtasks": [
                {k: v for k, v in asdict(s).items() if k in
                 ("agent", "task", "model", "tokens_in", "tokens_out", "cost_usd", "latency_ms")}
                for s in self.subtasks
            ],
            "cost_usd": self.cost_usd,
            "latency_ms": self.latency_ms,
            "llm_calls": len(self.ledger),
        }


def report_subtasks(state: dict[str, Any]) -> list[SubtaskReport]:
    ledger = state.get("ledger") or []
    results = {r["subtask_id"]: r for r in state.get("results") or []}
    out = []
    for s in state.get("subtasks") or []:
        calls = [e for e in ledger if e.get("subtask_id") == s["id"]]
        r = results.get(s["id"], {})
        out.append(
            SubtaskReport(
                id=s["id"],
                agent=s["agent"],
                task=s["task"],
                model=calls[-1]["model"] if calls else None,
                tokens_in=sum(e["tokens_in"] for e in calls),
                tokens_out=sum(e["tokens_out"] for e in calls),
                cost_usd=round(sum(e["cost_usd"] for e in calls), 8),
                latency_ms=(r.get("evidence") or {}).get("elapsed_ms", 0),
                ok=bool(r.get("ok")),
                route_reason=s["reason"],
            )
        )
    return out


class Switchboard:
    def __init__(self, graph: Any, services: Services) -> None:
        self.graph = graph
        self.services = services

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings | None = None) -> AsyncIterator[Switchboard]:
        settings = settings or Settings()
        services = Services(settings)
        async with open_checkpointer(settings) as saver:
            yield cls(build_support_graph(services=services, checkpointer=saver), services)

    async def ask(
        self,
        question: str,
        *,
        thread_id: str | None = None,
        image: str | Path | None = None,
        policy: str | None = None,
    ) -> TurnResult:
        thread_id = thread_id or uuid.uuid4().hex
        started = time.monotonic()
        state = await self.graph.ainvoke(
            turn_input(question, str(image) if image else None),
            config={"configurable": {"thread_id": thread_id}},
            context=Context(policy=policy or self.services.settings.routing_policy),
        )
        return TurnResult(
            answer=state.get("answer", ""),
            thread_id=thread_id,
            subtasks=report_subtasks(state),
            triage=state.get("triage_log") or {},
            results=state.get("results") or [],
            ledger=state.get("ledger") or [],
            latency_ms=round((time.monotonic() - started) * 1000),
            summary=state.get("summary", ""),
            entities=state.get("entities") or {},
        )
