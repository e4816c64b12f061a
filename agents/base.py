"""What every specialist shares: the handoff it reads and the result it writes."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from langgraph.errors import GraphBubbleUp, is_invalid_resume

from agents.contract import AgentResult, Evidence, Handoff
from agents.followup import needs_context
from tools.models.gateway import AllModelsFailed, BudgetExceeded, ReviewDeclined
from tools.models.local_llm import LocalRuntimeUnavailable, PromptTooLong
from tools.models.recording import MissingRecording
from tools.models.values import LedgerEntry
from tools.observability import telemetry

log = logging.getLogger("switchboard.agents")


def context_block(handoff: Handoff) -> str:
    """The shared context as a compact prompt block (empty when the subtask needs none)."""
    parts = []
    if needs_context(handoff["subtask"]["task"]):
        if handoff.get("summary"):
            parts.append(f"Conversation so far:\n{handoff['summary']}")
        if handoff.get("entities"):
            parts.append("Known: " + "; ".join(f"{k} = {v}" for k, v in handoff["entities"].items()))
    for ev in handoff.get("evidence") or []:
        if ev.get("ok"):
            parts.append(f"Found by the {ev['agent']} agent: {ev['answer']}")
    return ("\n".join(parts) + "\n") if parts else ""


E = TypeVar("E", bound=Evidence)


class Outcome(Generic[E]):
    """Collects one specialist's answer, evidence (its own ``Evidence`` type) and ledger, then
    becomes a state update."""

    def __init__(self, agent: str, handoff: Handoff, evidence: E) -> None:
        self.agent = agent
        self.subtask = handoff["subtask"]
        self.answer = ""
        self.ok = True
        self.error: str | None = None
        self.evidence: E = evidence
        self.entities: dict[str, str] = {}
        self.ledger: list[LedgerEntry] = []
        self.started = time.monotonic()

    def fail(self, message: str, error: str | None = None) -> None:
        self.ok, self.answer, self.error = False, message, error or message

    def update(self) -> dict[str, Any]:
        self.evidence["elapsed_ms"] = round((time.monotonic() - self.started) * 1000)
        result = AgentResult(
            subtask_id=self.subtask["id"],
            agent=self.agent,
            task=self.subtask["task"],
            ok=self.ok,
            answer=self.answer,
            error=self.error,
            evidence=self.evidence,
            entities=self.entities,
        )
        return {"results": [result], "ledger": [e.as_dict() for e in self.ledger]}


def error_reference() -> str:
    """A short random id shown to the user and logged with the failure's detail."""
    return f"E-{secrets.token_hex(4)}"


@asynccontextmanager
async def specialist(agent: str, handoff: Handoff, evidence: E) -> AsyncIterator[Outcome[E]]:
    """Run a specialist body; an unexpected error becomes a failed result with a generic answer
    and an error reference (the detail is logged with its traceback and kept in ``error``), so one
    broken branch never loses the rest of the turn."""
    out = Outcome(agent, handoff, evidence)
    paused = False
    try:
        yield out
    except MissingRecording:
        raise  # tests must fail loudly on an unrecorded model call
    except GraphBubbleUp:  # an interrupt (human review): the turn pauses and the node re-runs on resume
        paused = True
        raise
    except PromptTooLong as exc:  # a clear message instead of the model's own exception
        log.warning("%s specialist: %s", agent, exc)
        out.fail(exc.message, error=f"{exc.code}: {exc.tokens} tokens > {exc.limit}")
        out.evidence["error_code"] = exc.code
    except (BudgetExceeded, ReviewDeclined) as exc:  # written for the user: passed on as is
        log.warning("%s specialist: %s", agent, exc)
        out.fail(str(exc), error=f"{type(exc).__name__}: {exc}")
    except AllModelsFailed as exc:  # which providers failed, and how, is for the log and the audit trail
        log.warning("%s specialist: %s", agent, exc)
        out.fail(f"Sorry, the {agent} specialist could not answer this part: no model is reachable right now. "
                 "Please try again shortly.", error=f"{type(exc).__name__}: {exc}")
    except LocalRuntimeUnavailable as exc:  # its message names the cause and the fix: pass it on as is
        log.error("%s specialist: %s", agent, exc)
        out.fail(str(exc), error=f"{exc.code}: {exc}")
        out.evidence["error_code"] = exc.code
    except Exception as exc:  # noqa: BLE001 - the node boundary: record, explain, keep the turn
        if is_invalid_resume(exc):  # a malformed review decision: LangGraph keeps the interrupt pending
            paused = True
            raise
        # the detail (exception text: model limits, paths, SQL) goes to the log and the result's
        # ``error`` (the audit trail), never into the answer; the reference ties the two together
        ref = error_reference()
        log.exception("%s specialist failed on %r (error reference %s)", agent, out.subtask["task"], ref)
        out.fail(
            f"Sorry, the {agent} specialist could not answer this part because of an internal error "
            f"(reference {ref}).",
            error=f"{type(exc).__name__}: {exc} (reference {ref})",
        )
        out.evidence["error_ref"] = ref
    finally:  # latency and failures per agent (Prometheus), and the outcome on the node's span
        if not paused:
            telemetry.record_agent_outcome(agent, time.monotonic() - out.started, ok=out.ok)
