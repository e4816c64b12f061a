"""Champion vs challenger from the audit trail: the figures a team needs before promoting a model.

For each model: the subtasks it answered (served, or shadowed in the background), the validator's
pass rate on its answers, how often its subtasks had to be escalated to the heavy tier, the users'
thumbs on the turns it served, cost and latency. ``paired`` counts subtasks both models answered
(shadow mode), which is the like-for-like comparison; A/B traffic compares different subtasks
drawn from the same traffic.
"""

from __future__ import annotations

from typing import Any

from tools.observability.audit import AuditTrail, percentile


def _model_figures(model: str, calls: list[dict[str, Any]], turns: list[dict[str, Any]],
                   feedback: dict[str, list[int]]) -> dict[str, Any]:
    mine = [c for c in calls if c["model"] == model and c["role"] in ("serve", "shadow")]
    live = [c["latency_ms"] for c in mine if not c["cached"]]
    served_subtasks = [(t, s) for t in turns for s in t["subtasks"]
                       if any(c["model"] == model and c["subtask_id"] == s["id"] for c in t["calls"])]
    validated = [s["validation"] for _, s in served_subtasks if s.get("validation")]
    escalated = sum(1 for _, s in served_subtasks if any(e.get("from") == model for e in s.get("escalations") or []))
    answer_ids = {t["answer_id"] for t, _ in served_subtasks}
    votes = [v for a in answer_ids for v in feedback.get(a, [])]
    cost = round(sum(c["cost_usd"] or 0.0 for c in mine), 6)
    return {
        "model": model,
        "calls": len(mine),
        "subtasks": len(served_subtasks) + sum(1 for c in mine if c["role"] == "shadow"),
        "shadow_calls": sum(1 for c in mine if c["role"] == "shadow"),
        "validator_pass_rate": (round(sum(v.get("verdict") == "pass" for v in validated) / len(validated), 4)
                                if validated else None),
        "escalation_rate": round(escalated / len(served_subtasks), 4) if served_subtasks else None,
        "feedback_up": sum(1 for v in votes if v > 0),
        "feedback_down": sum(1 for v in votes if v < 0),
        "cost_usd": cost,
        "cost_per_call_usd": round(cost / len(mine), 8) if mine else None,
        "p50_ms": percentile(live, 50) if live else None,
        "p95_ms": percentile(live, 95) if live else None,
        "errors": sum(1 for c in mine if c.get("error")),
    }


def compare(trail: AuditTrail, champion: str, challenger: str, since: float | None = None) -> dict[str, Any]:
    calls = trail.calls(since=since)
    turns = trail.turns(since=since)
    feedback = trail.feedback()
    champion_ids = {c["call_id"] for c in calls if c["model"] == champion and c["role"] == "serve"}
    paired = sum(1 for c in calls if c["model"] == challenger and c["role"] == "shadow" and c["shadow_of"] in champion_ids)
    return {
        "champion": _model_figures(champion, calls, turns, feedback),
        "challenger": _model_figures(challenger, calls, turns, feedback),
        "paired": paired,
    }
