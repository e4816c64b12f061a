"""Adding a specialist takes the three steps docs/architecture.md describes, and nothing else:
a route, a module, one line of wiring. This test takes them for a toy "opening hours" agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver

from agents.base import specialist
from agents.contract import Evidence, Handoff
from agents.deps import AgentServices
from graphs.support import SPECIALISTS, UnknownSpecialist, build_support_graph
from switchboard.api import Switchboard
from switchboard.services import Services
from switchboard.settings import Settings
from tests.stacks import LOCAL, scripted_services
from tools.models.gateway import call_model
from tools.observability import metrics

HOURS = {"lisbon": "9:00-18:00", "porto": "10:00-17:00"}


# Step 2: its module (here, in the test). Its own evidence type, and the shared context manager.
class HoursEvidence(Evidence, total=False):
    store: str
    hours: str


class HoursAgent:
    name = "hours"
    title = "Store hours"
    label = "Opening hours"

    def __init__(self, services: AgentServices) -> None:
        self.services = services

    async def __call__(self, handoff: Handoff) -> dict[str, Any]:
        async with specialist(self.name, handoff, HoursEvidence()) as out:
            task = out.subtask["task"]
            store = next((s for s in HOURS if s in task.lower()), None)
            if store is None:
                out.fail("Which store do you mean: Lisbon or Porto?")
                return out.update()
            handle, tier = self.services.registry.route(self.name, handoff["policy"], task=task)
            reply, entry = await call_model(
                handle, [SystemMessage("You phrase store opening hours."), HumanMessage(f"{store}: {HOURS[store]}")],
                agent=self.name, task=task, subtask_id=out.subtask["id"],
            )
            out.ledger.append(entry)
            out.answer = str(reply.content)
            out.evidence.update({"store": store, "hours": HOURS[store], "model": handle.spec.name,
                                 "tier": tier.as_dict()})
        return out.update()


def routes_with_hours(tmp_path) -> Path:
    """Step 1: its route, in a copy of the routes file."""
    base = Settings().routes_file
    routes = yaml.safe_load(base.read_text(encoding="utf-8"))
    routes["routes"]["hours"] = {
        "agents": ["hours"],
        "description": "When a physical store is open: opening hours, closing time, weekends.",
        "examples": ["When does the Lisbon store open?", "What are the opening hours in Porto?",
                     "Is the Porto shop open on Saturday?", "What time does the Lisbon store close?",
                     "Until when is the store in Lisbon open?", "Opening hours of the Porto store"],
    }
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(routes, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def board(make_settings, tmp_path):
    services, fake = scripted_services(make_settings(routes_file=routes_with_hours(tmp_path)))
    fake.respond = _with_hours(fake.respond)  # the scripted model also phrases opening hours
    # Step 3: one line of wiring.
    graph = build_support_graph(services, checkpointer=InMemorySaver(), specialists=(*SPECIALISTS, HoursAgent))
    return Switchboard(graph, services)


def _with_hours(respond):
    def reply(messages):
        if "phrase store opening hours" in str(messages[0].content):
            return f"We are open {str(messages[-1].content).split(': ')[1]}."
        return respond(messages)
    return reply


async def test_a_toy_specialist_added_in_three_steps_answers_its_route(board):
    turn = await board.ask("When does the Lisbon store open?", thread_id="toy")
    [sub] = turn.subtasks
    assert sub.agent == "hours" and "unsure" not in sub.route_reason  # the classifier learned its examples
    assert turn.answer == "We are open 9:00-18:00."
    [result] = turn.results
    assert result["evidence"]["hours"] == "9:00-18:00" and result["evidence"]["model"] == LOCAL
    assert [e["agent"] for e in turn.ledger] == ["hours"]  # its call went through the gateway's ledger


async def test_the_toy_runs_beside_the_built_in_specialists(board):
    turn = await board.ask("How many customers do we have? And when does the Porto store open?", thread_id="toy2")
    assert [s.agent for s in turn.subtasks] == ["sql", "hours"]
    assert "We have 59 customers." in turn.answer and "10:00-17:00" in turn.answer
    exposition, _ = metrics.exposition()
    assert b'switchboard_agent_errors_total{agent="hours"}' in exposition  # labelled by its name


async def test_a_route_for_a_specialist_the_graph_lacks_is_refused_when_the_graph_is_built(make_settings, tmp_path):
    services = Services(make_settings(routes_file=routes_with_hours(tmp_path)))
    with pytest.raises(UnknownSpecialist, match=r"\['hours'\].*SPECIALISTS in graphs/support.py"):
        build_support_graph(services)  # the route exists, the one line of wiring does not
