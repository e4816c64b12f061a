"""Prometheus metrics: turns, errors, latency per agent, tokens and cost per model, routing.

All metrics live in one dedicated ``REGISTRY`` (not prometheus_client's global default), so tests
see only Switchboard's series and a host process's own metrics (Chainlit's, say) never collide
with them. ``switchboard serve`` exposes it at ``GET /metrics``; :func:`exposition` renders it for
any other door. Recording is a few dictionary lookups and additions: it is always on.

Labels are bounded: agent names, registry model names, ``cached``/``llm_asked`` booleans and
token directions. No user text, thread id or other per-request value is ever a label.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from tools.observability.records import ModelCall

REGISTRY = CollectorRegistry(auto_describe=True)

# A turn on the local model takes seconds to minutes; a hosted one, around a second or two.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, float("inf"))

TURNS = Counter("switchboard_turns", "Turns finished (successfully or not) by the support graph, any door.",
                registry=REGISTRY)
TURN_ERRORS = Counter("switchboard_turn_errors", "Turns that ended with an exception (cancellations excluded).",
                      registry=REGISTRY)
TURN_LATENCY = Histogram("switchboard_turn_latency_seconds", "Time from triage start to the end of the turn.",
                         buckets=LATENCY_BUCKETS, registry=REGISTRY)
AGENT_LATENCY = Histogram("switchboard_agent_latency_seconds", "Time a specialist spent on one subtask.",
                          ["agent"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
AGENT_ERRORS = Counter("switchboard_agent_errors", "Subtasks a specialist could not answer (failed results, "
                       "unexpected exceptions included).", ["agent"], registry=REGISTRY)
MODEL_CALLS = Counter("switchboard_model_calls", "Model calls answered, by registry model and whether the "
                      "response cache answered.", ["model", "cached"], registry=REGISTRY)
MODEL_TOKENS = Counter("switchboard_model_tokens", "Tokens per registry model; direction is input or output.",
                       ["model", "direction"], registry=REGISTRY)
MODEL_COST = Counter("switchboard_model_cost_usd", "Money spent per registry model (registry prices, USD).",
                     ["model"], registry=REGISTRY)
ROUTES = Counter("switchboard_routes", "Subtasks routed by triage, by agent and whether the LLM was asked.",
                 ["agent", "llm_asked"], registry=REGISTRY)


def declare_agents(names: Iterable[str]) -> None:
    """Create the specialists' series at 0, so a scrape shows every agent before its first turn
    (the graph calls this with its specialists when it is built)."""
    for name in names:
        AGENT_ERRORS.labels(agent=name)
        AGENT_LATENCY.labels(agent=name)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def record_turn(seconds: float, *, error: bool = False) -> None:
    TURNS.inc()
    TURN_LATENCY.observe(seconds)
    if error:
        TURN_ERRORS.inc()


def record_agent(agent: str, seconds: float, *, ok: bool) -> None:
    AGENT_LATENCY.labels(agent=agent).observe(seconds)
    if not ok:
        AGENT_ERRORS.labels(agent=agent).inc()


def record_model_call(entry: ModelCall) -> None:
    """One answered model call, from its ledger entry (cache hits count, with cost 0)."""
    MODEL_CALLS.labels(model=entry.model, cached=_flag(entry.cached)).inc()
    MODEL_TOKENS.labels(model=entry.model, direction="input").inc(max(entry.tokens_in, 0))
    MODEL_TOKENS.labels(model=entry.model, direction="output").inc(max(entry.tokens_out, 0))
    MODEL_COST.labels(model=entry.model).inc(max(entry.cost_usd, 0.0))


def record_route(agent: str, *, llm_asked: bool) -> None:
    ROUTES.labels(agent=agent, llm_asked=_flag(llm_asked)).inc()


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The registry in the text format the ``Accept`` header asks for (Prometheus text by default,
    OpenMetrics when asked); returns the body and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(REGISTRY), content_type
