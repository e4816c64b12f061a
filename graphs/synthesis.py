"""Synthesis and memory: one reply from the specialists' results, then the bounded summary.

Composition is deterministic: a single-part turn returns its specialist's answer as is, and a
multi-part turn joins the parts in the order they were asked. No LLM call is spent here: the
parts are already answers, and on the local tier a rewrite would cost seconds per turn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import AIMessage

from agents.contract import AgentResult
from graphs.state import SupportState, TurnRecord


def compose(subtasks: list[dict[str, Any]], results: list[AgentResult], labels: Mapping[str, str] | None = None) -> str:
    """One reply from the parts, in the order asked; a task asked of two specialists is
    introduced by each one's ``label`` (``Specialist.label``) instead of by the task."""
    by_id = {r["subtask_id"]: r for r in results}
    ordered = [by_id[s["id"]] for s in subtasks if s["id"] in by_id]
    if not ordered:
        return "I could not work out what to do with that message. Could you rephrase it?"
    if len(ordered) == 1:
        return ordered[0]["answer"]
    if all(not r["ok"] for r in ordered) and len({r["answer"] for r in ordered}) == 1:
        return ordered[0]["answer"]  # one outage failed every part (the local runtime, say): say it once
    tasks = [r["task"] for r in ordered]
    return "\n\n".join(f"**{heading(r['task'], tasks, r['agent'], labels or {})}**\n{r['answer']}" for r in ordered)


def heading(task: str, tasks: list[str], agent: str, labels: Mapping[str, str]) -> str:
    """How a combined answer introduces one part: its task as a question, or, when the same task
    went to two specialists, the specialist's ``label``."""
    if tasks.count(task) != 1:
        return labels.get(agent, "Also")
    text = task.strip().rstrip("?.! ")
    return text[:1].upper() + text[1:] + "?"


async def synthesize(state: SupportState, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    triage = state.get("triage_log") or {}
    if triage.get("refusal"):  # the message was refused whole (too long): no specialist ran
        answer = str(triage["refusal"])
    else:
        answer = compose(state.get("subtasks") or [], state.get("results") or [], labels)
        if triage.get("skipped_note"):  # parts past the per-message cap: say which were not answered
            answer = f"{answer}\n\n{triage['skipped_note']}"
    answer_id = (state.get("turn_meta") or {}).get("answer_id")  # the audit trail's and feedback's key
    return {"answer": answer, "messages": [AIMessage(content=answer, id=answer_id)]}


def _facts(result: AgentResult) -> list[str]:
    ev: Mapping[str, Any] = result.get("evidence") or {}  # each specialist's own keys (SQLEvidence, ...)
    facts = []
    if ev.get("sql"):
        facts.append(f"SQL: {ev['sql']}")
    if ev.get("fields"):
        f = {k: v for k, v in ev["fields"].items() if v and k != "unreadable"}
        if f:
            facts.append("image: " + ", ".join(f"{k} {v}" for k, v in f.items()))
    for c in ev.get("citations") or []:
        facts.append(f"cited: {c['title']}")
    return facts


def render_summary(turns: list[TurnRecord], omitted: int) -> str:
    lines = [f"({omitted} earlier turns omitted)"] if omitted else []
    for t in turns:
        line = f"User: {t['question']} | {'+'.join(t['agents'])}: {t['answer']}"
        if t["facts"]:
            line += " [" + "; ".join(t["facts"]) + "]"
        lines.append(line)
    return "\n".join(lines)


def remember(state: SupportState, max_chars: int) -> dict[str, Any]:
    """Append this turn to the running summary, dropping the oldest turns past ``max_chars``."""
    results = state.get("results") or []
    record = TurnRecord(
        question=state.get("question", ""),
        agents=sorted({r["agent"] for r in results}) or ["none"],
        answer=" ".join((state.get("answer") or "").split())[:240],
        facts=[f for r in results for f in _facts(r)][:4],
    )
    turns = [*(state.get("turns") or []), record]
    omitted = state.get("omitted_turns", 0)
    summary = render_summary(turns, omitted)
    while len(summary) > max_chars and len(turns) > 1:
        turns = turns[1:]
        omitted += 1
        summary = render_summary(turns, omitted)
    entities = dict(state.get("entities") or {})
    for r in results:
        entities.update(r.get("entities") or {})
    # keep the entity map bounded too: the newest facts win
    entities = dict(list(entities.items())[-12:])
    return {"turns": turns, "summary": summary, "entities": entities, "omitted_turns": omitted}
