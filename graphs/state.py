"""Typed state of the support graph.

What parallel specialists write (``results``, ``ledger``) is merged by ``operator.add`` reducers,
so branches never clobber each other; triage resets them at the start of each turn with
``Overwrite``. What must survive across turns (``summary``, ``turns``, ``entities``,
``messages``) is small and bounded, so a long conversation does not grow the state without limit:
every checkpoint of a turn holds it, and every turn reads it back.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages

from agents.contract import AgentResult

MESSAGES_KEPT = 20
"""The conversation's last messages the state keeps (10 turns: a question and its answer each),
for a chat view of the thread (LangGraph Studio, ``langgraph-sdk`` clients). No prompt reads them
(handoffs carry ``summary``), and ``GET /v1/threads/{id}`` lists every turn's question and answer
from the thread's checkpoints. They are most of a checkpoint's bytes and LangChain objects are slow
to (de)serialise: at 40, each turn spent about 1.6 ms of CPU on them (``bench/overhead.py``)."""


def add_recent_messages(left: Any, right: Any) -> Any:
    """``add_messages``, keeping the last :data:`MESSAGES_KEPT`."""
    merged = add_messages(left, right)
    return merged[-MESSAGES_KEPT:] if isinstance(merged, list) else merged


class TurnRecord(TypedDict):
    question: str
    agents: list[str]
    answer: str
    facts: list[str]


class SupportState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_recent_messages]
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

    policy: str | None = None  # None: the configured default (``Settings.routing_policy``)
