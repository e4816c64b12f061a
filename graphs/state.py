"""Typed state of the support graph.

What parallel specialists write (``results``, ``ledger``) is merged by ``operator.add`` reducers,
so branches never clobber each other; triage resets them at the start of each turn with
``Overwrite``. What must survive across turns (``summary``, ``turns``, ``entities``) is small and
bounded, so a long conversation does not grow the state without limit.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from pydantic import BaseModel, Field

AgentName = Literal["sql", "rag", "vision", "general"]
AGENTS: tuple[AgentName, ...] = ("sql", "rag", "vision", "general")


class Subtask(BaseModel):
    """One piece of a user turn, routed to one specialist (the triage decision)."""

    id: str
    agent: AgentName
    task: str
    route: str
    confidence: float = Field(ge=0.0, le=1.0)
    scores: dict[str, float] = Field(default_factory=dict)
    reason: str
    llm_asked: bool = False
    votes: dict[str, str] = Field(default_factory=dict)  # triage ensemble: voter -> route, when one ran
    depends_on: list[str] = Field(default_factory=list)
    # set when another subtask depends on this one: just gather evidence, the dependent answers
    extract_only: bool = False


class AgentResult(TypedDict):
    subtask_id: str
    agent: str
    task: str
    ok: bool
    answer: str
    error: str | None
    evidence: dict[str, Any]
    entities: dict[str, str]


class Handoff(TypedDict):
    """What a specialist receives: its subtask and the shared context, not the raw history."""

    subtask: dict[str, Any]
    summary: str
    entities: dict[str, str]
    evidence: list[AgentResult]  # results of the subtasks this one depends on
    image_path: str | None
    policy: str


class TurnRecord(TypedDict):
    question: str
    agents: list[str]
    answer: str
    facts: list[str]


class SupportState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    question: str
    image_path: str | None
    subtasks: list[dict[str, Any]]
    results: Annotated[list[AgentResult], operator.add]
    ledger: Annotated[list[dict[str, Any]], operator.add]
    triage_log: dict[str, Any]
    # this turn's bookkeeping: started_at, policy, turn_index, answer_id (for the audit trail)
    turn_meta: dict[str, Any]
    answer: str
    summary: str
    turns: list[TurnRecord]
    omitted_turns: int
    entities: dict[str, str]


def turn_policy(values: dict[str, Any], default: str) -> str:
    """The routing policy the thread's current turn started under (a resumed or recovered turn
    keeps it), else ``default``."""
    return (values.get("turn_meta") or {}).get("policy") or default


@dataclass
class Context:
    """Per-run settings passed with ``context=`` (not checkpointed)."""

    policy: str = "balanced"
