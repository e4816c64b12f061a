"""The generalist: greetings, chit-chat and anything no specialist owns."""

from __future__ import annotations

from typing import Any, ClassVar

from langchain_core.messages import HumanMessage, SystemMessage

from agents import prompts
from agents.base import context_block, specialist
from agents.contract import Evidence, Handoff
from agents.deps import AgentServices
from agents.streaming import PartStream
from tools.models.gateway import call_model


class GeneralAgent:
    name: ClassVar[str] = "general"
    title: ClassVar[str] = "Generalist"  # the chat UI's step
    label: ClassVar[str] = "Also"  # introduces its part of a combined answer

    def __init__(self, services: AgentServices) -> None:
        self.services = services

    async def __call__(self, handoff: Handoff) -> dict[str, Any]:
        async with specialist(self.name, handoff, Evidence()) as out:
            handle, tier = self.services.registry.route("general", handoff["policy"], task=out.subtask["task"])
            out.evidence["tier"] = tier.as_dict()
            msgs = [
                SystemMessage(prompts.GENERAL_SYSTEM.format(**self.services.agent_config.profile.prompt_values())),
                HumanMessage(prompts.GENERAL_USER.format(context=context_block(handoff), question=out.subtask["task"])),
            ]
            reply, entry = await call_model(
                handle, msgs, agent="general", task=out.subtask["task"], max_tokens=160, subtask_id=out.subtask["id"],
                answer=PartStream(out.subtask["id"], self.name),
            )
            out.ledger.append(entry)
            out.answer = str(reply.content).strip()
            out.evidence["model"] = handle.spec.name
        return out.update()
