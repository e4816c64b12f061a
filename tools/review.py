"""Human review: a turn pauses (LangGraph ``interrupt``) until a person approves, edits or rejects.

Two things pause a turn, both configured in ``Settings``:

* ``kind="sensitive_sql"`` -- the SQL specialist's validated query reads a column listed in
  ``sensitive_columns`` (``tools.sql.sensitive.sensitive_reads`` resolves column references, ``*`` and ``T.*``
  with sqlglot against the database's column map). Resume with ``{"action": "approve", "sql":
  <the query shown>}``, ``{"action": "edit", "sql": <another query>}`` or ``{"action": "reject"}``.
* ``kind="cost"`` -- a heavy-tier model call would take the conversation's spend past
  ``review_cost_usd`` (the gateway's estimate plus the ledger's spend so far). Resume with
  ``{"action": "approve"}`` or ``{"action": "reject"}`` (the light tier answers instead).

The interrupt's value is a JSON payload (``kind``, ``subtask``, ``question`` and the kind's
facts); its ``response_schema`` is the decision model below, so LangGraph validates a resume and
a malformed one leaves the interrupt pending. LangGraph re-runs a resumed node from its start,
so decisions carry everything the node needs (an approval names the SQL the reviewer saw).
Reviews only happen inside a checkpointed graph run: direct calls (benchmarks) never pause. A
graph run *without* a checkpointer (a bare ``graph.ainvoke``; ``langgraph dev`` attaches its own)
cannot pause, so there what needs review is refused instead (:func:`review_mode` is "refuse").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

log = logging.getLogger("switchboard.review")

SENSITIVE_SQL = "sensitive_sql"
COST = "cost"
KINDS = (SENSITIVE_SQL, COST)
ACTIONS: dict[str, tuple[str, ...]] = {SENSITIVE_SQL: ("approve", "edit", "reject"), COST: ("approve", "reject")}


class SQLDecision(BaseModel):
    """A reviewer's answer to a ``sensitive_sql`` interrupt. ``sql`` is what runs: for an
    approval, the query the reviewer was shown (the node re-runs on resume and its model may
    write a different query, so an approval must say which one it approves)."""

    model_config = ConfigDict(extra="ignore")
    action: Literal["approve", "edit", "reject"]
    sql: str | None = None

    @model_validator(mode="after")
    def _sql_when_running(self) -> SQLDecision:
        if self.action != "reject" and not (self.sql or "").strip():
            raise ValueError(f"'{self.action}' needs 'sql': the query to run")
        return self


class CostDecision(BaseModel):
    """A reviewer's answer to a ``cost`` interrupt: reject means "use the light tier instead"."""

    model_config = ConfigDict(extra="ignore")
    action: Literal["approve", "reject"]


DECISIONS: dict[str, type[BaseModel]] = {SENSITIVE_SQL: SQLDecision, COST: CostDecision}


class ReviewError(ValueError):
    """A decision that cannot be applied (unknown action, missing SQL, no such review)."""


# ---------------------------------------------------------------------------------------------
# inside the graph: when to ask, and asking
# ---------------------------------------------------------------------------------------------


def review_mode() -> Literal["interrupt", "refuse", "off"]:
    """How a review can happen here: "interrupt" inside a checkpointed graph run with a thread
    (the turn pauses), "refuse" inside a graph run that cannot pause (no checkpointer or no
    thread: what needs review must not run), "off" outside any graph run (benchmarks, direct
    calls of an agent)."""
    from langgraph.config import get_config
    from langgraph.constants import CONFIG_KEY_CHECKPOINTER
    from langgraph.runtime import get_runtime

    try:
        runtime = get_runtime()
    except RuntimeError:  # not inside a runnable (benchmarks, direct calls)
        return "off"
    if runtime is None:  # inside a runnable that is not a graph run
        return "off"
    thread = runtime.execution_info.thread_id if runtime.execution_info else None
    checkpointer = (get_config().get("configurable") or {}).get(CONFIG_KEY_CHECKPOINTER)
    return "interrupt" if checkpointer is not None and thread else "refuse"


def reviewable() -> bool:
    """Are we inside a checkpointed graph run, where a turn can pause and be resumed later?"""
    return review_mode() == "interrupt"


def no_reviewer_refusal(task: str, columns: list[str]) -> str:
    """What a query that needs review says where no reviewer can be asked (no checkpointer)."""
    return (f"I can't look that up here: answering “{task}” needs a query that reads sensitive data "
            f"({', '.join(columns)}), which a reviewer must approve first, and this run cannot wait for a "
            "review (it has no conversation store). Nothing was looked up; ask through the chat, the "
            "API or the CLI, where a reviewer can approve it.")


def ask(payload: dict[str, Any]) -> Any:
    """Pause for a reviewer (``interrupt``); on resume, their validated decision."""
    from langgraph.types import interrupt

    return interrupt(payload, response_schema=DECISIONS[payload["kind"]])


