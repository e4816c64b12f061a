"""Checks before an answer leaves: a second model validates an answer against its evidence.

For the agents listed in ``Settings.validate_agents`` (off by default: on the local tier a check
costs a model call per subtask), the specialist's answer is sent with the evidence it was built
from -- the SQL and its result rows, the cited help-center passages, what was read from the
image -- to a validator model that answers PASS or FAIL. A failure triggers one retry of the
specialist on the heavy tier (when a distinct heavy model exists); if that fails too, or there is
no heavy tier, the user gets the answer marked honestly as unverified. The verdicts are kept in
the result's evidence and in the audit trail (``validator_pass_rate`` in `switchboard compare`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage

from agents import prompts
from agents.contract import AgentResult, Handoff
from agents.deps import AgentServices
from tools.models.gateway import call_model
from tools.models.values import ESCALATE_POLICY

log = logging.getLogger("switchboard.agents.validation")

Node = Callable[[Handoff], Awaitable[dict[str, Any]]]
Checkable = Callable[[Any], "tuple[str, str] | None"]  # evidence -> (what it is, its text), or None
_VERDICT = re.compile(r"^\W*(PASS|FAIL)\b\W*(.*)", re.I | re.S)
EVIDENCE_CHARS = 1500


def parse_verdict(text: str) -> tuple[str, str]:
    """("pass" | "fail", reason). A reply that is neither is a failure to verify."""
    if m := _VERDICT.match(text.strip()):
        return m.group(1).lower(), m.group(2).strip() or m.group(1).upper()
    return "fail", f"the validator's reply was not PASS or FAIL: {text.strip()[:80]!r}"


class Validator:
    def __init__(self, services: AgentServices) -> None:
        self.services = services

    def wrap(self, agent: str, node: Node) -> Node:
        """The node, checked: unchanged for agents that are not configured for validation, or
        whose specialist names no evidence to check against (``checkable``, see
        ``agents/contract.py``)."""
        checkable = getattr(node, "checkable", None)
        if agent not in self.services.agent_config.validate_agents or checkable is None:
            return node

        async def validated(handoff: Handoff) -> dict[str, Any]:
            return await self.check(node, checkable, handoff, await node(handoff))

        validated.__name__ = getattr(node, "__name__", agent)
        return validated

    async def verdict(self, result: AgentResult, policy: str, checkable: Checkable) -> tuple[dict[str, Any], Any] | None:
        found = checkable(result["evidence"])
        if found is None:
            return None
        what, evidence = found
        evidence = evidence[:EVIDENCE_CHARS]
        reg = self.services.registry
        name = self.services.agent_config.validator_model
        handle = reg.handle(name, role="validator") if name else reg.for_agent("validator", policy)
        msgs = [SystemMessage(prompts.VALIDATE_SYSTEM),
                HumanMessage(prompts.VALIDATE_USER.format(question=result["task"], evidence=evidence,
                                                          answer=result["answer"]))]
        reply, entry = await call_model(handle, msgs, agent="validator", task=result["task"], max_tokens=40,
                                        subtask_id=result["subtask_id"])
        entry.role = "validate"
        verdict, reason = parse_verdict(str(reply.content))
        log.info("validation of %s answer: %s (%s)", result["agent"], verdict, reason)
        return {"verdict": verdict, "reason": reason, "validator": handle.spec.name, "against": what}, entry

    async def check(self, node: Node, checkable: Checkable, handoff: Handoff, update: dict[str, Any]) -> dict[str, Any]:
        [result] = update["results"]
        if not result["ok"] or handoff["subtask"].get("extract_only"):
            return update
        ledger = [*update["ledger"]]
        checked = await self.verdict(result, handoff["policy"], checkable)
        if checked is None:
            return update
        validation, entry = checked
        ledger.append(entry.as_dict())
        if validation["verdict"] == "pass":
            result["evidence"]["validation"] = validation
            return {"results": [result], "ledger": ledger}
        first = validation
        if handoff["policy"] != ESCALATE_POLICY and self.services.registry.heavy_differs():
            log.info("validation failed (%s): retrying the %s subtask on the heavy tier", first["reason"], result["agent"])
            retry = await node({**handoff, "policy": ESCALATE_POLICY})
            ledger += [{**e, "escalated": True} for e in retry["ledger"]]  # the heavy retry's calls
            [again] = retry["results"]
            if again["ok"] and (rechecked := await self.verdict(again, handoff["policy"], checkable)) is not None:
                validation, entry = rechecked
                ledger.append(entry.as_dict())
                validation["first"] = first
                validation["retried_on_heavy"] = True
                again["evidence"].setdefault("escalations", []).append(
                    {"from": result["evidence"].get("model"), "to": again["evidence"].get("model"),
                     "reason": f"validation failed: {first['reason']}"})
                result = again
                if validation["verdict"] == "pass":
                    result["evidence"]["validation"] = validation
                    return {"results": [result], "ledger": ledger}
        result["evidence"]["validation"] = validation
        result["answer"] = (f"{result['answer']}\n\n_I could not verify this against {validation['against']} "
                            f"({validation['reason']}); please double-check it._")
        return {"results": [result], "ledger": ledger}
