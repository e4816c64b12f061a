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

from functools import partial
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Overwrite, Send

from agents.general import GeneralAgent
from agents.rag import RAGAgent
from agents.sql import SQLAgent
from agents.synthesis import remember, synthesize
from agents.vision import VisionAgent
from graphs.state import Context, Handoff, SupportState
from switchboard.services import Services
from switchboard.settings import Settings


def build_support_graph(
    settings: Settings | None = None,
    *,
    checkpointer: Any = None,
    services: Services | None = None,
):
    """Compile the support graph. Pass a checkpointer to persist conversations."""
    services = services or Services(settings or Settings())

    async def triage(state: SupportState, runtime: Runtime[Context]) -> dict[str, Any]:
        previous = (state.get("turns") or [{}])[-1].get("agents") if state.get("turns") else None
        decision = await services.triage.decide(
            state.get("question", ""),
            has_image=bool(state.get("image_path")),
            previous_agents=previous,
            policy=runtime.context.policy if runtime.context else None,
        )
        return {
            "subtasks": [s.model_dump() for s in decision.subtasks],
            "triage_log": decision.as_log(),
            "results": Overwrite([]),
            "ledger": Overwrite([e.as_dict() for e in decision.ledger]),
        }

    def dispatch(state: SupportState, runtime: Runtime[Context]) -> list[Send] | str:
        done = {r["subtask_id"] for r in state.get("results") or []}
        ready = [
            s for s in state.get("subtasks") or []
            if s["id"] not in done and all(d in done for d in s["depends_on"])
        ]
        if not ready:
            return "synthesize"
        policy = runtime.context.policy if runtime.context else "balanced"
        return [Send(s["agent"], _handoff(state, s, policy)) for s in ready]

    builder = StateGraph(SupportState, context_schema=Context)
    builder.add_node("triage", triage)
    builder.add_node("sql", SQLAgent(services))
    builder.add_node("rag", RAGAgent(services))
    builder.add_node("vision", VisionAgent(services))
    builder.add_node("general", GeneralAgent(services))
    builder.add_node("join", _join)
    builder.add_node("synthesize", synthesize)
    builder.add_node("remember", partial(remember, max_chars=services.settings.summary_max_chars))

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
