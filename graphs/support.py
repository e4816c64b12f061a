"""The support graph. Where a request goes, in order:

    START -> triage -> one Send per ready subtask -> sql | rag | vision | general
          -> synthesize (more Sends for subtasks that waited on others, else the answer) -> END

Triage splits the turn and routes each part (classifier first, an LLM only when unsure).
Specialists run in parallel and append to ``results``; a subtask that depends on another (SQL
checking what vision read) is sent once its dependency is done. ``synthesize`` joins the answers,
updates the bounded conversation summary that the next turn's handoffs carry and writes the turn's
audit record, in one step: every step of a turn is a checkpoint write, and on 2 cores each costs
about a millisecond of CPU (``bench/overhead.py``).
Specialists live in ``agents/``, synthesis in ``graphs/synthesis.py``; this file is wiring only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, Overwrite, Send

from agents.contract import Handoff, Specialist
from agents.deps import AgentServices
from agents.general import GeneralAgent
from agents.rag import RAGAgent
from agents.sql import SQLAgent
from agents.validation import Validator
from agents.vision import VisionAgent
from graphs.state import Context, SupportState
from graphs.synthesis import remember, synthesize
from tools.observability import metrics, telemetry
from tools.observability.audit import AuditTrail, answer_id_for, build_turn_record

if TYPE_CHECKING:
    from agents.triage import Triage
    from tools.routing.intent import RouteConfig

log = logging.getLogger("switchboard.graph")

# The specialists, one line each: adding one is its route (switchboard/config/routes.yaml), its
# module in agents/ and its class here (docs/architecture.md).
SPECIALISTS: tuple[type[Specialist], ...] = (SQLAgent, RAGAgent, VisionAgent, GeneralAgent)


@dataclass(frozen=True)
class GraphConfig:
    default_policy: str  # the routing policy when a run's context names none
    summary_max_chars: int  # the bound on the conversation summary the next turn's handoffs carry


class GraphServices(AgentServices, Protocol):
    """What the graph uses besides what its specialists use (``agents/deps.py``)."""

    @property
    def triage(self) -> Triage: ...

    @property
    def routes(self) -> RouteConfig: ...

    @property
    def audit(self) -> AuditTrail: ...

    @property
    def graph_config(self) -> GraphConfig: ...


class UnknownSpecialist(ValueError):
    """The routes file sends work to an agent the graph does not have."""


def build_support_graph(
    services: GraphServices,
    *,
    checkpointer: Any = None,
    specialists: Sequence[type[Specialist]] = SPECIALISTS,
) -> CompiledStateGraph[SupportState, Context, SupportState, SupportState]:
    """Compile the support graph. Pass a checkpointer to persist conversations.

    ``services`` is usually ``switchboard.services.Services(settings)`` (the composition root);
    ``specialists`` are the agent classes, one node each."""
    names = [s.name for s in specialists]
    missing = sorted({a for route in services.routes.routes.values() for a in route.agents} - set(names))
    if missing:
        raise UnknownSpecialist(f"the routes file sends work to {missing}, which are not specialists of this graph "
                                f"({', '.join(names)}): add the agent's class to SPECIALISTS in graphs/support.py")
    metrics.declare_agents(names)
    settings = services.graph_config
    labels = {s.name: s.label for s in specialists}

    async def triage(state: SupportState, runtime: Runtime[Context], config: RunnableConfig) -> dict[str, Any]:
        turns = state.get("turns")
        previous = turns[-1].get("agents") if turns else None
        policy = (runtime.context.policy if runtime.context else None) or settings.default_policy
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

    def sends(state: SupportState, runtime: Runtime[Context]) -> list[Send]:
        """A specialist's run for each subtask not done whose dependencies are."""
        policy = (runtime.context.policy if runtime.context else None) or settings.default_policy
        return [Send(s["agent"], _handoff(state, s, policy)) for s in _ready(state)]

    async def dispatch(state: SupportState, runtime: Runtime[Context]) -> list[Send] | str:
        # async although it awaits nothing: LangGraph runs a sync edge function on a worker thread
        return sends(state, runtime) or "synthesize"

    async def finish(state: SupportState, runtime: Runtime[Context], config: RunnableConfig) -> dict[str, Any] | Command[str]:
        """Once every branch of a step is in: send the subtasks that waited on them, or, when none
        is left, compose the answer, update the conversation summary and write the turn's audit
        record (idempotent: a turn finished again after a crash is recorded once)."""
        if more := sends(state, runtime):
            return Command(goto=more)
        update = await synthesize(state, labels)
        answered = cast(SupportState, {**state, **update})
        update.update(remember(answered, max_chars=settings.summary_max_chars))
        meta = state.get("turn_meta") or {}
        record = build_turn_record(dict(state), _thread_id(config), meta.get("turn_index", 0))
        try:
            await asyncio.to_thread(services.audit.record_turn, record)
        except Exception:  # noqa: BLE001 - the user's answer must not depend on the audit database
            log.exception("audit: could not record turn %s", record.turn_id)
        return update

    builder = StateGraph(SupportState, context_schema=Context)
    traced = telemetry.traced  # each node's runs are spans under the turn's span (tools/observability/telemetry.py)
    builder.add_node("triage", traced("triage", triage))
    checked = Validator(services).wrap  # answers of configured agents are validated against evidence
    for cls in specialists:
        builder.add_node(cls.name, traced(cls.name, checked(cls.name, cls(services))))
    # the turn ends with the node's answer; a Command sends more work first
    builder.add_node("synthesize", traced("synthesize", finish, ends_turn=lambda out: not isinstance(out, Command)),
                     destinations=(*names, END))

    builder.add_edge(START, "triage")
    builder.add_conditional_edges("triage", dispatch, [*names, "synthesize"])
    for name in names:
        builder.add_edge(name, "synthesize")
    builder.add_edge("synthesize", END)
    return builder.compile(checkpointer=checkpointer)


def _ready(state: SupportState) -> list[dict[str, Any]]:
    """The turn's subtasks not done whose dependencies are."""
    done = {r["subtask_id"] for r in state.get("results") or []}
    return [s for s in state.get("subtasks") or []
            if s["id"] not in done and all(d in done for d in s["depends_on"])]


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
