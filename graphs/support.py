"""The support graph. Where a request goes, in order:

    START -> triage -> one Send per ready subtask -> sql | rag | vision | general
          -> join -> (more Sends for subtasks that waited on others) -> synthesize -> remember -> END

Triage splits the turn and routes each part (classifier first, an LLM only when unsure).
Specialists run in parallel and append to ``results``; a subtask that depends on another (SQL
checking what vision read) is sent once its dependency is done. Synthesis joins the answers and
``remember`` updates the bounded conversation summary that the next turn's handoffs carry.
Nodes live in ``agents/``; this file is wiring only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Overwrite, Send

from agents.general import GeneralAgent
from agents.rag import RAGAgent
from agents.sql import SQLAgent
from agents.synthesis import remember, synthesize
from agents.validation import Validator
from agents.vision import VisionAgent
from graphs.state import Context, Handoff, SupportState
from switchboard.services import Services
from switchboard.settings import Settings
from tools import telemetry
from tools.audit import answer_id_for, build_turn_record

log = logging.getLogger("switchboard.graph")


def build_support_graph(
    settings: Settings | None = None,
    *,
    checkpointer: Any = None,
    services: Services | None = None,
):
    """Compile the support graph. Pass a checkpointer to persist conversations."""
    services = services or Services(settings or Settings())
    telemetry.configure(services.settings)  # once per process; tracing is off unless configured

    async def triage(state: SupportState, runtime: Runtime[Context], config: RunnableConfig) -> dict[str, Any]:
        previous = (state.get("turns") or [{}])[-1].get("agents") if state.get("turns") else None
        policy = runtime.context.policy if runtime.context else services.settings.routing_policy
        started = time.time()
        decision = await services.triage.decide(
            state.get("question", ""),
            has_image=bool(state.get("image_path")),
            previous_agents=previous,
            policy=policy,
        )
        telemetry.record_triage(decision.subtasks, decision.llm_calls)
        index = len(state.get("turns") or []) + state.get("omitted_turns", 0)
        thread = _thread_id(config)
        return {
            "subtasks": [s.model_dump() for s in decision.subtasks],
            "triage_log": decision.as_log(),
            "turn_meta": {"started_at": started, "policy": policy, "turn_index": index,
                          "answer_id": answer_id_for(thread, index)},
            "results": Overwrite([]),
            "ledger": Overwrite([e.as_dict() for e in decision.ledger]),
        }

    async def remember_turn(state: SupportState, config: RunnableConfig) -> dict[str, Any]:
        """Update the conversation summary, then write the turn's audit record (idempotent)."""
        update = remember(state, max_chars=services.settings.summary_max_chars)
        meta = state.get("turn_meta") or {}
        record = build_turn_record(dict(state), _thread_id(config), meta.get("turn_index", 0))
        try:
            await asyncio.to_thread(services.audit.record_turn, record)
        except Exception:  # noqa: BLE001 - the user's answer must not depend on the audit database
            log.exception("audit: could not record turn %s", record.turn_id)
        return update

    def dispatch(state: SupportState, runtime: Runtime[Context]) -> list[Send] | str:
        done = {r["subtask_id"] for r in state.get("results") or []}
        ready = [
            s for s in state.get("subtasks") or []
            if s["id"] not in done and all(d in done for d in s["depends_on"])
        ]
        if not ready:
            return "synthesize"
        policy = runtime.context.policy if runtime.context else services.settings.routing_policy
        return [Send(s["agent"], _handoff(state, s, policy)) for s in ready]

    builder = StateGraph(SupportState, context_schema=Context)
    traced = telemetry.traced  # each node's runs are spans under the turn's span (tools/telemetry.py)
    builder.add_node("triage", traced("triage", triage))
    checked = Validator(services).wrap  # answers of configured agents are validated against evidence
    builder.add_node("sql", traced("sql", checked("sql", SQLAgent(services))))
    builder.add_node("rag", traced("rag", checked("rag", RAGAgent(services))))
    builder.add_node("vision", traced("vision", checked("vision", VisionAgent(services))))
    builder.add_node("general", traced("general", checked("general", GeneralAgent(services))))
    builder.add_node("join", traced("join", _join))
    builder.add_node("synthesize", traced("synthesize", synthesize))
    builder.add_node("remember", traced("remember", remember_turn, ends_turn=True))

    specialists = ["sql", "rag", "vision", "general"]
    builder.add_edge(START, "triage")
    builder.add_conditional_edges("triage", dispatch, [*specialists, "synthesize"])
    for name in specialists:
        builder.add_edge(name, "join")
    builder.add_conditional_edges("join", dispatch, [*specialists, "synthesize"])
    builder.add_edge("synthesize", "remember")
    builder.add_edge("remember", END)
    return builder.compile(checkpointer=checkpointer)


def _join(state: SupportState) -> dict[str, Any]:
    return {}


def _thread_id(config: RunnableConfig) -> str:
    return str((config.get("configurable") or {}).get("thread_id") or "no-thread")


def _handoff(state: SupportState, subtask: dict[str, Any], policy: str) -> Handoff:
    by_id = {r["subtask_id"]: r for r in state.get("results") or []}
    return Handoff(
        subtask=subtask,
        summary=state.get("summary", ""),
        entities=state.get("entities") or {},
        evidence=[by_id[d] for d in subtask["depends_on"] if d in by_id],
        image_path=state.get("image_path"),
        policy=policy,
    )


def turn_input(question: str, image_path: str | None = None) -> dict[str, Any]:
    """The graph input for one user turn."""
    return {"question": question, "image_path": image_path, "messages": [HumanMessage(content=question)]}