def subtask_view(subtask: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": subtask.get("id", ""), "agent": subtask.get("agent", ""), "task": subtask.get("task", "")}


def sql_payload(subtask: Mapping[str, Any], sql: str, columns: list[str]) -> dict[str, Any]:
    return {
        "kind": SENSITIVE_SQL,
        "subtask": subtask_view(subtask),
        "sql": sql,
        "columns": columns,
        "question": (f"To answer “{subtask.get('task', '')}” the SQL agent wants to run a query that reads "
                     f"sensitive columns ({', '.join(columns)}). Approve it, edit the query, or reject it."),
        "actions": list(ACTIONS[SENSITIVE_SQL]),
    }


def cost_payload(subtask: Mapping[str, Any], model: str, estimate: float, spent: float, limit: float,
                 instead: str | None) -> dict[str, Any]:
    alternative = f"reject to use the light model {instead} instead" if instead else "reject to skip this call"
    return {
        "kind": COST,
        "subtask": subtask_view(subtask),
        "model": model,
        "estimate_usd": round(estimate, 6),
        "spent_usd": round(spent, 6),
        "limit_usd": limit,
        "light_model": instead,
        "question": (f"Calling the heavy model {model} (about ${estimate:.4f}) would take this conversation from "
                     f"${spent:.4f} past the review limit of ${limit:.2f}. Approve it, or {alternative}."),
        "actions": list(ACTIONS[COST]),
    }


# ---------------------------------------------------------------------------------------------
# outside the graph: what is pending, and turning a decision into a resume value
# ---------------------------------------------------------------------------------------------


def pending_reviews(snapshot: Any) -> list[dict[str, Any]]:
    """The review interrupts a thread is paused on (``StateSnapshot.interrupts``), as
    ``{"id": interrupt id, **payload}`` dicts in task order."""
    out = []
    for item in getattr(snapshot, "interrupts", ()) or ():
        value = item.value if isinstance(item.value, dict) else {"kind": "unknown", "question": str(item.value)}
        out.append({"id": item.id, **value})
    return out


def resume_value(review: Mapping[str, Any], decision: Mapping[str, Any] | str) -> dict[str, Any]:
    """The resume value for one pending review. An approval of a query carries the SQL the
    reviewer was shown (``review["sql"]``); running any other query is an ``edit``."""
    raw: dict[str, Any] = {"action": decision} if isinstance(decision, str) else dict(decision)
    kind = review.get("kind")
    if kind not in DECISIONS:
        raise ReviewError(f"review {review.get('id')} is of an unknown kind {kind!r}")
    action = raw.get("action")
    if action not in ACTIONS[kind]:
        raise ReviewError(f"{action!r} is not a decision for a {kind} review: use one of {', '.join(ACTIONS[kind])}")
    if kind == SENSITIVE_SQL and action == "approve":  # approve = the query shown; another one is an edit
        raw["sql"] = review.get("sql")
    try:
        model = DECISIONS[kind].model_validate(raw)
    except ValidationError as exc:
        raise ReviewError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from exc
    return model.model_dump(exclude_none=True)


def describe(review: Mapping[str, Any]) -> str:
    """A short human-readable description of one pending review (CLI, chat replies)."""
    return str(review.get("question") or review.get("kind"))


def resume_map(pending: list[dict[str, Any]], decision: Mapping[str, Any] | str,
               interrupt_id: str | None = None) -> dict[str, dict[str, Any]]:
    """``Command(resume=...)``'s map ``{interrupt id: resume value}`` for a decision.

    ``decision`` is an action name, one decision dict (``{"action", "sql"}``) applied to the
    review ``interrupt_id`` names or else to every pending one (an edit needs exactly one), or
    a map ``{interrupt id: decision}``."""
    by_id = {r["id"]: r for r in pending}
    if not by_id:
        raise ReviewError("nothing is waiting for review")
    if isinstance(decision, Mapping) and decision and all(k in by_id for k in decision):
        if interrupt_id is not None:
            raise ReviewError("give either a map of decisions by review id or an interrupt_id, not both")
        return {i: resume_value(by_id[i], d) for i, d in decision.items()}
    if interrupt_id is not None:
        if interrupt_id not in by_id:
            raise ReviewError(f"no pending review {interrupt_id!r}; pending: {', '.join(by_id)}")
        targets = [by_id[interrupt_id]]
    else:
        targets = list(by_id.values())
    action = decision if isinstance(decision, str) else decision.get("action")
    if action == "edit" and len(targets) > 1:
        raise ReviewError(f"{len(targets)} reviews are pending: name the one to edit by its id")
    return {r["id"]: resume_value(r, decision) for r in targets}


def paused_answer(pending: list[dict[str, Any]]) -> str:
    """What a paused turn says to whoever asked (the reviewer may be someone else)."""
    lines = ["This request is waiting for a reviewer's approval before it can continue:"]
    lines += [f"- {describe(r)}" for r in pending]
    return "\n".join(lines)
